"""Server CPU time per request: bingfa's four models beside hand-written reference servers.

What is measured
    Echo with 64-byte messages over 50 persistent loopback connections. For every server the
    same closed-loop load runs for a fixed window (after a warm-up); the load generator counts
    the requests answered in that window, and the server's own CPU accounting
    (``psutil.Process(pid).cpu_times()``, user + system, all its threads) is read at exactly
    the window's start and end. The result is **server CPU µs per request**. Throughput (req/s)
    is shown too, but it is not the figure of merit: the machine has 2 cores shared by the
    server and the load generator, so req/s depends on the split; CPU per request does not
    (much).

Servers
    * ``bingfa <model>``: ``python -m bingfa serve echo --model <model> --protocol <p>``, for
      each model (thread, threadpool, gevent, asyncio) and protocol (raw, frame);
    * the references, tiny standalone scripts in ``benchmarks/refservers/``, each a raw echo
      (``recv`` → send the same bytes): a bare uvloop Protocol server, a bare gevent
      StreamServer, a bare ``socketserver.ThreadingTCPServer``. For the ``frame`` comparison
      they echo the frames raw: a frame echoed as is is a valid frame reply, so they are the
      zero-overhead baseline of framing too.

    thread and threadpool are compared to socketserver, gevent to StreamServer, asyncio to
    the uvloop Protocol server. Targets: ratio ≤ 1.15 with ``raw``, ≤ 1.3 with ``frame``.

Load generation
    ``--generators`` processes (default 2), each with ``--connections / --generators`` uvloop
    Protocol clients: send one message (``raw``: 64 bytes; ``frame``: 4-byte ``!I`` length +
    64 bytes), wait until the whole reply has arrived (same length, checked byte for byte),
    send the next. Identical for every server. The generator processes are started once and
    reused by every run; each request increments a counter in shared memory, so the
    request count and the server CPU are sampled at the same instant.

Noise
    Every configuration runs ``--rounds`` times (default 3), the rounds interleaved
    (round-robin over all configurations, each round starting at a different one), and the
    median is reported. Each run gets a fresh server process.

Usage::

    python benchmarks/server_cpu.py                 # full run, about 3 minutes
    python benchmarks/server_cpu.py --quick         # one short round, under a minute
    python benchmarks/server_cpu.py --models asyncio --protocols raw --json out.json

Exit status: 0 when every run completed (targets missed or not; ``--strict`` makes a missed
target exit 1), 1 when a run failed (server did not start, errors on the wire, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bingfa.spawn import ServerProcess

HERE = Path(__file__).resolve().parent
REFSERVERS = HERE / "refservers"

MODELS = ("thread", "threadpool", "gevent", "asyncio")
PROTOCOLS = ("raw", "frame")
TARGETS = {"raw": 1.15, "frame": 1.3}
"""Largest acceptable ratio of a bingfa model's CPU per request to its reference's."""

REFERENCES = {
    "socketserver": "socketserver_echo.py",
    "gevent": "gevent_echo.py",
    "uvloop": "uvloop_echo.py",
}
"""Reference server name → its script in ``benchmarks/refservers/``."""

REFERENCE_OF = {
    "thread": "socketserver",
    "threadpool": "socketserver",
    "gevent": "gevent",
    "asyncio": "uvloop",
}
"""bingfa model → the reference server it is compared to."""

REFERENCE_LABEL = {
    "socketserver": "ref socketserver",
    "gevent": "ref gevent StreamServer",
    "uvloop": "ref uvloop Protocol",
}

_SLOT = 8
"""Counter stride in the shared array, in 8-byte words: one cache line per generator."""


# --- load generator (runs in its own processes) ----------------------------------------------


@dataclass(frozen=True)
class Job:
    """What one generator process does in one run."""

    host: str
    port: int
    protocol: str
    size: int
    connections: int
    max_seconds: float


class _EchoClient(asyncio.Protocol):
    """One closed-loop connection: send the request, wait for the whole reply, repeat."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.request = gen.request
        self.expect = len(gen.request)
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        """Send the request; the connection is busy until the whole reply is back."""
        assert self.transport is not None
        self.busy = True
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Accumulate the reply; once whole, check it, count it and send the next request."""
        buf = self.buf
        if not buf and len(data) == self.expect:
            reply: bytes | bytearray = data  # the common case: the reply in one chunk
        else:
            buf += data
            if len(buf) < self.expect:
                return
            reply = buf
        gen = self.gen
        if reply != self.request:
            gen.fail(f"wrong reply: {bytes(reply[:80])!r}")
            return
        buf.clear()
        self.busy = False
        gen.count()
        if gen.stopping:
            gen.idle_check()
        else:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        """A connection the server closes before the run stops fails the run."""
        self.busy = False
        if not self.gen.stopping:
            self.gen.fail(f"server closed the connection: {exc or 'EOF'}")
        self.gen.idle_check()


class _Generator:
    """One generator process's connections, counter and stop logic for one run."""

    def __init__(self, job: Job, counters: Any, index: int, control: Any) -> None:
        payload = bytes((i * 7 + 13) % 256 for i in range(job.size))
        self.request = struct.pack("!I", job.size) + payload if job.protocol == "frame" else payload
        self.job = job
        self.counters = memoryview(counters).cast("B").cast("q")
        self.slot = index * _SLOT
        self.index = index
        self.control = control
        self.stopping = False
        self.error: str | None = None
        self.clients: list[_EchoClient] = []
        self.idle: asyncio.Future[None] | None = None

    def count(self) -> None:
        """One more reply: bump this process's counter in shared memory."""
        self.counters[self.slot] += 1

    def fail(self, message: str) -> None:
        """Record the first error and end the run: abort every connection."""
        if self.error is None:
            self.error = message
        self.stopping = True
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()

    def idle_check(self) -> None:
        """Once stopping, resolve ``idle`` when no connection awaits a reply any more."""
        idle = self.idle
        if idle is not None and not idle.done() and not any(c.busy for c in self.clients):
            idle.set_result(None)

    async def run(self) -> dict[str, Any]:
        """Connect, signal ready, loop until the stop flag (or the deadline), drain, close.

        Returns:
            ``{"error": None}``, or the first error seen (the run is then invalid).
        """
        job = self.job
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + job.max_seconds
        self.idle = loop.create_future()
        try:
            for _ in range(job.connections):
                _, client = await loop.create_connection(
                    lambda: _EchoClient(self), job.host, job.port
                )
                self.clients.append(client)
            self.control[1 + self.index] = 1  # ready
            for client in self.clients:
                client.send()
            # Poll the stop flag; stop by ourselves at the deadline whatever happens.
            while not self.stopping and not self.control[0] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.stopping = True
            self.idle_check()
            try:
                await asyncio.wait_for(asyncio.shield(self.idle), 2.0)
            except TimeoutError:
                pass
        except OSError as exc:
            self.fail(f"cannot connect to {job.host}:{job.port}: {exc}")
        finally:
            for client in self.clients:
                if client.transport is not None:
                    client.transport.close()
            await asyncio.sleep(0)
        return {"error": self.error}


