"""Run a script under instrumentation: the code behind `python -m bingfa.locks`, `bingfa locks`."""

from __future__ import annotations

import atexit
import os
import runpy
import sys
from collections import Counter
from collections.abc import Sequence
from typing import IO

from bingfa.locks import _core
from bingfa.locks._core import OnDeadlock
from bingfa.locks._report import Report

__all__ = ["run_script"]


def run_script(
    script: str,
    args: Sequence[str] = (),
    *,
    on_deadlock: OnDeadlock = "report",
    warn_after: float | None = None,
    stats: bool = False,
    report_file: str | None = None,
) -> None:
    """Run ``script`` as ``__main__`` with instrumentation enabled from its first line.

    ``sys.argv`` becomes ``[script, *args]`` and ``sys.path[0]`` the script's directory, as
    with ``python script.py``. Reports go to stderr, or are appended to ``report_file``. At
    interpreter exit (after non-daemon threads were joined) a one-line summary of the reports
    is written to stderr, preceded by the statistics table when ``stats`` is true.

    The script's ``SystemExit`` and exceptions propagate unchanged, so the process exit status
    is the script's own, except that ``on_deadlock="exit"`` ends the process with status
    :data:`bingfa.locks.EXIT_DEADLOCK` (86) when a deadlock is found.
    """
    sink: IO[str] | None = None
    if report_file is not None:
        sink = open(report_file, "a", encoding="utf-8")  # noqa: SIM115 - lives until exit
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    atexit.register(_at_exit, stats, sink)
    _core.enable(on_deadlock=on_deadlock, warn_after=warn_after, stats=stats, sink=sink)
    runpy.run_path(script, run_name="__main__")


def _summary(reports: list[Report]) -> str:
    counts = Counter(report.kind for report in reports)
    if not counts:
        return "bingfa.locks: no lock problems reported"
    parts = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    return f"bingfa.locks: {len(reports)} report(s): {parts}"


def _at_exit(stats: bool, sink: IO[str] | None) -> None:
    text = _core.format_stats() + "\n" if stats else ""
    text += _summary(_core.reports()) + "\n"
    _core.disable()
    for stream in (sys.stderr, sink):
        if stream is None:
            continue
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass
    if sink is not None:
        sink.close()
