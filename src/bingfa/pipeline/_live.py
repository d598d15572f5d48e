"""A live per-stage table (rich) on stderr while a pipeline runs; nothing unless it is a TTY."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bingfa.pipeline._core import Pipeline
    from bingfa.pipeline._types import PipelineStats

__all__ = ["LiveTable", "make_live", "render"]


def render(stats: PipelineStats) -> Any:
    """A ``rich.table.Table`` of ``stats``."""
    from rich.table import Table

    table = Table(
        title=(
            f"pipeline ({stats.backend}) {stats.state} {stats.elapsed:.1f}s — "
            f"pulled {stats.pulled}, emitted {stats.emitted}, in flight "
            f"{stats.in_flight}/{stats.capacity}"
        ),
        title_justify="left",
    )
    for col in ("stage", "workers", "in", "out", "dropped", "errors", "queue", "rate/s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in stats.stages:
        depth = "?" if s.queue_depth < 0 else str(s.queue_depth)
        table.add_row(
            f"{s.name} ({s.kind})",
            str(s.workers),
            f"{s.items_in:,}",
            f"{s.items_out:,}",
            f"{s.dropped:,}",
            f"[red]{s.errors:,}[/red]" if s.errors else "0",
            f"{depth}/{s.queue_size}",
            f"{s.rate:,.0f}",
        )
    return table


class LiveTable:
    """Redraws :func:`render` of ``pipeline.stats()`` four times a second until :meth:`close`.

    Owns a rich ``Live`` display and one daemon thread.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        from rich.console import Console
        from rich.live import Live

        self._pipeline = pipeline
        self._stop = threading.Event()
        self._live = Live(
            render(pipeline.stats()),
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=False,
        )
        self._live.start()
        self._thread = threading.Thread(
            target=self._loop, name="bingfa-pipeline-progress", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._live.update(render(self._pipeline.stats()))
            except Exception:  # a display problem must never break the run
                return

    def close(self) -> None:
        """Draw the final numbers and stop. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=1.0)
        try:
            self._live.update(render(self._pipeline.stats()))
        finally:
            self._live.stop()


def make_live(pipeline: Pipeline) -> LiveTable | None:
    """A :class:`LiveTable` if stderr is a terminal, else ``None``."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return LiveTable(pipeline) if tty else None
