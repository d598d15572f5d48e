"""The ``bingfa bench`` and ``bingfa compare`` commands (click), registered by :mod:`bingfa.cli`.

Every option can also come from ``BINGFA_<OPTION>`` (dashes → underscores, upper-case), as for
the other ``bingfa`` commands.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click
from rich.console import Console

from bingfa.client import parse_address
from bingfa.errors import BingfaError
from bingfa.protocol import DEFAULT_MAX_FRAME_SIZE, PROTOCOLS

__all__ = ["bench_command", "compare_command"]

FC = TypeVar("FC", bound=Callable[..., Any])


def _option(*names: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A click option that also reads ``BINGFA_<NAME>`` (as :func:`bingfa.cli.env_option`)."""
    long_name = next(n for n in names if n.startswith("--"))
    kwargs.setdefault("envvar", "BINGFA_" + long_name[2:].replace("-", "_").upper())
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", True)
    return click.option(*names, **kwargs)


def _fail(exc: BingfaError) -> None:
    click.echo(f"bingfa: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, ValueError) else 1)


def _prepare_outputs(*paths: str | None) -> None:
    """Create the folders of the output files now and check they can be written.

    Raises:
        click.UsageError: a path cannot be created or written.
    """
    for path in paths:
        if not path:
            continue
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("a"):
                pass
        except OSError as exc:
            raise click.UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _write_json(path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM behaves like Ctrl-C (so every child is stopped cleanly)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("bench")
@click.argument("address")
@_option("--protocol", type=click.Choice(list(PROTOCOLS)), default="frame", help="Wire framing.")
@_option("-c", "--connections", type=click.IntRange(min=1), default=50, help="Connections in all.")
@_option(
    "-r",
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Open loop: requests/s in all, on a fixed schedule; latency from each request's "
    "intended send time.  [default: closed loop]",
)
@_option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Generator processes.  [default: half the CPUs, at least 1]",
)
@_option(
    "-d",
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Measured seconds.  [default: 10, unless --requests]",
)
@_option(
    "-w", "--warmup", type=click.FloatRange(min=0), default=1.0, help="Seconds not counted first."
)
@_option(
    "-n",
    "--requests",
    type=click.IntRange(min=1),
    default=None,
    help="Count-bound run: measured requests in all (instead of --duration).",
)
@_option("--payload", default=None, help="Request body (UTF-8).  [default: hello]")
@_option(
    "--payload-size",
    type=click.IntRange(min=0),
    default=None,
    help="Request body of this many bytes ('x'), instead of --payload.",
)
@_option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    help="Seconds per connect and per request (from its actual send).",
)
@_option(
    "--pipeline",
    type=click.IntRange(min=1),
    default=16,
    help="Open loop: requests in flight per connection at most; more wait and count as missed.",
)
@_option(
    "--connect-concurrency",
    type=click.IntRange(min=1),
    default=200,
    help="Connects in progress at once, per generator process.",
)
@_option(
    "--max-frame-size",
    type=click.IntRange(0, 2**32 - 1),
    default=DEFAULT_MAX_FRAME_SIZE,
    help="Largest reply accepted.",
)
@_option("--json", "json_path", default=None, help="Write the result as JSON here ('-': stdout).")
@_option("-q", "--quiet", is_flag=True, default=False, help="No live progress, no table.")
def bench_command(
    address: str,
    protocol: str,
    connections: int,
    rate: float | None,
    processes: int | None,
    duration: float | None,
    warmup: float,
    requests: int | None,
    payload: str | None,
    payload_size: int | None,
    timeout: float,
    pipeline: int,
    connect_concurrency: int,
    max_frame_size: int,
    json_path: str | None,
    quiet: bool,
) -> None:
    """Load-test a bingfa server at ADDRESS (HOST:PORT) and report throughput and latency.

    \b
    Closed loop (default): each connection sends, waits for the reply, repeats.
    Open loop (--rate R): R requests/s on a fixed schedule whatever the replies do;
    latency counts from when each request was due (coordinated omission corrected),
    with the latency from the actual send shown beside it.

    Exit status: 0 when requests were answered (errors or not; see the table),
    1 when none was (e.g. nothing listens), 2 for bad options or impossible limits.
    """
    from bingfa.bench._render import LiveProgress, bench_summary
    from bingfa.bench.runner import BenchConfig, run_config

    if payload is not None and payload_size is not None:
        raise click.UsageError("--payload and --payload-size exclude each other")
    body = b"x" * payload_size if payload_size is not None else (payload or "hello").encode()
    try:
        host, port = parse_address(address)
        config = BenchConfig(
            host,
            port,
            protocol=protocol,
            connections=connections,
            rate=rate,
            processes=processes,
            duration=duration,
            warmup=warmup,
            requests=requests,
            payload=body,
            timeout=timeout,
            pipeline=pipeline,
            connect_concurrency=connect_concurrency,
            max_frame_size=max_frame_size,
        ).validated()
        err = Console(stderr=True)
        out = Console()
        with _sigterm_as_interrupt():
            if not quiet and err.is_terminal:
                with LiveProgress(config, err) as live:
                    result = run_config(config, on_progress=live.update)
            else:
                result = run_config(config)
    except BingfaError as exc:
        _fail(exc)
        return
    if json_path:
        _prepare_outputs(json_path if json_path != "-" else None)
        _write_json(json_path, result.to_json())
    if not quiet and json_path != "-":
        out.print(bench_summary(result))
    if result.requests == 0:
        reason = next(iter(result.error_samples.values()), "no reply within the run")
        click.echo(f"bingfa: error: no request was answered: {reason}", err=True)
        sys.exit(1)
    if result.interrupted:
        sys.exit(130)


