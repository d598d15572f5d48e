"""The ``asyncio`` model: coroutine functions on an event loop in a dedicated thread.

``async def`` functions run natively on the loop (uvloop when installed), at most
``concurrency`` at a time; a per-task timeout cancels the coroutine (``asyncio.timeout``), so
it really stops. Plain functions go to a thread pool (the thread model's engine), so a blocking
call never stalls the loop.

Jobs cross from caller threads to the loop through a deque and at most one
``call_soon_threadsafe`` per burst (not one per task), which keeps submitting thousands of
coroutines cheap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from bingfa.executor._backend import Backend, track, untrack
from bingfa.executor._errors import ExecutorClosed, TaskTimeout
from bingfa.executor._jobs import Job, is_coroutine_fn
from bingfa.executor._thread import ThreadBackend

__all__ = ["AsyncioBackend", "new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop if uvloop is installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _State:
    __slots__ = ("errors", "job", "remaining", "t0", "values")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.values: list[Any] = [None] * len(job)
        self.errors: dict[int, Any] = {}
        self.remaining = len(job)
        self.t0 = time.perf_counter()


class AsyncioBackend(Backend):
    """See the module docstring.

    Args:
        concurrency: coroutines running at once.
        threads: threads for plain functions.
        initializer: run once in the loop thread and once in every pool thread.
        initargs: its arguments.
        max_tasks_per_worker: for the pool threads.
    """

    model = "asyncio"
    chunk_target = 0.002

    def __init__(
        self,
        concurrency: int,
        threads: int,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
    ) -> None:
        self._limit = concurrency
        self._threads = ThreadBackend(
            threads, initializer, initargs, max_tasks_per_worker, name="bingfa-asyncio-thread"
        )
        untrack(self._threads)  # shut down through us
        self._lock = threading.Lock()
        self._incoming: collections.deque[Job] = collections.deque()
        self._scheduled = False
        self._outstanding: set[Job] = set()
        self._closing = False
        self._stopped = False
        # loop-thread state
        self._ready: collections.deque[tuple[_State, int]] = collections.deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = new_event_loop()
        started = threading.Event()
        self._init_error: BaseException | None = None

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            if initializer is not None:
                try:
                    initializer(*initargs)
                except BaseException as exc:
                    self._init_error = exc
            started.set()
            try:
                self._loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    self._loop.close()

        self._thread = threading.Thread(target=run, name="bingfa-asyncio-loop", daemon=True)
        self._thread.start()
        started.wait()
        track(self)

    def parallelism(self, fn: Callable[..., Any]) -> int:
        return self._limit if is_coroutine_fn(fn) else self._threads.parallelism(fn)

    def batch_items_concurrent(self, fn: Callable[..., Any]) -> bool:
        return is_coroutine_fn(fn)

    def submit_job(self, job: Job) -> None:
        if self._init_error is not None:
            from bingfa.executor._errors import InitializerFailed

            err = InitializerFailed(f"initializer raised {self._init_error!r}")
            err.__cause__ = self._init_error
            raise err
        if not is_coroutine_fn(job.fn):
            if self._closing:
                raise ExecutorClosed("cannot schedule new tasks after shutdown")
            self._threads.submit_job(job)
            return
        with self._lock:
            if self._closing:
                raise ExecutorClosed("cannot schedule new tasks after shutdown")
            self._outstanding.add(job)
            self._incoming.append(job)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    # --- loop thread ------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            jobs = list(self._incoming)
            self._incoming.clear()
            self._scheduled = False
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                self._forget(job)
                continue
            state = _State(job)
            self._ready.extend((state, i) for i in range(len(job)))
        self._pump()

    def _pump(self) -> None:
        loop = self._loop
        while self._ready and self._running < self._limit and not self._stopped:
            state, i = self._ready.popleft()
            self._running += 1
            task = loop.create_task(self._run_item(state, i))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_item(self, state: _State, i: int) -> None:
        job = state.job
        try:
            coro = job.call(i)
            if job.timeout is None:
                state.values[i] = await coro
            else:
                try:
                    async with asyncio.timeout(job.timeout) as cm:
                        state.values[i] = await coro
                except TimeoutError as exc:
                    if not cm.expired():
                        raise
                    err = TaskTimeout(
                        job.describe(i), job.timeout, None, "the coroutine was cancelled"
                    )
                    err.__cause__ = exc
                    state.errors[i] = err
        except BaseException as exc:  # incl. CancelledError on terminate: the job is settled
            state.errors[i] = exc
        self._running -= 1
        state.remaining -= 1
        if state.remaining == 0:
            elapsed = time.perf_counter() - state.t0
            job.resolve(state.values, state.errors or None, None, elapsed)
            self._forget(job)
        self._pump()

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._outstanding.discard(job)
            finished = self._closing and not self._outstanding
        if finished:  # shut down and the last job is done: the loop can go
            self._stop_loop()

    def _stop_loop(self) -> None:
        """Cancel the loop's tasks and stop it (from any thread)."""
        if self._stopped:
            return
        self._stopped = True

        def stop() -> None:  # loop thread
            self._ready.clear()
            for task in list(self._tasks):
                task.cancel()
            # stop one iteration later, so the cancelled tasks get to run their cancellation
            # (a task destroyed while pending would leave a never-awaited coroutine)
            self._loop.call_soon(self._loop.stop)

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(stop)

    # --- shutdown ---------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closing = True
            if cancel_futures:
                for job in list(self._incoming):
                    if job.future.cancel():
                        self._outstanding.discard(job)
                self._incoming = collections.deque(
                    j for j in self._incoming if not j.future.cancelled()
                )
            idle = not self._outstanding
        self._threads.shutdown(wait, cancel_futures)
        if idle:
            self._stop_loop()
        # otherwise the last job to finish stops the loop (see _forget): no helper thread,
        # so this also works while the interpreter is exiting
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
            untrack(self)
        else:
            # the loop may stop (and this backend be collected) while plain functions still
            # wait in the thread pool: let the exit handler see that pool on its own
            track(self._threads)
        # without waiting we stay tracked, so interpreter exit still finishes the work (as
        # concurrent.futures does, gh-83386); the registry holds us weakly

    def terminate(self) -> None:
        with self._lock:
            self._closing = True
            jobs = list(self._outstanding)
            self._outstanding.clear()
            self._incoming.clear()
        for job in jobs:
            if not job.future.cancel():
                job.fail_all(lambda i: ExecutorClosed("the executor was terminated while it ran"))
        self._threads.terminate()
        self._stop_loop()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)
        untrack(self)
