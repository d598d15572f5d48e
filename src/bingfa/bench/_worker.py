"""One load-generator process: a uvloop event loop driving many ``asyncio.Protocol`` connections.

The parent (:mod:`bingfa.bench.runner`) starts one of these per ``--processes``, hands it a
:class:`WorkerPlan`, and talks to it over a pipe:

1. the worker opens its connections (at most ``connect_concurrency`` connects at a time) and
   sends ``("connected", n, errors, samples)``;
2. the parent answers ``("start", t0)`` — a ``time.monotonic()`` instant shared by every worker
   (CLOCK_MONOTONIC is system-wide on Linux) — or ``("stop",)``;
3. the worker runs warm-up and measured window, stops sending, drains the replies still in
   flight (at most ``timeout`` seconds), and sends ``("result", WorkerReport)``.

``("stop",)`` may also arrive mid-run (Ctrl-C in the parent): sending stops at once, the drain
is cut to one second, and the report says ``interrupted``. A closed pipe (the parent died)
does the same. SIGINT is ignored: the parent coordinates shutdown.

Two load shapes:

closed loop (``rate is None``)
    every connection sends a request, waits for its reply, sends the next.
open loop (``rate`` requests/s over all workers)
    worker ``k`` of ``P`` owns the intended send times ``t0 + (n·P + k) / rate`` for
    n = 0, 1, 2, ... — a fixed schedule that does not depend on replies. A request due is sent
    on the next connection with a free pipeline slot (at most ``pipeline`` requests in flight
    per connection, answered in order). When none has one (all at their limit, reconnecting or
    held back by TCP backpressure) the request waits in a FIFO backlog and is counted as
    ``missed``; it is sent as soon as a slot frees up. Its latency is always measured from its
    **intended** time (coordinated-omission corrected); the latency from its actual send time is
    recorded beside it. Requests still in the backlog when the run ends are ``unsent``.

Latencies are counted in whole microseconds in a dict and folded into an HdrHistogram
(1 µs .. 1 h, 3 significant digits) in batches: the same histogram as recording each value, at
a fraction of the per-request cost. Statistics only include requests whose intended send time
falls in the measured window ``[t0 + warmup, t0 + warmup + duration)``. Errors are counted
when they happen, except during the warm-up (see :meth:`_Generator.conn_failed`).
"""

from __future__ import annotations

import asyncio
import errno
import math
import resource
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Final

from hdrh.histogram import HdrHistogram

from bingfa.bench._limits import ensure_fd_limit
from bingfa.errors import BingfaError, ProtocolError
from bingfa.protocol import make_codec

__all__ = [
    "ERROR_KINDS",
    "HIGHEST_US",
    "SIGNIFICANT_FIGURES",
    "WorkerPlan",
    "WorkerReport",
    "new_histogram",
    "worker_main",
]

ERROR_KINDS: Final = (
    "connect_refused",
    "connect_timeout",
    "connect_error",
    "reset",
    "timeout",
    "protocol",
    "closed",
)
"""Every error kind, in report order (see docs/bench.md, "Errors")."""

LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600_000_000
SIGNIFICANT_FIGURES: Final = 3

COUNTERS_PER_WORKER: Final = 4
"""Live counters each worker publishes: replies, errors, open connections, requests sent."""

SWEEP_INTERVAL: Final = 0.1
"""Seconds between timeout sweeps / counter updates."""

_FLUSH_AT: Final = 20_000
"""Distinct latency values kept in the dict before it is folded into the histogram."""

_INTERRUPT_DRAIN: Final = 1.0

_TIMER_RESOLUTION: Final = 0.001
"""The event loop's timer resolution (libuv: 1 ms)."""


