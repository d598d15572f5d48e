"""``bingfa compare``: the same handlers served under every concurrency model, measured.

For each model (``thread``, ``threadpool``, ``fork``, ``gevent``, ``asyncio``, and worker-process
variants such as ``asyncio×2`` = ``--workers 2``) a fresh ``bingfa serve`` child is started on
127.0.0.1 (port 0) per app, and four workloads run against it:

``echo``
    tiny requests (64 bytes) over a few dozen connections, closed loop: the per-request cost.
``sleep``
    IO-bound: the built-in ``sleep`` app waits ``sleep_ms`` (20 ms) per request, over many
    connections (200), closed loop. Ideal throughput: connections / 20 ms.
``cpu``
    CPU-bound: the built-in ``cpu`` app runs a pure-Python loop calibrated to ~2 ms here, over
    a few connections (8), closed loop.
``idle``
    how many idle connections the model holds and at what memory: open N connections, send one
    request on each and count the replies (connections really being served), then measure the
    server's memory (PSS of the server and all its children) while they sit idle: growth ÷
    answered connections.

Per row: req/s, p50/p99, the server's CPU µs per request (user + system of the server process
and all its children over the measured window), server memory, errors. Every server is stopped
whatever happens (errors, Ctrl-C, SIGTERM).

The verdicts set the numbers against the seed notes' guide — "IO-bound → threads, many IO tasks
→ coroutines, CPU-bound → processes" — and are computed from the rows, never written in advance.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from bingfa.bench._limits import FD_MARGIN, check_port_range, ensure_fd_limit
from bingfa.bench._worker import ERROR_KINDS
from bingfa.bench.runner import BenchResult, run_bench
from bingfa.errors import BingfaError, UsageError
from bingfa.protocol import make_codec
from bingfa.server import MODELS
from bingfa.spawn import ServerProcess

__all__ = [
    "DEFAULT_MODELS",
    "WORKLOADS",
    "CompareResult",
    "CompareSettings",
    "ModelSpec",
    "Row",
    "calibrate_cpu_n",
    "compute_verdicts",
    "parse_models",
    "run_compare",
]

WORKLOADS: tuple[str, ...] = ("echo", "sleep", "cpu", "idle")
"""Workload names, in report order."""

DEFAULT_MODELS = "thread,threadpool,fork,gevent,asyncio,gevent×2,asyncio×2"
"""The models ``compare`` runs unless told otherwise."""

THREADS = ("thread", "threadpool")
COROUTINES = ("gevent", "asyncio")

HOLDS_RATIO = 1.1
"""A guide rule "holds" when its side wins by at least 10 %; within 10 % it is a draw."""

_APP_OF = {"echo": "echo", "idle": "echo", "sleep": "sleep", "cpu": "cpu"}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One column of the comparison: a model, optionally under ``--workers N``."""

    model: str
    workers: int | None = None

    @property
    def name(self) -> str:
        """``asyncio`` or ``asyncio×2``."""
        return self.model if self.workers is None else f"{self.model}×{self.workers}"

    @property
    def multiprocess(self) -> bool:
        """Whether requests are served by more than one process (fork, or workers)."""
        return self.model == "fork" or self.workers is not None

    @property
    def family(self) -> str:
        """``threads``, ``coroutines`` or ``processes`` (the guide's three answers)."""
        if self.multiprocess:
            return "processes"
        return "threads" if self.model in THREADS else "coroutines"


_MODEL_RE = re.compile(r"^(?P<model>[a-z]+)(?:\s*[×x*]\s*(?P<workers>\d+))?$")


