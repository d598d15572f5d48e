"""``bingfa compare``: every requested model × workload is covered; verdicts follow the numbers."""

from __future__ import annotations

import json
import pathlib

import pytest
from click.testing import CliRunner

from bingfa.bench.cli import compare_command
from bingfa.bench.compare import (
    WORKLOADS,
    CompareSettings,
    ModelSpec,
    Row,
    compute_verdicts,
    parse_models,
)
from bingfa.errors import UsageError


@pytest.mark.timeout(120)
def test_quick_compare_covers_every_model_and_workload(tmp_path: pathlib.Path) -> None:
    out, report, plot = tmp_path / "c.json", tmp_path / "c.md", tmp_path / "c.png"
    models = ["asyncio", "thread", "asyncio×2"]
    args = [
        "--quick",
        "--models",
        ",".join(models),
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--idle-connections",
        "50",
        "--sleep-connections",
        "20",
        "--cpu-n",
        "2000",
        "--timeout",
        "1",
        "--json",
        str(out),
        "--report",
        str(report),
        "--plot",
        str(plot),
    ]
    outcome = CliRunner().invoke(compare_command, args, catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["models"] == models
    assert data["workloads"] == list(WORKLOADS)
    covered = {(r["model"], r["workload"]) for r in data["results"]}
    assert covered == {(m, w) for m in models for w in WORKLOADS}
    for row in data["results"]:
        if row["model"] == "asyncio×2" and not row["ok"]:
            # --workers may be unsupported: then the variant is reported as failed, no crash.
            assert row["error"]
            continue
        assert row["ok"], row
        assert row["server_exit_status"] == 0
        if row["workload"] == "idle":
            assert row["held"] == 50
            assert row["bytes_per_connection"] is not None
        else:
            assert row["requests"] > 0 and row["rps"] > 0
            # Server CPU comes in 10 ms clock ticks: a 0.3 s window may read 0.
            assert row["cpu_us_per_request"] >= 0
            assert row["p50_ms"] <= row["p99_ms"]
    assert set(data["verdicts"]) == set(WORKLOADS)
    assert all(isinstance(v, str) and v for v in data["verdicts"].values())
    text = report.read_text(encoding="utf-8")
    assert "## sleep" in text and "**Verdict:**" in text
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "verdict:" in outcome.output


def test_parse_models() -> None:
    assert parse_models("thread, asyncio×2,gevent*3,forkx1") == [
        ModelSpec("thread"),
        ModelSpec("asyncio", 2),
        ModelSpec("gevent", 3),
        ModelSpec("fork", 1),
    ]
    assert ModelSpec("asyncio", 2).name == "asyncio×2"
    assert ModelSpec("asyncio", 2).family == "processes"
    assert ModelSpec("gevent").family == "coroutines"
    with pytest.raises(UsageError):
        parse_models("tornado")


def row(model: str, workload: str, rps: float, **extra: object) -> Row:
    r = Row(model, workload, ok=True, rps=rps, requests=int(rps), cpu_us_per_request=50.0)
    for key, value in extra.items():
        setattr(r, key, value)
    return r


SPECS = [ModelSpec("thread"), ModelSpec("gevent"), ModelSpec("fork"), ModelSpec("asyncio", 2)]


def test_worker_variants_do_not_stand_in_for_coroutines_or_fork() -> None:
    kib = 1024.0
    rows = [
        row("thread", "idle", 0, connections=10, held=10, bytes_per_connection=20 * kib),
        row("asyncio×2", "idle", 0, connections=10, held=10, bytes_per_connection=1 * kib),
    ]
    text = compute_verdicts(rows, SPECS, ["idle"], SETTINGS)["idle"]
    assert "cannot judge" in text
    sleep = compute_verdicts(
        [
            row("thread", "sleep", 9000),
            row("gevent", "sleep", 9000),
            row("fork", "sleep", 7000),
            row("asyncio×2", "sleep", 9500),
        ],
        SPECS,
        ["sleep"],
        SETTINGS,
    )["sleep"]
    assert "thread served 1.3× fork" in sleep


SETTINGS = CompareSettings(cpu_n=20000)


def test_verdicts_follow_the_numbers() -> None:
    holds = compute_verdicts(
        [row("thread", "sleep", 1000), row("gevent", "sleep", 3100), row("fork", "sleep", 900)],
        SPECS,
        ["sleep"],
        SETTINGS,
    )["sleep"]
    assert "gevent served 3.1× thread" in holds
    assert "'many IO tasks → coroutines' holds here" in holds

    fails = compute_verdicts(
        [row("thread", "sleep", 3000), row("gevent", "sleep", 1000)], SPECS, ["sleep"], SETTINGS
    )["sleep"]
    assert "thread served 3.0× gevent" in fails
    assert "does NOT hold" in fails

    even = compute_verdicts(
        [row("thread", "cpu", 500), row("gevent", "cpu", 520), row("fork", "cpu", 530)],
        SPECS,
        ["cpu"],
        SETTINGS,
    )["cpu"]
    assert "'CPU-bound → processes' makes no measurable difference" in even

    procs = compute_verdicts(
        [row("thread", "cpu", 500), row("asyncio×2", "cpu", 950)], SPECS, ["cpu"], SETTINGS
    )["cpu"]
    assert "asyncio×2 served 1.9× thread" in procs and "holds" in procs


def test_idle_verdict_compares_memory_per_connection() -> None:
    kib = 1024.0
    rows = [
        row("thread", "idle", 0, connections=100, held=100, bytes_per_connection=40 * kib),
        row("gevent", "idle", 0, connections=100, held=100, bytes_per_connection=8 * kib),
        row("fork", "idle", 0, connections=100, held=60, bytes_per_connection=300 * kib),
    ]
    text = compute_verdicts(rows, SPECS, ["idle"], SETTINGS)["idle"]
    assert "cheapest gevent at 8.0 KiB" in text
    assert "gevent needs 8.0 KiB per connection; thread 40.0 KiB (5.0×)" in text
    assert "holds for memory" in text
    assert "fork answered only 60 of 100" in text


def test_no_successful_rows_means_no_judgement() -> None:
    failed = Row("thread", "echo", ok=False, error="did not start")
    assert "nothing to judge" in compute_verdicts([failed], SPECS, ["echo"], SETTINGS)["echo"]
