"""The interface between :class:`bingfa.executor.Executor` and one concurrency model."""

from __future__ import annotations

import abc
import atexit
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from bingfa.executor._jobs import Job

__all__ = ["Backend"]


class Backend(abc.ABC):
    """One concurrency model's engine. Owned by exactly one ``Executor``.

    Attributes:
        model: the model's name.
        chunk_target: seconds one auto-sized batch should take (amortises per-batch overhead).
    """

    model: str = ""
    chunk_target: float = 0.005

    @abc.abstractmethod
    def submit_job(self, job: Job) -> None:
        """Queue ``job``; its future (pending) is resolved by the backend.

        Raises:
            ExecutorClosed: after shutdown.
            InitializerFailed: the worker initializer failed; the backend is broken.
        """

    @abc.abstractmethod
    def parallelism(self, fn: Callable[..., Any]) -> int:
        """How many calls of ``fn`` can run at once (sizes the map driver's in-flight window)."""

    def batch_items_concurrent(self, fn: Callable[..., Any]) -> bool:
        """True if the items of one batch of ``fn`` run concurrently (greenlets, coroutines)
        rather than one after another."""
        return False

    def lanes(self, fn: Callable[..., Any]) -> int:
        """How many batches of ``fn`` run side by side: the threads or processes that take
        batches (one event loop counts once, however many coroutines it runs). An eager map
        cuts about four batches per lane, as ``multiprocessing.Pool.map`` does per process."""
        return 1 if self.batch_items_concurrent(fn) else self.parallelism(fn)

    @abc.abstractmethod
    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """No new jobs; cancel queued ones if asked; finish the rest; release workers.

        With ``wait`` block until everything is released; otherwise return at once and let the
        backend's own threads finish the work and clean up.
        """

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop now (Ctrl-C): cancel queued jobs, fail running ones with ``ExecutorClosed``,
        kill worker processes, and return within about a second."""


_live: weakref.WeakSet[Backend] = weakref.WeakSet()
_live_lock = threading.Lock()
_exiting = False


def interpreter_exiting() -> bool:
    """True once the interpreter has begun to exit: no executor takes new work from then on
    (``concurrent.futures`` raises "cannot schedule new futures after interpreter shutdown")."""
    return _exiting


def _mark_exiting() -> None:
    global _exiting
    _exiting = True


# concurrent.futures sets its flag from threading's exit hook, which runs before atexit
# handlers (and before non-daemon threads are joined); do the same where it exists.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    try:
        _register_atexit(_mark_exiting)
    except RuntimeError:  # imported while the interpreter is already shutting down
        _exiting = True


def track(backend: Backend) -> None:
    """Remember ``backend`` so that interpreter exit shuts it down (waiting, like
    concurrent.futures does for executors that were never shut down).

    Our exit handler is (re-)registered here so it runs *before* multiprocessing's own, which
    would otherwise join the worker processes first - and wait for their tasks, even after
    Ctrl-C. (atexit runs handlers last-registered first.)
    """
    with _live_lock:
        _live.add(backend)
        atexit.unregister(_shutdown_all)
        atexit.register(_shutdown_all)


def untrack(backend: Backend) -> None:
    """Forget ``backend`` (it has been shut down)."""
    with _live_lock:
        _live.discard(backend)


def _shutdown_all() -> None:
    """At interpreter exit, finish the work of executors nobody shut down (as
    concurrent.futures does) - unless the program is exiting because of Ctrl-C: then stop them
    at once, so Ctrl-C outside a ``with`` block or a ``map`` loop does not hang either."""
    _mark_exiting()
    with _live_lock:
        backends = list(_live)
    last: Any = getattr(sys, "last_type", None)
    interrupted = isinstance(last, type) and issubclass(last, KeyboardInterrupt)
    for b in backends:
        if interrupted:
            b.terminate()
            continue
        try:
            b.shutdown(wait=True, cancel_futures=False)
        except BaseException:
            b.terminate()