def parse_models(text: str) -> list[ModelSpec]:
    """Parse ``thread,asyncio×2,gevent*4`` (``×``, ``x`` or ``*`` before the worker count).

    Raises:
        UsageError: an unknown model, a bad worker count, or an empty list.
    """
    specs: list[ModelSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _MODEL_RE.match(part)
        if not match or match["model"] not in MODELS:
            raise UsageError(
                f"unknown model {part!r}; choose from {', '.join(MODELS)}, optionally with "
                "×N for N worker processes (e.g. asyncio×2)"
            )
        workers = int(match["workers"]) if match["workers"] else None
        if workers is not None and workers < 1:
            raise UsageError(f"{part!r}: the worker count must be at least 1")
        specs.append(ModelSpec(match["model"], workers))
    if not specs:
        raise UsageError("no models given")
    return specs


def parse_workloads(text: str) -> list[str]:
    """Parse ``echo,sleep``. Raises UsageError for an unknown name or an empty list."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        if name not in WORKLOADS:
            raise UsageError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if not names:
        raise UsageError("no workloads given")
    return [w for w in WORKLOADS if w in names]


def calibrate_cpu_n(target_ms: float = 2.0) -> int:
    """The ``cpu`` app's N for about ``target_ms`` per request on this machine (best of 5,
    rounded to a multiple of 1000, at least 1000)."""
    from bingfa.apps import cpu_work

    probe = 20_000
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        cpu_work(probe)
        best = min(best, time.perf_counter() - start)
    n = probe * (target_ms / 1000.0) / best
    return max(1000, round(n / 1000.0) * 1000)


@dataclass(frozen=True, slots=True)
class CompareSettings:
    """Everything that shapes a comparison (also written to the JSON).

    Attributes:
        quick: the short preset (about a minute for the default models).
        warmup, duration: seconds per echo/sleep/cpu run.
        echo_connections, sleep_connections, cpu_connections, idle_connections: per workload.
        sleep_ms: the ``sleep`` app's wait per request.
        cpu_n: the ``cpu`` app's loop count (None: calibrate to ``cpu_ms``).
        cpu_ms: target ms per ``cpu`` request for the calibration.
        timeout: seconds per request (and connect) in the generator; also how long ``idle``
            waits for its replies.
        processes: generator processes (None: the generator's default rule).
    """

    quick: bool = False
    warmup: float = 1.0
    duration: float = 5.0
    echo_connections: int = 50
    sleep_connections: int = 200
    sleep_ms: int = 20
    cpu_connections: int = 8
    cpu_n: int | None = None
    cpu_ms: float = 2.0
    idle_connections: int = 2000
    timeout: float = 5.0
    processes: int | None = None

    @classmethod
    def preset(cls, quick: bool, **overrides: Any) -> CompareSettings:
        """The quick or full preset, with ``overrides`` (None values are ignored)."""
        base: dict[str, Any] = (
            {
                "quick": True,
                "warmup": 0.25,
                "duration": 1.0,
                "idle_connections": 1000,
                "timeout": 2.0,
            }
            if quick
            else {"quick": False}
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**base)
        if settings.duration <= 0 or settings.warmup < 0 or settings.timeout <= 0:
            raise UsageError("duration and timeout must be positive, warmup not negative")
        return settings


@dataclass(slots=True)
class Row:
    """One model × workload measurement. ``ok`` False: ``error`` says why (nothing else is
    meaningful then). Byte sizes are of the server process tree; ``pss`` is None where the OS
    does not report it (then per-connection figures use RSS)."""

    model: str
    workload: str
    ok: bool = False
    error: str | None = None
    requests: int = 0
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us_per_request: float | None = None
    server_rss_bytes: int | None = None
    server_pss_bytes: int | None = None
    server_processes: int | None = None
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    generator_saturated: bool = False
    connections: int = 0
    held: int | None = None
    memory_before_bytes: int | None = None
    bytes_per_connection: float | None = None
    server_exit_status: int | None = None
    bench: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class CompareResult:
    """Rows for every requested model × workload, the verdicts, and how they were made."""

    settings: CompareSettings
    models: list[str]
    workloads: list[str]
    rows: list[Row]
    verdicts: dict[str, str]
    machine: dict[str, Any]
    interrupted: bool = False

    def row(self, model: str, workload: str) -> Row | None:
        return next((r for r in self.rows if r.model == model and r.workload == workload), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (schema: docs/bench.md, "compare JSON")."""
        return {
            "schema": "bingfa.compare/1",
            "settings": asdict(self.settings),
            "machine": self.machine,
            "models": self.models,
            "workloads": self.workloads,
            "results": [r.to_json() for r in self.rows],
            "verdicts": self.verdicts,
            "interrupted": self.interrupted,
        }


# -- the server's side ------------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every descendant, live or already reaped."""
    total = 0.0
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_memory(pid: int) -> tuple[int, int | None, int]:
    """``(rss, pss, processes)`` summed over ``pid`` and its descendants. RSS counts pages
    shared between processes (fork children) once per process; PSS splits them, so its sum is
    the tree's real footprint. PSS is None where unavailable."""
    rss = 0
    pss: int | None = 0
    count = 0
    for proc in _tree(pid):
        try:
            if pss is not None:
                try:
                    full = proc.memory_full_info()
                    rss += full.rss
                    pss += getattr(full, "pss", 0)
                    count += 1
                    continue
                except (psutil.AccessDenied, AttributeError):
                    pss = None
            rss += proc.memory_info().rss
            count += 1
        except psutil.Error:
            continue
    return rss, pss, count


def _log_reason(server: ServerProcess, exc: BaseException) -> str:
    """One line saying why a server did not start (the last line of its log, usually)."""
    try:
        lines = [line for line in server.log().splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:300]
    text = str(exc).strip().splitlines()
    return (lines[-1] if lines else (text[0] if text else type(exc).__name__)).strip()[:300]


# -- the workloads ----------------------------------------------------------------------------


def _bench_row(
    spec: ModelSpec,
    workload: str,
    server: ServerProcess,
    settings: CompareSettings,
    connections: int,
    payload: bytes,
) -> Row:
    row = Row(spec.name, workload, connections=connections)
    samples: dict[str, float] = {}
    memory: list[tuple[int, int | None, int]] = []

    def on_window(event: str) -> None:
        samples[event] = tree_cpu_seconds(server.pid)
        if event == "end":
            memory.append(tree_memory(server.pid))

    result: BenchResult = run_bench(
        server.host,
        server.port,
        connections=connections,
        duration=settings.duration,
        warmup=settings.warmup,
        payload=payload,
        timeout=settings.timeout,
        processes=settings.processes,
        on_window=on_window,
    )
    if result.interrupted:
        raise KeyboardInterrupt
    bench = result.to_json()
    bench.pop("latency_hdr", None)
    bench.pop("latency_uncorrected_hdr", None)
    row.bench = bench
    row.requests = result.requests
    row.rps = result.rps
    row.p50_ms = result.latency_ms["p50"]
    row.p99_ms = result.latency_ms["p99"]
    row.errors = dict(result.errors)
    row.generator_saturated = result.generator_saturated
    if result.requests and "start" in samples and "end" in samples:
        row.cpu_us_per_request = (samples["end"] - samples["start"]) / result.requests * 1e6
    if memory:
        row.server_rss_bytes, row.server_pss_bytes, row.server_processes = memory[0]
    if result.connected == 0:
        row.error = next(iter(result.error_samples.values()), "could not connect")
        return row
    if result.requests == 0:
        row.error = "no request was answered: " + (
            next(iter(result.error_samples.values()), "") or "?"
        )
        return row
    row.ok = True
    return row


class _Idle(asyncio.Protocol):
    """An idle client connection that can send one request and wait for its reply."""

    def __init__(self, protocol: str, replied: Callable[[], None]) -> None:
        self.feed = make_codec(protocol).feed
        self.replied = replied
        self.transport: asyncio.Transport | None = None
        self.got_reply = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.feed(data)
        except BingfaError:
            return
        if replies and not self.got_reply:
            self.got_reply = True
            self.replied()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def _hold_idle(
    host: str, port: int, count: int, pid: int, wait: float, patience: float
) -> dict[str, Any]:
    """Open ``count`` connections, send one request on each and collect the replies — until all
    came, or none came for ``patience`` seconds, or ``wait`` seconds passed — then, with every
    answered connection idle again, measure the server's memory. Closes every connection
    before returning."""
    loop = asyncio.get_running_loop()
    errors = dict.fromkeys(ERROR_KINDS, 0)
    sem = asyncio.Semaphore(200)
    done = asyncio.Event()
    replies = 0
    conns: list[_Idle] = []

    def replied() -> None:
        nonlocal replies
        replies += 1
        if replies >= len(conns):
            done.set()

    async def open_one() -> _Idle | None:
        async with sem:
            try:
                async with asyncio.timeout(wait):
                    _, proto = await loop.create_connection(
                        lambda: _Idle("frame", replied), host, port
                    )
                    return proto
            except TimeoutError:
                errors["connect_timeout"] += 1
            except ConnectionRefusedError:
                errors["connect_refused"] += 1
            except OSError:
                errors["connect_error"] += 1
            return None

    try:
        opened = await asyncio.gather(*(open_one() for _ in range(count)))
        conns = [c for c in opened if c is not None]
        wire = make_codec("frame").encode(b"ping")
        for conn in conns:
            if conn.transport is not None and not conn.lost:
                conn.transport.write(wire)
        # A thread or a process per connection takes a while to start for each: wait as long
        # as replies keep coming; a pool that serves no more stops them at once.
        deadline = time.monotonic() + wait
        seen = -1
        while conns and not done.is_set() and replies > seen and time.monotonic() < deadline:
            seen = replies
            try:
                async with asyncio.timeout(min(patience, max(0.0, deadline - time.monotonic()))):
                    await done.wait()
            except TimeoutError:
                pass
        await asyncio.sleep(0.2)  # let the answered connections go idle again
        memory = tree_memory(pid)
        held = sum(1 for c in conns if c.got_reply)
        lost = sum(1 for c in conns if c.lost and not c.got_reply)
        errors["closed"] += lost
        errors["timeout"] += len(conns) - held - lost
        return {"opened": len(conns), "held": held, "memory": memory, "errors": errors}
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)