def _generator_main(
    index: int, conn: multiprocessing.connection.Connection, counters: Any, control: Any
) -> None:
    """Body of a generator process: run the jobs received on ``conn`` until ``None``."""
    import uvloop

    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        try:
            result = uvloop.run(_Generator(job, counters, index, control).run())
        except Exception as exc:  # report, keep serving jobs
            result = {"error": f"generator crashed: {exc!r}"}
        conn.send(result)


class LoadGenerators:
    """A pool of generator processes, reused by every run. A context manager: always stopped.

    Shared memory: ``counters`` (requests answered, one cache line per process) and
    ``control`` (word 0: stop flag; word 1 + i: process i connected).
    """

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counters = RawArray(ctypes.c_int64, processes * _SLOT)
        self.control = RawArray(ctypes.c_int64, 1 + processes)
        self.conns: list[multiprocessing.connection.Connection] = []
        self._reports: dict[int, dict[str, Any]] = {}
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_generator_main,
                args=(i, child, self.counters, self.control),
                name=f"loadgen-{i}",
                daemon=True,
            )
            self.conns.append(parent)
            self.procs.append(proc)

    def __enter__(self) -> LoadGenerators:
        try:
            for proc in self.procs:
                proc.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the generator processes."""
        return [p.pid for p in self.procs if p.pid is not None]

    def start(
        self, host: str, port: int, protocol: str, size: int, connections: int, max_seconds: float
    ) -> None:
        """Reset the counters and start a run on every process (``connections`` in total)."""
        n = len(self.procs)
        self._reports = {}
        for i in range(len(self.counters)):
            self.counters[i] = 0
        for i in range(len(self.control)):
            self.control[i] = 0
        for i, conn in enumerate(self.conns):
            share = connections // n + (1 if i < connections % n else 0)
            conn.send(Job(host, port, protocol, size, share, max_seconds))

    def wait_ready(self, timeout: float) -> None:
        """Wait until every process has all its connections open.

        Raises:
            RuntimeError: a process reported an error first, or the timeout passed.
        """
        deadline = time.monotonic() + timeout
        while not all(self.control[1 + i] for i in range(len(self.procs))):
            for i, conn in enumerate(self.conns):
                if i not in self._reports and conn.poll():
                    report = self._receive(i)
                    raise RuntimeError(f"load generator failed: {report.get('error')}")
            if time.monotonic() > deadline:
                raise RuntimeError("load generator did not connect in time")
            time.sleep(0.005)

    def _receive(self, i: int) -> dict[str, Any]:
        """Read process ``i``'s report of the current run (it has one waiting, or is dead)."""
        try:
            report: dict[str, Any] = self.conns[i].recv()
        except (EOFError, OSError):
            report = {"error": f"load generator process {i} died"}
        self._reports[i] = report
        return report

    def requests(self) -> int:
        """Requests answered so far in this run, all processes together."""
        return sum(self.counters[i * _SLOT] for i in range(len(self.procs)))

    def finish(self, timeout: float = 10.0) -> list[str]:
        """Stop the run, wait for every process's report; return the errors they saw."""
        self.control[0] = 1
        deadline = time.monotonic() + timeout
        for i, conn in enumerate(self.conns):
            if i not in self._reports and conn.poll(max(0.0, deadline - time.monotonic())):
                self._receive(i)
        errors = []
        for i in range(len(self.conns)):
            report = self._reports.get(i)
            if report is None:
                errors.append(f"load generator {i} did not report back")
            elif report.get("error"):
                errors.append(str(report["error"]))
        return errors

    def close(self) -> None:
        """Stop every process: ask politely, then terminate, then kill."""
        self.control[0] = 1
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self.procs:
            if proc.pid is None:
                continue
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