@click.command("compare")
@_option("--quick", is_flag=True, default=False, help="Short runs: about a minute in all.")
@_option(
    "--models",
    default=None,
    help="Comma-separated models; ×N (or *N) for N worker processes, e.g. asyncio×2.  "
    "[default: thread,threadpool,fork,gevent,asyncio,gevent×2,asyncio×2]",
)
@_option(
    "--workloads", default="echo,sleep,cpu,idle", help="Comma-separated: echo, sleep, cpu, idle."
)
@_option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Measured seconds per run.  [default: 5; --quick: 1]",
)
@_option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=None,
    help="Warm-up seconds per run.  [default: 1; --quick: 0.25]",
)
@_option(
    "--idle-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Connections of the idle workload.  [default: 2000; --quick: 1000]",
)
@_option(
    "--sleep-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Connections of the sleep workload.  [default: 200]",
)
@_option(
    "--cpu-n",
    type=click.IntRange(min=1),
    default=None,
    help="Loop count of the cpu app.  [default: calibrated to ~2 ms here]",
)
@_option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds per request.  [default: 5; --quick: 2]",
)
@_option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Load-generator processes.  [default: half the CPUs, at least 1]",
)
@_option("--json", "json_path", default=None, help="Write every number as JSON here.")
@_option("--plot", "plot_path", default=None, help="Write bar charts to this PNG (matplotlib).")
@_option("--report", "report_path", default=None, help="Write a Markdown report here.")
@_option("--strict", is_flag=True, default=False, help="Exit 1 when any model × workload failed.")
def compare_command(
    quick: bool,
    models: str | None,
    workloads: str,
    duration: float | None,
    warmup: float | None,
    idle_connections: int | None,
    sleep_connections: int | None,
    cpu_n: int | None,
    timeout: float | None,
    processes: int | None,
    json_path: str | None,
    plot_path: str | None,
    report_path: str | None,
    strict: bool,
) -> None:
    """Serve the same handlers under every concurrency model and measure which one wins.

    \b
    Workloads: echo (tiny requests), sleep (IO-bound: 20 ms waits, 200 connections),
    cpu (CPU-bound: ~2 ms of pure Python), idle (connections held, memory each).
    Prints a table and a verdict per workload, set against the seed notes' guide:
    IO-bound → threads, many IO tasks → coroutines, CPU-bound → processes.

    Exit status: 0 when the comparison ran (failed models are reported in the
    tables; --strict makes them exit 1), 1 when nothing succeeded, 130 on Ctrl-C.
    """
    from bingfa.bench._render import compare_markdown, compare_plot, compare_tables

    # Check the output paths before minutes of measuring, not after.
    _prepare_outputs(json_path if json_path != "-" else None, plot_path, report_path)
    from bingfa.bench.compare import (
        DEFAULT_MODELS,
        CompareSettings,
        parse_models,
        parse_workloads,
        run_compare,
    )

    err = Console(stderr=True)
    try:
        specs = parse_models(models or DEFAULT_MODELS)
        wanted = parse_workloads(workloads)
        settings = CompareSettings.preset(
            quick,
            duration=duration,
            warmup=warmup,
            idle_connections=idle_connections,
            sleep_connections=sleep_connections,
            cpu_n=cpu_n,
            timeout=timeout,
            processes=processes,
        )
        with _sigterm_as_interrupt():
            result = run_compare(
                specs, wanted, settings, report=lambda text: err.print(text, style="dim")
            )
        # Piped or redirected (make demo | tee, CI logs): wide enough for the whole table.
        Console(width=None if sys.stdout.isatty() else 130).print(compare_tables(result))
        if json_path:
            _write_json(json_path, result.to_json())
        if report_path:
            Path(report_path).write_text(compare_markdown(result), encoding="utf-8")
        if plot_path:
            compare_plot(result, plot_path)
    except BingfaError as exc:
        _fail(exc)
        return
    if result.interrupted:
        sys.exit(130)
    failed = [r for r in result.rows if not r.ok]
    if not result.rows or len(failed) == len(result.rows) or (strict and failed):
        sys.exit(1)
