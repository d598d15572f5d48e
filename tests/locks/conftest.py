"""Fixtures for the bingfa.locks tests: instrumentation that is always switched off again,
and a bounded subprocess runner for programs that may hang."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bingfa import locks


@pytest.fixture
def instrument() -> Iterator[Callable[..., list[locks.Report]]]:
    """``instrument(**enable_kwargs)`` enables quietly (no stderr) and returns the sink's list.

    Instrumentation is disabled after the test whatever happens.
    """
    if locks.is_enabled():
        pytest.skip("bingfa.locks is already enabled for this session (--bingfa-locks)")

    def start(**kwargs: Any) -> list[locks.Report]:
        seen: list[locks.Report] = []
        kwargs.setdefault("sink", seen.append)
        locks.enable(**kwargs)
        return seen

    try:
        yield start
    finally:
        locks.disable()


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def run_py(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_py(source, *argv, timeout=20)``: write ``source`` to ``prog.py`` and run
    ``python *argv prog.py`` (``argv`` like ``["-m", "bingfa.locks", "--stats"]``) in
    ``tmp_path``; a hang fails the test after ``timeout`` seconds instead of blocking it."""

    def run(
        source: str, *argv: str, timeout: float = 20, args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        prog = tmp_path / "prog.py"
        prog.write_text(textwrap.dedent(source), encoding="utf-8")
        try:
            return subprocess.run(
                [sys.executable, *argv, "prog.py", *args],
                cwd=tmp_path,
                env=_python_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"program did not finish within {timeout} s; stderr: {exc.stderr!r}")

    return run