# --- servers -----------------------------------------------------------------------------------


class RefServerProcess(ServerProcess):
    """A reference server script run like a ``bingfa serve`` child (same start/stop logic)."""

    def __init__(self, name: str, start_timeout: float = 30.0) -> None:
        super().__init__(start_timeout=start_timeout)
        self.args = [sys.executable, str(REFSERVERS / REFERENCES[name]), "--port", "0"]
        self.model = name


@dataclass(frozen=True)
class Config:
    """One server configuration measured under one protocol's load."""

    name: str
    """``bingfa <model>`` or ``ref <name>``."""
    protocol: str
    kind: str
    """``bingfa`` or ``reference``."""
    model: str
    """bingfa model, or reference server name."""
    reference: str | None = None
    """Name of the reference configuration (bingfa configurations only)."""

    def server(self, connections: int) -> ServerProcess:
        """A not-yet-started server process for this configuration.

        bingfa servers get at least one worker thread per connection (``threadpool`` would
        otherwise leave connections waiting in its queue).
        """
        if self.kind == "reference":
            return RefServerProcess(self.model)
        threads = max(64, connections)
        return ServerProcess("echo", self.model, protocol=self.protocol, threads=threads)


def configurations(models: Sequence[str], protocols: Sequence[str]) -> list[list[Config]]:
    """Every configuration to measure, in groups: per protocol and reference server, the
    reference followed by the bingfa models compared to it. Flattened, this is table order."""
    groups = []
    for protocol in protocols:
        for ref in REFERENCES:
            mine = [m for m in models if REFERENCE_OF[m] == ref]
            if not mine:
                continue
            ref_name = REFERENCE_LABEL[ref]
            group = [Config(ref_name, protocol, "reference", ref)]
            group += [Config(f"bingfa {m}", protocol, "bingfa", m, ref_name) for m in mine]
            groups.append(group)
    return groups