def _idle_row(spec: ModelSpec, server: ServerProcess, settings: CompareSettings) -> Row:
    import uvloop

    row = Row(spec.name, "idle", connections=settings.idle_connections)
    before = tree_memory(server.pid)
    wait = 30.0 if settings.quick else 120.0
    outcome = uvloop.run(
        _hold_idle(
            server.host,
            server.port,
            settings.idle_connections,
            server.pid,
            wait=wait,
            patience=settings.timeout,
        )
    )
    rss, pss, procs = outcome["memory"]
    row.memory_before_bytes = before[1] if before[1] is not None else before[0]
    row.server_rss_bytes, row.server_pss_bytes, row.server_processes = rss, pss, procs
    row.held = outcome["held"]
    row.errors = outcome["errors"]
    if outcome["opened"] == 0:
        row.error = "no connection could be opened"
        return row
    if row.held == 0:
        row.error = "no connection was answered"
        return row
    after = pss if pss is not None else rss
    # Per connection being served: connections queued unserved (threadpool beyond its pool)
    # cost the server nothing but a socket in a queue.
    row.bytes_per_connection = (after - row.memory_before_bytes) / row.held
    row.ok = True
    return row


# -- the comparison ---------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "loadavg_at_start": [round(x, 2) for x in load],
    }


