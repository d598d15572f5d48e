"""A process pool for CPU-bound handlers of event-loop models (``--offload process``).

The pool is a ``bingfa.executor.Executor("process")``, not a pool of its own: the executors'
start method (forkserver, so a worker is never forked from a process that already runs an
event loop and threads), and their fault handling - a worker killed by the OOM killer or a
segfaulting handler fails only the request it was running (``WorkerDied``) and is replaced,
where ``ProcessPoolExecutor`` would break every later request with ``BrokenProcessPool``.

The handler is shipped once, with cloudpickle, to each pool process by the pool's
initializer; each request then carries only the request bytes and a copy of the connection
context. So lambdas and closures work, and per-request pickling stays small.

A handler running in a pool process sees a *copy* of ``ctx``: changes to ``ctx.state`` stay in
that process and do not come back to the connection.
"""

from __future__ import annotations

import os

import cloudpickle

from bingfa.apps import Context, SyncHandler
from bingfa.executor import Executor

__all__ = ["make_process_pool", "run_offloaded"]

_HANDLER: SyncHandler | None = None


def _init_worker(pickled: bytes) -> None:
    global _HANDLER
    _HANDLER = cloudpickle.loads(pickled)


def run_offloaded(request: bytes, ctx: Context) -> bytes | None:
    """Run the pool process's handler (set by the initializer) on one request."""
    assert _HANDLER is not None, "process pool started without a handler"
    return _HANDLER(request, ctx)


def make_process_pool(handler: SyncHandler, workers: int | None) -> Executor:
    """A process pool whose processes all hold ``handler``. The caller owns and shuts it down.

    The processes start right away (the executor starts its workers when it is made), so the
    first CPU-heavy requests do not pay the start-up.

    Args:
        handler: the plain handler to run; anything cloudpickle can serialise.
        workers: pool size; None means one per core.

    Raises:
        UsageError: from the executor, for a bad ``workers``.
    """
    size = workers or os.cpu_count() or 1
    return Executor(
        "process", size, initializer=_init_worker, initargs=(cloudpickle.dumps(handler),)
    )