def schedule(groups: Sequence[Sequence[Config]], round_: int, rounds: int) -> list[Config]:
    """The order of the runs of one round.

    Every round runs every configuration once (round-robin). A group stays together, so each
    bingfa run is next in time to the reference run it is compared with; each round starts
    at a different group, and odd rounds run each group backwards (models first), so that no
    configuration always gets the same slot.
    """
    shift = round_ * len(groups) // rounds
    order: list[Config] = []
    for i in range(len(groups)):
        group = list(groups[(i + shift) % len(groups)])
        order += reversed(group) if round_ % 2 else group
    return order


# --- measurement -------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured window of one configuration."""

    round: int
    requests: int = 0
    seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    generator_cpu_seconds: float = 0.0
    exit_status: int | None = None
    error: str | None = None

    @property
    def us_per_request(self) -> float:
        """Server CPU microseconds per request in the window."""
        return self.server_cpu_seconds / self.requests * 1e6 if self.requests else 0.0

    @property
    def requests_per_second(self) -> float:
        """Requests answered per second of the window."""
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        """This run as a JSON-ready dict, derived figures included."""
        data = asdict(self)
        data["server_cpu_us_per_request"] = self.us_per_request
        data["generator_cpu_us_per_request"] = (
            self.generator_cpu_seconds / self.requests * 1e6 if self.requests else 0.0
        )
        data["requests_per_second"] = self.requests_per_second
        return data


def _cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def measure(
    config: Config,
    gens: LoadGenerators,
    round_: int,
    *,
    size: int,
    connections: int,
    warmup: float,
    duration: float,
) -> Run:
    """Start the server, load it, measure one window, stop everything (even on failure)."""
    run = Run(round_)
    server = config.server(connections)
    try:
        server.start()
        gens.start(
            server.host, server.port, config.protocol, size, connections, warmup + duration + 30
        )
        try:
            target = psutil.Process(server.pid)
            generators = [psutil.Process(pid) for pid in gens.pids]
            gens.wait_ready(timeout=15.0)
            time.sleep(warmup)
            # Sample requests, server CPU and the clock together, at both ends of the window.
            n0, c0, t0 = gens.requests(), _cpu_seconds([target]), time.perf_counter()
            g0 = _cpu_seconds(generators)
            time.sleep(duration)
            n1, c1, t1 = gens.requests(), _cpu_seconds([target]), time.perf_counter()
            g1 = _cpu_seconds(generators)
        finally:
            errors = gens.finish()
        run.requests = n1 - n0
        run.seconds = t1 - t0
        run.server_cpu_seconds = c1 - c0
        run.generator_cpu_seconds = g1 - g0
        if errors:
            run.error = "; ".join(errors)
        elif run.requests <= 0:
            run.error = "no request was answered in the measured window"
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.exit_status = server.stop()
        log = server.log()
        with contextlib.suppress(OSError):
            os.unlink(server.log_path)
    if run.error is None and run.exit_status != 0:
        run.error = f"server exited with status {run.exit_status}: {log[-500:]}"
    return run