Reporter = Callable[[str], None]


def run_compare(
    models: Sequence[ModelSpec],
    workloads: Iterable[str],
    settings: CompareSettings,
    *,
    report: Reporter | None = None,
) -> CompareResult:
    """Serve and measure every model × workload; return all rows and the verdicts.

    Args:
        models: what to compare (:func:`parse_models`).
        workloads: names from :data:`WORKLOADS`.
        settings: :meth:`CompareSettings.preset`.
        report: called with a line of progress text before each run (e.g. print to stderr).

    A model whose server cannot start (e.g. ``--workers`` not supported) gets failed rows with
    the reason; the comparison goes on. Every server is stopped before this returns or raises.
    On Ctrl-C the rows so far are returned with ``interrupted`` set.

    Raises:
        UsageError: a limit (file descriptors, local ports) forbids the connection counts.
    """
    wanted = [w for w in WORKLOADS if w in set(workloads)]
    settings_used = settings
    if "cpu" in wanted and settings.cpu_n is None:
        from dataclasses import replace

        settings_used = replace(settings, cpu_n=calibrate_cpu_n(settings.cpu_ms))
    most = max(
        settings.idle_connections if "idle" in wanted else 0,
        settings.sleep_connections if "sleep" in wanted else 0,
        settings.echo_connections,
        settings.cpu_connections,
    )
    # The servers inherit this process's limit: raise it before starting any.
    ensure_fd_limit(2 * most + FD_MARGIN, who="bingfa compare and its servers")
    check_port_range(most)
    say = report or (lambda _text: None)
    rows: list[Row] = []
    interrupted = False
    machine = _machine()
    try:
        for spec in models:
            for app in ("echo", "sleep", "cpu"):
                group = [w for w in wanted if _APP_OF[w] == app]
                if group:
                    rows.extend(_run_group(spec, app, group, settings_used, say))
    except KeyboardInterrupt:
        interrupted = True
    names = [m.name for m in models]
    return CompareResult(
        settings=settings_used,
        models=names,
        workloads=wanted,
        rows=rows,
        verdicts=compute_verdicts(rows, models, wanted, settings_used),
        machine=machine,
        interrupted=interrupted,
    )


