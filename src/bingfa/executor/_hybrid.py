"""The ``hybrid`` model: processes × threads × coroutines.

Each worker process runs an event loop (uvloop when installed) and a thread pool. ``async def``
functions run as tasks on the loop (a batch's items concurrently, a per-task timeout cancels
the coroutine); plain functions run in the thread pool (a batch's items one after another in
one thread). The caller side is the same :class:`~bingfa.executor._pool.ProcessPool` as the
``process`` model, so crash handling is shared: a worker that dies fails the calls it held
(here: all of them, since it runs many at once) and is replaced.

A plain function that overruns its timeout cannot be stopped inside the process: the worker
reports :class:`TaskTimeout` for it at once, tells the caller it is *retiring* (no new jobs; a
replacement starts immediately), finishes its other tasks, and exits - which ends the runaway
thread.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bingfa.executor import _wire as wire
from bingfa.executor._errors import TaskTimeout
from bingfa.executor._jobs import Errors, is_coroutine_fn, run_calls, task_repr
from bingfa.executor._pool import MpWorkerSpec, ProcessPool
from bingfa.executor._worker import (
    dump_error,
    dump_result,
    load_job,
    run_initializer,
    setup_worker,
    wrap_error,
)

__all__ = ["HybridSpec", "hybrid_pool", "hybrid_worker"]


class HybridSpec(MpWorkerSpec):
    """Hybrid workers: capacity ``concurrency`` calls in flight, ``threads`` threads each."""

    def __init__(self, ctx: Any, threads: int, concurrency: int, init_blob: bytes | None) -> None:
        super().__init__(
            ctx, "hybrid", hybrid_worker, (threads, concurrency), init_blob, False, concurrency
        )
        self.threads = threads

    def items_concurrent(self, fn: Callable[..., Any]) -> bool:
        return is_coroutine_fn(fn)

    def slots(self, fn: Callable[..., Any]) -> int:
        return self.capacity if is_coroutine_fn(fn) else self.threads


def hybrid_pool(
    ctx: Any,
    processes: int,
    threads: int,
    concurrency: int,
    init_blob: bytes | None,
    max_tasks: int | None,
) -> ProcessPool:
    """A :class:`ProcessPool` of ``processes`` hybrid workers."""
    return ProcessPool(
        HybridSpec(ctx, threads, concurrency, init_blob), processes, max_tasks, "hybrid"
    )


# --- inside the worker process ----------------------------------------------------------------


class _HybridWorker:
    def __init__(self, tfd: int, rfd: int, threads: int) -> None:
        from bingfa.executor._asyncio import new_event_loop

        self.tfd = tfd
        self.rfd = rfd
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bingfa-hybrid")
        self.buf = wire.FrameBuffer()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.outstanding = 0
        self.stopping = False
        self.retired = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.where = f"pid {os.getpid()} (hybrid)"

    # results
    def put(self, body: bytes) -> None:
        self.out.append(wire.frame(body))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = b"".join(self.out)
        self.out.clear()
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.rfd, view)
                view = view[n:]
        except OSError:
            os._exit(71)
        self.maybe_exit()

    def finish(self, job_id: int, values: list[Any], errors: Errors, elapsed: float) -> None:
        self.outstanding -= 1
        head = wire.RESULT.pack(wire.K_RESULT, job_id, elapsed, 0)
        self.put(head + dump_result(values, errors))

    def maybe_exit(self) -> None:
        if (self.stopping or self.retired) and self.outstanding == 0 and not self.out:
            os._exit(0)  # not sys.exit: an abandoned thread must not keep the process alive

    # tasks
    def on_readable(self) -> None:
        try:
            data = os.read(self.tfd, 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os._exit(0)  # the caller is gone
        for body in self.buf.feed(data):
            self.on_frame(body)

    def on_frame(self, body: bytes) -> None:
        if body[:1] == wire.K_STOP:
            self.stopping = True
            self.maybe_exit()
            return
        _, job_id = wire.JOB.unpack_from(body)
        try:
            fn, items, star, kwargs_list, timeout = load_job(body)
        except BaseException as exc:
            self.put(wire.JOBFAIL.pack(wire.K_JOBFAIL, job_id) + dump_error(exc, self.where))
            return
        self.outstanding += 1
        job = _HJob(fn, items, star, kwargs_list, timeout)
        if _returns_coroutine(fn):
            task = self.loop.create_task(self.run_async(job_id, job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.run_sync(job_id, job)

    def _wrap(self, exc: BaseException) -> Any:
        return wrap_error(exc, self.where)

    async def run_async(self, job_id: int, job: _HJob) -> None:
        t0 = time.perf_counter()
        n = len(job.items)
        values: list[Any] = [None] * n
        errors: dict[int, Any] = {}
        timeout = job.timeout

        async def one(i: int) -> None:
            args, kwargs = job.args(i)
            try:
                if timeout is None:
                    values[i] = await job.fn(*args, **kwargs)
                    return
                try:
                    async with asyncio.timeout(timeout) as cm:
                        values[i] = await job.fn(*args, **kwargs)
                except TimeoutError:
                    if not cm.expired():
                        raise
                    how = "the coroutine was cancelled"
                    err = TaskTimeout(task_repr(job.fn, args, kwargs), timeout, None, how)
                    errors[i] = self._wrap(err)
            except BaseException as exc:
                errors[i] = self._wrap(exc)

        await asyncio.gather(*(one(i) for i in range(n)))
        self.finish(job_id, values, errors or None, time.perf_counter() - t0)

    def run_sync(self, job_id: int, job: _HJob) -> None:
        loop = self.loop
        timeout = job.timeout
        state: dict[str, Any] = {"done": False, "timer": None}

        def started() -> None:  # loop thread, when a pool thread picks the job up
            if timeout is not None and not state["done"]:
                state["timer"] = loop.call_later(timeout, expired)

        def expired() -> None:
            if state["done"]:
                return
            state["done"] = True
            assert timeout is not None
            how = "its thread cannot be stopped; the worker process retires and exits"
            args, kwargs = job.args(0)
            err = TaskTimeout(task_repr(job.fn, args, kwargs), timeout, os.getpid(), how)
            self.finish(job_id, [None], {0: self._wrap(err)}, timeout)
            if not self.retired:
                self.retired = True
                self.put(wire.K_RETIRE)

        def work() -> tuple[list[Any], Errors, float]:
            if timeout is not None:
                loop.call_soon_threadsafe(started)
            t0 = time.perf_counter()
            values: list[Any] = []
            n = len(job.items)
            errors = run_calls(
                job.fn, job.items, job.star, job.kwargs_list, values, None, 0, n, self._wrap
            )
            return values, errors, time.perf_counter() - t0

        def done(fut: Any) -> None:  # loop thread
            if state["done"]:
                self.maybe_exit()
                return
            state["done"] = True
            timer = state["timer"]
            if timer is not None:
                timer.cancel()
            try:
                values, errors, elapsed = fut.result()
            except BaseException as exc:
                n = len(job.items)
                values, errors, elapsed = [None] * n, dict.fromkeys(range(n), self._wrap(exc)), 0.0
            self.finish(job_id, values, errors, elapsed)

        fut = loop.run_in_executor(self.pool, work)
        fut.add_done_callback(done)


def _returns_coroutine(fn: Callable[..., Any]) -> bool:
    """``is_coroutine_fn(fn)`` without its cache for plain functions, which would keep a
    function sent by value (a lambda, a closure and what it captured) alive in this worker
    after its task; for a plain function the answer is ``inspect.iscoroutinefunction``."""
    if isinstance(fn, types.FunctionType):
        return inspect.iscoroutinefunction(fn)
    return is_coroutine_fn(fn)


class _HJob:
    """A job as the hybrid worker sees it."""

    __slots__ = ("fn", "items", "kwargs_list", "star", "timeout")

    def __init__(
        self, fn: Any, items: list[Any], star: bool, kwargs_list: Any, timeout: float | None
    ) -> None:
        self.fn = fn
        self.items = items
        self.star = star
        self.kwargs_list = kwargs_list
        self.timeout = timeout

    def args(self, i: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        item = self.items[i]
        return (item if self.star else (item,)), (self.kwargs_list[i] if self.kwargs_list else {})


def hybrid_worker(
    task_conn: Any,
    result_conn: Any,
    lifeline: Any,
    slot: Any,
    init_blob: bytes | None,
    sys_path: list[str],
    threads: int,
    concurrency: int,
) -> None:
    """Main function of a ``hybrid`` worker process (see the module docstring)."""
    tfd = task_conn.fileno()
    rfd = result_conn.fileno()
    setup_worker(sys_path, lifeline.fileno())
    pid = os.getpid()
    try:
        run_initializer(init_blob)
    except BaseException as exc:
        wire.write_frame(rfd, wire.K_INITFAIL + dump_error(exc, f"pid {pid}"))
        return
    worker = _HybridWorker(tfd, rfd, threads)
    wire.write_frame(rfd, wire.READY.pack(wire.K_READY, pid))
    os.set_blocking(tfd, False)
    worker.loop.add_reader(tfd, worker.on_readable)
    worker.loop.run_forever()
