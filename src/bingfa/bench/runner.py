"""The load generator's parent side: plan the run, start the generator processes, merge.

:func:`run_bench` is the Python API behind ``bingfa bench``; ``bingfa compare`` uses it too.
The generator processes themselves live in :mod:`bingfa.bench._worker`.
"""

from __future__ import annotations

import base64
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.context import BaseContext
from typing import Any

from hdrh.histogram import HdrHistogram

from bingfa.bench._limits import FD_MARGIN, check_port_range
from bingfa.bench._worker import (
    COUNTERS_PER_WORKER,
    ERROR_KINDS,
    WorkerPlan,
    WorkerReport,
    new_histogram,
    worker_main,
)
from bingfa.errors import BingfaError, UsageError
from bingfa.protocol import DEFAULT_MAX_FRAME_SIZE, PROTOCOLS, make_codec

__all__ = [
    "ERROR_KINDS",
    "PERCENTILES",
    "SATURATION_THRESHOLD",
    "BenchConfig",
    "BenchResult",
    "default_processes",
    "run_bench",
]

PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
"""JSON key → percentile of the latency summaries (``max`` is added beside them)."""

SATURATION_THRESHOLD = 0.9
"""A generator process busy (on a CPU or waiting for one) for this fraction of the measured
window or more is flagged as saturated: it, not the server, may have set the pace."""

_START_LEAD = 0.1
"""Seconds between sending ``start`` and ``t0``, so every worker starts on the same instant."""