def _run_group(
    spec: ModelSpec, app: str, group: list[str], settings: CompareSettings, say: Reporter
) -> list[Row]:
    """Start one server for ``app`` under ``spec``; run the workloads in ``group`` on it."""
    options: dict[str, Any] = {"log_level": "warning"}
    if spec.workers is not None:
        options["workers"] = spec.workers
        # Each worker on its own SO_REUSEPORT socket: the few long-lived connections of a
        # workload spread over the workers by hash, instead of possibly all landing on the
        # worker that happened to be awake (see docs/workers.md).
        options["reuse_port"] = True
    # The user's BINGFA_* settings (BINGFA_WORKERS, BINGFA_PROTOCOL, ...) must not reach the
    # servers: every one must run with the defaults of its model. click ignores empty values.
    clean = {name: "" for name in os.environ if name.startswith("BINGFA_")}
    server = ServerProcess(app, spec.model, start_timeout=30.0, env=clean, **options)
    rows: list[Row] = []
    try:
        say(f"{spec.name}: starting `{app}` server")
        try:
            server.start()
        except BingfaError as exc:
            reason = f"server did not start: {_log_reason(server, exc)}"
            return [Row(spec.name, w, error=reason) for w in group]
        for workload in group:
            say(f"{spec.name}: {workload}")
            try:
                rows.append(_run_workload(spec, workload, server, settings))
            except BingfaError as exc:
                rows.append(Row(spec.name, workload, error=str(exc)[:300]))
            if server.proc is not None and server.proc.poll() is not None:
                for rest in group[len(rows) :]:
                    rows.append(Row(spec.name, rest, error="server exited"))
                break
    finally:
        status = server.stop()
        for row in rows:
            row.server_exit_status = status
        try:
            os.unlink(server.log_path)
        except OSError:
            pass
    return rows


def _run_workload(
    spec: ModelSpec, workload: str, server: ServerProcess, settings: CompareSettings
) -> Row:
    if workload == "idle":
        return _idle_row(spec, server, settings)
    if workload == "echo":
        return _bench_row(spec, workload, server, settings, settings.echo_connections, b"x" * 64)
    if workload == "sleep":
        payload = str(settings.sleep_ms).encode()
        return _bench_row(spec, workload, server, settings, settings.sleep_connections, payload)
    assert settings.cpu_n is not None
    payload = str(settings.cpu_n).encode()
    return _bench_row(spec, workload, server, settings, settings.cpu_connections, payload)


# -- verdicts ---------------------------------------------------------------------------------


def _best(rows: list[Row], key: Callable[[Row], float]) -> Row | None:
    return max(rows, key=key, default=None)


def _rps(row: Row) -> float:
    return row.rps or 0.0


def _ratio_phrase(a: Row, b: Row) -> tuple[float, str]:
    ratio = _rps(a) / _rps(b) if _rps(b) > 0 else float("inf")
    text = f"{a.model} served {ratio:.1f}× {b.model} ({_rps(a):,.0f} vs {_rps(b):,.0f} req/s)"
    return ratio, text