@dataclass
class Result:
    """The medians over rounds of one configuration, and its verdict."""

    config: Config
    runs: list[Run] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    ratio: float | None = None
    target: float | None = None
    passed: bool | None = None

    @property
    def ok_runs(self) -> list[Run]:
        """The runs that completed without error."""
        return [r for r in self.runs if r.error is None]

    def median(self, key: Callable[[Run], float]) -> float | None:
        """Median of ``key`` over the successful runs; None when there are none."""
        values = [key(r) for r in self.ok_runs]
        return statistics.median(values) if values else None

    @property
    def us_per_request(self) -> float | None:
        """Median server CPU µs/request."""
        return self.median(lambda r: r.us_per_request)

    @property
    def spread(self) -> float | None:
        """(max - min) / median of µs/request over the rounds; None with fewer than 2 runs."""
        values = [r.us_per_request for r in self.ok_runs]
        if len(values) < 2:
            return None
        return (max(values) - min(values)) / statistics.median(values)

    def to_json(self) -> dict[str, Any]:
        """This row as a JSON-ready dict, with every run."""
        c = self.config
        return {
            "server": c.name,
            "kind": c.kind,
            "model": c.model,
            "protocol": c.protocol,
            "reference": c.reference,
            "requests": self.median(lambda r: r.requests),
            "requests_per_second": self.median(lambda r: r.requests_per_second),
            "server_cpu_us_per_request": self.us_per_request,
            "generator_cpu_us_per_request": self.median(
                lambda r: r.generator_cpu_seconds / r.requests * 1e6
            ),
            "spread": self.spread,
            "ratio": self.ratio,
            "round_ratios": self.ratios,
            "target": self.target,
            "passed": self.passed,
            "errors": [r.error for r in self.runs if r.error],
            "runs": [r.to_json() for r in self.runs],
        }


def judge(results: list[Result]) -> None:
    """Fill in ratio, target and verdict of every bingfa configuration.

    The ratio is the median over rounds of (bingfa µs/request ÷ reference µs/request), each
    bingfa run paired with its reference's run of the same round: the two ran one after the
    other, so slow drifts of the machine's load cancel out.
    """
    refs = {(r.config.name, r.config.protocol): r for r in results if r.config.kind != "bingfa"}
    for result in results:
        c = result.config
        if c.kind != "bingfa":
            result.ratio = 1.0
            continue
        assert c.reference is not None
        ref = refs[(c.reference, c.protocol)]
        result.target = TARGETS[c.protocol]
        ref_runs = {run.round: run for run in ref.ok_runs}
        result.ratios = [
            run.us_per_request / ref_runs[run.round].us_per_request
            for run in result.ok_runs
            if run.round in ref_runs
        ]
        if result.ratios:
            result.ratio = statistics.median(result.ratios)
            result.passed = result.ratio <= result.target


# --- output ------------------------------------------------------------------------------------


