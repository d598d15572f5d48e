"""``bingfa bench``'s generator against real bingfa servers: counts, errors, JSON, limits."""

from __future__ import annotations

import json
import pathlib
import resource
from typing import Any

import pytest
from bench_helpers import free_port, server_requests
from click.testing import CliRunner

from bingfa.bench import ERROR_KINDS, BenchResult, decode_histogram, default_processes, run_bench
from bingfa.bench._limits import check_port_range, ensure_fd_limit
from bingfa.bench.cli import bench_command
from bingfa.errors import UsageError

LATENCY_KEYS = {"p50", "p90", "p99", "p999", "max"}


def nonzero(result: BenchResult) -> dict[str, int]:
    return {kind: n for kind, n in result.errors.items() if n}


@pytest.mark.timeout(60)
def test_request_count_matches_the_servers_count(spawn_server: Any) -> None:
    server = spawn_server("echo", "asyncio")

    # Two generator processes: their histograms are merged losslessly.
    counted = run_bench(
        server.host, server.port, connections=8, requests=500, warmup=0, processes=2
    )
    assert counted.processes == 2
    assert counted.histogram.get_total_count() == 500
    assert counted.requests == 500
    assert counted.sent == 500
    assert counted.warmup_requests == 0
    assert nonzero(counted) == {}
    assert server_requests(server) == 500

    timed = run_bench(server.host, server.port, connections=20, duration=1.0, warmup=0.3)
    assert nonzero(timed) == {}
    assert timed.requests > 100
    assert timed.connected == 20
    assert timed.duration_s == pytest.approx(1.0)
    assert timed.rps == pytest.approx(timed.requests / timed.duration_s)
    # Warm-up requests are not in the statistics, but the server answered them too.
    assert timed.warmup_requests > 0
    assert server_requests(server) == 500 + timed.requests + timed.warmup_requests
    assert timed.histogram.get_total_count() == timed.requests
    lat = timed.latency_ms
    assert lat["p50"] is not None and lat["max"] is not None
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]  # type: ignore[operator]


@pytest.mark.timeout(60)
def test_open_loop_count_matches_the_servers_count(spawn_server: Any) -> None:
    server = spawn_server("echo", "gevent")
    result = run_bench(server.host, server.port, connections=4, rate=400, requests=300, warmup=0)
    assert result.requests == 300
    assert result.missed == 0 and result.unsent == 0
    assert result.target_rps == 400
    assert result.achieved_rps == pytest.approx(400, rel=0.25)
    assert server_requests(server) == 300


@pytest.mark.timeout(30)
def test_nothing_listening_is_connect_refused() -> None:
    port = free_port()
    result = run_bench("127.0.0.1", port, connections=3, duration=0.5, warmup=0)
    assert result.connected == 0
    assert result.requests == 0
    assert nonzero(result) == {"connect_refused": 3}
    assert "refused" in result.error_samples["connect_refused"]
    assert result.duration_s == 0.0 and result.rps == 0.0


@pytest.mark.timeout(60)
def test_a_handler_that_raises_is_closed_or_reset(spawn_server: Any) -> None:
    # fragile raises on b"boom": the server closes the connection instead of replying.
    server = spawn_server("bingfa_testapps:fragile", "asyncio")
    result = run_bench(
        server.host, server.port, connections=4, duration=0.5, warmup=0, payload=b"boom"
    )
    assert result.connected == 4
    assert result.requests == 0
    errors = nonzero(result)
    assert errors, result.errors
    assert set(errors) <= {"closed", "reset"}, errors
    # Every failed request was replaced on a new connection; the server saw them all.
    assert sum(errors.values()) >= 4


@pytest.mark.timeout(60)
def test_request_timeout_is_classified(spawn_server: Any) -> None:
    server = spawn_server("bingfa_testapps:silent", "asyncio")  # never replies
    result = run_bench(server.host, server.port, connections=2, duration=0.4, warmup=0, timeout=0.3)
    assert result.requests == 0
    errors = nonzero(result)
    assert set(errors) == {"timeout"}, errors
    assert errors["timeout"] >= 2