def default_processes(connections: int, cpus: int | None = None) -> int:
    """The default number of generator processes.

    Rule: half the CPUs, at least 1 and at most one per connection. The other half is left to
    the server, which usually runs on the same machine (bingfa compare always does). One uvloop
    process drives tens of thousands of small requests per second; if it is still the bottleneck
    the result says so (``generator_saturated``). Against a server on another machine, pass
    ``processes`` = the number of CPUs.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(cpus // 2, connections))


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """A load-generator run. Build one and pass it to :func:`run_bench` (or pass the fields).

    Attributes:
        host, port: the server.
        protocol: ``frame``, ``line`` or ``raw`` (raw: each chunk read is one reply, so only one
            request is ever in flight per connection).
        connections: connections in total, spread over the processes.
        rate: open loop: requests/s in total on a fixed schedule; None: closed loop.
        processes: generator processes; None: :func:`default_processes`.
        duration: measured seconds; None when ``requests`` bounds the run (default 10 s).
        warmup: seconds before the measured window, not counted.
        requests: count-bound run: measured requests in total.
        payload: the request body.
        timeout: seconds per connect and per request (from its actual send); the longest
            drain of replies after the window.
        pipeline: open loop: requests in flight per connection at most.
        connect_concurrency: connects in progress at once, per process.
        max_frame_size: largest message the codec accepts.
    """

    host: str
    port: int
    protocol: str = "frame"
    connections: int = 50
    rate: float | None = None
    processes: int | None = None
    duration: float | None = None
    warmup: float = 1.0
    requests: int | None = None
    payload: bytes = b"hello"
    timeout: float = 10.0
    pipeline: int = 16
    connect_concurrency: int = 200
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE

    def validated(self) -> BenchConfig:
        """Check every field; return the config with ``duration`` defaulted (10 s unless
        count-bound).

        Raises:
            UsageError: a field is out of range, or ``payload`` cannot be sent with
                ``protocol``.
        """
        if self.protocol not in PROTOCOLS:
            raise UsageError(
                f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}"
            )
        if not 0 < self.port <= 65535:
            raise UsageError(f"port must be in 1..65535, got {self.port}")
        if self.connections < 1:
            raise UsageError(f"connections must be at least 1, got {self.connections}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise UsageError(f"rate must be a positive number of requests/s, got {self.rate}")
        if self.processes is not None and self.processes < 1:
            raise UsageError(f"processes must be at least 1, got {self.processes}")
        if self.duration is not None and self.requests is not None:
            raise UsageError("give a duration or a number of requests, not both")
        duration = self.duration
        if self.requests is None:
            duration = 10.0 if duration is None else duration
            if not duration > 0:
                raise UsageError(f"duration must be positive, got {duration}")
        elif self.requests < 1:
            raise UsageError(f"requests must be at least 1, got {self.requests}")
        if self.warmup < 0:
            raise UsageError(f"warmup must not be negative, got {self.warmup}")
        if not self.timeout > 0:
            raise UsageError(f"timeout must be positive, got {self.timeout}")
        if self.pipeline < 1:
            raise UsageError(f"pipeline must be at least 1, got {self.pipeline}")
        if self.connect_concurrency < 1:
            raise UsageError(
                f"connect_concurrency must be at least 1, got {self.connect_concurrency}"
            )
        make_codec(self.protocol, self.max_frame_size).encode(self.payload)  # may raise
        return replace(self, duration=duration)

    @property
    def mode(self) -> str:
        """``open`` (a rate is set) or ``closed``."""
        return "closed" if self.rate is None else "open"


LatencySummary = dict[str, float | None]
"""``{"p50", "p90", "p99", "p999", "max"}`` in milliseconds; values None when no request
completed."""


def summarize(hist: HdrHistogram) -> LatencySummary:
    """Percentiles and max of a µs histogram, in milliseconds (3 decimals)."""
    if hist.get_total_count() == 0:
        return {**dict.fromkeys(PERCENTILES), "max": None}
    out: LatencySummary = {
        key: round(hist.get_value_at_percentile(p) / 1000.0, 3) for key, p in PERCENTILES.items()
    }
    out["max"] = round(hist.get_max_value() / 1000.0, 3)
    return out


@dataclass(slots=True)
class BenchResult:
    """The merged result of a run. :meth:`to_json` gives the documented JSON (docs/bench.md).

    Attributes:
        host, port, protocol, mode (``closed``/``open``), connections (asked),
        connected (open when the run started), processes: the run's shape.
        requests: replies to requests of the measured window.
        sent: measured-window requests written to a connection.
        duration_s: the measured window (count-bound: until the last reply).
        rps: ``requests / duration_s``.
        latency_ms: summary of the latency; in open loop measured from each request's
            intended send time (coordinated-omission corrected).
        errors: count per kind, every kind present; error_samples: first message per kind.
        target_rps, achieved_rps, missed, unsent, latency_uncorrected_ms: open loop only
            (None in closed loop). ``achieved_rps`` is replies per second (= ``rps``).
        generator_saturated: some generator process was busy ≥ 90 % of the window.
        generator_busy: per process, (CPU + run-queue wait) / window.
        generator_cpu: per process, CPU / window.
        warmup_s, warmup_requests: the warm-up and the replies it got.
        interrupted: stopped early by Ctrl-C / ``stop``; aborted: why sending stopped early.
        histogram, histogram_uncorrected: the merged µs HdrHistograms (not in the JSON as
            objects; encoded as ``latency_hdr`` / ``latency_uncorrected_hdr``).
    """

    host: str
    port: int
    protocol: str
    mode: str
    connections: int
    connected: int
    processes: int
    requests: int
    sent: int
    duration_s: float
    rps: float
    latency_ms: LatencySummary
    errors: dict[str, int]
    error_samples: dict[str, str]
    target_rps: float | None
    achieved_rps: float | None
    missed: int | None
    unsent: int | None
    latency_uncorrected_ms: LatencySummary | None
    generator_saturated: bool
    generator_busy: list[float]
    generator_cpu: list[float]
    warmup_s: float
    warmup_requests: int
    interrupted: bool = False
    aborted: str | None = None
    histogram: HdrHistogram = field(default_factory=new_histogram, repr=False)
    histogram_uncorrected: HdrHistogram | None = field(default=None, repr=False)

    @property
    def error_count(self) -> int:
        """All errors together."""
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data (schema: docs/bench.md, "JSON")."""
        return {
            "schema": "bingfa.bench/1",
            "target": f"{self.host}:{self.port}",
            "protocol": self.protocol,
            "mode": self.mode,
            "connections": self.connections,
            "connected": self.connected,
            "processes": self.processes,
            "requests": self.requests,
            "sent": self.sent,
            "duration_s": round(float(self.duration_s), 6),
            "rps": round(float(self.rps), 3),
            "latency_ms": dict(self.latency_ms),
            "errors": dict(self.errors),
            "error_samples": dict(self.error_samples),
            "target_rps": None if self.target_rps is None else float(self.target_rps),
            "achieved_rps": (
                None if self.achieved_rps is None else round(float(self.achieved_rps), 3)
            ),
            "missed": self.missed,
            "unsent": self.unsent,
            "latency_uncorrected_ms": (
                None if self.latency_uncorrected_ms is None else dict(self.latency_uncorrected_ms)
            ),
            "generator_saturated": self.generator_saturated,
            "generator_busy": [round(x, 3) for x in self.generator_busy],
            "generator_cpu": [round(x, 3) for x in self.generator_cpu],
            "warmup_s": float(self.warmup_s),
            "warmup_requests": self.warmup_requests,
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "latency_hdr": _encode_hist(self.histogram),
            "latency_uncorrected_hdr": (
                None
                if self.histogram_uncorrected is None
                else _encode_hist(self.histogram_uncorrected)
            ),
        }