def format_table(results: Sequence[Result], header: str) -> str:
    """The results as a plain-text table."""
    cols = [
        "server",
        "protocol",
        "requests",
        "req/s",
        "CPU µs/req",
        "spread",
        "ratio",
        "target",
        "result",
    ]
    rows = []
    for r in results:
        c = r.config
        if not r.ok_runs:
            rows.append([c.name, c.protocol, "-", "-", "-", "-", "-", "-", "ERROR"])
            continue
        if c.kind == "bingfa":
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
            target = f"≤{r.target:.2f}"
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r.passed]
        else:
            ratio, target, verdict = "1.00", "-", "(ref)"
        if len(r.ok_runs) < len(r.runs):
            verdict += "*"
        spread = r.spread
        rows.append(
            [
                c.name,
                c.protocol,
                f"{r.median(lambda x: x.requests):,.0f}",
                f"{r.median(lambda x: x.requests_per_second):,.0f}",
                f"{r.us_per_request:.1f}",
                "-" if spread is None else f"{spread:.0%}",
                ratio,
                target,
                verdict,
            ]
        )
    widths = [max(len(cols[i]), *(len(row[i]) for row in rows)) for i in range(len(cols))]
    left = {0, 1}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [header, line(cols), line(["-" * w for w in widths])]
    previous = None
    for r, row in zip(results, rows, strict=True):
        if previous is not None and r.config.protocol != previous:
            out.append("")
        previous = r.config.protocol
        out.append(line(row))
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Server CPU µs per request: bingfa's models beside reference echo servers.",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 0.25 s warm-up, 1 s window")
    parser.add_argument("--duration", type=float, help="measured window per run, s (default 3)")
    parser.add_argument("--warmup", type=float, help="load before the window, s (default 0.5)")
    parser.add_argument("--rounds", type=int, help="runs per configuration (default 3)")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated bingfa models (default: all)"
    )
    parser.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated: raw,frame (default)"
    )
    parser.add_argument("--connections", type=int, default=50, help="total connections")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--size", type=int, default=64, help="message payload bytes")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 1.0 if quick else 3.0
    if args.warmup is None:
        args.warmup = 0.25 if quick else 0.5
    if args.rounds is None:
        args.rounds = 1 if quick else 3
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for m in args.models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for p in args.protocols:
        if p not in PROTOCOLS:
            parser.error(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    if not args.models or not args.protocols:
        parser.error("need at least one model and one protocol")
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --rounds >= 1")
    if args.generators < 1 or args.connections < args.generators or args.size < 1:
        parser.error("need --generators >= 1, --connections >= --generators, --size >= 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    # SIGTERM unwinds like an exception, so every server and generator is still stopped.
    signal.signal(signal.SIGTERM, _terminate)
    groups = configurations(args.models, args.protocols)
    configs = [c for group in groups for c in group]
    by_config = {c: Result(c) for c in configs}
    results = list(by_config.values())  # table order
    total = len(configs) * args.rounds
    started = time.monotonic()
    print(
        f"server_cpu: {len(configs)} configurations × {args.rounds} rounds, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s each "
        f"({args.generators} generator processes, {args.connections} connections)",
        file=sys.stderr,
        flush=True,
    )
    with LoadGenerators(args.generators) as gens:
        done = 0
        for round_ in range(args.rounds):
            for config in schedule(groups, round_, args.rounds):
                result = by_config[config]
                run = measure(
                    result.config,
                    gens,
                    round_,
                    size=args.size,
                    connections=args.connections,
                    warmup=args.warmup,
                    duration=args.duration,
                )
                result.runs.append(run)
                done += 1
                status = run.error or f"{run.us_per_request:.1f} µs/req, {run.requests:,} req"
                print(
                    f"  [{done}/{total}] round {round_ + 1} {result.config.name} "
                    f"{result.config.protocol}: {status}",
                    file=sys.stderr,
                    flush=True,
                )
    judge(results)
    elapsed = time.monotonic() - started
    header = (
        f"Server CPU per request — echo, {args.size}-byte messages, {args.connections} "
        f"connections, median of {args.rounds} × {args.duration:g} s "
        f"(load generator on the same {psutil.cpu_count()} CPUs)"
    )
    print(format_table(results, header))
    failed_runs = sum(1 for r in results for run in r.runs if run.error)
    missed = [r for r in results if r.passed is False]
    print(
        "\nratio: median over rounds of bingfa ÷ reference CPU µs/req, paired by round; "
        "spread: (max - min) / median over rounds; *: some runs failed (see --json)."
    )
    print(
        f"targets: {sum(1 for r in results if r.passed)} met, {len(missed)} missed"
        + (f"; {failed_runs} runs with errors" if failed_runs else "")
        + f"; {elapsed:.0f} s"
    )
    if args.json:
        data = {
            "benchmark": "server_cpu",
            "unit": "server CPU microseconds per request",
            "settings": {
                "duration": args.duration,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "connections": args.connections,
                "generators": args.generators,
                "message_size": args.size,
                "models": args.models,
                "protocols": args.protocols,
                "targets": TARGETS,
            },
            "machine": {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "cpus": psutil.cpu_count(),
                "clock_ticks_per_second": os.sysconf("SC_CLK_TCK"),
            },
            "elapsed_seconds": elapsed,
            "passed": not missed and not failed_runs,
            "results": [r.to_json() for r in results],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if failed_runs:
        return 1
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
