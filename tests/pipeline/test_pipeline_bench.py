"""Smoke test of ``benchmarks/bench_pipeline.py``: it runs end to end and writes its JSON.

A behaviour check only; no speed is asserted (a few thousand items on a shared machine mean
nothing). The Redis row appears when a server or the redis-server binary is available.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pipeline.py"


@pytest.mark.timeout(90)
def test_bench_pipeline_quick_run(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "3-stage pipeline" in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["backend"]: r for r in data["results"]}
    assert {"memory", "process"} <= set(rows)
    for row in rows.values():
        assert row["pipeline_items_per_s"] > 0
        assert row["baseline_items_per_s"] > 0
        assert row["overhead_ratio"] > 0