def _judge(
    winner_side: list[Row], loser_side: list[Row], rule: str, winner_label: str, loser_label: str
) -> str:
    """Compare the best row of each side by req/s and say whether ``rule`` holds."""
    a = _best(winner_side, _rps)
    b = _best(loser_side, _rps)
    if a is None or b is None:
        missing = winner_label if a is None else loser_label
        return f"cannot judge {rule!r}: no {missing} model ran successfully"
    ratio, phrase = _ratio_phrase(a, b)
    if ratio >= HOLDS_RATIO:
        return f"{phrase} — the notes' {rule!r} holds here"
    if ratio <= 1 / HOLDS_RATIO:
        _, phrase = _ratio_phrase(b, a)
        return f"{phrase} — the notes' {rule!r} does NOT hold on this machine"
    return (
        f"{a.model} and {b.model} within 10 % ({_rps(a):,.0f} vs {_rps(b):,.0f} req/s) — "
        f"{rule!r} makes no measurable difference here"
    )


def _saturation_note(rows: list[Row]) -> str:
    hit = [r.model for r in rows if r.ok and r.generator_saturated]
    if not hit:
        return ""
    return (
        f" (the load generator was saturated on {', '.join(hit)}: those req/s are lower "
        "bounds set by the machine, not only the server)"
    )


def compute_verdicts(
    rows: list[Row],
    models: Sequence[ModelSpec],
    workloads: Iterable[str],
    settings: CompareSettings,
) -> dict[str, str]:
    """One sentence (or two) per workload, computed from ``rows``: which model won, and
    whether the seed notes' guide held on this machine."""
    specs = {m.name: m for m in models}
    out: dict[str, str] = {}
    for workload in workloads:
        ok = [r for r in rows if r.workload == workload and r.ok and r.model in specs]
        if not ok:
            out[workload] = "no model ran successfully: nothing to judge"
            continue

        def side(family: str, ok: list[Row] = ok) -> list[Row]:
            return [r for r in ok if specs[r.model].family == family]

        threads, coros, procs = side("threads"), side("coroutines"), side("processes")
        # The guide's "processes" for IO means a process per connection: fork. Worker variants
        # (asyncio×2, ...) are event loops in several processes; they count for CPU-bound work.
        forks = [r for r in procs if specs[r.model].model == "fork"]
        if workload == "idle":
            out[workload] = _idle_verdict(ok, specs)
            continue
        fastest = _best(ok, _rps)
        assert fastest is not None
        lead = f"fastest: {fastest.model} ({_rps(fastest):,.0f} req/s)."
        if workload == "echo":
            cheapest = min(
                (r for r in ok if r.cpu_us_per_request),
                key=lambda r: r.cpu_us_per_request or 0.0,
                default=None,
            )
            text = (
                f"Tiny requests: {lead} Coroutines vs threads: "
                + _judge(coros, threads, "many IO tasks → coroutines", "coroutine", "thread")
                + "."
            )
            if cheapest is not None:
                text += (
                    f" Least server CPU per request: {cheapest.model} "
                    f"({cheapest.cpu_us_per_request:,.0f} µs)."
                )
        elif workload == "sleep":
            ideal = settings.sleep_connections / (settings.sleep_ms / 1000.0)
            text = (
                f"IO-bound ({settings.sleep_connections} connections each waiting "
                f"{settings.sleep_ms} ms; ideal {ideal:,.0f} req/s): {lead} "
                + _judge(coros, threads, "many IO tasks → coroutines", "coroutine", "thread")
                + ". Threads vs processes: "
                + _judge(threads, forks or procs, "IO-bound → threads", "thread", "process")
                + "."
                + _memory_note(threads, forks or procs)
            )
            starved = [
                r.model
                for r in ok
                if r.errors.get("timeout", 0) and specs[r.model].model == "threadpool"
            ]
            if starved:
                text += (
                    f" {', '.join(starved)} timed out requests: its fixed pool holds a thread "
                    "per connection, so connections beyond the pool size wait."
                )
        else:  # cpu
            single = threads + coros
            text = (
                f"CPU-bound (~{settings.cpu_ms:g} ms of pure Python per request, "
                f"{settings.cpu_connections} connections, {os.cpu_count()} CPUs): {lead} "
                + _judge(procs, single, "CPU-bound → processes", "multi-process", "single-process")
                + "."
                + _gil_note(threads, coros)
            )
        out[workload] = text + _saturation_note(ok)
    return out


