"""Smoke test of ``benchmarks/server_cpu.py``: it runs end to end and writes well-formed JSON.

A behaviour check only: one model, one protocol, a fraction of a second per run. No performance
figure is asserted (the numbers of such a short run on a shared machine mean nothing).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "server_cpu.py"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses uvloop")

RESULT_KEYS = {
    "server",
    "kind",
    "model",
    "protocol",
    "reference",
    "requests",
    "requests_per_second",
    "server_cpu_us_per_request",
    "generator_cpu_us_per_request",
    "spread",
    "ratio",
    "round_ratios",
    "target",
    "passed",
    "errors",
    "runs",
}
RUN_KEYS = {
    "round",
    "requests",
    "seconds",
    "server_cpu_seconds",
    "server_cpu_us_per_request",
    "requests_per_second",
    "exit_status",
    "error",
}


@pytest.mark.timeout(60)
def test_server_cpu_quick_run_writes_json(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "server_cpu.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--duration",
            "0.4",
            "--warmup",
            "0.1",
            "--models",
            "asyncio",
            "--protocols",
            "raw",
            "--json",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            # SIGTERM first: the script then stops the servers it started.
            proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert "bingfa asyncio" in stdout
    assert "ref uvloop Protocol" in stdout

    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["benchmark"] == "server_cpu"
    assert data["settings"]["models"] == ["asyncio"]
    assert data["settings"]["protocols"] == ["raw"]
    assert data["settings"]["rounds"] == 1
    results = {r["server"]: r for r in data["results"]}
    assert set(results) == {"ref uvloop Protocol", "bingfa asyncio"}

    for result in results.values():
        assert set(result) >= RESULT_KEYS, RESULT_KEYS - set(result)
        assert result["protocol"] == "raw"
        assert result["errors"] == []
        assert result["requests"] > 0
        assert result["server_cpu_us_per_request"] > 0
        assert len(result["runs"]) == 1
        run = result["runs"][0]
        assert set(run) >= RUN_KEYS, RUN_KEYS - set(run)
        assert run["exit_status"] == 0
        assert run["server_cpu_us_per_request"] > 0

    mine = results["bingfa asyncio"]
    assert mine["reference"] == "ref uvloop Protocol"
    assert mine["target"] == 1.15
    assert mine["ratio"] > 0
    assert isinstance(mine["passed"], bool)
    assert results["ref uvloop Protocol"]["kind"] == "reference"
