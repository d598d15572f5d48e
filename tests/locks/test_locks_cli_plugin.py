"""The entry points: ``python -m bingfa.locks``, the click command, and the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from bingfa import locks
from bingfa.locks.cli import locks_command

pytest_plugins = ["pytester"]

RunPy = Callable[..., subprocess.CompletedProcess[str]]

SEED_PROGRAM = """
    import sys
    import threading

    mutexA = threading.Lock()
    mutexB = threading.Lock()


    class MyThread(threading.Thread):
        def run(self):
            self.func1()
            self.func2()

        def func1(self):
            mutexA.acquire()
            print(self.name, "got A")
            mutexB.acquire()  # line 17
            print(self.name, "got B")
            mutexB.release()
            mutexA.release()

        def func2(self):
            mutexB.acquire()
            print(self.name, "got B")
            mutexA.acquire()  # line 25
            print(self.name, "got A")
            mutexA.release()
            mutexB.release()


    t = MyThread()
    t.start()
    t.join()
    print("done", sys.argv[1:])
"""


def test_module_runner_reports_the_seed_inversion_and_runs_to_the_end(run_py: RunPy) -> None:
    proc = run_py(SEED_PROGRAM, "-m", "bingfa.locks", args=("--flag", "x"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "done ['--flag', 'x']"  # script args passed through
    err = proc.stderr
    assert err.count("POTENTIAL DEADLOCK") == 1
    assert "mutexA (Lock created at prog.py:5)" in err
    assert "mutexB (Lock created at prog.py:6)" in err
    assert "mutexB acquired while holding mutexA, first in thread 'Thread-1' at prog.py:17" in err
    assert "mutexA acquired while holding mutexB, first in thread 'Thread-1' at prog.py:25" in err
    assert "bingfa.locks: 1 report(s): 1 potential-deadlock" in err


def test_module_runner_stats_and_report_file(run_py: RunPy, tmp_path: Path) -> None:
    proc = run_py(SEED_PROGRAM, "-m", "bingfa.locks", "--stats", "--report-file", "out.txt")
    assert proc.returncode == 0, proc.stderr
    assert "POTENTIAL DEADLOCK" not in proc.stderr  # reports went to the file
    saved = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert "POTENTIAL DEADLOCK" in saved
    for text in (proc.stderr, saved):
        assert "lock statistics" in text
        assert "mutexA (Lock prog.py:5)" in text


def test_module_runner_keeps_the_scripts_exit_status(run_py: RunPy) -> None:
    proc = run_py("import sys\nsys.exit(7)\n", "-m", "bingfa.locks")
    assert proc.returncode == 7
    assert "no lock problems reported" in proc.stderr


def test_click_command_is_the_same_runner(run_py: RunPy) -> None:
    runner = (
        "from bingfa.locks.cli import locks_command; locks_command.main(prog_name='bingfa locks')"
    )
    proc = run_py(SEED_PROGRAM, "-c", runner, "--on-deadlock", "raise", "--warn-after", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "done []"
    assert "POTENTIAL DEADLOCK" in proc.stderr


def test_click_command_help_and_option_validation() -> None:
    result = CliRunner().invoke(locks_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--on-deadlock", "--warn-after", "--stats", "--report-file"):
        assert option in result.output
    was_enabled = locks.is_enabled()
    result = CliRunner().invoke(locks_command, ["--on-deadlock", "maybe", "x.py"])
    assert result.exit_code == 2
    assert locks.is_enabled() == was_enabled


# --------------------------------------------------------------------------- pytest plugin

INVERSION_TESTS = """
    import threading

    def test_inversion():
        a = threading.Lock()
        b = threading.Lock()
        with a, b:
            pass
        with b, a:
            pass

    def test_ordered():
        a = threading.Lock()
        b = threading.Lock()
        for _ in range(3):
            with a, b:
                pass
"""


def _plugin_args() -> list[str]:
    """``-p`` loads the plugin unless the ``pytest11`` entry point already does."""
    if any(ep.name == "bingfa_locks" for ep in entry_points(group="pytest11")):
        return []
    return ["-p", "bingfa.locks.pytest_plugin"]


def test_pytest_plugin_fails_a_test_with_a_lock_inversion(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=INVERSION_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), "--bingfa-locks", timeout=60)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_inversion*",
            "*bingfa.locks: 1 potential deadlock(s) (lock-order inversion) reported*",
            "*bingfa.locks: 1 potential-deadlock*",
        ]
    )
    assert "FAILED test_sample.py::test_inversion" in result.stdout.str()


def test_pytest_plugin_is_inert_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=INVERSION_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), timeout=60)
    result.assert_outcomes(passed=2)
    assert "bingfa.locks" not in result.stdout.str()


def test_pytest_plugin_import_does_not_enable_anything() -> None:
    code = (
        "import threading, _thread, bingfa.locks.pytest_plugin;"
        "print(threading.Lock is _thread.allocate_lock)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.strip() == "True"
