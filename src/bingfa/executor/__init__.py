"""Executors: run many tasks under any concurrency model, behind ``concurrent.futures``.

::

    from bingfa.executor import Executor, map

    with Executor("process", workers=4, timeout=30) as ex:      # thread, process, gevent,
        fut = ex.submit(work, 1)                                 # asyncio, hybrid, dask
        fut.add_done_callback(save)
        for result in ex.map(work, range(1_000_000)):            # all submitted, chunked
            ...
        for result in ex.map(work, itertools.count(), buffersize=1000):   # lazy, bounded
            ...

    for result in map(work, items):                              # model="auto": chooses,
        ...                                                      # says why, shows progress

See docs/executors.md for the models, the chooser, and failure semantics (a dead worker fails
only its task; a timed-out task is stopped; Ctrl-C returns at once).
"""

from __future__ import annotations

from bingfa.executor._choose import Choice, Kind, choose_model, probe
from bingfa.executor._core import MODELS, Executor, Model, cpu_count, default_workers
from bingfa.executor._errors import (
    ExecutorClosed,
    InitializerFailed,
    RemoteTaskError,
    RemoteTraceback,
    TaskTimeout,
    WorkerDied,
)
from bingfa.executor._mapfn import MapResult, map
from bingfa.executor._maprun import MapRun

__all__ = [
    "MODELS",
    "Choice",
    "Executor",
    "ExecutorClosed",
    "InitializerFailed",
    "Kind",
    "MapResult",
    "MapRun",
    "Model",
    "RemoteTaskError",
    "RemoteTraceback",
    "TaskTimeout",
    "WorkerDied",
    "choose_model",
    "cpu_count",
    "default_workers",
    "map",
    "probe",
]
