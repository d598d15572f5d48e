"""Human-readable output of the load generator: the live progress line and the final table."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bingfa.bench.compare import CompareResult, Row
from bingfa.bench.runner import BenchConfig, BenchResult
from bingfa.errors import UsageError

__all__ = [
    "LiveProgress",
    "bench_summary",
    "compare_markdown",
    "compare_plot",
    "compare_tables",
    "format_errors",
    "format_ms",
]


def format_ms(value: float | None) -> str:
    """A latency in ms for a table: 3 significant-ish digits; ``-`` for none."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_errors(errors: dict[str, int]) -> str:
    """``reset 3, timeout 1`` — only the kinds that happened; ``none`` when there were none."""
    parts = [f"{kind} {n:,}" for kind, n in errors.items() if n]
    return ", ".join(parts) if parts else "none"


class LiveProgress:
    """A one-line live status on stderr (rich), refreshed by :meth:`update`. Use as a context
    manager; the line disappears when it exits."""

    def __init__(self, config: BenchConfig, console: Console) -> None:
        self.config = config
        self.live = Live(Text("starting generator processes..."), console=console, transient=True)
        self.last: dict[str, Any] | None = None
        self.last_replies = 0
        self.last_time = 0.0

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, status: dict[str, Any]) -> None:
        """Show a status dict from :data:`bingfa.bench.runner.ProgressHook`."""
        elapsed = float(status["elapsed"])
        replies = int(status["replies"])
        dt = elapsed - self.last_time
        rate = (replies - self.last_replies) / dt if dt > 0 and self.last is not None else 0.0
        self.last, self.last_replies, self.last_time = status, replies, elapsed
        cfg = self.config
        total = (cfg.warmup + cfg.duration) if cfg.duration is not None else None
        when = f"{elapsed:5.1f}s" + (f" / ~{total:.0f}s" if total else "")
        self.live.update(
            Text(
                f"{status['phase']:<10} {when}  connections {status['connections']:,}/"
                f"{cfg.connections:,}  replies {replies:,}  ({rate:,.0f}/s)  "
                f"errors {status['errors']:,}"
            )
        )