def _memory_note(a_side: list[Row], b_side: list[Row]) -> str:
    """Server memory of the fastest row of each side, when both were measured."""
    a = _best(a_side, _rps)
    b = _best(b_side, _rps)
    if a is None or b is None:
        return ""
    mem_a = a.server_pss_bytes or a.server_rss_bytes
    mem_b = b.server_pss_bytes or b.server_rss_bytes
    if not mem_a or not mem_b:
        return ""
    return (
        f" Server memory under this load: {a.model} {mem_a / 2**20:,.1f} MiB, "
        f"{b.model} {mem_b / 2**20:,.1f} MiB."
    )


def _gil_note(threads: list[Row], coros: list[Row]) -> str:
    """Threads against one event loop on CPU-bound work: the GIL says they should tie."""
    a = _best(threads, _rps)
    b = _best(coros, _rps)
    if a is None or b is None:
        return ""
    ratio = _rps(a) / _rps(b) if _rps(b) > 0 else float("inf")
    if ratio >= HOLDS_RATIO:
        return (
            f" Threads vs one event loop: {a.model} served {ratio:.1f}× {b.model}, more than "
            "the GIL should allow (it runs one thread's Python at a time) — usually noise: "
            "rerun without --quick on a quieter machine."
        )
    if ratio <= 1 / HOLDS_RATIO:
        return (
            f" Threads vs one event loop: {b.model} served {1 / ratio:.1f}× {a.model} — "
            "threads only add switching costs to CPU-bound Python (GIL)."
        )
    return (
        f" Threads gave no speed-up over one event loop ({a.model} {_rps(a):,.0f} vs "
        f"{b.model} {_rps(b):,.0f} req/s): the GIL runs one thread's Python at a time."
    )


def _idle_verdict(ok: list[Row], specs: dict[str, ModelSpec]) -> str:
    """Memory per idle connection: single-process coroutine models against the models that
    spend a thread or a process per connection (thread, threadpool, fork)."""

    def kib(row: Row) -> float:
        return (row.bytes_per_connection or 0.0) / 1024.0

    full = [r for r in ok if r.held == r.connections]
    partial = [r for r in ok if r.held is not None and r.held < r.connections]
    parts: list[str] = []
    cheapest = min(full, key=kib, default=None)
    if cheapest is not None:
        parts.append(
            f"Idle connections: cheapest {cheapest.model} at {kib(cheapest):,.1f} KiB each "
            f"(all {cheapest.connections:,} answered)."
        )
    coros = [r for r in full if specs[r.model].family == "coroutines"]
    rivals = [
        r
        for r in full
        if specs[r.model].workers is None and specs[r.model].model in (*THREADS, "fork")
    ]
    best_coro = min(coros, key=kib, default=None)
    nearest = min(rivals, key=kib, default=None)
    if best_coro is None or nearest is None:
        missing = "coroutine (gevent, asyncio)" if best_coro is None else "thread or fork"
        parts.append(f"no {missing} model answered every connection: cannot judge the guide.")
    else:
        base = max(kib(best_coro), 0.01)  # memory noise can make a tiny growth read as 0
        ratio = kib(nearest) / base
        verdict = (
            "holds for memory"
            if ratio >= HOLDS_RATIO
            else "does NOT hold for memory on this machine"
            if ratio <= 1 / HOLDS_RATIO
            else "makes no measurable difference for memory here"
        )
        others = ", ".join(
            f"{r.model} {kib(r):,.1f} KiB ({kib(r) / base:,.1f}×)" for r in sorted(rivals, key=kib)
        )
        parts.append(
            f"{best_coro.model} needs {kib(best_coro):,.1f} KiB per connection; {others} — "
            f"'many IO tasks → coroutines' {verdict}."
        )
    for row in partial:
        parts.append(
            f"{row.model} answered only {row.held:,} of {row.connections:,} idle connections"
            + (
                " (a pool thread is held per connection)"
                if specs[row.model].model == "threadpool"
                else ""
            )
            + "."
        )
    return " ".join(parts)
