"""``bingfa.pipeline.Pipeline``: producer–consumer stages joined by bounded queues."""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final

from bingfa.errors import BingfaError, Timeout, UsageError
from bingfa.executor import MODELS
from bingfa.pipeline._engine import Engine, StageCounts
from bingfa.pipeline._types import (
    ERR,
    KINDS,
    OK,
    ORDERS,
    SKIP,
    ItemError,
    ItemFailed,
    Kind,
    OnError,
    Order,
    PipelineStats,
    Stage,
    StageSpec,
    StageStats,
    clean_name,
)

__all__ = ["BACKENDS", "Pipeline"]

log = logging.getLogger("bingfa.pipeline")

#: backend names; a Redis URL (``redis://``, ``rediss://``, ``unix://``) selects Redis
BACKENDS: Final[tuple[str, ...]] = ("memory", "process", "redis")
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_DEFAULT_QUEUE: Final = {"memory": 64, "process": 64, "redis": 1000}
_POLL: Final = 0.05


def _backend_kind(backend: str) -> str:
    if not isinstance(backend, str):
        raise UsageError(f"backend must be a string, not {type(backend).__name__}")
    if backend in ("memory", "thread"):
        return "memory"
    if backend in ("process", "multiprocessing"):
        return "process"
    if backend.startswith(_REDIS_SCHEMES):
        return "redis"
    raise UsageError(
        f"unknown backend {backend!r}: use 'memory' (default), 'process', or a Redis URL "
        "('redis://host:6379/0')"
    )


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


