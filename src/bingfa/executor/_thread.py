"""The ``thread`` model: a pool of OS threads in the caller's process.

Unlike ``concurrent.futures.ThreadPoolExecutor`` it supports a per-task timeout (a thread cannot
be stopped, so the future fails with :class:`TaskTimeout` on time, the thread is *abandoned* -
its eventual result is dropped - and a replacement thread keeps the pool at full strength),
``max_tasks_per_worker``, and batches for the map driver. Threads are daemon threads so a
stuck task never holds Ctrl-C or interpreter exit hostage; normal exit still runs queued work
(see ``_backend._shutdown_all``).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from bingfa.executor._backend import Backend, track, untrack
from bingfa.executor._errors import ExecutorClosed, InitializerFailed, TaskTimeout
from bingfa.executor._jobs import Errors, Job, run_calls
from bingfa.executor._timer import DeadlineTimer

__all__ = ["ThreadBackend"]

log = logging.getLogger("bingfa.executor")


class _Worker:
    __slots__ = ("abandoned", "current", "thread")

    def __init__(self) -> None:
        self.current: Job | None = None
        self.abandoned = False
        self.thread: threading.Thread | None = None


class ThreadBackend(Backend):
    """A thread pool. See the module docstring.

    Args:
        workers: maximum number of threads (started on demand, like ThreadPoolExecutor).
        initializer: called with ``initargs`` at the start of every thread; if it raises the
            backend is broken (pending and later tasks fail with :class:`InitializerFailed`).
        max_tasks_per_worker: a thread exits after this many calls and is replaced.
        name: thread name prefix.
    """

    model = "thread"
    chunk_target = 0.002

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        name: str = "bingfa-thread",
    ) -> None:
        self._max = workers
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks = max_tasks_per_worker
        self._name = name
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Semaphore(0)
        self._workers: set[_Worker] = set()
        self._nstarted = 0
        self._closing = False
        self._broken: BaseException | None = None
        self._timer = DeadlineTimer(f"{name}-timer")
        track(self)

    def parallelism(self, fn: Callable[..., Any]) -> int:
        return self._max

    def submit_job(self, job: Job) -> None:
        with self._lock:
            if self._broken is not None:
                err = InitializerFailed(str(self._broken))
                err.__cause__ = self._broken.__cause__
                raise err
            if self._closing:
                raise ExecutorClosed("cannot schedule new tasks after shutdown")
            self._q.put(job)
            if not self._idle.acquire(timeout=0) and len(self._workers) < self._max:
                self._start_worker()

    def _start_worker(self) -> None:
        """(under the lock) Start one more thread."""
        w = _Worker()
        self._nstarted += 1
        t = threading.Thread(
            target=self._run, args=(w,), name=f"{self._name}-{self._nstarted}", daemon=True
        )
        w.thread = t
        self._workers.add(w)
        t.start()

    def _run(self, me: _Worker) -> None:
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as exc:
                log.exception("thread initializer failed")
                self._break(exc)
                return
        ran = 0
        q = self._q
        while True:
            job = q.get()
            if job is None:
                q.put(None)  # wake the next thread too
                with self._lock:
                    self._workers.discard(me)
                    last = not self._workers
                if last:  # nothing can time out any more
                    self._timer.close()
                return
            if not job.future.set_running_or_notify_cancel():
                del job
                self._idle.release()
                continue
            self._run_job(me, job)
            n = len(job)
            # don't keep the finished task's function, arguments or result alive while this
            # thread waits for the next one (concurrent.futures' test_free_reference)
            del job
            if me.abandoned:
                return  # the timer already replaced this thread
            ran += n
            if self._max_tasks is not None and ran >= self._max_tasks:
                with self._lock:
                    self._workers.discard(me)
                    # a replacement even when closing: queued tasks still have to run (it
                    # leaves at the shutdown sentinel once the queue is empty)
                    if self._broken is None:
                        self._start_worker()
                return
            self._idle.release()

    def _run_job(self, me: _Worker, job: Job) -> None:
        me.current = job
        if job.single:
            timer = None
            if job.timeout is not None:
                deadline = time.monotonic() + job.timeout
                timer = self._timer.call_at(deadline, functools.partial(self._on_timeout, me, job))
            errors: Errors = None
            try:
                value = job.call(0)
            except BaseException as exc:
                value, errors = None, {0: exc}
            if timer is not None:
                timer.cancel()  # the pending deadline must not keep the job alive
            with self._lock:
                me.current = None
                if me.abandoned:
                    return
            job.resolve([value], errors)
            return
        values: list[Any] = []
        t0 = time.perf_counter()
        errors = run_calls(
            job.fn, job.items, job.star, job.kwargs_list, values, None, 0, len(job), _same
        )
        with self._lock:
            me.current = None
            if me.abandoned:
                return
        job.resolve(values, errors, None, time.perf_counter() - t0)

    def _on_timeout(self, me: _Worker, job: Job) -> None:
        with self._lock:
            if me.current is not job or me.abandoned:
                return
            me.abandoned = True
            self._workers.discard(me)
            if not self._closing:
                self._start_worker()
        assert job.timeout is not None
        how = "a thread cannot be stopped: it was abandoned (result dropped) and replaced"
        job.resolve([None], {0: TaskTimeout(job.describe(), job.timeout, None, how)})

    def _break(self, exc: BaseException) -> None:
        err = InitializerFailed(f"thread initializer raised {exc!r}")
        err.__cause__ = exc
        with self._lock:
            if self._broken is None:
                self._broken = err
            self._closing = True
        self._drain(lambda job: job.fail_all(lambda i: err))
        self._q.put(None)

    def _drain(self, settle: Callable[[Job], None]) -> None:
        while True:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            settle(job)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closing = True
            threads = [w.thread for w in self._workers if w.thread is not None]
        if cancel_futures:
            self._drain(_cancel)
        self._q.put(None)
        if not threads:
            self._timer.close()
        if wait:
            me = threading.current_thread()
            while threads:  # replacements (max_tasks_per_worker) may start while we wait
                for t in threads:
                    if t is not me:
                        t.join()
                with self._lock:
                    threads = [
                        w.thread
                        for w in self._workers
                        if w.thread is not None and w.thread is not me and w.thread.is_alive()
                    ]
            self._timer.close()
            untrack(self)
        # without waiting we stay tracked, so interpreter exit still runs the queued work (as
        # concurrent.futures does, gh-83386); the registry holds us weakly, and the last
        # thread to leave closes the timer

    def terminate(self) -> None:
        with self._lock:
            self._closing = True
            running = [w.current for w in self._workers if w.current is not None]
            for w in self._workers:
                w.abandoned = True
            self._workers.clear()
        self._drain(_cancel)
        for job in running:
            job.fail_all(lambda i: ExecutorClosed("the executor was terminated while it ran"))
        self._q.put(None)
        self._timer.close()
        untrack(self)


def _cancel(job: Job) -> None:
    job.future.cancel()


def _same(exc: BaseException) -> BaseException:
    return exc
