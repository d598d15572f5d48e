"""The multiprocessing backend: stages run in worker processes joined by process-shared queues.

Each stage has ``workers`` processes (started by forkserver where available, else spawn).
A worker takes an entry from its stage's queue, runs the stage function and puts the result
into the next stage's queue; items travel from process to process without passing through the
parent. The parent feeds the first queue and reads outcomes (results, drops, errors) from a
shared output queue.

Queues: FIFO stages use ``multiprocessing.Queue(maxsize)``; LIFO and priority stages use a
``queue.LifoQueue``/``queue.PriorityQueue`` hosted by a manager process (slower: every call is
a round trip to the manager). Entries are pickled by us (cloudpickle as a fallback) before they
are queued, so an unpicklable value is an item error instead of a silent drop in a queue's
feeder thread. Stage functions (and priority keys) are shipped with cloudpickle, so lambdas and
closures work; the workers adopt the parent's ``sys.path``.

Delivery: exactly once while every process lives. A worker that dies (``kill -9``, a crash in
C code) may leave a queue locked, so the run cannot go on safely: the pipeline reports
:class:`bingfa.executor.WorkerDied` naming the lost item and cancels the run. Use the Redis
backend when consumers must be able to die.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.managers import BaseManager
from typing import Any, Final

from bingfa.errors import BingfaError, UsageError
from bingfa.executor import WorkerDied
from bingfa.executor._mpctx import mp_context
from bingfa.pipeline._engine import StageCounts
from bingfa.pipeline._types import (
    ERR,
    OK,
    SKIP,
    ItemError,
    Outcome,
    StageSpec,
    apply_stage,
    portable_exception,
)

__all__ = ["ProcessEngine"]

_TICK: Final = 0.1
_FATAL: Final = 3  # an outcome kind only this module uses: a worker could not start
_NSLOT: Final = 5  # counters per worker: in, out, dropped, errors, current seq (-1: idle)
_STOP_BLOB: Final = b""


class _QueueManager(BaseManager):
    """Hosts LIFO and priority queues that several processes share."""


_QueueManager.register("LifoQueue", queue.LifoQueue)
_QueueManager.register("PriorityQueue", queue.PriorityQueue)


def _mp_context() -> Any:
    """The executors' start method (:func:`bingfa.executor._mpctx.mp_context`: forkserver where
    available, else spawn), with this module preloaded into the fork server so a new worker does
    not import bingfa again."""
    return mp_context(preload=(__name__,))


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        blob: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return blob


class _Wire:
    """How entries of one queue are framed: pickled ``(seq, item)``, plus a priority in front."""

    def __init__(self, order: str, key: Callable[[Any], Any] | None) -> None:
        self.order = order
        self.key = key
        self._ref: Any = None
        self._has_ref = False

    def wrap(self, seq: int, item: Any) -> Any:
        blob = _dumps((seq, item))
        if self.order != "priority":
            return blob
        prio = self.key(item) if self.key is not None else item
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
        return ((0, prio), seq, blob)

    def stop(self) -> Any:
        return ((1,), -1, _STOP_BLOB) if self.order == "priority" else _STOP_BLOB

    def unwrap(self, entry: Any) -> tuple[int, Any] | None:
        """``(seq, item)``, or ``None`` for the stop sentinel."""
        blob = entry[2] if self.order == "priority" else entry
        if blob == _STOP_BLOB:
            return None
        seq, item = pickle.loads(blob)
        return seq, item


def _put(q: Any, entry: Any, stop: Any) -> bool:
    """Put into a shared queue, waiting while full; ``False`` once ``stop`` is set."""
    while True:
        try:
            q.put(entry, True, _TICK)
            return True
        except queue.Full:
            if stop.is_set():
                return False


def _worker_main(
    sys_path: Sequence[str],
    blob: bytes,
    slot: int,
    q_in: Any,
    q_next: Any,
    q_out: Any,
    stop: Any,
    counters: Any,
) -> None:
    """Entry point of a stage worker process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    for p in reversed(sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    base = slot * _NSLOT
    ppid = os.getppid()  # the forkserver (or the pipeline's process, with spawn)
    try:
        import cloudpickle

        spec = cloudpickle.loads(blob)
        name, kind, fn, retries, in_order, next_name, next_order, next_key = spec
    except BaseException as exc:
        q_out.put(_dumps((-1, _FATAL, portable_exception(exc, f"worker pid {os.getpid()}"))))
        # Stay until told to stop, so the parent reads this report rather than a death.
        while not stop.wait(0.5) and os.getppid() == ppid:
            pass
        return
    wire_in = _Wire(in_order, None)
    wire_next = _Wire(next_order, next_key) if q_next is not None else None
    where = f"stage {name!r}, worker pid {os.getpid()}"

    def emit(outcome: Outcome) -> bool:
        try:
            data = _dumps(outcome)
        except Exception as exc:  # an unpicklable result or item
            seq, _kind, _value = outcome
            err = ItemError(name, None, portable_exception(exc, where))  # type: ignore[arg-type]
            data = _dumps((seq, ERR, err))
        return _put(q_out, data, stop)

    while not stop.is_set():
        try:
            entry = q_in.get(True, _TICK)
        except queue.Empty:
            if os.getppid() != ppid:
                return  # orphaned: the pipeline's process is gone
            continue
        got = wire_in.unwrap(entry)
        if got is None:
            return
        seq, item = got
        counters[base + 4] = seq
        counters[base] += 1
        try:
            out_kind, value = apply_stage(fn, kind, item, retries)
        except BaseException as exc:
            counters[base + 3] += 1
            err = ItemError(name, item, portable_exception(exc, where))
            if not emit((seq, ERR, err)):
                return
            counters[base + 4] = -1
            continue
        if out_kind == SKIP:
            counters[base + 2] += 1
            ok = emit((seq, SKIP, None))
        elif wire_next is None:
            counters[base + 1] += 1
            ok = emit((seq, OK, value))
        else:
            counters[base + 1] += 1
            try:
                entry = wire_next.wrap(seq, value)
            except BaseException as exc:
                err = ItemError(next_name, value, portable_exception(exc, where))
                ok = emit((seq, ERR, err))
            else:
                ok = _put(q_next, entry, stop)
        counters[base + 4] = -1
        if not ok:
            return


class ProcessEngine:
    """Worker processes and shared queues; see the module docstring.

    Owns its processes, queues and (for LIFO/priority stages) a manager process; releases them
    in :meth:`finish` or :meth:`cancel`.
    """

    name = "process"

    def __init__(self, stages: list[StageSpec], out_size: int) -> None:
        for s in stages:
            if s.workers < 1:
                raise UsageError(f"stage {s.name!r}: workers must be >= 1 for this backend")
            if s.model not in (None, "process"):
                raise UsageError(
                    f"stage {s.name!r}: backend='process' runs every stage in worker processes; "
                    f"model={s.model!r} is for the memory (default) and redis backends"
                )
        self._stages = stages
        self._out_size = out_size
        self._ctx = _mp_context()
        self._manager: Any = None
        self._queues: list[Any] = []
        self._out: Any = None
        self._stop: Any = None
        self._counters: Any = None
        self._procs: list[tuple[int, Any]] = []  # (stage index, process)
        self._wire0 = _Wire(stages[0].order, stages[0].key)
        self._ending = False
        self._failure: BingfaError | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._local: list[Outcome] = []  # errors found in this process (feeding stage 0)
        self._released = False

    def start(self) -> None:
        ctx = self._ctx
        try:
            for s in self._stages:
                if s.order == "fifo":
                    q = ctx.Queue(s.queue_size)
                else:
                    if self._manager is None:
                        self._manager = _QueueManager(ctx=ctx)
                        self._manager.start()
                    factory = "LifoQueue" if s.order == "lifo" else "PriorityQueue"
                    q = getattr(self._manager, factory)(s.queue_size)
                self._queues.append(q)
            self._out = ctx.Queue(self._out_size)
            self._stop = ctx.Event()
            total = sum(s.workers for s in self._stages)
            self._counters = ctx.RawArray("q", total * _NSLOT)
            for k in range(total):
                self._counters[k * _NSLOT + 4] = -1
            import cloudpickle

            slot = 0
            n = len(self._stages)
            for i, s in enumerate(self._stages):
                nxt = self._stages[i + 1] if i + 1 < n else None
                blob = cloudpickle.dumps(
                    (
                        s.name,
                        s.kind,
                        s.fn,
                        s.retries,
                        s.order,
                        nxt.name if nxt else "",
                        nxt.order if nxt else "fifo",
                        nxt.key if nxt else None,
                    ),
                    protocol=pickle.HIGHEST_PROTOCOL,
                )
                for w in range(s.workers):
                    p = ctx.Process(
                        target=_worker_main,
                        args=(
                            list(sys.path),
                            blob,
                            slot,
                            self._queues[i],
                            self._queues[i + 1] if nxt else None,
                            self._out,
                            self._stop,
                            self._counters,
                        ),
                        name=f"bingfa-pipeline-{s.name}-{w}",
                        daemon=True,
                    )
                    p.start()
                    self._procs.append((i, p))
                    slot += 1
        except BaseException:
            self.close()
            raise

    def put(self, seq: int, item: Any, timeout: float) -> bool:
        try:
            entry = self._wire0.wrap(seq, item)
        except Exception as exc:
            self._local_error(seq, ItemError(self._stages[0].name, item, exc))
            return True
        try:
            self._queues[0].put(entry, True, timeout)
        except queue.Full:
            return False
        return True

    def _local_error(self, seq: int, err: ItemError) -> None:
        with self._lock:
            self._local.append((seq, ERR, err))

    def get(self, timeout: float) -> list[Outcome]:
        with self._lock:
            local, self._local = self._local, []
        if local:
            return local
        self._check_workers()
        try:
            first = self._out.get(True, timeout)
        except queue.Empty:
            return []
        batch = [first]
        with contextlib.suppress(queue.Empty):
            while len(batch) < 512:
                batch.append(self._out.get_nowait())
        outcomes: list[Outcome] = []
        for data in batch:
            seq, kind, value = pickle.loads(data)
            if kind == _FATAL:
                err = UsageError(f"a stage could not start in its worker process: {value!r}")
                err.__cause__ = value
                self._fail(err)
                raise self._failure  # type: ignore[misc]
            outcomes.append((seq, kind, value))
        return outcomes

    def _fail(self, exc: BingfaError) -> None:
        if self._failure is None:
            self._failure = exc

    def _check_workers(self) -> None:
        if self._failure is not None:
            raise self._failure
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 0.2
        for slot, (i, p) in enumerate(self._procs):
            if p.exitcode is not None and not self._ending:
                seq = self._counters[slot * _NSLOT + 4]
                where = f"item #{seq}" if seq >= 0 else "no item"
                self._fail(
                    WorkerDied(
                        p.pid or -1,
                        p.exitcode,
                        f"stage {self._stages[i].name!r}, {where}",
                        "while the pipeline ran; the run cannot continue safely",
                    )
                )
                raise self._failure  # type: ignore[misc]

    def stage_counts(self) -> list[StageCounts]:
        if self._counters is None:
            return [StageCounts(0, 0, 0, 0, 0) for _ in self._stages]
        sums = [[0, 0, 0, 0] for _ in self._stages]
        for slot, (i, _p) in enumerate(self._procs):
            for k in range(4):
                sums[i][k] += self._counters[slot * _NSLOT + k]
        result = []
        for i, s in enumerate(sums):
            try:
                depth = self._queues[i].qsize()
            except Exception:  # NotImplementedError on macOS; a closed manager
                depth = -1
            result.append(StageCounts(s[0], s[1], s[2], s[3], depth))
        return result

    def finish(self) -> None:
        self._ending = True
        # Every queue is empty now: one stop entry per worker, in any order, ends them all.
        for i, s in enumerate(self._stages):
            wire = _Wire(s.order, None)
            for _ in range(s.workers):
                try:
                    self._queues[i].put(wire.stop(), True, 1.0)
                except Exception:
                    break
        deadline = time.monotonic() + 5.0
        for _i, p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        self._release()

    def cancel(self) -> None:
        self._ending = True
        if self._stop is not None:
            self._stop.set()

    def close(self) -> None:
        self.cancel()
        deadline = time.monotonic() + 0.3
        for _i, p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        for _i, p in self._procs:
            if p.exitcode is None:
                p.terminate()
        for _i, p in self._procs:
            p.join(0.5)
            if p.exitcode is None:
                p.kill()
                p.join(0.5)
        for q in [*self._queues, self._out]:
            if q is not None and hasattr(q, "cancel_join_thread"):
                q.cancel_join_thread()
                q.close()
        if self._manager is not None:
            with contextlib.suppress(Exception):
                self._manager.shutdown()
            self._manager = None
