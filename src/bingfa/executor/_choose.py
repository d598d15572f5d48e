"""Choosing a concurrency model, after the guide in the seed notes:

    IO-bound, few tasks → threads; many → coroutines; CPU-bound → processes;
    very many → processes × threads × coroutines.

:func:`choose_model` applies it to what is known: whether ``fn`` is ``async def``, a ``kind``
hint (``"io"``/``"cpu"``), or a measured probe (:func:`probe`: run the first few items in the
caller and compare CPU time, ``time.thread_time``, with wall time), and the number of items.
It returns a :class:`Choice` that says what it chose and why.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bingfa.errors import UsageError
from bingfa.executor._core import Model, cpu_count
from bingfa.executor._jobs import is_coroutine_fn

__all__ = [
    "CPU_BOUND",
    "FEW",
    "IO_BOUND",
    "MIN_PROCESS_WORK_S",
    "TINY_GROUP",
    "TINY_S",
    "VERY_MANY",
    "Choice",
    "Kind",
    "Probe",
    "choose_model",
    "probe",
]

Kind = Literal["io", "cpu"]

#: at most this many IO-bound items count as "few" (one thread each)
FEW: Final = 64
#: at least this many items count as "very many"
VERY_MANY: Final = 100_000
#: CPU share of wall time at or above which a task counts as CPU-bound
CPU_BOUND: Final = 0.7
#: CPU share at or below which a task counts as IO-bound (mostly waiting)
IO_BOUND: Final = 0.3
#: below this much estimated CPU work in total, worker processes cost more than they save
MIN_PROCESS_WORK_S: Final = 0.25
#: a probed call shorter than this is CPU work whatever the clocks say (they cost ~1 µs); the
#: probe then times a group of up to ``TINY_GROUP`` more calls with one pair of readings
TINY_S: Final = 20e-6
TINY_GROUP: Final = 1000
#: the probe runs at most this many items, and stops after this many seconds
PROBE_ITEMS: Final = 3
PROBE_BUDGET_S: Final = 0.2


@dataclass(frozen=True, slots=True)
class Choice:
    """What :func:`choose_model` chose, and why.

    Attributes:
        model: the model.
        workers: its ``workers`` argument.
        reason: one sentence explaining the choice.
        kind: ``"io"``, ``"cpu"``, ``"mixed"`` or ``"coroutine"``.
        options: further ``Executor`` keyword arguments (e.g. ``processes`` for gevent).
        cpu_fraction: measured CPU share of wall time, if probed.
        seconds_per_item: measured wall seconds per item, if probed.
        probed: how many items the probe ran in the caller.
    """

    model: Model
    workers: int
    reason: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    cpu_fraction: float | None = None
    seconds_per_item: float | None = None
    probed: int = 0

    def __str__(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"model={self.model} workers={self.workers}{opts}: {self.reason}"

    def __iter__(self) -> Iterator[str]:
        """``model, reason = choose_model(...)`` unpacks the two things most callers want."""
        return iter((self.model, self.reason))


@dataclass(slots=True)
class Probe:
    """Result of :func:`probe`: the items it ran, their outcomes (``(True, value)`` or
    ``(False, exception)``), and the measurements."""

    items: list[Any]
    outcomes: list[tuple[bool, Any]]
    cpu_fraction: float
    seconds_per_item: float


_SCHEDSTAT = "/proc/thread-self/schedstat"


def _runqueue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux), else 0.

    A busy machine makes a CPU-bound task wait for a CPU too; without this correction such
    waiting would look like IO.
    """
    try:
        with open(_SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def probe(
    fn: Callable[..., Any],
    items: Iterator[Any],
    max_items: int = PROBE_ITEMS,
    budget: float = PROBE_BUDGET_S,
) -> Probe:
    """Run ``fn(item)`` for the first items of ``items`` in the calling thread, measuring CPU
    time against wall time.

    Runs at least one item, at most ``max_items``, and stops once ``budget`` seconds passed.
    Exceptions are captured as outcomes (the caller yields them in order later). The items it
    consumed are returned, so nothing is lost.

    ``cpu_fraction`` is CPU time / (wall time - time spent waiting for a CPU), the latter from
    ``/proc/thread-self/schedstat`` on Linux, so a loaded machine does not make CPU-bound work
    look like waiting.
    """
    taken: list[Any] = []
    outcomes: list[tuple[bool, Any]] = []
    cpu = wall = waited = 0.0
    for item in itertools.islice(items, max_items):
        q0, t0, c0 = _runqueue_wait(), time.perf_counter(), time.thread_time()
        try:
            outcomes.append((True, fn(item)))
        except Exception as exc:
            outcomes.append((False, exc))
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - t0
        waited += _runqueue_wait() - q0
        taken.append(item)
        if wall >= budget:
            break
    n = len(taken)
    busy = max(wall - waited, cpu)
    cpu_fraction = min(1.0, cpu / busy) if busy > 0 else 1.0
    per_item = wall / n if n else 0.0
    if n == max_items and per_item < TINY_S:
        # Calls this short are mostly the clocks' own cost: time a group of them with one pair
        # of clock readings instead (a millisecond or less; its results are kept too).
        group = list(itertools.islice(items, TINY_GROUP))
        if group:
            t0, c0 = time.perf_counter(), time.thread_time()
            for item in group:
                try:
                    outcomes.append((True, fn(item)))
                except Exception as exc:
                    outcomes.append((False, exc))
            group_wall = time.perf_counter() - t0
            group_cpu = time.thread_time() - c0
            taken.extend(group)
            per_item = group_wall / len(group)
            cpu_fraction = min(1.0, group_cpu / group_wall) if group_wall > 0 else 1.0
    return Probe(taken, outcomes, cpu_fraction=cpu_fraction, seconds_per_item=per_item)


def choose_model(
    fn: Callable[..., Any],
    n_items: int | None = None,
    kind: Kind | None = None,
    *,
    cpu_fraction: float | None = None,
    seconds_per_item: float | None = None,
    probed: int = 0,
) -> Choice:
    """Choose a model for running ``fn`` over ``n_items`` items (``None``: unknown, maybe many).

    Decision table (constants in this module):

    ==========================  ==============================  ==========================
    what is known               condition                       model
    ==========================  ==============================  ==========================
    ``async def`` function      fewer than ``VERY_MANY`` items  asyncio
    ``async def`` function      ``VERY_MANY`` or more            hybrid (processes × coros)
    CPU-bound (hint, or probe   estimated work under            thread (processes would
    ``cpu_fraction`` ≥ 0.7)     ``MIN_PROCESS_WORK_S``          cost more than they save)
    CPU-bound                   otherwise                       process, one per CPU
    IO-bound (hint, or ≤ 0.3)   at most ``FEW`` items           thread, one per item
    IO-bound                    more, or unknown                gevent (greenlets)
    IO-bound                    ``VERY_MANY`` or more            gevent, one process per CPU
    mixed (0.3-0.7)             at most ``FEW`` items           thread
    mixed                       more, or unknown                hybrid
    ==========================  ==============================  ==========================

    Without a hint or measurements a plain function is treated as IO-bound with a thread pool
    (the safe default: it never needs pickling).

    Raises:
        UsageError: a ``kind`` other than ``"io"``/``"cpu"``.
    """
    if kind is not None and kind not in ("io", "cpu"):
        raise UsageError(f"kind must be 'io' or 'cpu', not {kind!r}")

    def make(
        model: Model, workers: int, reason: str, k: str, options: dict[str, Any] | None = None
    ) -> Choice:
        return Choice(
            model, workers, reason, k, options or {}, cpu_fraction, seconds_per_item, probed
        )

    many = n_items is None or n_items > FEW
    very_many = n_items is not None and n_items >= VERY_MANY
    count = "an unknown number of" if n_items is None else f"{n_items}"
    threads = min(32, cpu_count() + 4)
    if is_coroutine_fn(fn):
        if very_many:
            why = f"{count} coroutine tasks: very many → processes × coroutines"
            return make("hybrid", cpu_count(), why, "coroutine")
        why = "a coroutine function: runs natively on an event loop"
        return make("asyncio", 1000 if many else max(1, n_items or 1), why, "coroutine")
    if kind is not None:
        how = f"kind={kind!r} given"
        k: str = kind
    elif cpu_fraction is not None and seconds_per_item is not None and seconds_per_item < TINY_S:
        # the probe's clocks cost about a microsecond each: a call this short cannot be told
        # apart into waiting and computing, and it is not waiting on anything worth a thread
        how = f"probe: ~{seconds_per_item * 1e6:.1f}µs per call, too short to be waiting"
        k = "cpu"
    elif cpu_fraction is not None:
        how = f"probe: {cpu_fraction:.0%} CPU while running"
        k = "cpu" if cpu_fraction >= CPU_BOUND else "io" if cpu_fraction <= IO_BOUND else "mixed"
    else:
        why = "nothing known about the function: threads are the safe default"
        return make("thread", threads, why, "io")
    # estimated work in total, when known: under MIN_PROCESS_WORK_S processes cost more than
    # they save, whatever the verdict that would pick them
    total = None if seconds_per_item is None or n_items is None else seconds_per_item * n_items
    too_little = (
        f"only ~{total:.2f}s of work in total: worker processes would cost more than they save"
        if total is not None and total < MIN_PROCESS_WORK_S
        else None
    )
    if k == "cpu":
        if too_little:
            return make("thread", threads, f"CPU-bound ({how}) but {too_little}", "cpu")
        why = f"CPU-bound ({how}): processes side-step the GIL, one per CPU"
        return make("process", cpu_count(), why, "cpu")
    if k == "io":
        if not many:
            why = f"IO-bound ({how}), {count} items: few → one thread each"
            return make("thread", max(1, n_items or 1), why, "io")
        if very_many:
            why = f"IO-bound ({how}), {count} items: very many → processes × greenlets"
            return make("gevent", 1000, why, "io", {"processes": cpu_count()})
        why = f"IO-bound ({how}), {count} items: many → greenlets (gevent)"
        return make("gevent", 1000 if n_items is None else min(1000, n_items), why, "io")
    if not many:
        why = f"mixed CPU and waiting ({how}), {count} items: few → threads"
        return make("thread", max(1, n_items or 1), why, "mixed")
    if too_little:
        return make("thread", threads, f"mixed CPU and waiting ({how}) but {too_little}", "mixed")
    why = f"mixed CPU and waiting ({how}), {count} items → processes × threads"
    return make("hybrid", cpu_count(), why, "mixed")