def _encode_hist(hist: HdrHistogram) -> str:
    """HdrHistogram's standard encoding (already base64), as text."""
    encoded: bytes = hist.encode()
    return encoded.decode("ascii")


def decode_histogram(text: str) -> HdrHistogram:
    """Decode a ``latency_hdr`` string of the JSON back into a histogram (to merge runs)."""
    base64.b64decode(text, validate=True)  # a clear error for text that is not base64
    hist: HdrHistogram = HdrHistogram.decode(text.encode("ascii"))
    return hist


def _split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


_context: BaseContext | None = None


def _mp_context() -> BaseContext:
    """The multiprocessing context of the generator processes: the executors' choice
    (:func:`bingfa.executor._mpctx.mp_context`: forkserver, safe when the caller has threads and
    cheap to start after the first time; spawn where forkserver does not exist), with the
    generator's worker module preloaded."""
    global _context
    if _context is None:
        from bingfa.executor._mpctx import mp_context

        _context = mp_context(preload=("bingfa.bench._worker",))
    return _context


WindowHook = Callable[[str], None]
"""Called in the parent with ``"start"`` when the measured window opens and ``"end"`` when it
closes (``compare`` samples the server's CPU there)."""

ProgressHook = Callable[[dict[str, Any]], None]
"""Called about 4 times a second with the live counters: ``phase`` (connecting, warmup,
measuring, draining), ``elapsed``, ``replies``, ``errors``, ``connections``, ``sent``."""


def run_bench(
    host: str,
    port: int,
    *,
    on_window: WindowHook | None = None,
    on_progress: ProgressHook | None = None,
    **options: Any,
) -> BenchResult:
    """Run the load generator against ``host:port`` and return the merged result.

    Args:
        host, port: the server.
        on_window: see :data:`WindowHook`.
        on_progress: see :data:`ProgressHook`.
        **options: the other :class:`BenchConfig` fields (``connections=5000``, ``rate=200``,
            ``duration=3``, ...).

    Returns:
        The result; a run that could not connect at all returns ``connected == 0`` and its
        connect errors (it does not raise).

    Raises:
        UsageError: bad options, or a limit (file descriptors, local ports) that makes the
            requested connection count impossible — the message says how to fix it.
        BingfaError: a generator process failed.
        KeyboardInterrupt: only when the generator processes do not report within 5 s of a
            Ctrl-C; normally the run stops, drains for up to a second and returns a result with
            ``interrupted`` set. The generator processes are always stopped.
    """
    config = BenchConfig(host, port, **options)
    return run_config(config, on_window=on_window, on_progress=on_progress)