def bench_summary(result: BenchResult) -> Group:
    """The final report of ``bingfa bench``: a header, the latency table, and notes."""
    mode = (
        f"open loop at {result.target_rps:,.0f} req/s"
        if result.target_rps is not None
        else "closed loop"
    )
    header = Text(
        f"bingfa bench {result.host}:{result.port} ({result.protocol}) — {mode}, "
        f"{result.connected:,}/{result.connections:,} connections, "
        f"{result.processes} generator process{'es' if result.processes > 1 else ''}, "
        f"{result.duration_s:.2f}s measured after {result.warmup_s:g}s warm-up"
    )
    table = Table(show_edge=True)
    for column in ("", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"):
        table.add_column(column, justify="left" if not column else "right")
    label = "latency (from intended send)" if result.target_rps is not None else "latency"
    lat = result.latency_ms
    table.add_row(
        label,
        f"{result.requests:,}",
        f"{result.rps:,.0f}",
        *(format_ms(lat[k]) for k in ("p50", "p90", "p99", "p999", "max")),
    )
    if result.latency_uncorrected_ms is not None:
        unc = result.latency_uncorrected_ms
        table.add_row(
            "uncorrected (from actual send)",
            "",
            "",
            *(format_ms(unc[k]) for k in ("p50", "p90", "p99", "p999", "max")),
        )
    lines: list[Any] = [header, table]
    lines.append(Text(f"errors: {format_errors(result.errors)}"))
    for kind, sample in result.error_samples.items():
        lines.append(Text(f"  {kind}: {sample}", style="dim"))
    if result.target_rps is not None:
        lines.append(
            Text(
                f"rate: target {result.target_rps:,.0f} req/s, achieved "
                f"{result.achieved_rps or 0:,.0f} req/s; missed {result.missed:,} "
                f"(sent late: no connection had a free pipeline slot), unsent {result.unsent:,}"
            )
        )
    busy = ", ".join(f"{b:.0%}" for b in result.generator_busy)
    if result.generator_saturated:
        lines.append(
            Text(
                f"WARNING: the generator was saturated (busy {busy} of the window): these "
                "numbers may be the generator's limit, not the server's. Use more --processes, "
                "or run the generator on another machine.",
                style="bold yellow",
            )
        )
    else:
        lines.append(Text(f"generator busy: {busy} of the window (not saturated)", style="dim"))
    if result.interrupted:
        lines.append(Text("interrupted: partial results", style="yellow"))
    if result.aborted:
        lines.append(Text(f"stopped early: {result.aborted}", style="yellow"))
    return Group(*lines)


# -- compare ----------------------------------------------------------------------------------

_TITLES = {
    "echo": "echo — tiny requests (64 B), closed loop",
    "sleep": "sleep — IO-bound",
    "cpu": "cpu — CPU-bound",
    "idle": "idle — idle connections held, and their memory",
}


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _mem(row: Row) -> int | None:
    return row.server_pss_bytes if row.server_pss_bytes is not None else row.server_rss_bytes


def _note(row: Row) -> str:
    notes: list[str] = []
    if not row.ok:
        notes.append(f"FAILED: {row.error}")
    if row.ok and row.generator_saturated:
        notes.append("generator saturated")
    if row.server_exit_status not in (None, 0):
        notes.append(f"server exit status {row.server_exit_status}")
    return "; ".join(notes)


def _title(result: CompareResult, workload: str) -> str:
    s = result.settings
    detail = {
        "echo": f"{s.echo_connections} connections",
        "sleep": f"{s.sleep_ms} ms per request, {s.sleep_connections} connections",
        "cpu": f"cpu N={s.cpu_n} (~{s.cpu_ms:g} ms), {s.cpu_connections} connections",
        "idle": f"{s.idle_connections:,} connections",
    }[workload]
    return f"{_TITLES[workload]}: {detail}"


def compare_cells(result: CompareResult, workload: str) -> tuple[list[str], list[list[str]]]:
    """Header and cell texts of one workload's table (shared by the terminal and Markdown)."""
    if workload == "idle":
        header = ["model", "opened", "answered", "MiB before", "MiB after", "KiB/conn", "errors"]
    else:
        header = ["model", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "server MiB", "errors"]
    header.append("note")
    body: list[list[str]] = []
    for model in result.models:
        row = result.row(model, workload)
        if row is None:
            continue
        if workload == "idle":
            cells = [
                row.model,
                f"{row.connections:,}" if row.ok else "-",
                f"{row.held:,}" if row.held is not None else "-",
                _mib(row.memory_before_bytes),
                _mib(_mem(row)),
                "-"
                if row.bytes_per_connection is None
                else f"{row.bytes_per_connection / 1024:,.1f}",
            ]
        else:
            cells = [
                row.model,
                "-" if row.rps is None or not row.ok else f"{row.rps:,.0f}",
                format_ms(row.p50_ms) if row.ok else "-",
                format_ms(row.p99_ms) if row.ok else "-",
                "-" if row.cpu_us_per_request is None else f"{row.cpu_us_per_request:,.0f}",
                _mib(_mem(row)),
            ]
        cells += [format_errors(row.errors), _note(row)]
        body.append(cells)
    return header, body


def load_note(result: CompareResult) -> str:
    """A warning when other processes kept the machine busy as the comparison started."""
    load = result.machine.get("loadavg_at_start") or []
    cpus = result.machine.get("cpus") or 1
    if load and load[0] > 0.5 * cpus:
        return (
            f"note: the load average was {load[0]:.1f} on {cpus} CPUs when the comparison "
            "started — other processes compete with the servers and the generator, so the "
            "numbers are noisy; CPU µs/request is the least affected column."
        )
    return ""


def compare_tables(result: CompareResult) -> Group:
    """Every workload's table followed by its verdict, for the terminal."""
    parts: list[Any] = []
    note = load_note(result)
    if note:
        parts += [Text(note, style="yellow"), Text("")]
    for workload in result.workloads:
        header, body = compare_cells(result, workload)
        table = Table(title=_title(result, workload), title_justify="left")
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i == 0 or i >= len(header) - 2 else "right")
        for cells in body:
            table.add_row(*cells)
        parts.append(table)
        parts.append(Text("verdict: " + result.verdicts.get(workload, ""), style="bold"))
        parts.append(Text(""))
    if result.interrupted:
        parts.append(Text("interrupted: partial results", style="yellow"))
    return Group(*parts)


