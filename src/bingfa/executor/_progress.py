"""A rich progress bar (count, rate, ETA) for maps; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import threading
from typing import Any, Protocol

__all__ = ["NullProgress", "Progress", "make_progress"]


class Progress(Protocol):
    """What the map driver needs from a progress display. ``advance`` is thread-safe."""

    def advance(self, n: int) -> None:
        """``n`` more items finished (successfully or not)."""
        ...

    def close(self) -> None:
        """Stop displaying. Idempotent."""
        ...


class NullProgress:
    """Shows nothing."""

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """A ``rich.progress`` bar on stderr: description, bar, done/total, rate, elapsed, ETA.

    Owns a rich refresh thread from construction until :meth:`close`.
    """

    def __init__(self, description: str, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _RichProgress
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(
                    "-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed"
                )

        self._lock = threading.Lock()
        self._closed = False
        self._progress = _RichProgress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
            refresh_per_second=8,
        )
        self._task = self._progress.add_task(description, total=total)
        self._progress.start()

    def advance(self, n: int) -> None:
        with self._lock:
            if not self._closed:
                self._progress.advance(self._task, n)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._progress.stop()


def make_progress(enabled: bool, description: str, total: int | None) -> Progress:
    """A :class:`RichProgress` if ``enabled`` and stderr is a TTY, else a :class:`NullProgress`."""
    if not enabled:
        return NullProgress()
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return NullProgress()
    return RichProgress(description, total)