def _check_fd_hard_limit(needed: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(
            f"each generator process needs up to {needed} file descriptors but the hard limit "
            f"(RLIMIT_NOFILE) is {hard}. Fix: raise it as root (`ulimit -Hn {needed}`, or "
            "'nofile' in /etc/security/limits.conf), or spread the connections over more "
            "--processes (each process has its own limit)."
        )


def _plans(config: BenchConfig) -> list[WorkerPlan]:
    processes = config.processes or default_processes(config.connections)
    processes = min(processes, config.connections)
    if config.requests is not None:
        processes = min(processes, config.requests)
    conns = _split(config.connections, processes)
    reqs = _split(config.requests, processes) if config.requests is not None else None
    pipeline = 1 if config.protocol == "raw" else config.pipeline
    return [
        WorkerPlan(
            index=i,
            processes=processes,
            host=config.host,
            port=config.port,
            protocol=config.protocol,
            max_frame_size=config.max_frame_size,
            connections=conns[i],
            payload=config.payload,
            rate=config.rate,
            pipeline=pipeline,
            warmup=config.warmup,
            duration=config.duration,
            requests=None if reqs is None else reqs[i],
            timeout=config.timeout,
            connect_concurrency=config.connect_concurrency,
            fd_needed=conns[i] + FD_MARGIN,
        )
        for i in range(processes)
    ]


class _Workers:
    """The generator processes of one run and their pipes. Always :meth:`close` it."""

    def __init__(self, plans: list[WorkerPlan]) -> None:
        ctx = _mp_context()
        self.plans = plans
        self.counters: Any = ctx.RawArray("q", len(plans) * COUNTERS_PER_WORKER)  # type: ignore[attr-defined]
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for plan in plans:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(  # type: ignore[attr-defined]
                target=worker_main,
                args=(plan, child_end, self.counters),
                name=f"bingfa-bench-{plan.index}",
                daemon=True,
            )
            self.pipes.append(parent_end)
            self.procs.append(proc)
            proc.start()
            child_end.close()
        self.connected: dict[int, tuple[int, dict[str, int], dict[str, str]]] = {}
        self.reports: dict[int, WorkerReport] = {}

    def send_all(self, message: tuple[Any, ...]) -> None:
        for i, pipe in enumerate(self.pipes):
            if i in self.reports:
                continue
            try:
                pipe.send(message)
            except OSError:
                pass

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for messages; file them. Raises BingfaError on a dead or
        failed worker."""
        waiting = [i for i in range(len(self.pipes)) if i not in self.reports]
        if not waiting:
            return
        objects: list[Any] = [self.pipes[i] for i in waiting]
        objects += [self.procs[i].sentinel for i in waiting]
        multiprocessing.connection.wait(objects, max(0.0, timeout))
        for i in waiting:
            pipe = self.pipes[i]
            dead = False
            while True:
                try:
                    if not pipe.poll():
                        break
                    message = pipe.recv()
                except (EOFError, OSError):
                    dead = True
                    break
                kind = message[0]
                if kind == "connected":
                    self.connected[i] = (message[1], message[2], message[3])
                elif kind == "result":
                    self.reports[i] = message[1]
                    break
                elif kind == "error":
                    raise BingfaError(f"generator process {i} failed: {message[1]}")
            if dead and i not in self.reports:
                self.procs[i].join(1.0)
                raise BingfaError(
                    f"generator process {i} died (exit status {self.procs[i].exitcode}); "
                    "if you call run_bench from a script, guard it with "
                    "`if __name__ == '__main__':` (multiprocessing re-imports the main module)"
                )

    def counter_totals(self) -> list[int]:
        """Live totals over workers: replies, errors, open connections, sent."""
        values = list(self.counters)
        return [sum(values[k::COUNTERS_PER_WORKER]) for k in range(COUNTERS_PER_WORKER)]

    def close(self) -> None:
        """Stop every worker still running; reap them all."""
        for proc in self.procs:
            proc.join(0.5 if proc.exitcode is None else 0)
        for proc in self.procs:
            if proc.exitcode is None:
                proc.terminate()
        for proc in self.procs:
            proc.join(2.0)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        for pipe in self.pipes:
            pipe.close()


def run_config(
    config: BenchConfig,
    *,
    on_window: WindowHook | None = None,
    on_progress: ProgressHook | None = None,
) -> BenchResult:
    """:func:`run_bench` for a ready :class:`BenchConfig`."""
    config = config.validated()
    plans = _plans(config)
    _check_fd_hard_limit(max(p.fd_needed for p in plans))
    check_port_range(config.connections)
    workers = _Workers(plans)
    interrupted = False
    try:
        started = time.monotonic()
        n_conn_rounds = math.ceil(max(p.connections for p in plans) / config.connect_concurrency)
        connect_deadline = started + 30.0 + n_conn_rounds * config.timeout

        def progress(phase: str) -> None:
            if on_progress is not None:
                replies, errors, conns, sent = workers.counter_totals()
                on_progress(
                    {
                        "phase": phase,
                        "elapsed": time.monotonic() - started,
                        "replies": replies,
                        "errors": errors,
                        "connections": conns,
                        "sent": sent,
                    }
                )

        try:
            while len(workers.connected) + len(workers.reports) < len(plans):
                if time.monotonic() > connect_deadline:
                    raise BingfaError("the generator processes did not finish connecting in time")
                workers.poll(0.25)
                progress("connecting")
            connected = sum(c[0] for c in workers.connected.values())
            if connected == 0:
                workers.send_all(("stop",))
                t0 = time.monotonic()
            else:
                t0 = time.monotonic() + _START_LEAD
                workers.send_all(("start", t0))
            window_start = t0 + config.warmup
            window_end = window_start + config.duration if config.duration is not None else None
            hooks_due = ["start", "end"] if on_window is not None and connected else []
            while len(workers.reports) < len(plans):
                now = time.monotonic()
                if hooks_due and hooks_due[0] == "start" and now >= window_start:
                    assert on_window is not None
                    on_window(hooks_due.pop(0))
                if hooks_due == ["end"] and window_end is not None and now >= window_end:
                    assert on_window is not None
                    on_window(hooks_due.pop(0))
                next_hook = window_start if hooks_due[:1] == ["start"] else window_end
                wait = 0.25
                if hooks_due and next_hook is not None:
                    wait = min(wait, max(0.0, next_hook - now))
                workers.poll(wait)
                if now < window_start:
                    phase = "warmup"
                elif window_end is None or now < window_end:
                    phase = "measuring"
                else:
                    phase = "draining"
                progress(phase)
            if hooks_due:
                assert on_window is not None
                for event in hooks_due:
                    on_window(event)
        except KeyboardInterrupt:
            interrupted = True
            workers.send_all(("stop",))
            deadline = time.monotonic() + 5.0
            try:
                while len(workers.reports) < len(plans) and time.monotonic() < deadline:
                    workers.poll(0.25)
            except KeyboardInterrupt:
                pass
            if len(workers.reports) < len(plans):
                raise
        return _merge(config, plans, workers, interrupted)
    finally:
        workers.close()


def _merge(
    config: BenchConfig, plans: list[WorkerPlan], workers: _Workers, interrupted: bool
) -> BenchResult:
    reports = [workers.reports[i] for i in range(len(plans))]
    hist = new_histogram()
    hist_u = new_histogram() if config.rate is not None else None
    errors = dict.fromkeys(ERROR_KINDS, 0)
    samples: dict[str, str] = {}
    for report in reports:
        hist.add(HdrHistogram.decode(report.hist))
        if hist_u is not None and report.hist_uncorrected is not None:
            hist_u.add(HdrHistogram.decode(report.hist_uncorrected))
        for kind, n in report.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        for kind, text in report.error_samples.items():
            samples.setdefault(kind, text)
    requests = sum(r.requests for r in reports)
    aborted = next((r.aborted for r in reports if r.aborted), None)
    starts = [r.window_start for r in reports if r.window_start > 0]
    ends = [max(r.window_end, r.last_reply) for r in reports if r.window_start > 0]
    if not starts:
        duration = 0.0  # never started: no connection, or stopped while connecting
    elif config.duration is not None and not interrupted and aborted is None:
        duration = config.duration
    else:
        duration = max(0.0, max(ends) - min(starts))
    rps = requests / duration if duration > 0 else 0.0
    busy = [min(1.0, (r.cpu_s + r.wait_s) / r.wall_s) if r.wall_s > 0 else 0.0 for r in reports]
    cpu = [min(1.0, r.cpu_s / r.wall_s) if r.wall_s > 0 else 0.0 for r in reports]
    open_loop = config.rate is not None
    connected = sum(workers.connected.get(i, (0, {}, {}))[0] for i in range(len(plans)))
    return BenchResult(
        host=config.host,
        port=config.port,
        protocol=config.protocol,
        mode=config.mode,
        connections=config.connections,
        connected=connected,
        processes=len(plans),
        requests=requests,
        sent=sum(r.sent for r in reports),
        duration_s=duration,
        rps=rps,
        latency_ms=summarize(hist),
        errors=errors,
        error_samples=samples,
        target_rps=config.rate,
        achieved_rps=rps if open_loop else None,
        missed=sum(r.missed for r in reports) if open_loop else None,
        unsent=sum(r.unsent for r in reports) if open_loop else None,
        latency_uncorrected_ms=summarize(hist_u) if hist_u is not None else None,
        generator_saturated=any(b >= SATURATION_THRESHOLD for b in busy),
        generator_busy=busy,
        generator_cpu=cpu,
        warmup_s=config.warmup,
        warmup_requests=sum(r.warmup_requests for r in reports),
        interrupted=interrupted,
        aborted=aborted,
        histogram=hist,
        histogram_uncorrected=hist_u,
    )


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
