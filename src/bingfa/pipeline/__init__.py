"""Producer–consumer pipelines with bounded queues, across threads, processes and machines.

::

    from bingfa.pipeline import Pipeline

    pipe = Pipeline(range(1000), queue_size=32).map(square, workers=4).filter(is_even)
    for result in pipe:                     # backpressure: the source is read as room frees up
        ...
    pipe.errors                              # [(stage, item, exception-with-traceback), ...]

    Pipeline(items, backend="process").map(cpu_heavy, workers=2)       # stages in processes
    Pipeline(items, backend="redis://host:6379/0", name="thumbs")      # stages anywhere:
        .map(resize, workers=0)              # run by `bingfa worker app:resize --pipeline thumbs`

See docs/pipelines.md: the model, the backends and their delivery guarantees, the worker
command, and measured overheads.
"""

from __future__ import annotations

from bingfa.pipeline._core import BACKENDS, Pipeline
from bingfa.pipeline._types import (
    ORDERS,
    ConsumerLost,
    ItemError,
    ItemFailed,
    PipelineStats,
    Stage,
    StageStats,
    stage,
)

__all__ = [
    "BACKENDS",
    "ORDERS",
    "ConsumerLost",
    "ItemError",
    "ItemFailed",
    "Pipeline",
    "PipelineStats",
    "Stage",
    "StageStats",
    "stage",
]
