"""The in-process backend: ``queue`` module queues between stages, threads as workers.

Each stage has ``workers`` daemon threads that take an item from the stage's bounded queue,
run the function and put the result into the next stage's bounded queue (or the output
queue). With ``model=`` set to an executor model other than ``thread``, the function runs on a
:class:`bingfa.executor.Executor` of that model (processes, gevent, asyncio, hybrid, dask) and
each of the stage's threads keeps one call in flight there.

Delivery: exactly once, as long as this process lives. Every wait is a ``get``/``put`` with a
0.1 s timeout followed by a look at the stop and cancel flags, so nothing blocks for good.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from bingfa.errors import UsageError
from bingfa.executor import Executor
from bingfa.pipeline._engine import StageCounts
from bingfa.pipeline._types import ERR, OK, SKIP, ItemError, Outcome, StageSpec, apply_stage

__all__ = ["LocalChannel", "MemoryEngine"]

_TICK: Final = 0.1
_IN, _OUT, _DROPPED, _ERRORS = range(4)


class _Stop:
    """The sentinel that tells one worker to exit (sent only once every queue is empty)."""

    def __repr__(self) -> str:
        return "STOP"


STOP: Final = _Stop()


class LocalChannel:
    """A bounded in-process queue in FIFO, LIFO or priority order.

    Entries are ``(seq, item)``; in priority order ``((0, key(item)), seq, item)`` so equal
    priorities never compare the items themselves and keep their arrival order.
    """

    def __init__(self, order: str, maxsize: int, key: Callable[[Any], Any] | None) -> None:
        self.order = order
        self.maxsize = maxsize
        self._key = key
        self._ref: Any = None
        self._has_ref = False
        self._q: queue.Queue[Any]
        if order == "lifo":
            self._q = queue.LifoQueue(maxsize)
        elif order == "priority":
            self._q = queue.PriorityQueue(maxsize)
        else:
            self._q = queue.Queue(maxsize)

    def wrap(self, seq: int, item: Any) -> Any:
        """The queue entry for ``item``.

        Raises:
            whatever ``key`` raises; TypeError if the priority cannot be compared with earlier
            ones (checked here, so a bad key never corrupts the heap).
        """
        if self.order != "priority":
            return (seq, item)
        prio = self._key(item) if self._key is not None else item
        if self._has_ref:
            try:
                _ = prio < self._ref
            except TypeError as exc:
                raise TypeError(
                    f"priority {prio!r} cannot be compared with {self._ref!r}; "
                    "key= must return mutually comparable values (e.g. numbers)"
                ) from exc
        else:
            self._ref, self._has_ref = prio, True
        return ((0, prio), seq, item)

    def put(self, entry: Any, timeout: float) -> bool:
        """Put ``entry``; ``False`` if the queue stayed full for ``timeout`` seconds."""
        try:
            self._q.put(entry, timeout=timeout)
        except queue.Full:
            return False
        return True

    def put_stop(self) -> bool:
        """Put one STOP sentinel without blocking; ``False`` if full."""
        entry = ((1,), -1, None) if self.order == "priority" else STOP
        try:
            self._q.put_nowait(entry)
        except queue.Full:
            return False
        return True

    def get(self, timeout: float) -> tuple[int, Any] | _Stop | None:
        """``(seq, item)``, STOP, or ``None`` after ``timeout`` seconds of nothing."""
        try:
            entry = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if self.order == "priority":
            if entry[1] < 0:
                return STOP
            return (entry[1], entry[2])
        if isinstance(entry, _Stop):
            return STOP
        return (entry[0], entry[1])

    def qsize(self) -> int:
        return self._q.qsize()


class MemoryEngine:
    """Threads and in-process queues; see the module docstring.

    Owns its threads and the executors it creates for ``model=`` stages; releases them in
    :meth:`finish` or :meth:`cancel`.
    """

    name = "memory"

    def __init__(self, stages: list[StageSpec], out_size: int) -> None:
        for s in stages:
            if s.workers < 1:
                raise UsageError(f"stage {s.name!r}: workers must be >= 1 for this backend")
        self._stages = stages
        self._chans = [LocalChannel(s.order, s.queue_size, s.key) for s in stages]
        self._out: queue.Queue[Outcome] = queue.Queue(out_size)
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._threads: list[threading.Thread] = []
        self._executors: list[Executor] = []
        self._counters: list[list[list[int]]] = [[] for _ in stages]

    def start(self) -> None:
        try:
            for i, s in enumerate(self._stages):
                call = s.fn
                if s.model not in (None, "thread"):
                    ex = Executor(s.model, workers=s.workers)  # type: ignore[arg-type]
                    self._executors.append(ex)
                    call = _via_executor(ex, s.fn)
                for w in range(s.workers):
                    counters = [0, 0, 0, 0]
                    self._counters[i].append(counters)
                    t = threading.Thread(
                        target=self._work,
                        args=(i, call, counters),
                        name=f"bingfa-pipeline-{s.name}-{w}",
                        daemon=True,
                    )
                    self._threads.append(t)
                    t.start()
        except BaseException:
            self.close()
            raise

    # --- the feeder side -------------------------------------------------------------------

    def put(self, seq: int, item: Any, timeout: float) -> bool:
        chan = self._chans[0]
        try:
            entry = chan.wrap(seq, item)
        except Exception as exc:
            return self._emit((seq, ERR, ItemError(self._stages[0].name, item, exc)))
        return chan.put(entry, timeout)

    # --- the consumer side -----------------------------------------------------------------

    def get(self, timeout: float) -> list[Outcome]:
        try:
            first = self._out.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        try:
            while len(batch) < 512:
                batch.append(self._out.get_nowait())
        except queue.Empty:
            pass
        return batch

    def stage_counts(self) -> list[StageCounts]:
        result = []
        for i, per_worker in enumerate(self._counters):
            n_in, n_out, dropped, errors = (sum(c[k] for c in per_worker) for k in range(4))
            result.append(StageCounts(n_in, n_out, dropped, errors, self._chans[i].qsize()))
        return result

    # --- workers ---------------------------------------------------------------------------

    def _emit(self, outcome: Outcome) -> bool:
        """Put an outcome into the output queue, waiting while it is full; ``False`` if the
        run was cancelled meanwhile."""
        while not self._cancel.is_set():
            try:
                self._out.put(outcome, timeout=_TICK)
                return True
            except queue.Full:
                continue
        return False

    def _pass_on(self, i: int, seq: int, value: Any) -> bool:
        """Hand ``value`` to stage ``i + 1`` (or the output); ``False`` if cancelled."""
        if i + 1 == len(self._stages):
            return self._emit((seq, OK, value))
        chan = self._chans[i + 1]
        try:
            entry = chan.wrap(seq, value)
        except Exception as exc:
            return self._emit((seq, ERR, ItemError(self._stages[i + 1].name, value, exc)))
        while not self._cancel.is_set():
            if chan.put(entry, _TICK):
                return True
        return False

    def _work(self, i: int, call: Callable[[Any], Any], counters: list[int]) -> None:
        spec = self._stages[i]
        chan = self._chans[i]
        cancel = self._cancel
        while not cancel.is_set():
            got = chan.get(_TICK)
            if got is None:
                if self._stop.is_set():
                    return
                continue
            if isinstance(got, _Stop):
                return
            seq, item = got
            counters[_IN] += 1
            try:
                kind, value = apply_stage(call, spec.kind, item, spec.retries)
            except BaseException as exc:  # even SystemExit: a dead thread would stall the run
                counters[_ERRORS] += 1
                self._emit((seq, ERR, ItemError(spec.name, item, exc)))
                continue
            if kind == SKIP:
                counters[_DROPPED] += 1
                self._emit((seq, SKIP, None))
                continue
            counters[_OUT] += 1
            if not self._pass_on(i, seq, value):
                return

    # --- the end ---------------------------------------------------------------------------

    def finish(self) -> None:
        self._stop.set()
        for chan, spec in zip(self._chans, self._stages, strict=True):
            for _ in range(spec.workers):
                if not chan.put_stop():
                    break  # the rest notice the stop flag within a tick
        for t in self._threads:
            t.join(timeout=2.0)
        for ex in self._executors:
            ex.shutdown(wait=True)

    def cancel(self) -> None:
        self._cancel.set()
        self._stop.set()
        for ex in self._executors:
            ex.terminate()

    def close(self) -> None:
        self.cancel()
        deadline = time.monotonic() + 0.5
        for t in self._threads:  # a thread stuck in a stage function is abandoned (daemon)
            t.join(max(0.0, deadline - time.monotonic()))


def _via_executor(ex: Executor, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(item: Any) -> Any:
        return ex.submit(fn, item).result()

    call.__name__ = getattr(fn, "__name__", "call")
    return call
