"""``bingfa.executor.Executor``: one ``concurrent.futures.Executor`` for every concurrency model."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal, get_args

from bingfa.errors import UsageError
from bingfa.executor._backend import Backend, interpreter_exiting
from bingfa.executor._errors import ExecutorClosed
from bingfa.executor._jobs import Job, dumps, dumps_fn, is_coroutine_fn
from bingfa.executor._maprun import Chunksize, MapRun
from bingfa.executor._mpctx import mp_context
from bingfa.executor._progress import make_progress

__all__ = ["MODELS", "Executor", "Model", "cpu_count", "default_workers", "mp_context"]

log = logging.getLogger("bingfa.executor")

Model = Literal["thread", "process", "gevent", "asyncio", "hybrid", "dask"]
MODELS: Final[tuple[str, ...]] = get_args(Model)


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(model: str) -> int:
    """The default ``workers`` of each model (see :class:`Executor`)."""
    if model == "thread":
        return min(32, cpu_count() + 4)
    if model in ("gevent", "asyncio"):
        return 100
    return cpu_count()


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be > 0, not {value!r}")


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs tasks under any concurrency model.

    Its futures are real ``concurrent.futures.Future`` objects (``as_completed``, ``wait``,
    ``add_done_callback`` all work); done-callbacks run in the executor's own thread, keep
    them short. Use it as a context manager, or call :meth:`shutdown`: the executor owns its
    threads, processes, event loop or cluster client and releases them there.

    Models (``workers`` is the degree of concurrency):

    ``thread``
        OS threads in this process; ``workers`` threads (default ``min(32, cpus + 4)``).
    ``process``
        worker processes (default: one per CPU) over per-worker pipes: a dead worker fails only
        its task and is replaced; a timed-out task's worker is killed and replaced.
    ``gevent``
        ``processes`` (default 1) worker processes that monkey-patch themselves first thing
        and run up to ``workers`` greenlets each (default 100); plain blocking IO code
        (``time.sleep``, sockets, ``urllib``) becomes cooperative there. If this process is
        already monkey-patched, greenlets run in it instead (no worker process).
    ``asyncio``
        an event loop (uvloop when installed) in a dedicated thread: ``async def`` functions
        run on it natively, at most ``workers`` at once (default 100); plain functions run in
        a thread pool of ``threads`` threads (default ``min(32, cpus + 4)``).
    ``hybrid``
        ``workers`` processes (default one per CPU), each an event loop plus ``threads``
        threads (default 4) running up to ``concurrency`` tasks (default 64): processes ×
        threads × coroutines.
    ``dask``
        a Dask ``distributed`` cluster: ``address=`` of a scheduler, an existing ``client=``
        (not closed by us), or a new ``LocalCluster`` (``workers`` workers, ``cluster_kwargs``
        passed through). Needs ``pip install 'bingfa[dask]'``.

    Args:
        model: one of :data:`MODELS`.
        workers: degree of concurrency, see above.
        timeout: default per-task timeout (seconds) for :meth:`submit`; a task running longer
            is *stopped* where the model allows and its future fails with
            :class:`~bingfa.executor.TaskTimeout` (docs/executors.md, "Timeouts").
        initializer: called as ``initializer(*initargs)`` once in every worker (thread,
            process) before it runs tasks. If it raises, the executor is broken: pending and
            later tasks fail with :class:`~bingfa.executor.InitializerFailed`.
        initargs: arguments for ``initializer``.
        max_tasks_per_worker: replace a worker (thread or process) after this many tasks.
        threads: threads per process (``hybrid``), or for plain functions (``asyncio``).
        concurrency: tasks in flight per process (``hybrid``).
        processes: gevent worker processes (``gevent``).
        mp_context: multiprocessing start method or context for ``process``/``hybrid``
            (default forkserver, see :func:`mp_context`).
        address: scheduler address (``dask``).
        client: an existing ``distributed.Client`` (``dask``); the caller keeps owning it.
        cluster_kwargs: extra ``LocalCluster`` arguments (``dask``).

    Raises:
        UsageError: unknown model, bad numbers, or an option the model does not take.
    """

    def __init__(
        self,
        model: Model = "thread",
        workers: int | None = None,
        *,
        timeout: float | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        threads: int | None = None,
        concurrency: int | None = None,
        processes: int | None = None,
        mp_context: str | Any | None = None,
        address: str | None = None,
        client: Any = None,
        cluster_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if model not in MODELS:
            raise UsageError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        for name, value in (
            ("workers", workers),
            ("max_tasks_per_worker", max_tasks_per_worker),
            ("threads", threads),
            ("concurrency", concurrency),
            ("processes", processes),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive int, not {value!r}")
        _positive("timeout", timeout)
        if initializer is not None and not callable(initializer):
            raise UsageError("initializer must be callable")
        if model != "dask" and (address is not None or client is not None or cluster_kwargs):
            raise UsageError("address=, client= and cluster_kwargs= are for model='dask'")
        if model not in ("process", "hybrid") and mp_context is not None:
            raise UsageError("mp_context= is for the process and hybrid models")
        self.model: Model = model
        self.workers: int = workers or default_workers(model)
        self.timeout = timeout
        self._shutdown = False
        self._backend: Backend = self._make_backend(
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks=max_tasks_per_worker,
            threads=threads,
            concurrency=concurrency,
            processes=processes,
            mp_ctx=mp_context,
            address=address,
            client=client,
            cluster_kwargs=cluster_kwargs,
        )
        # Collected without shutdown() (concurrent.futures does the same): stop taking work,
        # finish what was submitted, then release threads and processes. The finalizer holds
        # the backend, not this object.
        self._finalizer = weakref.finalize(self, _release, self._backend)
        self._finalizer.atexit = False  # at exit, _backend's own handler finishes the work
        log.debug("executor %s started with %d workers", model, self.workers)

    def _make_backend(
        self,
        *,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks: int | None,
        threads: int | None,
        concurrency: int | None,
        processes: int | None,
        mp_ctx: str | Any | None,
        address: str | None,
        client: Any,
        cluster_kwargs: dict[str, Any] | None,
    ) -> Backend:
        model = self.model
        ctx = mp_context(mp_ctx) if model in ("process", "hybrid") else None
        init_blob = None
        if initializer is not None and model in ("process", "hybrid", "gevent"):
            # pickled the way the pool will pickle tasks: a guarded script's initializer goes by
            # reference, so the globals it sets are the ones the script's tasks read
            by_ref = ctx is not None and getattr(ctx, "imports_main", True)
            init_blob = dumps((dumps_fn(initializer, by_ref), initargs), main_by_ref=by_ref)
        if model == "thread":
            from bingfa.executor._thread import ThreadBackend

            return ThreadBackend(self.workers, initializer, initargs, max_tasks)
        if model == "process":
            from bingfa.executor._pool import MpWorkerSpec, ProcessPool
            from bingfa.executor._worker import process_worker

            spec = MpWorkerSpec(ctx, "process", process_worker, (), init_blob, True, 1)
            return ProcessPool(spec, self.workers, max_tasks, "process")
        if model == "asyncio":
            from bingfa.executor._asyncio import AsyncioBackend

            return AsyncioBackend(
                self.workers, threads or default_workers("thread"), initializer, initargs, max_tasks
            )
        if model == "hybrid":
            from bingfa.executor._hybrid import hybrid_pool

            return hybrid_pool(
                ctx,
                self.workers,
                threads or 4,
                concurrency or 64,
                init_blob,
                max_tasks,
            )
        if model == "gevent":
            from bingfa.executor._gevent_local import GeventLocalBackend, process_is_patched

            if process_is_patched():  # the caller patched itself: greenlets right here
                return GeventLocalBackend(self.workers, initializer, initargs)
            from bingfa.executor._gevent import gevent_pool

            return gevent_pool(processes or 1, self.workers, init_blob, max_tasks)
        from bingfa.executor._dask import DaskBackend

        return DaskBackend(
            self.workers, address, client, cluster_kwargs, initializer, initargs, max_tasks
        )

    # --- concurrent.futures.Executor API ---------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its future.

        The executor's default ``timeout`` applies. Arguments that cannot be pickled (process
        models) fail the future rather than raise here, like ``concurrent.futures``.

        Raises:
            ExecutorClosed: after :meth:`shutdown`, or once the interpreter is exiting.
            InitializerFailed: the worker initializer failed earlier.
        """
        return self.schedule(fn, args, kwargs)

    def schedule(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Like :meth:`submit`, with a per-task ``timeout`` (``None``: the executor's default).

        A task that *runs* longer than ``timeout`` seconds is stopped as the model allows and
        its future fails with :class:`~bingfa.executor.TaskTimeout` (time spent queued does
        not count).
        """
        _positive("timeout", timeout)
        if not callable(fn):
            raise UsageError(f"fn must be callable, not {type(fn).__name__}")
        if interpreter_exiting():
            raise ExecutorClosed("cannot schedule new tasks after interpreter shutdown")
        check_coroutine_support(self.model, fn)
        job = Job(
            fn,
            [tuple(args)],
            True,
            [kwargs] if kwargs else None,
            single=True,
            timeout=timeout if timeout is not None else self.timeout,
        )
        self._backend.submit_job(job)
        return job.future

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: Chunksize = "auto",
        ordered: bool = True,
        task_timeout: float | None = None,
        progress: bool = False,
        buffersize: int | None = None,
    ) -> MapRun:
        """``map(fn, *iterables)`` on this executor.

        As in ``concurrent.futures``, every call is submitted now (the iterables are read to the
        end here), so the work runs to completion whether or not the results are consumed, and
        ``shutdown(wait=True)`` waits for it. ``buffersize=N`` (as in Python 3.14) makes it lazy
        instead: at most ``N`` calls are in flight and items are taken from ``iterables`` only
        as results are consumed, so huge or infinite iterables work.

        Args:
            fn: the function; called as ``fn(*items)`` with one item from each iterable.
            iterables: argument iterables, zipped (shortest wins).
            timeout: seconds (from this call) within which each next result must be ready, as
                in ``concurrent.futures`` (``0`` takes only results already there); a
                :class:`bingfa.errors.Timeout` (a ``TimeoutError``) is raised otherwise. Does
                not stop tasks.
            chunksize: calls per batch sent to a worker: ``"auto"`` (eager: what
                ``multiprocessing.Pool.map`` uses; lazy: adapted to the measured cost per
                call) or a fixed int.
            ordered: yield in input order; ``False`` yields as results complete.
            task_timeout: per-task timeout that stops a running task (needs chunksize 1/auto).
            progress: show a progress bar on stderr (only if it is a terminal).
            buffersize: ``None`` (eager) or the maximum number of calls in flight (lazy).

        Returns:
            A :class:`MapRun` iterator. Once iterated, ``close()``-ing or dropping it cancels
            the calls that have not started. The first failing task's exception is raised
            when its turn comes.

        Raises:
            UsageError: no iterable, bad numbers, ``async def`` on a model that cannot run it.
            ExecutorClosed: after :meth:`shutdown`, or once the interpreter is exiting.
        """
        if timeout is not None and (not isinstance(timeout, int | float) or timeout != timeout):
            raise UsageError(f"timeout must be a number of seconds, not {timeout!r}")
        _positive("task_timeout", task_timeout)
        if not iterables:
            raise UsageError("map() needs at least one iterable")
        if self._shutdown:
            raise ExecutorClosed("cannot schedule new tasks after shutdown")
        if interpreter_exiting():
            raise ExecutorClosed("cannot schedule new tasks after interpreter shutdown")
        check_coroutine_support(self.model, fn)
        star = len(iterables) > 1
        total = None if star else _length(iterables[0])
        items: Iterator[Any] = zip(*iterables, strict=False) if star else iter(iterables[0])
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = make_progress(progress, f"{self.model}", total)
        return MapRun(
            self._backend,
            fn,
            items,
            star=star,
            ordered=ordered,
            chunksize=chunksize,
            task_timeout=task_timeout,
            deadline=deadline,
            progress=bar,
            total=total,
            buffersize=buffersize,
            keepalive=self,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks and release the workers once queued tasks have run.

        Args:
            wait: block until every task has finished and workers are released.
            cancel_futures: cancel tasks that have not started (their futures are cancelled).
        """
        self._shutdown = True
        self._finalizer.detach()
        self._backend.shutdown(wait, cancel_futures)

    def terminate(self) -> None:
        """Stop now, as for Ctrl-C: cancel queued tasks, fail running ones with
        :class:`~bingfa.executor.ExecutorClosed`, kill worker processes. Returns within about a
        second; threads that cannot be stopped are abandoned (they are daemon threads)."""
        self._shutdown = True
        self._finalizer.detach()
        self._backend.terminate()

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        """``shutdown(wait=True)``; but on ``KeyboardInterrupt``/``SystemExit`` (any
        non-``Exception``) :meth:`terminate`, so Ctrl-C returns control at once."""
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.terminate()
        else:
            try:
                self.shutdown(wait=True)
            except BaseException:
                self.terminate()
                raise
        return None

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "running"
        return f"<bingfa.executor.Executor model={self.model} workers={self.workers} {state}>"


def _release(backend: Backend) -> None:
    """Shut ``backend`` down without waiting: its executor was collected."""
    try:
        backend.shutdown(wait=False, cancel_futures=False)
    except Exception:  # a finalizer must not raise; the backend logs its own failures
        log.exception("releasing a collected executor's %s backend failed", backend.model)


def _length(obj: Any) -> int | None:
    try:
        n = len(obj)
    except TypeError:
        return None
    return n if isinstance(n, int) and n >= 0 else None


def check_coroutine_support(model: str, fn: Callable[..., Any]) -> None:
    """Raise UsageError if ``fn`` is ``async def`` and ``model`` cannot await it."""
    if is_coroutine_fn(fn) and model not in ("asyncio", "hybrid"):
        raise UsageError(
            f"{getattr(fn, '__name__', fn)!r} is a coroutine function; "
            f"use model='asyncio' or 'hybrid', not {model!r}"
        )
