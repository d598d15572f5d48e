"""The ``dask`` model: the same Executor interface on a Dask ``distributed`` cluster.

For work that outgrows one machine: point ``address=`` at a scheduler (or pass a ``client=``);
with neither, a ``LocalCluster`` is started (``workers`` single-threaded worker processes;
``cluster_kwargs`` go through, e.g. ``{"processes": False}`` for an in-process cluster).

Each job becomes one Dask task (a map batch is one task, so tiny items are not dominated by
the scheduler's per-task cost, ~1 ms). Exceptions come back as themselves with a
:class:`RemoteTraceback` cause, like the process model. Limits (documented in
docs/executors.md): Dask cannot interrupt a running task, so a per-task timeout - counted from
*submission*, since Dask does not report when a task starts - fails the future on time and
releases the task; ``shutdown(cancel_futures=True)`` cancels the tasks no worker has taken yet
(a worker may take a few more than it has threads); ``max_tasks_per_worker`` is not supported.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bingfa.errors import UsageError
from bingfa.executor._backend import Backend, track, untrack
from bingfa.executor._errors import (
    ExceptionWithTraceback,
    ExecutorClosed,
    TaskTimeout,
    wrap_exception,
)
from bingfa.executor._jobs import Errors, Job, Kwargs, fn_name, run_calls
from bingfa.executor._timer import DeadlineTimer

__all__ = ["DaskBackend", "run_job"]

log = logging.getLogger("bingfa.executor")


def run_job(
    fn: Callable[..., Any], items: list[Any], star: bool, kwargs_list: list[Kwargs] | None
) -> tuple[list[Any], Errors, float]:
    """Runs on a Dask worker: every call of a job, exceptions captured with tracebacks."""
    t0 = time.perf_counter()
    values: list[Any] = []
    errors = run_calls(fn, items, star, kwargs_list, values, None, 0, len(items), _wrap)
    return values, errors, time.perf_counter() - t0


def _wrap(exc: BaseException) -> Any:
    return wrap_exception(exc, "dask")


def _unwrap(errors: Errors) -> Errors:
    """An in-process cluster does not pickle: rebuild wrapped exceptions ourselves."""
    if not errors:
        return None
    out: dict[int, Any] = {}
    for k, e in errors.items():
        if isinstance(e, ExceptionWithTraceback):
            rebuild, args = e.__reduce__()
            out[k] = rebuild(*args)
        else:
            out[k] = e
    return out


class DaskBackend(Backend):
    """See the module docstring. Owns the client it creates (and the cluster it creates)."""

    model = "dask"
    chunk_target = 0.05

    def __init__(
        self,
        workers: int,
        address: str | None,
        client: Any,
        cluster_kwargs: dict[str, Any] | None,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_worker: int | None,
    ) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise UsageError(
                "model='dask' needs the 'distributed' package: pip install 'bingfa[dask]'"
            ) from exc
        if max_tasks_per_worker is not None:
            raise UsageError("max_tasks_per_worker is not supported by the dask model")
        self._cluster: Any = None
        self._owns_client = client is None
        self._close_lock = threading.Lock()
        self._client_closed = False
        if client is not None:
            self._client = client
        elif address is not None:
            self._client = distributed.Client(address)  # type: ignore[no-untyped-call]
        else:
            kwargs: dict[str, Any] = {
                "n_workers": workers,
                "threads_per_worker": 1,
                "dashboard_address": ":0",  # never collide on 8787; no fixed port
            }
            kwargs.update(cluster_kwargs or {})
            self._cluster = distributed.LocalCluster(**kwargs)  # type: ignore[no-untyped-call]
            self._client = distributed.Client(self._cluster)  # type: ignore[no-untyped-call]
        try:
            if initializer is not None:
                plugin = _make_plugin(initializer, initargs)
                self._client.register_plugin(plugin, name=f"bingfa-init-{id(self)}")
            self._nthreads: int = max(1, int(sum(self._client.nthreads().values())))
        except BaseException:
            self._close_client()
            raise
        self._lock = threading.Lock()
        self._outstanding: dict[int, tuple[Job, Any]] = {}
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._timer = DeadlineTimer("bingfa-dask-timer")
        track(self)

    def parallelism(self, fn: Callable[..., Any]) -> int:
        return self._nthreads

    def submit_job(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorClosed("cannot schedule new tasks after shutdown")
        dfut = self._client.submit(
            run_job,
            job.fn,
            job.items,
            job.star,
            job.kwargs_list,
            pure=False,
            key=f"bingfa-{fn_name(job.fn)}-{job.id}",
        )
        with self._lock:
            self._outstanding[job.id] = (job, dfut)

        def on_cancel(fut: Any) -> None:
            if fut.cancelled():
                dfut.cancel()
                self._forget(job)

        job.future.add_done_callback(on_cancel)
        dfut.add_done_callback(lambda d: self._on_done(job, d))
        if job.timeout is not None:
            timeout = job.timeout
            self._timer.call_at(time.monotonic() + timeout, lambda: self._expire(job, timeout))

    def _on_done(self, job: Job, dfut: Any) -> None:
        try:
            status = dfut.status
            if status == "finished":
                values, errors, elapsed = dfut.result()
                job.resolve(values, _unwrap(errors), None, elapsed)
            elif status == "cancelled":
                if not job.future.cancel():
                    job.fail_all(lambda i: ExecutorClosed("the dask task was cancelled"))
            else:
                exc = dfut.exception()
                job.fail_all(lambda i: exc)
        except BaseException:
            job.fail_all(lambda i: exc)
        finally:
            self._forget(job)

    def _expire(self, job: Job, timeout: float) -> None:
        with self._lock:
            entry = self._outstanding.get(job.id)
        if entry is None or job.future.done():
            return
        how = "dask cannot interrupt a running task: it was released, and timed from submission"
        job.fail_all(lambda i: TaskTimeout(job.describe(i), timeout, None, how))
        entry[1].cancel()
        self._forget(job)

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._outstanding.pop(job.id, None)
            if not self._outstanding:
                self._idle.notify_all()

    def _close_client(self) -> None:
        with self._close_lock:
            if self._client_closed:
                return
            self._client_closed = True
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close(timeout=5)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close(timeout=5)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closing = True
            entries = list(self._outstanding.values()) if cancel_futures else []
        if entries:
            try:  # tasks a worker already has are "running": let them finish, as cf does
                busy = {k for keys in self._client.processing().values() for k in keys}
            except Exception:
                busy = set()
            for job, dfut in entries:
                if dfut.key not in busy and job.future.cancel():
                    dfut.cancel()
        if wait:
            self._finish()
        elif not sys.is_finalizing():  # no new threads while the interpreter exits
            threading.Thread(target=self._finish, name="bingfa-dask-close", daemon=True).start()
        untrack(self)

    def _finish(self) -> None:
        with self._lock:
            while self._outstanding:
                self._idle.wait()
        self._timer.close()
        self._close_client()

    def terminate(self) -> None:
        with self._lock:
            self._closing = True
            entries = list(self._outstanding.values())
            self._outstanding.clear()
            self._idle.notify_all()
        for job, dfut in entries:
            with contextlib.suppress(Exception):
                dfut.cancel()
            if not job.future.cancel():
                job.fail_all(lambda i: ExecutorClosed("the executor was terminated"))
        self._timer.close()
        if not sys.is_finalizing():  # close in the background, waiting at most a second
            closer = threading.Thread(
                target=self._close_client, name="bingfa-dask-close", daemon=True
            )
            closer.start()
            closer.join(1.0)
        untrack(self)


def _make_plugin(initializer: Callable[..., Any], initargs: tuple[Any, ...]) -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class _Init(WorkerPlugin):  # type: ignore[misc]
        def __init__(self) -> None:
            self.initializer = initializer
            self.initargs = initargs

        def setup(self, worker: Any) -> None:
            self.initializer(*self.initargs)

    return _Init()
