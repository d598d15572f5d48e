"""The one small interface every pipeline backend implements.

The :class:`~bingfa.pipeline.Pipeline` owns the source, the backpressure window, ordering,
the error list and iteration; an :class:`Engine` owns the queues between stages and the workers
that run them. The pipeline calls ``start`` once, then from its feeder thread ``put`` and from
the iterating thread ``get``; ``stage_counts`` from any thread. At the end it calls either
``finish`` (every item was reported) or ``cancel`` then ``close``. ``cancel`` may come from any
thread at any time, more than once; ``finish``/``close`` come once, never concurrently with
``get`` (the pipeline serialises them), and ``put`` may still run or fail after them (the
feeder ignores errors once the run is over).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from bingfa.pipeline._types import Outcome

__all__ = ["Engine", "StageCounts"]


class StageCounts(NamedTuple):
    """Counters of one stage (see :class:`~bingfa.pipeline.StageStats`)."""

    items_in: int
    items_out: int
    dropped: int
    errors: int
    queue_depth: int


class Engine(Protocol):
    """Queues and workers for the stages of one pipeline run."""

    #: ``"memory"``, ``"process"`` or ``"redis"``.
    name: str

    def start(self) -> None:
        """Create queues, start workers. Raises on failure after releasing what it started."""
        ...

    def put(self, seq: int, item: Any, timeout: float) -> bool:
        """Offer item number ``seq`` to the first stage; ``False`` if its queue stayed full for
        ``timeout`` seconds (the caller retries). An item that cannot even be enqueued (a
        priority key that raises, an unpicklable item) is reported as an ``ERR`` outcome."""
        ...

    def get(self, timeout: float) -> list[Outcome]:
        """Outcomes ready now, waiting at most ``timeout`` seconds for the first; ``[]`` if none.

        Raises:
            BingfaError: the engine broke (a worker process died, Redis went away); the
                pipeline then cancels the run.
        """
        ...

    def stage_counts(self) -> list[StageCounts]:
        """Per-stage counters, in stage order. Thread-safe; may be slightly stale."""
        ...

    def finish(self) -> None:
        """Every item was reported: stop the workers and release everything (bounded wait)."""
        ...

    def cancel(self) -> None:
        """Tell every worker to stop now and drop queued items. Thread-safe, idempotent, quick:
        it only signals (and frees nothing a concurrent ``get`` may be using)."""
        ...

    def close(self) -> None:
        """After :meth:`cancel`: release everything — join or kill workers, close queues,
        delete run keys. Bounded (about a second). Idempotent."""
        ...
