"""The ``gevent`` model: greenlets in worker processes that monkey-patch themselves first.

Why worker processes: ``gevent.monkey.patch_all()`` must run before ``threading``, ``socket``
and ``ssl`` are imported, or the process is half-patched (and patching the *caller* would
silently change every other executor, server and library in it). A worker process that we
start ourselves can patch first thing: it is ``python -c BOOT`` where ``BOOT`` patches before
importing anything else - not a multiprocessing child, whose bootstrap imports ``threading``
and the caller's ``__main__`` before our code runs. Inside, every blocking stdlib call
(``time.sleep``, sockets, ``urllib``) becomes cooperative, so *plain* blocking functions run
``workers`` at a time as greenlets.

Costs and limits: functions and arguments are pickled (cloudpickle for lambdas and for
``__main__`` functions, which this worker cannot import); CPU-bound work or C-level blocking IO
in a task blocks that worker's other greenlets; a per-task timeout kills the greenlet
(``gevent.Timeout``), which works only when the task yields to the hub.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bingfa.executor import _wire as wire
from bingfa.executor._pool import ProcessPool, WorkerHandle, open_pidfd

__all__ = ["BOOT", "GeventWorkerSpec", "gevent_pool"]

#: the worker's whole command line program: patch first, then import bingfa.
BOOT = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys\n"
    "from bingfa.executor._gevent_worker import main\n"
    "main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))\n"
)


class GeventWorkerSpec:
    """Starts gevent worker processes (``subprocess.Popen`` of :data:`BOOT`).

    Args:
        concurrency: greenlets per worker.
        init_blob: pickled ``(initializer, initargs)`` or ``None``.
    """

    kind = "gevent"
    sequential = False
    main_by_ref = False  # the worker does not import the caller's __main__

    def __init__(self, concurrency: int, init_blob: bytes | None) -> None:
        self.capacity = concurrency
        self.init_blob = init_blob

    def items_concurrent(self, fn: Callable[..., Any]) -> bool:
        return True

    def slots(self, fn: Callable[..., Any]) -> int:
        return self.capacity

    def start(self, wid: int) -> WorkerHandle:
        t_r, t_w = os.pipe()
        r_r, r_w = os.pipe()
        l_r, l_w = os.pipe()
        child_fds = (t_r, r_w, l_r)
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", BOOT, str(t_r), str(r_w), str(l_r)],
                pass_fds=child_fds,
                close_fds=True,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (*child_fds, t_w, r_r, l_w):
                os.close(fd)
            raise
        for fd in child_fds:
            os.close(fd)
        init = {
            "sys_path": list(sys.path),
            "init_blob": self.init_blob,
            "concurrency": self.capacity,
        }
        wire.write_frame(t_w, wire.K_INIT + pickle.dumps(init, protocol=pickle.HIGHEST_PROTOCOL))
        os.set_blocking(t_w, False)
        os.set_blocking(r_r, False)
        keep: list[Any] = [t_w, r_r, l_w]
        pidfd = open_pidfd(popen.pid)  # readable when the process exits: the sentinel too
        if pidfd is not None:
            keep.append(pidfd)
        return WorkerHandle(
            wid, popen.pid, popen, t_w, r_r, pidfd, None, keep, self.capacity, pidfd
        )


def gevent_pool(
    processes: int, concurrency: int, init_blob: bytes | None, max_tasks: int | None
) -> ProcessPool:
    """A :class:`ProcessPool` of ``processes`` gevent workers, ``concurrency`` greenlets each."""
    return ProcessPool(GeventWorkerSpec(concurrency, init_blob), processes, max_tasks, "gevent")