def new_histogram() -> HdrHistogram:
    """An empty latency histogram: microseconds, 1 µs to 1 hour, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def _fold(counts: dict[int, int], hist: HdrHistogram) -> None:
    """Move the counted latencies into ``hist`` (clamped to its range) and clear ``counts``."""
    record = hist.record_value
    for value, count in counts.items():
        record(min(max(value, LOWEST_US), HIGHEST_US), count)
    counts.clear()


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one generator process does. Built by the runner; immutable and picklable.

    Attributes:
        index, processes: this worker's number and the number of workers.
        host, port, protocol, max_frame_size: the server and its wire format.
        connections: connections this worker opens.
        payload: the request body sent every time.
        rate: requests/s of **all** workers together (open loop); None for closed loop.
        pipeline: open loop: requests in flight per connection at most.
        warmup: seconds after ``t0`` whose requests are not counted.
        duration: measured seconds (None when count-bound).
        requests: count-bound: measured requests this worker sends (None when time-bound).
        timeout: seconds per connect, and per request from its actual send; also the longest
            drain after the window.
        connect_concurrency: connects in progress at once.
        fd_needed: file descriptors this process needs (its soft limit is raised to that).
    """

    index: int
    processes: int
    host: str
    port: int
    protocol: str
    max_frame_size: int
    connections: int
    payload: bytes
    rate: float | None
    pipeline: int
    warmup: float
    duration: float | None
    requests: int | None
    timeout: float
    connect_concurrency: int
    fd_needed: int


@dataclass(slots=True)
class WorkerReport:
    """What one generator process measured. Histograms travel encoded (HdrHistogram format).

    Attributes:
        connected: connections open at the end of the connect phase.
        requests: replies to requests of the measured window.
        warmup_requests: replies to warm-up requests.
        sent: requests of the measured window that were written to a connection.
        errors: count per kind (every kind of :data:`ERROR_KINDS` present).
        error_samples: the first message seen of each kind.
        missed: open loop: window requests that had to wait in the backlog.
        unsent: open loop: requests still in the backlog when the run ended.
        hist, hist_uncorrected: encoded histograms (µs); uncorrected only in open loop.
        cpu_s, wall_s: this process's CPU time (user + system) and wall time over the window.
        wait_s: time its event loop was runnable but waited for a CPU, over the window (Linux
            schedstat; 0.0 where unavailable): busy = (cpu_s + wait_s) / wall_s.
        window_start, window_end: the window's ``time.monotonic()`` bounds (end: when sending
            stopped).
        last_reply: ``time.monotonic()`` of the last reply of a window request (0.0: none).
        interrupted: a stop request cut the run short.
        aborted: why sending stopped before its time (None: it did not).
    """

    index: int
    connected: int
    requests: int = 0
    warmup_requests: int = 0
    sent: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    error_samples: dict[str, str] = field(default_factory=dict)
    missed: int = 0
    unsent: int = 0
    hist: bytes = b""
    hist_uncorrected: bytes | None = None
    cpu_s: float = 0.0
    wait_s: float = 0.0
    wall_s: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0
    last_reply: float = 0.0
    interrupted: bool = False
    aborted: str | None = None


_now = time.monotonic


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _runqueue_seconds() -> float:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux schedstat);
    0.0 where unavailable."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _describe_connect_error(exc: OSError, host: str, port: int) -> str:
    text = f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    if exc.errno == errno.EADDRNOTAVAIL:
        text += (
            " — out of local ports (see net.ipv4.ip_local_port_range; ports in TIME_WAIT from "
            "earlier runs count too)"
        )
    elif exc.errno in (errno.EMFILE, errno.ENFILE):
        text += " — out of file descriptors (RLIMIT_NOFILE; see `ulimit -n`)"
    return text


