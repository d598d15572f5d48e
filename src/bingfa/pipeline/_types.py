"""Shared vocabulary of the pipeline package: stages, outcomes, item errors, statistics.

An *outcome* is what a backend reports to the pipeline for every item it was given, exactly
once per item (at least once for Redis; the pipeline drops duplicates by sequence number):

``(seq, OK, value)``
    the item went through every stage; ``value`` is the last stage's result.
``(seq, SKIP, None)``
    a filter stage dropped it.
``(seq, ERR, ItemError)``
    a stage raised (after its retries); the error keeps the stage name, the item and the
    exception with its traceback.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeVar, get_args, overload

from bingfa.errors import BingfaError, UsageError
from bingfa.executor import RemoteTraceback
from bingfa.executor._errors import portable_exception

__all__ = [
    "ERR",
    "KINDS",
    "OK",
    "ORDERS",
    "SKIP",
    "ConsumerLost",
    "ItemError",
    "ItemFailed",
    "Kind",
    "OnError",
    "Order",
    "Outcome",
    "PipelineStats",
    "Stage",
    "StageSpec",
    "StageStats",
    "apply_stage",
    "portable_exception",
    "stage",
]

Order = Literal["fifo", "lifo", "priority"]
ORDERS: Final[tuple[str, ...]] = get_args(Order)
OnError = Literal["collect", "raise"]
Kind = Literal["map", "filter"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)

OK: Final = 0
SKIP: Final = 1
ERR: Final = 2

#: ``(seq, OK | SKIP | ERR, value | None | ItemError)``, see the module docstring.
Outcome = tuple[int, int, Any]

F = TypeVar("F", bound=Callable[..., Any])

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-]+")


def clean_name(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9_.-]`` (it becomes part of Redis keys and CLI args)."""
    cleaned = _NAME_OK.sub("_", name).strip("_")
    return cleaned or "stage"