def compare_markdown(result: CompareResult) -> str:
    """The comparison as a Markdown report: settings, one table and verdict per workload."""
    s = result.settings
    m = result.machine
    lines = [
        "# bingfa compare",
        "",
        f"- machine: {m.get('cpus')} CPUs, Python {m.get('python')}, {m.get('platform')}, "
        f"load average at start {m.get('loadavg_at_start')}",
        f"- {'quick' if s.quick else 'full'} run: {s.warmup:g} s warm-up + {s.duration:g} s "
        f"measured per run; request timeout {s.timeout:g} s",
        f"- models: {', '.join(result.models)}",
        "",
    ]
    note = load_note(result)
    if note:
        lines += [f"> {note}", ""]
    for workload in result.workloads:
        header, body = compare_cells(result, workload)
        lines += [f"## {_title(result, workload)}", ""]
        lines.append("| " + " | ".join(header) + " |")
        last = len(header) - 2
        aligns = [" --- " if i == 0 or i >= last else " ---: " for i in range(len(header))]
        lines.append("|" + "|".join(aligns) + "|")
        for cells in body:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines += ["", f"**Verdict:** {result.verdicts.get(workload, '')}", ""]
    if result.interrupted:
        lines += ["_Interrupted: partial results._", ""]
    return "\n".join(lines)


def compare_plot(result: CompareResult, path: str) -> None:
    """Bar charts (one per workload: req/s, or KiB per idle connection) into a PNG file.

    Raises:
        UsageError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install 'matplotlib>=3.8'") from exc
    workloads = result.workloads
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        names: list[str] = []
        values: list[float] = []
        colors: list[str] = []
        for model in result.models:
            row = result.row(model, workload)
            if row is None:
                continue
            names.append(model)
            if workload == "idle":
                # Log scale: keep bars positive (a failed row, or growth lost in the noise).
                value = max(0.01, (row.bytes_per_connection or 0.0) / 1024 if row.ok else 0.0)
            else:
                value = (row.rps or 0.0) if row.ok else 0.0
            values.append(value)
            colors.append(
                "#bbbbbb" if not row.ok else "#e8a33d" if row.generator_saturated else "#3d7ee8"
            )
        bars = ax.bar(names, values, color=colors)
        for bar, model in zip(bars, names, strict=True):
            row = result.row(model, workload)
            if row is None:
                continue
            label = ""
            if not row.ok:
                label = "failed"
            elif workload == "idle" and row.held is not None and row.held < row.connections:
                label = f"{row.held}/{row.connections} answered"
            if label:
                ax.annotate(
                    label,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
        ax.set_title(workload)
        if workload == "idle":
            ax.set_yscale("log")
            ax.set_ylabel("KiB per idle connection, log scale (lower is better)")
        else:
            ax.set_ylabel("requests/s (higher is better)")
        ax.tick_params(axis="x", labelrotation=45)
    fig.text(
        0.5,
        0.01,
        "orange: the load generator was saturated (a lower bound); grey: failed",
        ha="center",
        fontsize=8,
    )
    fig.suptitle("bingfa compare" + (" (quick)" if result.settings.quick else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