class Pipeline:
    """Items from a source flow through stages joined by bounded queues; iterate for results.

    ::

        pipe = (
            Pipeline(urls, queue_size=100)
            .map(fetch, workers=16)                        # IO-bound: many threads
            .map(parse, workers=4, model="process")        # CPU-bound: processes
            .filter(lambda page: page.ok)
        )
        for page in pipe:                                  # results as they complete
            ...
        print(pipe.errors, pipe.stats().format())

    **The model.** Producers and consumers never talk directly: every stage takes items from
    the bounded queue in front of it and puts its results into the next one. A fast stage
    that gets ahead fills the queue and then waits (backpressure), so memory stays bounded
    whatever the speeds: at any moment at most :attr:`capacity` items taken from the source
    are unfinished. The source is read in a background thread only as room frees up.

    **Backends** (``backend=``): ``"memory"`` (default) — queues in this process, each stage's
    function runs in its own ``workers`` threads, or with ``model=`` on a
    :class:`bingfa.executor.Executor` of that model; ``"process"`` — every stage runs in
    ``workers`` processes joined by ``multiprocessing`` queues; a Redis URL — streams with
    consumer groups, so stages can also run in ``bingfa worker`` processes on other machines
    (docs/pipelines.md compares their delivery guarantees).

    **Ownership.** The pipeline owns the iterator it makes from ``source`` (iterating it in a
    background thread; closing it, if it has ``close()``, when it stops reading) and every
    thread, process, queue and Redis key it creates; they are released when iteration ends,
    by :meth:`cancel`, or by :meth:`close` (also on leaving a ``with`` block). A pipeline runs
    once.

    Args:
        source: any iterable of items (a generator, a list, a queue reader...).
        queue_size: default bound of every stage's input queue and of the output queue
            (default 64; 1000 for Redis, where it bounds items in flight, not each stream).
        ordered: yield results in source order (a reorder buffer, within the same bound);
            default: as they complete.
        order: default order of items waiting in each queue: ``"fifo"``, ``"lifo"`` or
            ``"priority"`` (lowest ``key(item)`` first). Redis is FIFO only.
        key: default priority key for ``order="priority"`` (default: the item itself).
            Priorities must be mutually comparable.
        on_error: ``"collect"`` (default) — an item whose stage raised is kept in
            :attr:`errors` and the run goes on; ``"raise"`` — the first failure cancels the run
            and iteration raises :class:`~bingfa.pipeline.ItemFailed`.
        retries: default extra attempts for an item whose function raised.
        backend: ``"memory"``, ``"process"``, or a Redis URL.
        timeout: seconds to wait for the next outcome before giving up: the run is cancelled
            and iteration raises :class:`bingfa.errors.Timeout`. Default: wait (cancel wakes it).
        progress: show a live per-stage table on stderr (only if it is a terminal).
        name: Redis: the pipeline name that ``bingfa worker --pipeline`` uses (default: a
            random name, fine when every stage runs in this process).
        visibility_timeout: Redis: seconds before an item held by a silent (dead) consumer is
            delivered to another.
        max_deliveries: Redis: deliveries to consumers that die before acknowledging, after
            which an item is dead-lettered (:class:`~bingfa.pipeline.ConsumerLost`).
        cleanup: Redis: delete the pipeline's streams, groups and dead letters at the end.
            Default: only when ``name`` was not given.

    Raises:
        UsageError: bad arguments; a Redis URL without the ``redis`` package installed.
    """

    def __init__(
        self,
        source: Iterable[Any],
        queue_size: int | None = None,
        *,
        ordered: bool = False,
        order: Order = "fifo",
        key: Callable[[Any], Any] | None = None,
        on_error: OnError = "collect",
        retries: int = 0,
        backend: str = "memory",
        timeout: float | None = None,
        progress: bool = False,
        name: str | None = None,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        cleanup: bool | None = None,
    ) -> None:
        if not isinstance(source, Iterable):
            raise UsageError(f"source must be iterable, not {type(source).__name__}")
        self.backend_kind = _backend_kind(backend)
        self.backend = backend
        if queue_size is None:
            queue_size = _DEFAULT_QUEUE[self.backend_kind]
        self._queue_size = _positive_int("queue_size", queue_size)
        self._check_order(order, key)
        if on_error not in ("collect", "raise"):
            raise UsageError(f"on_error must be 'collect' or 'raise', not {on_error!r}")
        _positive_int("retries", retries, 0)
        if timeout is not None and not timeout > 0:
            raise UsageError(f"timeout must be > 0, not {timeout!r}")
        if not visibility_timeout > 0:
            raise UsageError(f"visibility_timeout must be > 0, not {visibility_timeout!r}")
        _positive_int("max_deliveries", max_deliveries)
        if name is not None and (not name or clean_name(name) != name):
            raise UsageError(f"pipeline name {name!r}: use only letters, digits, '_', '.', '-'")
        if self.backend_kind == "redis":
            from bingfa.pipeline._redis import require_redis

            require_redis()
        self._source = source
        self.ordered = bool(ordered)
        self._order: Order = order
        self._key = key
        self.on_error: OnError = on_error
        self._retries = retries
        self.timeout = timeout
        self.progress = progress
        self.name = name or f"p-{uuid.uuid4().hex[:12]}"
        self._visibility = float(visibility_timeout)
        self._max_deliveries = max_deliveries
        self._cleanup = (name is None) if cleanup is None else bool(cleanup)
        self._specs: list[StageSpec] = []

        self._lock = threading.Lock()
        self._gate = threading.Condition(self._lock)
        self._engine_lock = threading.Lock()
        self._state = "new"
        self._engine: Engine | None = None
        self._engine_closed = False
        self._pulled = 0
        self._handed = 0  # items finished: yielded, dropped, or failed
        self._emitted = 0
        self._dropped = 0
        self._errors: list[ItemError] = []
        self._source_error: ItemError | None = None
        self._source_done = False
        self._input_closed = False
        self._draining = False
        self._feeder_waiting = False
        self._cancelled = threading.Event()
        self._failure: BaseException | None = None
        self._ready: collections.deque[Any] = collections.deque()
        self._pending: dict[int, tuple[int, Any]] = {}
        self._next_seq = 0
        self._done_low = 0
        self._done_set: set[int] = set()
        self._started = 0.0
        self._ended: float | None = None
        self._final_counts: list[StageCounts] | None = None
        self._feeder: threading.Thread | None = None
        self._live: Any = None
        #: items the source produced after the run had ended (see :meth:`drain`)
        self.leftover: list[Any] = []

    @staticmethod
    def _check_order(order: str, key: Callable[[Any], Any] | None) -> None:
        if order not in ORDERS:
            raise UsageError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        if key is not None and not callable(key):
            raise UsageError("key must be callable")

    # --- building ------------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[[Any], Any] | Stage,
        *,
        workers: int = 1,
        model: str | None = None,
        queue_size: int | None = None,
        order: Order | None = None,
        key: Callable[[Any], Any] | None = None,
        retries: int | None = None,
        name: str | None = None,
    ) -> Pipeline:
        """Add a stage that passes on ``fn(item)`` for every item; returns the pipeline.

        Args:
            fn: a function of one item, or a :class:`~bingfa.pipeline.Stage` of kind ``map``.
            workers: this stage's concurrency: threads (memory), processes (process), or
                concurrent calls of the local Redis consumer; ``0`` (Redis only): run it only
                in ``bingfa worker`` processes.
            model: memory and Redis backends: run ``fn`` on a
                :class:`bingfa.executor.Executor` of this model (``thread``, ``process``,
                ``gevent``, ``asyncio`` — needed for ``async def`` —, ``hybrid``, ``dask``)
                with ``workers`` calls in flight. Default: plain threads.
            queue_size: bound of this stage's input queue (default: the pipeline's).
            order: order of this stage's input queue (default: the pipeline's).
            key: priority key for this stage's input queue (default: the pipeline's).
            retries: extra attempts when ``fn`` raises (default: the pipeline's).
            name: stage name (default: the function's name, made unique).

        Raises:
            UsageError: bad arguments, or the pipeline already started.
        """
        return self._add("map", fn, workers, model, queue_size, order, key, retries, name)

    def filter(
        self,
        fn: Callable[[Any], Any] | Stage,
        *,
        workers: int = 1,
        model: str | None = None,
        queue_size: int | None = None,
        order: Order | None = None,
        key: Callable[[Any], Any] | None = None,
        retries: int | None = None,
        name: str | None = None,
    ) -> Pipeline:
        """Add a stage that passes an item on only if ``fn(item)`` is truthy; returns the
        pipeline. Arguments as for :meth:`map`."""
        return self._add("filter", fn, workers, model, queue_size, order, key, retries, name)

    def _add(
        self,
        kind: Kind,
        fn: Callable[[Any], Any] | Stage,
        workers: int,
        model: str | None,
        queue_size: int | None,
        order: Order | None,
        key: Callable[[Any], Any] | None,
        retries: int | None,
        name: str | None,
    ) -> Pipeline:
        if self._state != "new":
            raise UsageError("stages must be added before the pipeline starts")
        assert kind in KINDS
        stage_name = name
        if isinstance(fn, Stage):
            if fn.kind != kind:
                raise UsageError(f"stage {fn.stage_name!r} is a {fn.kind} stage, not a {kind}")
            stage_name = stage_name or fn.name
            func = fn.fn
        elif callable(fn):
            func = fn
        else:
            raise UsageError(f"{kind}() needs a callable, not {type(fn).__name__}")
        minimum = 0 if self.backend_kind == "redis" else 1
        _positive_int("workers", workers, minimum)
        if model is not None and model not in MODELS:
            raise UsageError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        if inspect.iscoroutinefunction(func) and model not in ("asyncio", "hybrid"):
            raise UsageError(
                f"{getattr(func, '__name__', func)!r} is a coroutine function; "
                "run it with model='asyncio' or 'hybrid'"
            )
        qs = self._queue_size if queue_size is None else _positive_int("queue_size", queue_size)
        stage_order: Order = self._order if order is None else order
        stage_key = self._key if key is None else key
        self._check_order(stage_order, stage_key)
        tries = self._retries if retries is None else _positive_int("retries", retries, 0)
        taken = {s.name for s in self._specs}
        if stage_name is not None:
            if not stage_name or clean_name(stage_name) != stage_name:
                raise UsageError(
                    f"stage name {stage_name!r}: use only letters, digits, '_', '.', '-'"
                )
            if stage_name in taken:
                raise UsageError(f"two stages named {stage_name!r}")
        else:
            base = clean_name(getattr(func, "__name__", kind))
            if base == "lambda":
                base = f"{kind}{len(self._specs)}"
            stage_name, n = base, 2
            while stage_name in taken:
                stage_name, n = f"{base}-{n}", n + 1
        self._specs.append(
            StageSpec(stage_name, kind, func, workers, model, qs, stage_order, stage_key, tries)
        )
        return self

    # --- properties ----------------------------------------------------------------------------

    @property
    def stages(self) -> list[str]:
        """The stage names, in order."""
        return [s.name for s in self._specs]

    @property
    def capacity(self) -> int:
        """The backpressure bound: at most this many items taken from the source are ever
        unfinished (not yet yielded, dropped or failed) — the sum over stages of queue size
        plus workers, plus the output queue's size."""
        return sum(s.queue_size + s.workers for s in self._specs) + self._queue_size

    @property
    def errors(self) -> list[ItemError]:
        """Items that failed so far, as ``(stage, item, exception)`` (a copy)."""
        with self._lock:
            return list(self._errors)

    @property
    def state(self) -> str:
        """``new``, ``running``, ``draining``, ``done``, ``cancelled`` or ``failed``."""
        if self._state == "running" and self._draining:
            return "draining"
        return self._state

    # --- running -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        """Start the run and iterate over its results.

        Yields results as they complete (or in source order with ``ordered=True``); items that
        failed are in :attr:`errors` instead. Leaving the loop early (``break``, an exception)
        cancels the run.

        Raises:
            UsageError: the pipeline has no stage, or it already ran.
            ItemFailed: ``on_error="raise"`` and an item failed.
            Timeout: no outcome within ``timeout`` seconds.
            bingfa.executor.WorkerDied: a ``process``-backend worker died.
            UsageError: a ``process``-backend stage could not be loaded in its worker.
            bingfa.errors.NetworkError: Redis could not be reached, or the connection failed.
            bingfa.errors.RemoteError: Redis refused a command.
        """
        self._start()
        return self._results()

    def _start(self) -> None:
        with self._lock:
            if self._state != "new":
                if self._state == "cancelled" and self._engine is None:
                    return  # cancelled before it started: iteration yields nothing
                raise UsageError("a pipeline runs once; build a new one to run again")
            if not self._specs:
                raise UsageError("the pipeline has no stage: add one with .map() or .filter()")
            self._state = "running"
            self._started = time.monotonic()
        engine = self._make_engine()
        try:
            engine.start()
        except BaseException:
            with self._lock:
                self._state = "failed"
                self._ended = time.monotonic()
            raise
        self._engine = engine
        self._feeder = threading.Thread(
            target=self._feed, name=f"bingfa-pipeline-feeder-{self.name}", daemon=True
        )
        self._feeder.start()
        if self.progress:
            from bingfa.pipeline._live import make_live

            try:
                self._live = make_live(self)
            except Exception as exc:  # a display problem must never break the run
                log.warning("pipeline %s: no live display: %r", self.name, exc)

    def _make_engine(self) -> Engine:
        specs = self._specs
        if self.backend_kind == "memory":
            from bingfa.pipeline._memory import MemoryEngine

            return MemoryEngine(specs, self._queue_size)
        if self.backend_kind == "process":
            from bingfa.pipeline._process import ProcessEngine

            return ProcessEngine(specs, self._queue_size)
        from bingfa.pipeline._redis import RedisEngine

        return RedisEngine(
            specs,
            self.backend,
            self.name,
            cleanup=self._cleanup,
            visibility_timeout=self._visibility,
            max_deliveries=self._max_deliveries,
        )

    # --- the feeder thread ---------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._draining or self._input_closed or self._cancelled.is_set()

    def _wait_room(self, cap: int) -> bool:
        """Block while the pipeline is full; ``False`` once no more items should be taken.

        Lock-free when there is room: only this thread changes ``_pulled`` and ``_handed`` only
        grows, so a stale read can only under-estimate the room."""
        if self._pulled - self._handed < cap and not self._stopping():
            return True
        with self._gate:
            if self._pulled - self._handed >= cap:
                low = max(1, cap // 8)  # refill in chunks, not one item per wake-up
                self._feeder_waiting = True
                while not self._stopping() and cap - (self._pulled - self._handed) < low:
                    self._gate.wait(0.1)
                self._feeder_waiting = False
            return not self._stopping()

    def _feed(self) -> None:
        engine = self._engine
        assert engine is not None
        it: Iterator[Any] | None = None
        exhausted = False
        try:
            try:
                it = iter(self._source)
            except BaseException as exc:
                self._source_failed(exc)
                return
            seq = 0
            cap = self.capacity
            while self._wait_room(cap):
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                except BaseException as exc:
                    self._source_failed(exc)
                    break
                with self._lock:
                    if self._input_closed or self._cancelled.is_set():
                        self.leftover.append(item)
                        break
                    self._pulled += 1
                try:
                    while not engine.put(seq, item, 0.1):
                        if self._cancelled.is_set() or self._failure is not None:
                            return
                except Exception as exc:  # the engine broke (or was closed by a cancel)
                    if not self._cancelled.is_set() and self._failure is None:
                        self._failure = exc
                    return
                seq += 1
        finally:
            with self._lock:
                self._source_done = True
            if it is not None and not exhausted:
                close = getattr(it, "close", None)
                if callable(close):
                    with contextlib.suppress(Exception):
                        close()

    def _source_failed(self, exc: BaseException) -> None:
        err = ItemError("source", None, exc)
        with self._lock:
            self._errors.append(err)
            self._source_error = err
        log.warning("pipeline %s: the source raised %r; no more items are taken", self.name, exc)

    # --- the iterating thread ------------------------------------------------------------------

    def _release(self, n: int) -> None:
        # Only the iterating thread writes _handed. The feeder sets _feeder_waiting under the
        # lock *before* re-checking the room, so either it sees this increment, or we see the
        # flag and wake it (taking the lock waits until it is inside wait()).
        self._handed += n
        if self._feeder_waiting:
            with self._gate:
                self._gate.notify()

    def _results(self) -> Iterator[Any]:
        normal = False
        try:
            ready = self._ready
            cancelled = self._cancelled
            while True:
                while ready and not cancelled.is_set():
                    value = ready.popleft()
                    self._emitted += 1
                    self._release(1)
                    yield value
                if self._at_end():
                    normal = not self._cancelled.is_set()
                    return
                self._pump()
        except BingfaError as exc:
            if self._failure is None:
                self._failure = exc
            raise
        finally:
            self._end(normal)

    def _at_end(self) -> bool:
        if self._cancelled.is_set():
            return True
        err = self._source_error
        if err is not None and self.on_error == "raise":
            raise ItemFailed(err) from err.exception
        with self._lock:
            if (
                (self._source_done or self._draining)
                and self._handed == self._pulled
                and not self._ready
            ):
                self._input_closed = True
                return True
        return False

    def _pump(self) -> None:
        err = self._source_error
        if err is not None and self.on_error == "raise":
            raise ItemFailed(err) from err.exception
        failure = self._failure
        if failure is not None and not self._cancelled.is_set():
            raise failure
        engine = self._engine
        assert engine is not None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            with self._engine_lock:
                if self._engine_closed:
                    return
                try:
                    outcomes = engine.get(_POLL)
                except BingfaError as exc:
                    self._failure = exc
                    raise
            if outcomes:
                break
            if self._cancelled.is_set() or self._failure is not None or self._at_end_quick():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"no outcome from the pipeline within {self.timeout:g}s", self.timeout
                )
        for seq, kind, value in outcomes:
            if self._seen(seq):
                continue
            if kind == ERR and self.on_error == "raise":
                with self._lock:
                    self._errors.append(value)
                raise ItemFailed(value) from value.exception
            if self.ordered:
                self._pending[seq] = (kind, value)
                while self._next_seq in self._pending:
                    k, v = self._pending.pop(self._next_seq)
                    self._next_seq += 1
                    self._deliver(k, v)
            else:
                self._deliver(kind, value)

    def _at_end_quick(self) -> bool:
        """True when ``_at_end`` may have become true (or a source error needs raising)."""
        if self._source_error is not None and self.on_error == "raise":
            return True
        return (self._source_done or self._draining) and self._handed == self._pulled

    def _seen(self, seq: int) -> bool:
        """Whether ``seq`` was already reported (Redis redelivers); marks it seen."""
        if seq < self._done_low or seq in self._done_set:
            return True
        self._done_set.add(seq)
        while self._done_low in self._done_set:
            self._done_set.remove(self._done_low)
            self._done_low += 1
        return False

    def _deliver(self, kind: int, value: Any) -> None:
        if kind == OK:
            self._ready.append(value)
        elif kind == SKIP:
            self._dropped += 1
            self._release(1)
        else:
            with self._lock:
                self._errors.append(value)
            self._release(1)

    # --- stopping ------------------------------------------------------------------------------

    def drain(self) -> None:
        """Graceful stop: take no more items from the source, finish those in flight.

        Iteration then yields the remaining results and ends. Thread-safe; returns at once.
        If the source is in the middle of producing an item (a blocking ``next()``), that
        item is not processed: it is appended to :attr:`leftover` when it arrives.
        """
        with self._gate:
            self._draining = True
            self._gate.notify_all()

    def cancel(self) -> None:
        """Stop now: drop queued items, stop workers, end iteration. Thread-safe; returns
        within about a second (items already inside a stage function are abandoned: a thread
        cannot be interrupted; worker processes are killed). Idempotent."""
        self._cancelled.set()
        with self._gate:
            self._gate.notify_all()
            if self._state == "new":
                self._state = "cancelled"
                self._ended = time.monotonic()
        engine = self._engine
        if engine is not None:
            engine.cancel()
            self._close_engine(finish=False)

    def close(self) -> None:
        """Release everything: :meth:`cancel` if the run has not finished. Idempotent."""
        if self._state in ("running", "new"):
            self.cancel()

    def _close_engine(self, finish: bool) -> None:
        engine = self._engine
        if engine is None:
            return
        with self._engine_lock:
            if self._engine_closed:
                return
            self._engine_closed = True
            with contextlib.suppress(Exception):
                self._final_counts = engine.stage_counts()
            if finish:
                engine.finish()
            else:
                engine.close()

    def _end(self, normal: bool) -> None:
        if not normal:
            self._cancelled.set()
            with self._gate:
                self._gate.notify_all()
        engine = self._engine
        if engine is not None:
            if not normal:
                engine.cancel()
            self._close_engine(finish=normal)
        with self._lock:
            if self._state == "running":
                if normal:
                    self._state = "done"
                elif self._failure is not None:
                    self._state = "failed"
                else:
                    self._state = "cancelled"
            if self._ended is None:
                self._ended = time.monotonic()
        feeder = self._feeder
        if feeder is not None and feeder is not threading.current_thread():
            # A feeder blocked inside the source's next() (drained or cancelled) is left to
            # finish on its own: it is a daemon thread and feeds nothing any more.
            feeder.join(timeout=1.0 if normal and not self._draining else 0.1)
        live = self._live
        if live is not None:
            self._live = None
            live.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- statistics ----------------------------------------------------------------------------

    def stats(self) -> PipelineStats:
        """A snapshot of the run: totals and one :class:`~bingfa.pipeline.StageStats` per stage.
        Thread-safe (Redis: a few round trips to the server)."""
        engine = self._engine
        counts: list[StageCounts] | None = self._final_counts
        if counts is None and engine is not None and not self._engine_closed:
            try:
                counts = engine.stage_counts()
            except Exception:
                counts = None
        if counts is None:
            counts = [StageCounts(0, 0, 0, 0, 0) for _ in self._specs]
        now = time.monotonic()
        end = self._ended if self._ended is not None else now
        elapsed = max(0.0, end - self._started) if self._started else 0.0
        stages = tuple(
            StageStats(
                s.name,
                s.kind,
                s.workers,
                c.items_in,
                c.items_out,
                c.dropped,
                c.errors,
                c.queue_depth,
                s.queue_size,
                c.items_out / elapsed if elapsed > 0 else 0.0,
            )
            for s, c in zip(self._specs, counts, strict=True)
        )
        with self._lock:
            pulled, handed, n_errors = self._pulled, self._handed, len(self._errors)
        return PipelineStats(
            self.state,
            self.backend_kind,
            elapsed,
            pulled,
            self._emitted,
            self._dropped,
            n_errors,
            pulled - handed,
            self.capacity,
            stages,
        )

    def __repr__(self) -> str:
        return (
            f"<bingfa.pipeline.Pipeline {self.name} backend={self.backend_kind} "
            f"stages={self.stages} {self.state}>"
        )