def check_schema(data: dict[str, Any], open_loop: bool) -> None:
    assert isinstance(data["requests"], int)
    assert isinstance(data["duration_s"], float)
    assert isinstance(data["rps"], float)
    assert isinstance(data["warmup_s"], float)
    assert isinstance(data["generator_saturated"], bool)
    assert set(data["latency_ms"]) == LATENCY_KEYS
    assert all(isinstance(v, float) for v in data["latency_ms"].values())
    assert set(data["errors"]) == set(ERROR_KINDS)
    assert all(isinstance(v, int) for v in data["errors"].values())
    for key in ("connections", "connected", "processes", "sent", "warmup_requests"):
        assert isinstance(data[key], int), key
    assert data["mode"] == ("open" if open_loop else "closed")
    assert all(isinstance(x, float) for x in data["generator_busy"])
    assert decode_histogram(data["latency_hdr"]).get_total_count() == data["requests"]
    open_keys = ("target_rps", "achieved_rps", "missed", "unsent", "latency_uncorrected_ms")
    if open_loop:
        assert isinstance(data["target_rps"], float)
        assert isinstance(data["achieved_rps"], float)
        assert isinstance(data["missed"], int) and isinstance(data["unsent"], int)
        assert set(data["latency_uncorrected_ms"]) == LATENCY_KEYS
        assert isinstance(data["latency_uncorrected_hdr"], str)
    else:
        assert all(data[key] is None for key in open_keys)


@pytest.mark.timeout(60)
def test_json_schema_is_stable(spawn_server: Any, tmp_path: pathlib.Path) -> None:
    server = spawn_server("echo", "asyncio")
    address = f"{server.host}:{server.port}"
    runner = CliRunner()
    for open_loop in (False, True):
        out = tmp_path / f"bench-{open_loop}.json"
        args = [address, "-c", "4", "-d", "0.5", "-w", "0", "--json", str(out), "-q"]
        if open_loop:
            args += ["--rate", "500"]
        outcome = runner.invoke(bench_command, args, catch_exceptions=False)
        assert outcome.exit_code == 0, outcome.output
        data = json.loads(out.read_text(encoding="utf-8"))
        check_schema(data, open_loop)
        assert data["requests"] > 0


@pytest.mark.timeout(30)
def test_cli_reports_unreachable_server_with_exit_status_1() -> None:
    outcome = CliRunner().invoke(
        bench_command, [f"127.0.0.1:{free_port()}", "-c", "2", "-d", "0.3", "-w", "0"]
    )
    assert outcome.exit_code == 1
    assert "connect_refused" in outcome.output
    assert "is the server running?" in outcome.output


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not both"):
        run_bench("127.0.0.1", 9, duration=1, requests=10)
    with pytest.raises(UsageError, match="newline"):
        run_bench("127.0.0.1", 9, protocol="line", payload=b"a\nb")
    with pytest.raises(UsageError, match="rate"):
        run_bench("127.0.0.1", 9, rate=0)
    outcome = CliRunner().invoke(
        bench_command, ["127.0.0.1:9", "--payload", "a", "--payload-size", "3"]
    )
    assert outcome.exit_code == 2


def test_impossible_connection_counts_say_how_to_fix_them() -> None:
    # More connections than any port range or fd limit allows: refused before any process starts.
    with pytest.raises(UsageError, match="Fix:"):
        run_bench("127.0.0.1", 9, connections=70_000, processes=1, duration=1)
    with pytest.raises(UsageError, match="ip_local_port_range"):
        check_port_range(70_000)


def test_fd_soft_limit_is_raised_to_the_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert ensure_fd_limit(100) == 1024 and calls == []
    assert ensure_fd_limit(3000) == 4096 and calls == [(4096, 4096)]
    with pytest.raises(UsageError, match="ulimit -Hn 5000"):
        ensure_fd_limit(5000)


def test_default_processes_rule() -> None:
    assert default_processes(50, cpus=2) == 1
    assert default_processes(50, cpus=1) == 1
    assert default_processes(50, cpus=8) == 4
    assert default_processes(2, cpus=16) == 2
