"""Ctrl-C in the caller: queued work cancelled, workers stopped, control back within ~a second.

Each case runs a caller program in a subprocess, waits until it is busy, sends it SIGINT and
checks that it exits promptly with KeyboardInterrupt and leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(60)

HELPERS = os.path.dirname(__file__)
# A shell starts background jobs with SIGINT ignored, and children inherit that; Python then
# installs no KeyboardInterrupt handler. The callers restore it, as a terminal would have it.
INHERIT_NOTE = "as in a terminal, even when this run was started in the background"

MAP_CALLER = """
import sys
sys.path[:0] = [{helpers!r}]
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # {inherit_note}
from executor_helpers import ablock, block
from bingfa.executor import map
model = sys.argv[1]
fn = ablock if model == "asyncio" else block
results = map(fn, [0.01] + [30.0] * 50, model=model, workers=2, progress=False)
print("first", next(results), flush=True)
print("READY", flush=True)
for _ in results:
    pass
"""

WITH_CALLER = """
import sys
sys.path[:0] = [{helpers!r}]
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # {inherit_note}
from executor_helpers import ablock, block
from bingfa.executor import Executor
model = sys.argv[1]
fn = ablock if model == "asyncio" else block
with Executor(model, 2) as ex:
    quick = ex.submit(fn, 0.01)
    futures = [ex.submit(fn, 30.0) for _ in range(10)]
    quick.result()
    print("READY", flush=True)
    futures[0].result()
"""

OUTSIDE_CALLER = """
import sys, time
sys.path[:0] = [{helpers!r}]
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # {inherit_note}
from executor_helpers import ablock, block
from bingfa.executor import Executor
model = sys.argv[1]
fn = ablock if model == "asyncio" else block
ex = Executor(model, 2)  # never shut down, not in a with block
futures = [ex.submit(fn, 30.0) for _ in range(4)]
print("READY", flush=True)
time.sleep(60)  # Ctrl-C lands here, outside any executor call
"""


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def run_and_interrupt(program: str, model: str) -> tuple[float, str, list[psutil.Process]]:
    """Start ``program``, wait for READY, SIGINT it; return (seconds to exit, stderr, leftovers)."""
    code = textwrap.dedent(program).format(helpers=HELPERS, inherit_note=INHERIT_NOTE)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, model],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.strip() == "READY":
                break
        assert line.strip() == "READY", proc.stderr.read() if proc.stderr else ""
        family = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        took = time.monotonic() - t0
        _, err = proc.communicate(timeout=10)
        deadline = time.monotonic() + 3
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.05)
        return took, err, _alive(family)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("model", ["process", "thread", "gevent", "asyncio", "hybrid"])
def test_ctrl_c_during_map(model: str) -> None:
    took, err, leftovers = run_and_interrupt(MAP_CALLER, model)
    assert "KeyboardInterrupt" in err, err
    assert took < 2.0, f"took {took:.2f}s to exit"
    assert not leftovers, [p.cmdline() for p in leftovers]


@pytest.mark.parametrize("model", ["process", "thread", "hybrid"])
def test_ctrl_c_inside_a_with_block(model: str) -> None:
    took, err, leftovers = run_and_interrupt(WITH_CALLER, model)
    assert "KeyboardInterrupt" in err, err
    assert took < 2.0, f"took {took:.2f}s to exit"
    assert not leftovers, [p.cmdline() for p in leftovers]


@pytest.mark.parametrize("model", ["process", "thread", "asyncio"])
def test_ctrl_c_outside_any_executor_call(model: str) -> None:
    """Interpreter exit after Ctrl-C terminates forgotten executors instead of waiting."""
    took, err, leftovers = run_and_interrupt(OUTSIDE_CALLER, model)
    assert "KeyboardInterrupt" in err, err
    assert took < 2.0, f"took {took:.2f}s to exit"
    assert not leftovers, [p.cmdline() for p in leftovers]
