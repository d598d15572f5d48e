"""Redis Streams backend: acknowledgement after processing, redelivery when a consumer dies,
retries and dead letters, cancellation, 100,000 items through two ``bingfa worker`` processes.

Needs a Redis server (see conftest.py); the ``redis_url`` fixture starts one if needed.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from pipeline_helpers import (
    delete_pipeline_keys,
    fail_on_multiples_of_five,
    plus_one,
    times_ten,
    worker_log,
)

from bingfa.errors import UsageError
from bingfa.pipeline import ConsumerLost, Pipeline
from bingfa.pipeline._redis import Keys, RedisConsumer, StageLayout, read_layout
from bingfa.pipeline.cli import load_stage, worker_command

pytestmark = pytest.mark.timeout(90)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pipeline_name(redis_client: Any) -> Any:
    name = unique("t")
    yield name
    delete_pipeline_keys(redis_client, name)


def wait_for(cond: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_missing_redis_package_is_a_clear_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'bingfa\[redis\]'"):
        Pipeline(range(3), backend="redis://127.0.0.1:6379/0")


def test_unreachable_server_is_a_network_error() -> None:
    pytest.importorskip("redis")
    from bingfa.errors import NetworkError
    from bingfa.pipeline.testing import free_port

    pipe = Pipeline(range(3), backend=f"redis://127.0.0.1:{free_port()}/0").map(plus_one)
    with pytest.raises(NetworkError, match="cannot reach Redis"):
        list(pipe)
    assert pipe.state == "failed"


def test_layout_is_declared_for_workers(
    redis_url: str, redis_client: Any, pipeline_name: str
) -> None:
    pipe = Pipeline([1], backend=redis_url, name=pipeline_name, retries=2, visibility_timeout=7)
    pipe.map(times_ten, workers=1).filter(lambda x: True, name="keep")
    assert list(pipe) == [10]
    keys = Keys(pipeline_name)
    first = read_layout(redis_client, pipeline_name, "times_ten")
    assert first == StageLayout(
        "times_ten",
        0,
        "map",
        keys.stream("times_ten"),
        keys.stream("keep"),
        "bingfa",
        2,
        7.0,
        keys.dead("times_ten"),
        5,
    )
    last = read_layout(redis_client, pipeline_name, "keep")
    assert last is not None and last.output is None and last.kind == "filter"
    # A named pipeline keeps its streams for the workers; the run's own keys are gone.
    assert redis_client.exists(keys.stream("times_ten"))
    assert not list(redis_client.scan_iter(match=f"{keys.base}:reply:*"))
    assert not list(redis_client.scan_iter(match=f"{keys.base}:run:*"))


def test_unnamed_pipeline_cleans_up(redis_url: str, redis_client: Any) -> None:
    pipe = Pipeline(range(10), backend=redis_url).map(plus_one)
    assert sorted(pipe) == list(range(1, 11))
    assert not list(redis_client.scan_iter(match=f"bingfa:{{{pipe.name}}}:*"))


def test_dead_letter_after_retries(redis_url: str, redis_client: Any, pipeline_name: str) -> None:
    pipe = Pipeline(range(7), backend=redis_url, name=pipeline_name, retries=2).map(
        fail_on_multiples_of_five, workers=1
    )
    assert sorted(pipe) == [1, 2, 3, 4, 6]
    assert sorted(e.item for e in pipe.errors) == [0, 5]
    assert "fail_on_multiples_of_five" in pipe.errors[0].traceback
    dead = redis_client.xrange(Keys(pipeline_name).dead("fail_on_multiples_of_five"))
    assert len(dead) == 2
    fields = dead[0][1]
    assert fields[b"stage"] == b"fail_on_multiples_of_five"
    assert fields[b"attempts"] == b"3"  # the first try and two retries
    assert b"ValueError" in fields[b"traceback"]


def test_unacknowledged_items_are_redelivered(
    redis_url: str, redis_client: Any, pipeline_name: str
) -> None:
    """A consumer that read items and vanished without XACK: another one takes them over after
    the visibility timeout, and they complete."""
    pipe = Pipeline(range(5), backend=redis_url, name=pipeline_name, visibility_timeout=0.5)
    pipe.map(plus_one, workers=0)
    it = iter(pipe)
    stream = Keys(pipeline_name).stream("plus_one")
    wait_for(lambda: redis_client.xlen(stream) == 5, what="the items in the stream")
    got = redis_client.xreadgroup("bingfa", "ghost", {stream: ">"}, count=10)
    assert len(got[0][1]) == 5  # the ghost holds them all and dies (never acknowledges)

    rescuer = RedisConsumer(redis_client, pipeline_name, "plus_one", plus_one)
    thread = threading.Thread(target=rescuer.run, daemon=True)
    thread.start()
    try:
        assert sorted(it) == [1, 2, 3, 4, 5]
        assert pipe.errors == []
    finally:
        rescuer.stop.set()
        thread.join(5)


def test_poison_items_are_dead_lettered_after_max_deliveries(
    redis_url: str, redis_client: Any, pipeline_name: str
) -> None:
    pipe = Pipeline(
        range(3), backend=redis_url, name=pipeline_name, visibility_timeout=0.3, max_deliveries=1
    ).map(plus_one, workers=0)
    it = iter(pipe)
    stream = Keys(pipeline_name).stream("plus_one")
    wait_for(lambda: redis_client.xlen(stream) == 3, what="the items in the stream")
    redis_client.xreadgroup("bingfa", "ghost", {stream: ">"}, count=10)

    rescuer = RedisConsumer(redis_client, pipeline_name, "plus_one", plus_one)
    thread = threading.Thread(target=rescuer.run, daemon=True)
    thread.start()
    try:
        assert list(it) == []
    finally:
        rescuer.stop.set()
        thread.join(5)
    assert sorted(e.item for e in pipe.errors) == [0, 1, 2]
    assert all(isinstance(e.exception, ConsumerLost) for e in pipe.errors)
    assert redis_client.xlen(Keys(pipeline_name).dead("plus_one")) == 3


def test_cancel_makes_workers_skip_the_rest(
    redis_url: str, redis_client: Any, pipeline_name: str
) -> None:
    pipe = Pipeline(range(50), backend=redis_url, name=pipeline_name).map(plus_one, workers=0)
    it = iter(pipe)
    keys = Keys(pipeline_name)
    wait_for(lambda: redis_client.xlen(keys.stream("plus_one")) == 50, what="50 entries")
    pipe.cancel()
    assert list(it) == []
    calls = []

    def counting(x: int) -> int:
        calls.append(x)
        return x

    late = RedisConsumer(redis_client, pipeline_name, "plus_one", counting, max_items=50)
    assert late.run() == 50  # it took and acknowledged every entry ...
    assert calls == []  # ... without running one: their run is over
    assert not list(redis_client.scan_iter(match=f"{keys.base}:reply:*"))


def test_stage_kind_mismatch_is_refused(
    redis_url: str, redis_client: Any, pipeline_name: str
) -> None:
    pipe = Pipeline([1], backend=redis_url, name=pipeline_name).map(times_ten, name="evens")
    assert list(pipe) == [10]
    fn, kind, name = load_stage("pipeline_helpers:evens")
    assert (kind, name) == ("filter", "evens")
    consumer = RedisConsumer(redis_client, pipeline_name, name, fn, kind=kind)
    with pytest.raises(UsageError, match="declared as a map stage"):
        consumer.run()


def test_worker_killed_mid_item_is_redelivered_and_completed(
    redis_url: str,
    pipeline_name: str,
    spawn_worker: Any,
    tmp_path: pathlib.Path,
) -> None:
    """``kill -9`` a ``bingfa worker`` while it runs item 3: after the visibility timeout a
    second worker takes item 3 over and completes it; nothing is lost or failed."""
    marker = tmp_path / "hanging"
    pipe = Pipeline(
        range(8), backend=redis_url, name=pipeline_name, visibility_timeout=1.0, timeout=30
    ).map(times_ten, workers=0)
    it = iter(pipe)
    first = spawn_worker(
        "pipeline_helpers:times_ten",
        redis_url,
        pipeline_name,
        "--batch",
        "1",
        env={"BINGFA_TEST_HANG_ITEM": "3", "BINGFA_TEST_MARKER": str(marker)},
    )
    wait_for(marker.exists, timeout=30, what="the first worker to start item 3")
    assert int(marker.read_text()) == first.pid
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    second = spawn_worker("pipeline_helpers:times_ten", redis_url, pipeline_name)
    assert sorted(it) == [x * 10 for x in range(8)]
    assert pipe.errors == []
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0
    log = worker_log(second)
    assert "took over 1 entries from dead consumers" in log, log


@pytest.mark.timeout(120)
def test_100k_items_through_two_workers_none_lost(
    redis_url: str, pipeline_name: str, spawn_worker: Any
) -> None:
    n = 100_000
    workers = [
        spawn_worker("pipeline_helpers:plus_one", redis_url, pipeline_name, "--batch", "500")
        for _ in range(2)
    ]
    pipe = Pipeline(range(n), 5000, backend=redis_url, name=pipeline_name, timeout=60)
    pipe.map(plus_one, workers=0)
    seen = bytearray(n + 1)  # the idempotent sink: one mark per item id
    count = 0
    for value in pipe:
        seen[value] = 1
        count += 1
    assert count == n  # no duplicates reached us (the pipeline dedupes by sequence number) ...
    assert sum(seen) == n and seen[0] == 0  # ... and every item arrived: 0 lost
    assert pipe.errors == []
    handled = []
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log = worker_log(proc)
        handled.append(int(log.rsplit("handled ", 1)[1].split()[0]))
    assert sum(handled) >= n
    assert min(handled) > 0, handled  # both consumers took a share


def test_worker_command_errors(redis_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(
        worker_command, ["no_such_module_xyz:fn", "--redis", redis_url, "--pipeline", "p"]
    )
    assert result.exit_code == 2
    assert "cannot import 'no_such_module_xyz'" in result.output
    result = runner.invoke(worker_command, ["nocolon", "--redis", redis_url, "--pipeline", "p"])
    assert result.exit_code == 2
    assert "expected 'module:function'" in result.output
    from bingfa.pipeline.testing import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = runner.invoke(
        worker_command, ["pipeline_helpers:plus_one", "--redis", dead, "--pipeline", "p"]
    )
    assert result.exit_code == 1
    assert "cannot reach Redis" in result.output
    result = runner.invoke(worker_command, ["--help"])
    assert result.exit_code == 0 and "--concurrency" in result.output