class _Conn(asyncio.Protocol):
    """State shared by both connection kinds. Owned by its :class:`_Generator`."""

    __slots__ = ("alive", "feed", "gen", "paused", "transport")

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.feed = make_codec(gen.plan.protocol, gen.plan.max_frame_size).feed
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            if exc is None:
                self.fail(
                    "closed",
                    "the server closed the connection (its handler failed, a request broke "
                    "the protocol, a limit was hit, or it is shutting down: see its log)",
                )
            else:
                self.fail("reset", f"connection failed: {exc}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def inflight_intended(self) -> list[float]:
        """Intended send times of the requests in flight on this connection."""
        raise NotImplementedError

    def oldest_sent(self) -> float | None:
        """Actual send time of the oldest request in flight; None when idle."""
        raise NotImplementedError

    def clear_inflight(self) -> None:
        raise NotImplementedError

    def fail(self, kind: str, message: str) -> None:
        """Count the requests in flight here as errors of ``kind``, drop the connection and
        let the generator replace it. Idempotent."""
        if not self.alive:
            return
        self.alive = False
        intended = self.inflight_intended()
        self.clear_inflight()
        if self.transport is not None:
            self.transport.abort()
        self.gen.conn_failed(self, kind, message, intended)


class _ClosedConn(_Conn):
    """Closed loop: one request in flight; the reply's arrival sends the next request."""

    __slots__ = ("raw", "sent_at")

    def __init__(self, gen: _Generator) -> None:
        super().__init__(gen)
        self.sent_at = -1.0
        self.raw = gen.plan.protocol == "raw"

    def inflight_intended(self) -> list[float]:
        return [self.sent_at] if self.sent_at >= 0 else []

    def oldest_sent(self) -> float | None:
        return self.sent_at if self.sent_at >= 0 else None

    def clear_inflight(self) -> None:
        if self.sent_at >= 0:
            self.gen.inflight -= 1
            self.sent_at = -1.0

    def send(self, now: float) -> None:
        gen = self.gen
        if not gen.may_send(now):
            return
        self.sent_at = now
        gen.inflight += 1
        assert self.transport is not None
        self.transport.write(gen.wire)
        if gen.remaining == 0:
            gen.stop_sending(now)  # that was the last measured request

    def data_received(self, data: bytes) -> None:
        # The generator's hot path: keep it short (see benchmarks/bench_generator.py).
        if self.raw:
            many = False  # raw: every chunk is one reply, by definition
        else:
            try:
                replies = self.feed(data)
            except ProtocolError as exc:
                self.fail("protocol", f"bad reply: {exc}")
                return
            if not replies:
                return
            many = len(replies) > 1
        now = _now()
        sent = self.sent_at
        if sent < 0 or many:
            self.fail("protocol", "more replies than requests")
            return
        gen = self.gen
        if sent >= gen.measure_start:
            gen.requests += 1
            gen.last_reply = now
            us = int((now - sent) * 1e6)
            lat = gen.lat
            lat[us] = lat.get(us, 0) + 1
        else:
            gen.warmup_requests += 1
        if now < gen.fast_until:
            # Time-bound run inside its window: the next request needs no other check, and
            # the in-flight count does not change (one reply in, one request out).
            gen.sent += 1
            self.sent_at = now
            self.transport.write(gen.wire)  # type: ignore[union-attr]
            return
        self.sent_at = -1.0
        gen.inflight -= 1
        if gen.sending:
            self.send(now)
        if not gen.inflight and not gen.sending:
            gen.check_drained()


class _OpenConn(_Conn):
    """Open loop: up to ``pipeline`` requests in flight, each with (intended, sent) times."""

    __slots__ = ("inflight", "parked")

    def __init__(self, gen: _Generator) -> None:
        super().__init__(gen)
        self.inflight: deque[tuple[float, float]] = deque()
        self.parked = 0

    def inflight_intended(self) -> list[float]:
        return [intended for intended, _ in self.inflight]

    def oldest_sent(self) -> float | None:
        return self.inflight[0][1] if self.inflight else None

    def clear_inflight(self) -> None:
        self.gen.inflight -= len(self.inflight)
        self.inflight.clear()

    def send(self, intended: float, now: float) -> None:
        gen = self.gen
        self.inflight.append((intended, now))
        gen.inflight += 1
        if intended >= gen.measure_start:
            gen.sent += 1
        assert self.transport is not None
        self.transport.write(gen.wire)

    def resume_writing(self) -> None:
        self.paused = False
        parked, self.parked = self.parked, 0
        now = time.monotonic()
        for _ in range(parked):
            if not self.alive or self.paused:
                self.parked += 1
                continue
            self.gen.slot_free(self, now)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.feed(data)
        except ProtocolError as exc:
            self.fail("protocol", f"bad reply: {exc}")
            return
        if not replies:
            return
        now = time.monotonic()
        gen = self.gen
        inflight = self.inflight
        measure_start = gen.measure_start
        lat = gen.lat
        lat_u = gen.lat_uncorrected
        for _ in replies:
            if not inflight:
                self.fail("protocol", "more replies than requests")
                return
            intended, sent = inflight.popleft()
            gen.inflight -= 1
            if intended >= measure_start:
                gen.requests += 1
                gen.last_reply = now
                us = int((now - intended) * 1e6)
                lat[us] = lat.get(us, 0) + 1
                us = int((now - sent) * 1e6)
                lat_u[us] = lat_u.get(us, 0) + 1
            else:
                gen.warmup_requests += 1
            gen.slot_free(self, now)
        if now >= gen.next_due:
            gen.tick()  # replies wake the loop more often than its 1 ms timer: catch up now
        if not gen.sending and not gen.inflight:
            gen.check_drained()


class _Generator:
    """All connections of one worker process and the schedule that drives them."""

    def __init__(
        self, plan: WorkerPlan, control: Connection, publish: Callable[[list[int]], None]
    ) -> None:
        self.plan = plan
        self.control = control
        self.publish = publish
        self.loop = asyncio.get_running_loop()
        self.open_loop = plan.rate is not None
        self.wire = make_codec(plan.protocol, plan.max_frame_size).encode(plan.payload)
        self.conns: set[_Conn] = set()
        self.connect_sem = asyncio.Semaphore(plan.connect_concurrency)
        inf = math.inf
        self.t0 = inf
        self.measure_start = inf
        self.t_end = inf
        self.fast_until = -inf  # closed loop: before this time a reply may send at once
        self.sending = False
        self.finishing = False
        self.drain_deadline = inf
        self.remaining: int | None = plan.requests
        self.inflight = 0
        self.requests = 0
        self.warmup_requests = 0
        self.sent = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.error_samples: dict[str, str] = {}
        self.missed = 0
        self.unsent = 0
        self.backlog: deque[float] = deque()
        self.free: deque[_OpenConn] = deque()
        self.lat: dict[int, int] = {}
        self.lat_uncorrected: dict[int, int] = {}
        self.hist = new_histogram()
        self.hist_uncorrected = new_histogram()
        self.last_reply = 0.0
        self.last_alive = time.monotonic()
        self.cpu_start = 0.0
        self.cpu_end: float | None = None
        self.wait_start = 0.0
        self.wait_end = 0.0
        self.window_end = 0.0
        self.interrupted = False
        self.aborted: str | None = None
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.started: asyncio.Future[float | None] = self.loop.create_future()
        self.scheduled = 0  # open loop: intended times handed out so far
        self.scheduled_measured = 0
        self.next_due = inf  # open loop: intended time of the next request not yet handed out
        self.tick_handle: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    # -- control ------------------------------------------------------------------------------

    def on_control(self) -> None:
        """Read one message from the parent (the pipe is readable)."""
        try:
            message = self.control.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(self.control.fileno())
            message = ("stop",)
        if message[0] == "start" and not self.started.done():
            self.started.set_result(float(message[1]))
        elif message[0] == "stop":
            if not self.started.done():
                self.started.set_result(None)
            else:
                self.interrupted = True
                self.stop_sending(time.monotonic(), drain=_INTERRUPT_DRAIN)

    # -- errors -------------------------------------------------------------------------------

    def count_error(self, kind: str, message: str, n: int = 1) -> None:
        self.errors[kind] += n
        self.error_samples.setdefault(kind, message)

    def conn_failed(self, conn: _Conn, kind: str, message: str, intended: list[float]) -> None:
        """A connection failed: count the requests it lost, then replace it if still sending.

        Errors are counted when they happen, except during the warm-up: a request lost after
        the window opened counts even if it was sent during the warm-up (a connection the
        server never served must show), and a failure with nothing in flight counts once."""
        registered = conn in self.conns
        self.conns.discard(conn)
        now = time.monotonic()
        if not self.t0 <= now < self.measure_start:
            if intended:
                self.count_error(kind, message, len(intended))
            elif not self.finishing:
                self.count_error(kind, message)
        if registered and self.sending:
            self.spawn_reconnect()
        self.check_drained()

    # -- connections --------------------------------------------------------------------------

    async def connect_one(self) -> _Conn | None:
        """Open one connection; count and return None on failure."""
        plan = self.plan
        factory: Callable[[], _Conn] = (
            (lambda: _OpenConn(self)) if self.open_loop else (lambda: _ClosedConn(self))
        )
        async with self.connect_sem:
            try:
                async with asyncio.timeout(plan.timeout):
                    _, proto = await self.loop.create_connection(factory, plan.host, plan.port)
            except TimeoutError:
                self.count_error(
                    "connect_timeout",
                    f"connecting to {plan.host}:{plan.port} took over {plan.timeout}s",
                )
                return None
            except ConnectionRefusedError as exc:
                self.count_error(
                    "connect_refused",
                    f"{plan.host}:{plan.port} refused the connection ({exc.strerror}): "
                    "is the server running?",
                )
                return None
            except OSError as exc:
                text = _describe_connect_error(exc, plan.host, plan.port)
                self.count_error("connect_error", text)
                return None
        if not proto.alive:
            return None
        self.conns.add(proto)
        self.last_alive = time.monotonic()
        return proto

    def spawn_reconnect(self) -> None:
        """Start replacing one lost (or never opened) connection in the background."""
        task = self.loop.create_task(self.reconnect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reconnect(self) -> None:
        """Replace a lost connection, backing off while connects fail, until sending stops."""
        delay = 0.0
        while self.sending:
            if delay:
                await asyncio.sleep(delay)
                if not self.sending:
                    return
            conn = await self.connect_one()
            if conn is not None:
                if self.sending:
                    self.activate(conn, time.monotonic())
                return
            delay = min(1.0, max(0.01, delay * 2))

    def activate(self, conn: _Conn, now: float) -> None:
        """Put a fresh connection to work."""
        if isinstance(conn, _OpenConn):
            for _ in range(self.plan.pipeline):
                self.slot_free(conn, now)
        else:
            assert isinstance(conn, _ClosedConn)
            conn.send(now)

    # -- schedule -----------------------------------------------------------------------------

    def may_send(self, now: float) -> bool:
        """Closed loop: whether one more request may go out now (counts it if measured)."""
        if now >= self.t_end:
            self.stop_sending(now)
            return False
        if now >= self.measure_start:
            remaining = self.remaining
            if remaining is not None:
                if remaining <= 0:
                    self.stop_sending(now)
                    return False
                self.remaining = remaining - 1
            self.sent += 1
        return True

    def slot_free(self, conn: _OpenConn, now: float) -> None:
        """Open loop: ``conn`` can take one more request: the oldest waiting one, if any."""
        if not conn.alive:
            return
        if conn.paused:
            conn.parked += 1
            return
        backlog = self.backlog
        if backlog:
            conn.send(backlog.popleft(), now)
        else:
            self.free.append(conn)

    def dispatch(self, intended: float, now: float) -> None:
        """Open loop: send the request due at ``intended`` on a free slot, or backlog it."""
        free = self.free
        while free:
            conn = free.popleft()
            if not conn.alive:
                continue
            if conn.paused:
                conn.parked += 1
                continue
            conn.send(intended, now)
            return
        self.backlog.append(intended)
        if intended >= self.measure_start:
            self.missed += 1

    def tick(self) -> None:
        """Open loop: send every request whose intended time has come, then sleep until the
        next one."""
        if not self.sending:
            self.next_due = math.inf
            return
        plan = self.plan
        assert plan.rate is not None
        rate, procs, index, t0 = plan.rate, plan.processes, plan.index, self.t0
        now = time.monotonic()
        while True:
            intended = t0 + (self.scheduled * procs + index) / rate
            if intended > now:
                break
            if intended >= self.t_end:
                self.stop_sending(now)
                return
            measured = intended >= self.measure_start
            if measured and self.remaining is not None:
                if self.scheduled_measured >= self.remaining:
                    self.stop_sending(now)
                    return
                self.scheduled_measured += 1
            self.scheduled += 1
            self.dispatch(intended, now)
        self.next_due = intended
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        # libuv timers have 1 ms resolution: a shorter delay would spin the loop.
        self.tick_handle = self.loop.call_later(
            max(_TIMER_RESOLUTION, intended - time.monotonic()), self.tick
        )

    def begin(self, t0: float) -> None:
        """At ``t0``: start sending on every open connection."""
        plan = self.plan
        self.sending = True
        now = time.monotonic()
        alive = [conn for conn in self.conns if conn.alive]
        for conn in alive:
            self.activate(conn, now)
        for _ in range(plan.connections - len(alive)):
            self.spawn_reconnect()  # connects that failed in the connect phase: keep trying
        if self.open_loop:
            self.tick()
        self.loop.call_later(max(0.0, self.measure_start - now), self.open_window)
        if plan.duration is not None:
            self.loop.call_later(
                max(0.0, self.t_end - now), lambda: self.stop_sending(time.monotonic())
            )

    def open_window(self) -> None:
        """At the start of the measured window: sample CPU, enable the fast path."""
        early = self.measure_start - time.monotonic()
        if early > 0:  # timers may fire up to a millisecond early
            self.loop.call_later(max(early, _TIMER_RESOLUTION), self.open_window)
            return
        if self.cpu_end is None:
            self.cpu_start = _cpu_seconds()
            self.wait_start = _runqueue_seconds()
            if self.plan.duration is not None and self.sending:
                self.fast_until = self.t_end

    def stop_sending(self, now: float, drain: float | None = None) -> None:
        """Stop sending; wait for the replies in flight for at most ``drain`` seconds
        (default: the request timeout)."""
        if self.cpu_end is None:
            self.cpu_end = _cpu_seconds()
            self.wait_end = _runqueue_seconds()
            self.window_end = now
            if self.cpu_start == 0.0:  # stopped before the window opened
                self.cpu_start = self.cpu_end
                self.wait_start = self.wait_end
        self.sending = False
        self.finishing = True
        self.fast_until = -math.inf
        self.next_due = math.inf
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        limit = self.plan.timeout if drain is None else drain
        self.drain_deadline = min(self.drain_deadline, now + limit)
        self.check_drained()

    def check_drained(self) -> None:
        """Finish once nothing is in flight or waiting (after sending stopped)."""
        if self.finishing and not self.inflight and not self.backlog and not self.finished.done():
            self.finished.set_result(None)

    def sweep(self) -> None:
        """Every SWEEP_INTERVAL: time out late requests, publish counters, fold latencies,
        end the drain when its deadline passes."""
        now = time.monotonic()
        timeout = self.plan.timeout
        for conn in list(self.conns):
            oldest = conn.oldest_sent()
            if oldest is not None and now - oldest > timeout:
                conn.fail("timeout", f"no reply within {timeout}s")
        if self.conns:
            self.last_alive = now
        elif (
            self.sending
            and self.plan.duration is None
            and now - self.last_alive > max(timeout, 1.0)
        ):
            self.aborted = (
                f"every connection was lost and none could be re-established for "
                f"{max(timeout, 1.0)}s"
            )
            self.stop_sending(now)
        if len(self.lat) > _FLUSH_AT:
            _fold(self.lat, self.hist)
        if len(self.lat_uncorrected) > _FLUSH_AT:
            _fold(self.lat_uncorrected, self.hist_uncorrected)
        if self.finishing and now >= self.drain_deadline and not self.finished.done():
            self.expire(now)
        self.publish(
            [
                self.requests + self.warmup_requests,
                sum(self.errors.values()),
                len(self.conns),
                self.sent,
            ]
        )
        if not self.finished.done():
            self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def expire(self, now: float) -> None:
        """The drain deadline passed: what is in flight timed out, what waits is unsent."""
        for conn in list(self.conns):
            if conn.oldest_sent() is not None:
                conn.fail("timeout", f"no reply within {self.plan.timeout}s")
        self.unsent = len(self.backlog)
        self.backlog.clear()
        self.inflight = 0
        if not self.finished.done():
            self.finished.set_result(None)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> WorkerReport:
        plan = self.plan
        loop = self.loop
        loop.add_reader(self.control.fileno(), self.on_control)
        loop.call_soon(self.sweep)
        results = await asyncio.gather(*(self.connect_one() for _ in range(plan.connections)))
        connected = sum(1 for c in results if c is not None and c.alive)
        self.control.send(("connected", connected, dict(self.errors), dict(self.error_samples)))
        report = WorkerReport(index=plan.index, connected=connected)
        t0 = await self.started
        if t0 is not None:
            self.t0 = t0
            self.measure_start = t0 + plan.warmup
            if plan.duration is not None:
                self.t_end = self.measure_start + plan.duration
            # The loop's timers have 1 ms resolution and may fire a little early: nothing may
            # be sent before t0 (with no warm-up, such a request would wrongly count as one).
            while (early := t0 - time.monotonic()) > 0:
                await asyncio.sleep(early)
            self.begin(t0)
            await self.finished
        else:
            self.stop_sending(time.monotonic(), drain=0.0)
            self.interrupted = t0 is None
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.conns):
            conn.alive = False
            if conn.transport is not None:
                conn.transport.close()
        _fold(self.lat, self.hist)
        _fold(self.lat_uncorrected, self.hist_uncorrected)
        cpu_end = self.cpu_end if self.cpu_end is not None else _cpu_seconds()
        report.requests = self.requests
        report.warmup_requests = self.warmup_requests
        report.sent = self.sent
        report.errors = dict(self.errors)
        report.error_samples = dict(self.error_samples)
        report.missed = self.missed
        report.unsent = self.unsent
        report.hist = self.hist.encode()
        report.hist_uncorrected = self.hist_uncorrected.encode() if self.open_loop else None
        report.cpu_s = max(0.0, cpu_end - self.cpu_start)
        report.wait_s = max(0.0, self.wait_end - self.wait_start)
        if math.isfinite(self.measure_start):
            report.window_start = self.measure_start
            report.window_end = max(self.window_end, self.measure_start)
            report.wall_s = report.window_end - report.window_start
        report.last_reply = self.last_reply
        report.interrupted = self.interrupted
        report.aborted = self.aborted
        return report


def worker_main(plan: WorkerPlan, control: Connection, counters: Any) -> None:
    """Entry point of a generator process (see the module doc for the pipe protocol).

    ``counters`` is a shared ``RawArray('q')`` holding :data:`COUNTERS_PER_WORKER` live values
    per worker; this worker writes its own slice. Never raises: a crash is reported to the
    parent as ``("error", traceback text)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    base = plan.index * COUNTERS_PER_WORKER

    def publish(values: list[int]) -> None:
        for i, value in enumerate(values):
            counters[base + i] = value

    try:
        try:
            ensure_fd_limit(plan.fd_needed, who=f"generator process {plan.index}")
        except BingfaError as exc:
            control.send(("error", str(exc)))
            return
        import uvloop

        async def main() -> WorkerReport:
            return await _Generator(plan, control, publish).run()

        report = uvloop.run(main())
        control.send(("result", report))
    except Exception:
        try:
            control.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        control.close()
