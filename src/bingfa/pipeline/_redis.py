"""The Redis Streams backend: stages as consumer groups, so consumers can live on other machines.

Keys of pipeline ``P`` (the braces are a Redis Cluster hash tag: one pipeline, one slot)::

    bingfa:{P}:stages            hash   stage name -> JSON layout (input, output, kind, retries...)
    bingfa:{P}:s:<stage>         stream the input of <stage>; consumer group "bingfa"
    bingfa:{P}:s:<stage>:dead    stream dead letters of <stage>
    bingfa:{P}:run:<run>         string a run's liveness key (TTL refreshed by its pipeline)
    bingfa:{P}:reply:<run>       stream outcomes of a run, read by its pipeline
    bingfa:{P}:counts:<run>      hash   per-stage counters of a run

An input entry is ``{"d": pickle((run, seq, attempts, item))}``. A consumer reads entries with
``XREADGROUP`` (up to ``batch`` at a time), runs the stage function on each, then in one
``MULTI``/``EXEC`` transaction writes every outcome and ``XACK``s the batch:

* a ``map`` result (or an item a ``filter`` keeps) goes to the next stage's stream, or — from
  the last stage — to the run's reply stream;
* a filtered-out item is reported straight to the reply stream as a drop;
* a function that raised gets the item re-added to the same stream with ``attempts + 1`` while
  ``attempts < retries``; after that the item goes to the dead-letter stream and the error (with
  its traceback) to the reply stream.

Acknowledgement comes after processing, in the same transaction as the output, so a consumer
that dies mid-batch leaves its entries pending: after ``visibility_timeout`` seconds without a
heartbeat another consumer takes them over with ``XAUTOCLAIM`` and runs them again. While a
consumer works on a batch it re-claims the batch's entries every ``visibility_timeout / 3``
seconds (``XCLAIM ... JUSTID``, which resets their idle time), so only a *dead* (or cut-off)
consumer loses its entries, however slow the function is. An entry delivered more than
``max_deliveries`` times without ever being acknowledged (a poison item that kills every
consumer that touches it) is dead-lettered with :class:`~bingfa.pipeline.ConsumerLost` instead
of being run again. (``retries`` counts exceptions; ``max_deliveries`` counts crashes.)

Delivery is therefore at least once: an item is redelivered if its consumer dies after running
the function but before the transaction, or if it was cut off longer than the visibility
timeout. The pipeline drops duplicate outcomes by sequence number; side effects of stage
functions must be idempotent.

Consumers process only entries of live runs: a cancelled run deletes its liveness key, so
workers acknowledge and skip the rest of its items; a pipeline that crashed stops refreshing
it and its leftovers are skipped after ``RUN_TTL`` seconds.

Items and results are pickled: anyone who can write to these streams can run code in the
consumers. Use Redis ACLs/TLS (``rediss://``) on untrusted networks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from bingfa.errors import BingfaError, NetworkError, RemoteError, UsageError
from bingfa.executor import Executor
from bingfa.pipeline._engine import StageCounts
from bingfa.pipeline._types import (
    ERR,
    OK,
    SKIP,
    ConsumerLost,
    ItemError,
    Outcome,
    StageSpec,
    portable_exception,
)

__all__ = [
    "DEFAULT_GROUP",
    "RUN_TTL",
    "Keys",
    "RedisConsumer",
    "RedisEngine",
    "StageLayout",
    "connect",
    "read_layout",
    "redact",
    "require_redis",
]

log = logging.getLogger("bingfa.pipeline")

DEFAULT_GROUP: Final = "bingfa"
#: seconds a run's liveness key lives without a heartbeat from its pipeline
RUN_TTL: Final = 120
_HEARTBEAT: Final = 5.0
_TICK: Final = 0.1
_BLOCK_MS: Final = 200
_TRIM_EVERY: Final = 1.0


def require_redis() -> Any:
    """The ``redis`` module.

    Raises:
        UsageError: redis-py is not installed.
    """
    try:
        import redis
    except ImportError as exc:
        raise UsageError(
            "the Redis backend needs redis-py: pip install 'bingfa[redis]' (or 'redis>=5')"
        ) from exc
    return redis


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"


def connect(url: str) -> Any:
    """A ``redis.Redis`` client for ``url`` (``redis://``, ``rediss://`` or ``unix://``), checked
    with a PING. The caller owns it (``close()``).

    Raises:
        UsageError: redis-py missing, or a malformed URL.
        NetworkError: the server does not answer.
    """
    redis = require_redis()
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=5.0, socket_timeout=30.0, health_check_interval=15
        )
    except ValueError as exc:
        raise UsageError(f"bad Redis URL {redact(url)!r}: {exc}") from exc
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise NetworkError(f"cannot reach Redis at {redact(url)}: {exc}") from exc
    return client


def _redis_errors() -> tuple[type[BaseException], ...]:
    redis = require_redis()
    return (redis.RedisError, OSError)


def as_bingfa_error(exc: BaseException, url: str) -> BingfaError:
    """``exc`` (a redis-py or OS error) as a bingfa error, chained: an error reply of the
    server is a :class:`~bingfa.errors.RemoteError`, anything else a
    :class:`~bingfa.errors.NetworkError`."""
    if isinstance(exc, BingfaError):
        return exc
    redis = require_redis()
    err: BingfaError
    if isinstance(exc, redis.ResponseError):
        err = RemoteError(f"Redis at {redact(url)} refused a command: {exc}")
    else:
        err = NetworkError(f"Redis at {redact(url)} failed: {exc!r}")
    err.__cause__ = exc
    return err


def _dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        blob: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return blob


def _sid(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class Keys:
    """Key names of one pipeline (see the module docstring)."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.base = f"bingfa:{{{pipeline}}}"
        self.stages = f"{self.base}:stages"

    def stream(self, stage: str) -> str:
        return f"{self.base}:s:{stage}"

    def dead(self, stage: str) -> str:
        return f"{self.base}:s:{stage}:dead"

    def run(self, run: str) -> str:
        return f"{self.base}:run:{run}"

    def reply(self, run: str) -> str:
        return f"{self.base}:reply:{run}"

    def counts(self, run: str) -> str:
        return f"{self.base}:counts:{run}"


@dataclass(frozen=True, slots=True)
class StageLayout:
    """Where a stage reads and writes, as its pipeline declared it in ``bingfa:{P}:stages``.

    Attributes:
        name: stage name.
        index: position in the pipeline (0 first).
        kind: ``map`` or ``filter``.
        input: the stream it consumes.
        output: the next stage's stream, or ``None`` for the last stage (its results go to the
            reply stream of the item's run).
        group: the consumer group on ``input``.
        retries: extra attempts per item before dead-lettering.
        visibility_timeout: seconds a delivered entry may go without a heartbeat before
            another consumer takes it over.
        dead: the dead-letter stream.
        max_deliveries: deliveries without acknowledgement (its consumers died) after which an
            entry is dead-lettered as :class:`~bingfa.pipeline.ConsumerLost` (poison pills).
    """

    name: str
    index: int
    kind: str
    input: str
    output: str | None
    group: str
    retries: int
    visibility_timeout: float
    dead: str
    max_deliveries: int = 5

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "kind": self.kind,
                "input": self.input,
                "output": self.output,
                "group": self.group,
                "retries": self.retries,
                "visibility_timeout": self.visibility_timeout,
                "dead": self.dead,
                "max_deliveries": self.max_deliveries,
            }
        )

    @classmethod
    def from_json(cls, name: str, text: str | bytes) -> StageLayout:
        d = json.loads(text)
        return cls(
            name,
            int(d["index"]),
            str(d["kind"]),
            str(d["input"]),
            None if d["output"] is None else str(d["output"]),
            str(d["group"]),
            int(d["retries"]),
            float(d["visibility_timeout"]),
            str(d["dead"]),
            int(d.get("max_deliveries", 5)),
        )


