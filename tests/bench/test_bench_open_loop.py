"""Open loop across a server stall: coordinated omission is corrected, and reported beside the
uncorrected view."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from bingfa.bench import BenchResult, run_bench


@pytest.mark.timeout(60)
def test_a_one_second_stall_shows_in_corrected_latency(spawn_server: Any) -> None:
    server = spawn_server("echo", "asyncio")
    results: list[BenchResult] = []
    # pipeline=1: one request in flight per connection, so during the stall the schedule's
    # requests wait in the generator (missed) and are sent when the server is back; with
    # deeper pipelining the kernel would accept them on time and both views would agree.
    bench = threading.Thread(
        target=lambda: results.append(
            run_bench(
                server.host,
                server.port,
                connections=2,
                rate=200,
                pipeline=1,
                duration=3.0,
                warmup=0,
                timeout=5.0,
                processes=1,
            )
        )
    )
    bench.start()
    try:
        time.sleep(1.0)  # start-up of the generator + ~0.8 s of steady load
        server.signal(signal.SIGSTOP)
        time.sleep(1.0)
    finally:
        server.signal(signal.SIGCONT)
    bench.join(30)
    assert not bench.is_alive()
    (result,) = results

    corrected = result.latency_ms
    uncorrected = result.latency_uncorrected_ms
    assert uncorrected is not None
    assert result.errors == dict.fromkeys(result.errors, 0)
    # ~200 of ~600 requests were due during the 1 s stall: the first waited ~1 s.
    assert corrected["p99"] is not None and corrected["p99"] >= 900
    assert corrected["max"] is not None and corrected["max"] >= 950
    # From their actual send, only the two requests in flight saw the stall.
    assert uncorrected["p99"] is not None and uncorrected["p99"] < corrected["p99"] / 3
    assert uncorrected["max"] is not None and uncorrected["max"] >= 900
    assert result.missed is not None and result.missed >= 150
    assert result.unsent == 0
    assert result.target_rps == 200
    assert result.achieved_rps == pytest.approx(200, rel=0.1)
    assert result.requests == result.sent
