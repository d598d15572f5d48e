"""A process pool for CPU-bound handlers of event-loop models (``--offload process``).

The handler is shipped once, with cloudpickle, to each pool process by the pool's
initializer; each request then carries only the request bytes and a copy of the connection
context. So lambdas and closures work, and per-request pickling stays small. The pool uses
the ``forkserver`` start method on Linux (``spawn`` elsewhere): a worker is never forked from a
process that already runs an event loop and threads.

A handler running in a pool process sees a *copy* of ``ctx``: changes to ``ctx.state`` stay in
that process and do not come back to the connection.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys

import cloudpickle

from bingfa.apps import Context, SyncHandler

__all__ = ["make_process_pool", "run_offloaded"]

_HANDLER: SyncHandler | None = None


def _init_worker(pickled: bytes) -> None:
    global _HANDLER
    _HANDLER = cloudpickle.loads(pickled)


def run_offloaded(request: bytes, ctx: Context) -> bytes | None:
    """Run the pool process's handler (set by the initializer) on one request."""
    assert _HANDLER is not None, "process pool started without a handler"
    return _HANDLER(request, ctx)


def _ready() -> None:
    """A no-op task: submitting one per worker makes the pool start all its processes now."""


def make_process_pool(
    handler: SyncHandler, workers: int | None
) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool whose processes all hold ``handler``. The caller owns and shuts it down.

    The processes start right away, in the background (the pool would otherwise start them
    one per request, and the first CPU-heavy requests would pay the start-up).

    Args:
        handler: the plain handler to run; anything cloudpickle can serialise.
        workers: pool size; None means one per core.
    """
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    size = workers or os.cpu_count() or 1
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=size,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(cloudpickle.dumps(handler),),
    )
    for _ in range(size):
        pool.submit(_ready)
    return pool