def read_layout(client: Any, pipeline: str, stage: str) -> StageLayout | None:
    """The declared layout of ``stage`` in ``pipeline``, or ``None`` if not declared (yet)."""
    raw = client.hget(Keys(pipeline).stages, stage)
    return None if raw is None else StageLayout.from_json(stage, raw)


def _create_group(client: Any, stream: str, group: str, start: str = "0") -> None:
    redis = require_redis()
    try:
        client.xgroup_create(stream, group, start, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _trim_acknowledged(client: Any, stream: str) -> None:
    """Delete entries of ``stream`` that every consumer group has acknowledged.

    The group's last-delivered id is read *before* its pending list: an entry at or below it
    that is not pending then was acknowledged (pending entries stay pending until acked).
    """
    groups = client.xinfo_groups(stream)
    minid: tuple[int, int] | None = None
    for g in groups:
        ms, seq = _sid(g["last-delivered-id"])
        cand = (ms, seq + 1)
        if int(g["pending"]) > 0:
            summary = client.xpending(stream, g["name"])
            if summary and summary.get("min") is not None:
                cand = min(cand, _sid(summary["min"]))
        minid = cand if minid is None else min(minid, cand)
    if minid is not None and minid > (0, 1):
        client.xtrim(stream, minid=f"{minid[0]}-{minid[1]}", approximate=True)


# --- the consumer (local stages and ``bingfa worker``) -----------------------------------------


@dataclass(slots=True)
class _Work:
    eid: bytes
    run: str
    seq: int
    attempts: int
    item: Any
    delivered: int = 1


class RedisConsumer:
    """Consume one stage of a Redis-backed pipeline: read, run, forward, acknowledge.

    See the module docstring for the protocol. :meth:`run` loops until ``stop`` is set (or
    ``max_items`` items were handled); every Redis wait in it is bounded (``XREADGROUP BLOCK``
    of 200 ms, socket timeouts), so setting ``stop`` ends it within about a batch's processing
    time. A batch in progress is always finished and acknowledged first.

    Args:
        client: a ``redis.Redis`` client; shared, not closed by the consumer.
        pipeline: the pipeline name.
        stage: the stage name to consume.
        fn: the stage function, ``fn(item)``.
        kind: ``map``/``filter``, to check against the declared layout (``None``: take it).
        group: consumer group (default: the declared one). Another group is a separate
            subscription that gets its own copy of every new entry.
        consumer: consumer name (default ``host-pid-stage-random``); unique per process.
        concurrency: items run at once; above 1 (or with ``model``) they run on a
            :class:`bingfa.executor.Executor` owned by the consumer.
        model: executor model for ``fn`` (default: call it in the consumer's thread).
        batch: most entries read at once (adapted down to about 0.1 s of work per batch).
        stop: set it to stop.
        layout: the stage layout if the caller has it; otherwise it is read from Redis, waiting
            (polling every 0.5 s, until ``stop``) for a pipeline to declare the stage.
        max_items: return after handling at least this many entries.
        on_batch: called with the number of entries after every committed batch (tests,
            progress); runs in the consumer's thread.
    """

    def __init__(
        self,
        client: Any,
        pipeline: str,
        stage: str,
        fn: Callable[[Any], Any],
        *,
        kind: str | None = None,
        group: str | None = None,
        consumer: str | None = None,
        concurrency: int = 1,
        model: str | None = None,
        batch: int = 200,
        stop: threading.Event | None = None,
        layout: StageLayout | None = None,
        max_items: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, not {concurrency}")
        if batch < 1:
            raise UsageError(f"batch must be >= 1, not {batch}")
        self.client = client
        self.keys = Keys(pipeline)
        self.stage = stage
        self.fn = fn
        self.kind = kind
        self.group_override = group
        self.consumer = consumer or (
            f"{socket.gethostname()}-{os.getpid()}-{stage}-{uuid.uuid4().hex[:6]}"
        )
        self.concurrency = concurrency
        self.model = model
        self.batch = batch
        self.stop = stop or threading.Event()
        self.layout = layout
        self.max_items = max_items
        self.on_batch = on_batch
        self.handled = 0
        self._executor: Executor | None = None
        self._alive: dict[str, tuple[bool, float]] = {}
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._item_time = 0.0
        self._inflight: list[bytes] = []
        self._inflight_lock = threading.Lock()
        self._where = f"stage {stage!r}, consumer {self.consumer}"

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until stopped; returns the number of entries handled.

        Raises:
            UsageError: the declared stage kind differs from ``kind``.
        """
        errors = _redis_errors()
        redis = require_redis()
        layout = self._await_layout()
        if layout is None:
            return self.handled
        if self.kind is not None and self.kind != layout.kind:
            raise UsageError(
                f"stage {self.stage!r} is declared as a {layout.kind} stage, "
                f"but the function given is a {self.kind} stage"
            )
        group = self.group_override or layout.group
        if self.group_override:
            _create_group(self.client, layout.input, group, "$")
        if self.concurrency > 1 or self.model not in (None, "thread"):
            self._executor = Executor(
                self.model or "thread",  # type: ignore[arg-type]
                workers=self.concurrency,
            )
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(layout, group, beat_stop),
            name=f"bingfa-heartbeat-{self.stage}",
            daemon=True,
        )
        beat.start()
        backoff = 0.5
        try:
            while not self.stop.is_set():
                if self.max_items is not None and self.handled >= self.max_items:
                    break
                try:
                    self._step(layout, group)
                    backoff = 0.5
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("%s: stream or group gone (%s); waiting", self._where, exc)
                    self.stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
                except errors as exc:
                    log.warning("%s: Redis error %s; retrying in %.1fs", self._where, exc, backoff)
                    self.stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
        finally:
            beat_stop.set()
            beat.join(timeout=2.0)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(*errors):
                self._forget_self(layout, group)
        return self.handled

    def _await_layout(self) -> StageLayout | None:
        if self.layout is not None:
            return self.layout
        said = False
        errors = _redis_errors()
        while not self.stop.is_set():
            try:
                layout = read_layout(self.client, self.keys.pipeline, self.stage)
            except errors as exc:
                log.warning("%s: Redis error %s; retrying", self._where, exc)
                self.stop.wait(1.0)
                continue
            if layout is not None:
                self.layout = layout
                return layout
            if not said:
                log.info(
                    "waiting for pipeline %r to declare stage %r", self.keys.pipeline, self.stage
                )
                said = True
            self.stop.wait(0.5)
        return None

    def _forget_self(self, layout: StageLayout, group: str) -> None:
        """Leave the group if we hold nothing (a consumer with pending entries must stay, or
        those entries could never be claimed)."""
        mine = self.client.xpending_range(
            layout.input, group, "-", "+", 1, consumername=self.consumer
        )
        if not mine:
            self.client.xgroup_delconsumer(layout.input, group, self.consumer)

    def _count(self) -> int:
        if self._item_time <= 0:
            return min(self.batch, self.concurrency)
        per_batch = int(self.concurrency * 0.1 / self._item_time)
        return max(self.concurrency, min(self.batch, per_batch))

    def _step(self, layout: StageLayout, group: str) -> None:
        client = self.client
        now = time.monotonic()
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        deliveries: dict[bytes, int] = {}
        if now >= self._next_claim:
            self._next_claim = now + max(0.2, layout.visibility_timeout / 2)
            entries, deliveries = self._claim(layout, group)
        if not entries:
            resp = client.xreadgroup(
                group, self.consumer, {layout.input: ">"}, count=self._count(), block=_BLOCK_MS
            )
            if resp:
                entries = [(eid, fields) for eid, fields in resp[0][1] if fields is not None]
        if entries:
            started = time.monotonic()
            self._handle(layout, group, entries, deliveries)
            took = time.monotonic() - started
            per_item = took / len(entries)
            self._item_time = (
                per_item if self._item_time <= 0 else 0.7 * self._item_time + 0.3 * per_item
            )
            self.handled += len(entries)
            if self.on_batch is not None:
                self.on_batch(len(entries))
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + _TRIM_EVERY
            _trim_acknowledged(client, layout.input)

    def _claim(
        self, layout: StageLayout, group: str
    ) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], dict[bytes, int]]:
        """Take over entries idle longer than the visibility timeout (their consumer died)."""
        res = self.client.xautoclaim(
            layout.input,
            group,
            self.consumer,
            min_idle_time=int(layout.visibility_timeout * 1000),
            start_id=self._claim_cursor,
            count=self.batch,
        )
        self._claim_cursor = _text(res[0])
        if self._claim_cursor != "0-0":
            self._next_claim = 0.0  # a backlog of orphaned entries: go on claiming at once
        entries = [(eid, fields) for eid, fields in res[1] if fields is not None]
        if not entries:
            return [], {}
        ids = {eid for eid, _ in entries}
        info = self.client.xpending_range(
            layout.input,
            group,
            min(ids, key=_sid),
            max(ids, key=_sid),
            len(ids) * 2 + 10,
            consumername=self.consumer,
        )
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in info}
        log.info("%s: took over %d entries from dead consumers", self._where, len(entries))
        return entries, deliveries

    def _run_alive(self, runs: Iterable[str]) -> dict[str, bool]:
        now = time.monotonic()
        out: dict[str, bool] = {}
        unknown = []
        for run in runs:
            cached = self._alive.get(run)
            if cached is not None and cached[1] > now:
                out[run] = cached[0]
            else:
                unknown.append(run)
        if unknown:
            pipe = self.client.pipeline(transaction=False)
            for run in unknown:
                pipe.exists(self.keys.run(run))
            for run, n in zip(unknown, pipe.execute(), strict=True):
                out[run] = bool(n)
                self._alive[run] = (bool(n), now + 1.0)
            if len(self._alive) > 1000:
                self._alive = {k: v for k, v in self._alive.items() if v[1] > now}
        return out

    def _call_all(self, items: list[Any]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        ex = self._executor
        if ex is None:
            for item in items:
                try:
                    results.append((True, self.fn(item)))
                except Exception as exc:
                    results.append((False, exc))
            return results
        futures = [ex.submit(self.fn, item) for item in items]
        for f in futures:
            try:
                results.append((True, f.result()))
            except Exception as exc:
                results.append((False, exc))
        return results

    def _handle(
        self,
        layout: StageLayout,
        group: str,
        entries: list[tuple[bytes, dict[bytes, bytes]]],
        deliveries: dict[bytes, int],
    ) -> None:
        keys = self.keys
        name = layout.name
        work: list[_Work] = []
        dead: list[tuple[bytes, bytes, str, BaseException, int]] = []  # eid, blob, run, exc, n
        lost: list[tuple[_Work, BaseException]] = []
        decoded: list[tuple[bytes, bytes, tuple[Any, ...]]] = []
        for eid, fields in entries:
            blob = fields.get(b"d", b"")
            try:
                env = pickle.loads(blob)
                run, seq, attempts, item = env
                decoded.append((eid, blob, (str(run), int(seq), int(attempts), item)))
            except Exception as exc:
                dead.append((eid, blob, "", exc, 0))
        alive = self._run_alive({d[2][0] for d in decoded})
        stale = 0
        for eid, _blob, (run, seq, attempts, item) in decoded:
            if not alive[run]:
                stale += 1
                continue
            delivered = deliveries.get(eid, 1)
            w = _Work(eid, run, seq, attempts, item, delivered)
            if delivered > layout.max_deliveries:
                gone = ConsumerLost(
                    f"item #{seq} was delivered {delivered} times to consumers that never "
                    f"acknowledged it (they died, or were cut off longer than "
                    f"{layout.visibility_timeout:g}s); max_deliveries={layout.max_deliveries}"
                )
                lost.append((w, gone))
            else:
                work.append(w)
        with self._inflight_lock:
            self._inflight = [w.eid for w in work]
        started = time.monotonic()
        try:
            results = self._call_all([w.item for w in work])
        finally:
            with self._inflight_lock:
                self._inflight = []
        if work and (self.stop.is_set() or time.monotonic() - started > 0.5):
            # A slow batch: a run may have been cancelled meanwhile; its outcomes are not
            # wanted (and would recreate its deleted reply stream).
            for run in {w.run for w in work}:
                self._alive.pop(run, None)
            alive = self._run_alive({w.run for w in work})
            kept = [(w, r) for w, r in zip(work, results, strict=True) if alive[w.run]]
            stale += len(work) - len(kept)
            work = [w for w, _ in kept]
            results = [r for _, r in kept]

        pipe = self.client.pipeline(transaction=True)
        counts: dict[str, dict[str, int]] = {}
        replied: set[str] = set()

        def count(run: str, field: str, n: int = 1) -> None:
            per = counts.setdefault(run, {})
            per[field] = per.get(field, 0) + n

        def reply(w: _Work, kind: int, payload: Any) -> None:
            pipe.xadd(keys.reply(w.run), {"r": _dumps((w.seq, kind, payload))})
            replied.add(w.run)

        def fail(w: _Work, exc: BaseException, blob: bytes | None = None) -> None:
            portable = portable_exception(exc, self._where)
            tb = portable.tb
            pipe.xadd(
                layout.dead,
                {
                    "d": blob if blob is not None else _dumps((w.run, w.seq, w.attempts, w.item)),
                    "stage": name,
                    "error": repr(exc)[:2000],
                    "traceback": tb[-20000:],
                    "attempts": str(w.attempts),
                    "consumer": self.consumer,
                    "entry": w.eid,
                },
            )
            count(w.run, "errors")
            pipe.xadd(keys.reply(w.run), {"r": _dumps((w.seq, ERR, (name, w.item, portable)))})
            replied.add(w.run)

        for w, (ok, value) in zip(work, results, strict=True):
            if w.attempts == 0 and w.delivered == 1:
                count(w.run, "in")
            if ok:
                if layout.kind == "filter":
                    if not value:
                        count(w.run, "dropped")
                        reply(w, SKIP, None)
                        continue
                    value = w.item
                try:
                    if layout.output is None:
                        data = _dumps((w.seq, OK, value))
                    else:
                        data = _dumps((w.run, w.seq, 0, value))
                except Exception as exc:
                    ok, value = False, exc
                else:
                    count(w.run, "out")
                    if layout.output is None:
                        pipe.xadd(keys.reply(w.run), {"r": data})
                        replied.add(w.run)
                    else:
                        pipe.xadd(layout.output, {"d": data})
                    continue
            if w.attempts < layout.retries:
                count(w.run, "retried")
                pipe.xadd(layout.input, {"d": _dumps((w.run, w.seq, w.attempts + 1, w.item))})
            else:
                w.attempts += 1
                fail(w, value)
        for w, why in lost:
            w.attempts += 1
            fail(w, why)
        for eid, blob, _run, bad, _n in dead:
            pipe.xadd(
                layout.dead,
                {
                    "d": blob,
                    "stage": name,
                    "error": f"undecodable entry: {bad!r}"[:2000],
                    "consumer": self.consumer,
                    "entry": eid,
                },
            )
        pipe.xack(layout.input, group, *[eid for eid, _ in entries])
        for run, per in counts.items():
            ckey = keys.counts(run)
            for field, n in per.items():
                pipe.hincrby(ckey, f"{name}:{field}", n)
            pipe.expire(ckey, RUN_TTL)
        for run in replied:
            pipe.expire(keys.reply(run), RUN_TTL)
        pipe.execute()
        if stale:
            log.debug("%s: skipped %d entries of finished or cancelled runs", self._where, stale)

    def _heartbeat(self, layout: StageLayout, group: str, stop: threading.Event) -> None:
        """Re-claim the entries being worked on, so only dead consumers lose theirs."""
        period = max(0.1, layout.visibility_timeout / 3)
        errors = _redis_errors()
        while not stop.wait(period):
            with self._inflight_lock:
                ids = list(self._inflight)
            if not ids:
                continue
            with contextlib.suppress(*errors):
                self.client.xclaim(layout.input, group, self.consumer, 0, ids, justid=True)


# --- the engine (the pipeline's side) -----------------------------------------------------------


class RedisEngine:
    """Redis streams between stages; see the module docstring.

    The pipeline process feeds the first stream (a writer thread batches ``XADD``s), reads its
    run's reply stream, and runs local consumers for stages with ``workers > 0``; stages with
    ``workers == 0`` are left to ``bingfa worker`` processes. Owns its client, threads and
    run keys; with ``cleanup`` it also deletes the pipeline's streams at the end.
    """

    name = "redis"

    def __init__(
        self,
        stages: list[StageSpec],
        url: str,
        pipeline: str,
        *,
        cleanup: bool,
        group: str = DEFAULT_GROUP,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        batch: int = 200,
    ) -> None:
        require_redis()
        for s in stages:
            if s.order != "fifo":
                raise UsageError(
                    f"stage {s.name!r}: Redis streams are FIFO logs; order={s.order!r} needs the "
                    "memory or process backend"
                )
            if s.workers < 0:
                raise UsageError(f"stage {s.name!r}: workers must be >= 0")
        self._stages = stages
        self._url = url
        self._cleanup = cleanup
        self._batch = batch
        self.keys = Keys(pipeline)
        self.run_id = uuid.uuid4().hex[:16]
        self.layouts = [
            StageLayout(
                s.name,
                i,
                s.kind,
                self.keys.stream(s.name),
                self.keys.stream(stages[i + 1].name) if i + 1 < len(stages) else None,
                group,
                s.retries,
                visibility_timeout,
                self.keys.dead(s.name),
                max_deliveries,
            )
            for i, s in enumerate(stages)
        ]
        self._client: Any = None
        self._buffer: queue.Queue[bytes] = queue.Queue(max(2 * batch, 64))
        self._local: list[Outcome] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._consumer_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._consumers: list[RedisConsumer] = []
        self._failure: BingfaError | None = None
        self._last_reply = "0-0"
        self._next_trim = 0.0
        self._ended = False
        self._cancelled = False

    # --- start -----------------------------------------------------------------------------

    def start(self) -> None:
        self._client = connect(self._url)
        client = self._client
        try:
            for lay in self.layouts:
                _create_group(client, lay.input, lay.group)
            pipe = client.pipeline(transaction=False)
            pipe.hset(self.keys.stages, mapping={lay.name: lay.to_json() for lay in self.layouts})
            pipe.set(self.keys.run(self.run_id), "1", ex=RUN_TTL)
            pipe.execute()
            self._spawn(self._write_loop, "bingfa-redis-writer")
            self._spawn(self._heartbeat, "bingfa-redis-heartbeat")
            for spec, lay in zip(self._stages, self.layouts, strict=True):
                if spec.workers == 0:
                    continue
                consumer = RedisConsumer(
                    client,
                    self.keys.pipeline,
                    spec.name,
                    spec.fn,
                    kind=spec.kind,
                    concurrency=spec.workers,
                    model=spec.model,
                    batch=self._batch,
                    stop=self._consumer_stop,
                    layout=lay,
                )
                self._consumers.append(consumer)
                self._spawn(self._consume, f"bingfa-redis-{spec.name}", consumer)
        except BaseException:
            self.close()
            raise

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = as_bingfa_error(exc, self._url)

    def _consume(self, consumer: RedisConsumer) -> None:
        try:
            consumer.run()
        except BaseException as exc:
            self._fail(exc)

    def _write_loop(self) -> None:
        stream = self.layouts[0].input
        client = self._client
        while True:
            try:
                first = self._buffer.get(timeout=_TICK)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 500:
                    batch.append(self._buffer.get_nowait())
            try:
                pipe = client.pipeline(transaction=False)
                for blob in batch:
                    pipe.xadd(stream, {"d": blob})
                pipe.execute()
            except BaseException as exc:
                self._fail(exc)
                return

    def _heartbeat(self) -> None:
        errors = _redis_errors()
        while not self._stopping.wait(_HEARTBEAT):
            try:
                pipe = self._client.pipeline(transaction=False)
                pipe.set(self.keys.run(self.run_id), "1", ex=RUN_TTL)
                pipe.expire(self.keys.reply(self.run_id), RUN_TTL)
                pipe.expire(self.keys.counts(self.run_id), RUN_TTL)
                pipe.execute()
            except errors as exc:
                log.warning("pipeline %s: heartbeat failed: %s", self.keys.pipeline, exc)

    # --- feeding and collecting ------------------------------------------------------------

    def put(self, seq: int, item: Any, timeout: float) -> bool:
        if self._failure is not None:
            return False
        try:
            blob = _dumps((self.run_id, seq, 0, item))
        except Exception as exc:
            with self._lock:
                self._local.append((seq, ERR, ItemError(self._stages[0].name, item, exc)))
            return True
        try:
            self._buffer.put(blob, timeout=timeout)
        except queue.Full:
            return False
        return True

    def get(self, timeout: float) -> list[Outcome]:
        with self._lock:
            local, self._local = self._local, []
        if local:
            return local
        if self._failure is not None:
            raise self._failure
        reply = self.keys.reply(self.run_id)
        try:
            resp = self._client.xread(
                {reply: self._last_reply}, count=1000, block=max(1, int(timeout * 1000))
            )
            outcomes: list[Outcome] = []
            for _stream, entries in resp or ():
                for eid, fields in entries:
                    seq, kind, payload = pickle.loads(fields[b"r"])
                    if kind == ERR:
                        payload = ItemError(*payload)
                    outcomes.append((seq, kind, payload))
                    self._last_reply = _text(eid)
            now = time.monotonic()
            if outcomes and now >= self._next_trim:
                self._next_trim = now + _TRIM_EVERY
                self._client.xtrim(reply, minid=self._last_reply, approximate=True)
        except _redis_errors() as exc:
            self._fail(exc)
            raise self._failure from exc  # type: ignore[misc]
        return outcomes

    def stage_counts(self) -> list[StageCounts]:
        zero = [StageCounts(0, 0, 0, 0, -1) for _ in self._stages]
        if self._client is None:
            return zero
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(self.keys.counts(self.run_id))
            for lay in self.layouts:
                pipe.xinfo_groups(lay.input)
            res = pipe.execute(raise_on_error=False)
        except _redis_errors():
            return zero
        raw = res[0] if isinstance(res[0], dict) else {}
        counts = {_text(k): int(v) for k, v in raw.items()}
        out = []
        for lay, groups in zip(self.layouts, res[1:], strict=True):
            depth = -1
            if isinstance(groups, list):
                for g in groups:
                    if _text(g["name"]) == lay.group:
                        lag = g.get("lag")
                        depth = int(g["pending"]) + (int(lag) if lag is not None else 0)
            out.append(
                StageCounts(
                    counts.get(f"{lay.name}:in", 0),
                    counts.get(f"{lay.name}:out", 0),
                    counts.get(f"{lay.name}:dropped", 0),
                    counts.get(f"{lay.name}:errors", 0),
                    depth,
                )
            )
        return out

    # --- the end ---------------------------------------------------------------------------

    def finish(self) -> None:
        self._end(cancel=False)

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
        if self._client is not None:
            # First, so remote consumers skip the rest of this run's items.
            with contextlib.suppress(*_redis_errors()):
                self._client.delete(self.keys.run(self.run_id))
        self._stopping.set()
        self._consumer_stop.set()

    def close(self) -> None:
        self.cancel()
        self._end(cancel=True)

    def _end(self, cancel: bool) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        client = self._client
        errors = _redis_errors()
        self._stopping.set()
        self._consumer_stop.set()
        deadline = time.monotonic() + (1.0 if cancel else 5.0)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if client is None:
            return
        with contextlib.suppress(*errors):
            keys = [
                self.keys.run(self.run_id),
                self.keys.reply(self.run_id),
                self.keys.counts(self.run_id),
            ]
            if self._cleanup:
                keys.append(self.keys.stages)
                for lay in self.layouts:
                    keys += [lay.input, lay.dead]
            client.delete(*keys)
        with contextlib.suppress(*errors):
            client.close()
