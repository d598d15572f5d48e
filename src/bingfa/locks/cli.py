"""The `locks` command: `bingfa locks [options] script.py [args]`, `python -m bingfa.locks`.

``locks_command`` is a click command meant to be added to the ``bingfa`` group; :func:`main`
runs it stand-alone (that is what ``python -m bingfa.locks`` does).
"""

from __future__ import annotations

from typing import cast

import click

from bingfa.locks._core import OnDeadlock
from bingfa.locks._runner import run_script

__all__ = ["locks_command", "main"]


@click.command(
    "locks",
    context_settings={
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
        "help_option_names": ["-h", "--help"],
    },
)
@click.option(
    "--on-deadlock",
    type=click.Choice(["report", "raise", "exit"]),
    default="report",
    show_default=True,
    help="On an actual deadlock: only report it; raise DeadlockError in one of the blocked "
    "threads; or write the report to stderr and exit with status 86.",
)
@click.option(
    "--warn-after",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Report any lock wait longer than S seconds, with the holder's stack.",
)
@click.option(
    "--stats",
    is_flag=True,
    help="Count acquisitions and hold times too; print per-lock statistics at exit.",
)
@click.option(
    "--report-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="FILE",
    help="Append reports to FILE instead of writing them to stderr.",
)
@click.argument("script", type=click.Path(exists=True, dir_okay=True))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def locks_command(
    on_deadlock: str,
    warn_after: float | None,
    stats: bool,
    report_file: str | None,
    script: str,
    args: tuple[str, ...],
) -> None:
    """Run SCRIPT with lock diagnostics (lock-order inversions, deadlocks, misuse, waits).

    Everything after SCRIPT is passed to it. The exit status is the script's own, or 86
    when --on-deadlock exit ended a deadlocked run.
    """
    run_script(
        script,
        args,
        on_deadlock=cast(OnDeadlock, on_deadlock),
        warn_after=warn_after,
        stats=stats,
        report_file=report_file,
    )


def main() -> None:
    """Run :data:`locks_command` as the program ``python -m bingfa.locks``."""
    locks_command.main(prog_name="python -m bingfa.locks")
