"""pytest plugin: ``pytest --bingfa-locks`` runs the session under :mod:`bingfa.locks`.

Registered as the ``pytest11`` entry point ``bingfa_locks``, it is imported by every pytest
run, so it does nothing but add the option unless ``--bingfa-locks`` is given. With the
option, instrumentation is enabled at configure time (locks created by test modules, fixtures
and tests are tracked) and a test *fails* when a potential deadlock (lock-order inversion)
is reported during its setup, call or teardown. Other findings (misuse, long waits, actual
deadlocks in report mode) are written to the test's captured stderr and counted in the
terminal summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bingfa.locks import Report

__all__ = ["LocksSession", "pytest_addoption", "pytest_configure"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--bingfa-locks``."""
    group = parser.getgroup("bingfa-locks", "lock diagnostics (bingfa.locks)")
    group.addoption(
        "--bingfa-locks",
        action="store_true",
        default=False,
        dest="bingfa_locks",
        help="Track threading locks during the session; fail tests that produce a "
        "lock-order inversion (potential deadlock) report.",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With ``--bingfa-locks``: register the session plugin (which enables instrumentation)."""
    if config.getoption("bingfa_locks", default=False):
        config.pluginmanager.register(LocksSession(), "bingfa-locks-session")


class LocksSession:
    """The per-session half of the plugin: owns the instrumentation and judges each test."""

    def __init__(self) -> None:
        import _pytest
        import pluggy

        from bingfa import locks
        from bingfa.locks import _core

        self._locks = locks
        self._pending: list[Report] = []
        self._all: list[Report] = []
        # stacks in reports end at the test function, not in pytest's own machinery
        _core.set_outer_stop_dirs(
            tuple(os.path.dirname(mod.__file__ or "") for mod in (_pytest, pluggy, pytest))
        )
        locks.enable(sink=self._sink)

    def _sink(self, report: Report) -> None:
        """Potential deadlocks fail the test (the message is the failure text); the other
        kinds go to the test's captured stderr."""
        self._all.append(report)
        if report.kind == "potential-deadlock":
            self._pending.append(report)
            return
        stream = sys.stderr
        if stream is not None:
            stream.write(report.message + "\n")

    def _judge(self) -> None:
        """Fail the current phase if a potential deadlock was reported since the last check."""
        if not self._pending:
            return
        found, self._pending[:] = list(self._pending), []
        text = "\n\n".join(report.message for report in found)
        pytest.fail(
            f"bingfa.locks: {len(found)} potential deadlock(s) (lock-order inversion) reported"
            f" during this test:\n{text}",
            pytrace=False,
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self._pending.clear()
        yield
        self._judge()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        yield
        self._judge()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        yield
        self._judge()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        counts: dict[str, int] = {}
        for report in self._all:
            counts[report.kind] = counts.get(report.kind, 0) + 1
        if counts:
            parts = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
            terminalreporter.write_line(f"bingfa.locks: {parts}")
        else:
            terminalreporter.write_line("bingfa.locks: no lock problems reported")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        from bingfa.locks import _core

        self._locks.disable()
        _core.set_outer_stop_dirs(())