# --- stages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """A named pipeline step: a function of one item, applied as a ``map`` or a ``filter``.

    A plain function works everywhere a stage does; a ``Stage`` adds a stable ``name`` (the
    Redis stream and the ``bingfa worker`` command find a stage by it) and its ``kind``. Calling
    the stage calls the function, so decorating with :func:`stage` keeps it usable directly.

    Attributes:
        fn: called as ``fn(item)``. A ``map`` stage passes on its return value; a ``filter``
            stage passes the *item* on when the return value is truthy, drops it otherwise.
        kind: ``"map"`` or ``"filter"``.
        name: the stage name (default: the function's ``__name__``); only ``[A-Za-z0-9_.-]``.

    Raises:
        UsageError: ``fn`` is not callable, ``kind`` is unknown, or ``name`` has other characters.
    """

    fn: Callable[[Any], Any]
    kind: Kind = "map"
    name: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise UsageError(f"a stage needs a callable, not {type(self.fn).__name__}")
        if self.kind not in KINDS:
            raise UsageError(f"stage kind must be 'map' or 'filter', not {self.kind!r}")
        if self.name is not None and (not self.name or clean_name(self.name) != self.name):
            raise UsageError(f"stage name {self.name!r}: use only letters, digits, '_', '.', '-'")

    @property
    def stage_name(self) -> str:
        """``name``, or the function's name made safe."""
        return self.name or clean_name(getattr(self.fn, "__name__", "stage"))

    def __call__(self, item: Any) -> Any:
        return self.fn(item)


@overload
def stage(fn: Callable[[Any], Any], /) -> Stage: ...


@overload
def stage(
    fn: None = None, /, *, kind: Kind = "map", name: str | None = None
) -> Callable[[Callable[[Any], Any]], Stage]: ...


def stage(
    fn: Callable[[Any], Any] | None = None,
    /,
    *,
    kind: Kind = "map",
    name: str | None = None,
) -> Stage | Callable[[Callable[[Any], Any]], Stage]:
    """Make a :class:`Stage`: ``@stage`` or ``@stage(kind="filter", name="big")``."""
    if fn is not None:
        return Stage(fn, kind, name)

    def wrap(f: Callable[[Any], Any]) -> Stage:
        return Stage(f, kind, name)

    return wrap


@dataclass(slots=True)
class StageSpec:
    """A stage as the pipeline runs it: function plus concurrency and queue settings.

    Attributes:
        name: unique within the pipeline.
        kind: ``map`` or ``filter``.
        fn: the function.
        workers: concurrency of this stage (threads, processes, or local Redis consumers;
            0 only for Redis: the stage is run by ``bingfa worker`` processes only).
        model: executor model for the function (``None``: run it in the stage's own threads).
        queue_size: bound of the queue *in front of* this stage.
        order: ``fifo``, ``lifo`` or ``priority`` for that queue.
        key: priority of an item entering that queue (lower first); ``None``: the item itself.
        retries: extra attempts for an item whose function raised.
    """

    name: str
    kind: Kind
    fn: Callable[[Any], Any]
    workers: int
    model: str | None
    queue_size: int
    order: Order
    key: Callable[[Any], Any] | None
    retries: int


def apply_stage(fn: Callable[[Any], Any], kind: str, item: Any, retries: int) -> tuple[int, Any]:
    """Run one item through one stage, retrying up to ``retries`` times.

    Returns:
        ``(OK, value)`` to pass ``value`` on, or ``(SKIP, None)`` when a filter dropped it.

    Raises:
        whatever the last attempt raised.
    """
    attempt = 0
    while True:
        try:
            result = fn(item)
            break
        except Exception:
            attempt += 1
            if attempt > retries:
                raise
    if kind == "filter":
        return (OK, item) if result else (SKIP, None)
    return OK, result


# --- errors ------------------------------------------------------------------------------------


class ItemError(NamedTuple):
    """An item that failed: ``(stage, item, exception)``; unpacks like a tuple.

    Attributes:
        stage: the stage name, or ``"source"`` when iterating the source raised (item ``None``).
        item: the item as the failing stage received it.
        exception: the exception. Raised in this process it carries ``__traceback__``; raised
            in a worker process or on another machine it carries a
            :class:`bingfa.executor.RemoteTraceback` as ``__cause__`` instead.
    """

    stage: str
    item: Any
    exception: BaseException

    @property
    def traceback(self) -> str:
        """The formatted traceback, wherever the exception was raised."""
        cause = self.exception.__cause__
        if isinstance(cause, RemoteTraceback):
            return cause.tb
        return "".join(traceback.format_exception(self.exception))


class ItemFailed(BingfaError):
    """``on_error="raise"``: an item failed, so the run was cancelled.

    The failing exception is the ``__cause__``.

    Attributes:
        stage: the stage name (``"source"`` if iterating the source failed).
        item: the item.
        error: the :class:`ItemError`.
    """

    def __init__(self, error: ItemError) -> None:
        exc = error.exception
        super().__init__(f"stage {error.stage!r} failed on item {error.item!r}: {exc!r}")
        self.stage = error.stage
        self.item = error.item
        self.error = error


class ConsumerLost(BingfaError):
    """Redis: an item was delivered again and again, but no consumer ever acknowledged it.

    Its consumers died (``kill -9``, out of memory, a crash in C code) or were cut off for
    longer than the visibility timeout, more often than the stage's ``retries`` allow; the
    item went to the dead-letter stream instead of being tried once more.
    """


# --- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageStats:
    """One stage at one moment.

    Attributes:
        name: stage name.
        kind: ``map`` or ``filter``.
        workers: local concurrency (0: Redis stage run only by ``bingfa worker`` processes).
        items_in: items the stage started (retries not counted twice).
        items_out: items it passed on.
        dropped: items a filter dropped.
        errors: items that failed here for good (after retries).
        queue_depth: items waiting in front of the stage (Redis: undelivered + unacknowledged
            entries of its stream); -1 if the platform cannot tell.
        queue_size: the bound of that queue.
        rate: ``items_out`` per second since the run started.
    """

    name: str
    kind: str
    workers: int
    items_in: int
    items_out: int
    dropped: int
    errors: int
    queue_depth: int
    queue_size: int
    rate: float


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """A snapshot of a pipeline run (:meth:`Pipeline.stats`).

    Attributes:
        state: ``new``, ``running``, ``draining``, ``done``, ``cancelled`` or ``failed``.
        backend: ``memory``, ``process`` or ``redis``.
        elapsed: seconds since the run started (0 before).
        pulled: items taken from the source.
        emitted: results handed to the caller.
        dropped: items filters dropped.
        errors: items that failed (``len(pipeline.errors)``, source errors included).
        in_flight: ``pulled`` minus items finished one way or another.
        capacity: the most items that can be in flight (the backpressure bound).
        stages: one :class:`StageStats` per stage, in order.
    """

    state: str
    backend: str
    elapsed: float
    pulled: int
    emitted: int
    dropped: int
    errors: int
    in_flight: int
    capacity: int
    stages: tuple[StageStats, ...]

    def format(self) -> str:
        """A plain-text table, one line per stage."""
        lines = [
            f"{self.state} ({self.backend}) {self.elapsed:.1f}s: pulled {self.pulled}, "
            f"emitted {self.emitted}, dropped {self.dropped}, errors {self.errors}, "
            f"in flight {self.in_flight}/{self.capacity}",
            f"{'stage':<20} {'workers':>7} {'in':>9} {'out':>9} {'dropped':>8} {'errors':>7} "
            f"{'queue':>11} {'rate/s':>10}",
        ]
        for s in self.stages:
            depth = "?" if s.queue_depth < 0 else str(s.queue_depth)
            lines.append(
                f"{s.name[:20]:<20} {s.workers:>7} {s.items_in:>9} {s.items_out:>9} "
                f"{s.dropped:>8} {s.errors:>7} {depth + '/' + str(s.queue_size):>11} "
                f"{s.rate:>10,.0f}"
            )
        return "\n".join(lines)
