"""The ``gevent`` model inside a process that is *already* monkey-patched.

When the caller patched itself first (``bingfa --model gevent ...`` does, via
:mod:`bingfa._entry`), there is no reason for a worker process: greenlets run right here, with
no pickling. Concurrency is bounded by a semaphore, so ``submit`` never blocks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from bingfa.executor._backend import Backend, track, untrack
from bingfa.executor._errors import ExecutorClosed, InitializerFailed, TaskTimeout
from bingfa.executor._jobs import Job

__all__ = ["GeventLocalBackend", "process_is_patched"]


def process_is_patched() -> bool:
    """True if gevent monkey-patched this process (sockets and threads)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("threading"))
    except Exception:
        return False


class GeventLocalBackend(Backend):
    """Greenlets in this (patched) process; at most ``concurrency`` calls run at once."""

    model = "gevent"
    chunk_target = 0.002

    def __init__(
        self,
        concurrency: int,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        import gevent.lock
        import gevent.pool

        self._limit = concurrency
        self._sem = gevent.lock.Semaphore(concurrency)
        self._group = gevent.pool.Group()
        self._closing = False
        self._broken: BaseException | None = None
        self._running: set[Job] = set()
        self._queued: set[Job] = set()  # submitted, greenlet not started yet
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                self._broken = exc
        track(self)

    def parallelism(self, fn: Callable[..., Any]) -> int:
        return self._limit

    def batch_items_concurrent(self, fn: Callable[..., Any]) -> bool:
        return True

    def submit_job(self, job: Job) -> None:
        if self._broken is not None:
            err = InitializerFailed(f"initializer raised {self._broken!r}")
            err.__cause__ = self._broken
            raise err
        if self._closing:
            raise ExecutorClosed("cannot schedule new tasks after shutdown")
        self._queued.add(job)
        self._group.spawn(self._run_job, job)

    def _run_item(self, job: Job, i: int, values: list[Any], errors: dict[int, Any]) -> None:
        import gevent

        with self._sem:
            try:
                if job.timeout is None:
                    values[i] = job.call(i)
                    return
                timer = gevent.Timeout(job.timeout)
                timer.start()
                try:
                    values[i] = job.call(i)
                except gevent.Timeout as exc:
                    if exc is not timer:
                        raise
                    how = "the greenlet was killed"
                    errors[i] = TaskTimeout(job.describe(i), job.timeout, None, how)
                finally:
                    timer.close()
            except BaseException as exc:
                errors[i] = exc

    def _run_job(self, job: Job) -> None:
        import gevent

        self._queued.discard(job)
        if not job.future.set_running_or_notify_cancel():
            return
        self._running.add(job)
        t0 = time.perf_counter()
        n = len(job)
        values: list[Any] = [None] * n
        errors: dict[int, Any] = {}
        try:
            if n == 1:
                self._run_item(job, 0, values, errors)
            else:
                gevent.joinall(
                    [gevent.spawn(self._run_item, job, i, values, errors) for i in range(n)]
                )
            job.resolve(values, errors or None, None, time.perf_counter() - t0)
        finally:
            self._running.discard(job)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closing = True
        if cancel_futures:
            for job in list(self._queued):
                job.future.cancel()
        if wait:
            self._group.join()
            untrack(self)
        # without waiting we stay tracked, so interpreter exit still finishes the work (as
        # concurrent.futures does); the registry holds us weakly

    def terminate(self) -> None:
        self._closing = True
        running = list(self._running)
        self._group.kill(block=False)
        for job in running:
            job.fail_all(lambda i: ExecutorClosed("the executor was terminated while it ran"))
        untrack(self)
