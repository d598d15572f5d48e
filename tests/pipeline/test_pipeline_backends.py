"""One behaviour suite, run against every backend: memory, process, and Redis.

Results, ordered output, queue order (FIFO/LIFO/priority), the backpressure bound, errors kept
with their items and tracebacks, on_error="raise", retries, drain, cancel, early exit,
statistics, source errors and timeouts.
"""

from __future__ import annotations

import itertools
import pathlib
import threading
import time
from collections.abc import Iterator

import pytest
from pipeline_helpers import (
    fail_on_multiples_of_five,
    is_even,
    is_redis,
    plus_one,
    sleep_50ms,
    sleep_a_bit,
    sleep_two_seconds,
    square,
)

from bingfa.errors import Timeout, UsageError
from bingfa.pipeline import ItemFailed, Pipeline

pytestmark = pytest.mark.timeout(60)


class CountingSource:
    """An endless (or ``n``-item) source that counts the items taken from it, and notices
    being closed."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.pulled = 0
        self.closed = False

    def __iter__(self) -> Iterator[int]:
        try:
            for i in itertools.count() if self.n is None else range(self.n):
                self.pulled += 1
                yield i
        finally:
            self.closed = True


def test_results_map_and_filter(backend: str) -> None:
    pipe = (
        Pipeline(range(200), queue_size=8, backend=backend)
        .map(square, workers=2)
        .filter(is_even, workers=2)
        .map(plus_one)
    )
    got = list(pipe)
    assert sorted(got) == [x * x + 1 for x in range(200) if x % 2 == 0]
    assert pipe.errors == []
    assert pipe.state == "done"
    stats = pipe.stats()
    assert (stats.pulled, stats.emitted, stats.dropped, stats.in_flight) == (200, 100, 100, 0)
    assert [s.name for s in stats.stages] == ["square", "is_even", "plus_one"]
    sq, ev, p1 = stats.stages
    assert (sq.items_in, sq.items_out) == (200, 200)
    assert (ev.items_in, ev.items_out, ev.dropped) == (200, 100, 100)
    assert (p1.items_in, p1.items_out) == (100, 100)


def test_ordered_output_keeps_source_order(backend: str) -> None:
    # Uneven delays with several workers finish out of order; ordered=True must not.
    def jitter(x: int) -> int:
        import time

        time.sleep(0.004 * ((x * 7) % 5))
        return x

    pipe = (
        Pipeline(range(60), queue_size=4, ordered=True, backend=backend)
        .map(jitter, workers=4)
        .filter(is_even)
    )
    assert list(pipe) == list(range(0, 60, 2))


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("fifo", [100, 5, 3, 9, 1, 7]),
        ("lifo", [100, 7, 1, 9, 3, 5]),
        ("priority", [100, 1, 3, 5, 7, 9]),
    ],
)
def test_queue_order(backend: str, order: str, expected: list[int], tmp_path: pathlib.Path) -> None:
    """The first item blocks the only worker until every other item waits in its queue; then
    they come out in queue order."""
    started = tmp_path / "started"
    gate = tmp_path / "gate"

    def hold_first(x: int) -> int:
        import pathlib
        import time

        if x == 100:
            pathlib.Path(started).touch()
            deadline = time.monotonic() + 20
            while not pathlib.Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        return x

    def source() -> Iterator[int]:
        yield 100
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        yield from [5, 3, 9, 1, 7]
        # The feeder asks for the next item only after queueing the last one.
        time.sleep(0.3 if is_redis(backend) else 0.05)  # Redis: let the writer thread XADD
        gate.touch()

    pipe = Pipeline(source(), queue_size=10, backend=backend, order=order)  # type: ignore[arg-type]
    if is_redis(backend) and order != "fifo":
        with pytest.raises(UsageError, match="FIFO"):
            list(pipe.map(hold_first, workers=1))
        return
    assert list(pipe.map(hold_first, workers=1)) == expected


def test_priority_key(backend: str) -> None:
    if is_redis(backend):
        pytest.skip("Redis streams are FIFO only (covered by test_queue_order)")
    # A key that raises is an error of the stage whose queue it orders; others pass.
    pipe = Pipeline(
        [3, "x", 1],
        order="priority",
        key=lambda v: -v if isinstance(v, int) else v + 1,
        backend=backend,
    ).map(plus_one)
    assert sorted(pipe) == [2, 4]
    [(stage, item, exc)] = pipe.errors
    assert (stage, item, type(exc)) == ("plus_one", "x", TypeError)


def test_backpressure_bound(backend: str) -> None:
    """A fast source, a slow consumer: the source is never more than the bound ahead."""
    qs, w1, w2 = 3, 2, 1
    source = CountingSource()
    pipe = (
        Pipeline(source, queue_size=qs, backend=backend)
        .map(square, workers=w1)
        .map(sleep_a_bit, workers=w2)
    )
    bound = (qs + w1) + (qs + w2) + qs  # each stage's queue + its workers, plus the output queue
    assert pipe.capacity == bound
    ahead = []
    for seen, _ in enumerate(pipe, 1):
        ahead.append(source.pulled - seen)
        assert source.pulled <= seen + bound, (source.pulled, seen, bound)
        time.sleep(0.01)  # the consumer is the slowest part
        if seen == 60:
            break
    assert max(ahead) >= bound - 3  # the window really filled up: the bound is what held it
    assert pipe.state == "cancelled"  # leaving the loop early cancels
    assert source.closed


def test_queue_depth_stays_within_queue_size(backend: str) -> None:
    if is_redis(backend):
        pytest.skip("Redis bounds items in flight, not each stream (docs/pipelines.md)")
    source = CountingSource(120)
    pipe = Pipeline(source, queue_size=4, backend=backend).map(square, workers=2).map(sleep_a_bit)
    depths: list[int] = []
    for _ in pipe:
        depths.extend(s.queue_depth for s in pipe.stats().stages)
    assert max(depths) <= 4
    assert max(depths) >= 2  # the slow second stage did build a queue


def test_errors_are_kept_with_item_and_traceback(backend: str) -> None:
    pipe = (
        Pipeline(range(20), backend=backend).map(square).map(fail_on_multiples_of_five, workers=2)
    )
    got = sorted(pipe)
    assert got == sorted(x * x for x in range(20) if (x * x) % 5)
    errors = sorted(pipe.errors, key=lambda e: e.item)
    assert [e.item for e in errors] == [0, 25, 100, 225]
    for stage, item, exc in errors:
        assert stage == "fail_on_multiples_of_five"
        assert isinstance(exc, ValueError)
        assert str(exc) == f"{item} is a multiple of five"
    tb = errors[0].traceback
    assert "fail_on_multiples_of_five" in tb and "ValueError" in tb
    assert pipe.stats().errors == 4


def test_on_error_raise_stops_at_first_error(backend: str) -> None:
    source = CountingSource()
    pipe = Pipeline(source, queue_size=4, backend=backend, on_error="raise").map(
        fail_on_multiples_of_five
    )
    started = time.monotonic()
    with pytest.raises(ItemFailed) as info:
        for _ in pipe:
            pass
    assert time.monotonic() - started < 10
    assert info.value.stage == "fail_on_multiples_of_five"
    assert info.value.item % 5 == 0
    assert isinstance(info.value.__cause__, ValueError)
    assert pipe.state == "failed"
    assert source.pulled <= 100  # it stopped taking items


def test_retries(backend: str) -> None:
    tried: set[int] = set()

    def flaky(x: int) -> int:
        if x not in tried:
            tried.add(x)
            raise RuntimeError("first attempt fails")
        return x

    pipe = Pipeline(range(10), backend=backend, retries=1).map(flaky)
    assert sorted(pipe) == list(range(10))
    assert pipe.errors == []

    pipe = Pipeline(range(3), backend=backend).map(flaky, retries=0, name="no_retry")
    tried.clear()
    assert list(pipe) == []
    assert len(pipe.errors) == 3


def test_drain_finishes_in_flight_and_takes_no_more(backend: str) -> None:
    source = CountingSource()
    pipe = Pipeline(source, queue_size=4, backend=backend).map(sleep_a_bit, workers=2)
    got = []
    for item in pipe:
        got.append(item)
        if len(got) == 10:
            pipe.drain()
    stats = pipe.stats()
    assert pipe.state == "done"
    assert stats.in_flight == 0
    # Every item taken from the source came out: nothing dropped, nothing left behind.
    assert sorted(got) == list(range(len(got)))
    assert stats.pulled == len(got)
    assert source.pulled == len(got) + len(pipe.leftover)
    assert len(got) <= 10 + pipe.capacity
    assert source.closed


def test_cancel_returns_fast_and_drops_the_rest(backend: str) -> None:
    source = CountingSource()
    pipe = Pipeline(source, queue_size=8, backend=backend).map(sleep_50ms, workers=2)
    got = []
    took = 0.0
    for item in pipe:
        got.append(item)
        if len(got) == 3:
            t = time.monotonic()
            pipe.cancel()
            took = time.monotonic() - t
    assert len(got) == 3  # nothing more after cancel, not even finished results
    assert took < 1.5
    assert pipe.state == "cancelled"
    pulled = source.pulled
    time.sleep(0.3)
    assert source.pulled == pulled  # the source is not read any more


def test_cancel_from_another_thread(backend: str) -> None:
    pipe = Pipeline(CountingSource(), backend=backend).map(sleep_two_seconds, workers=2)
    threading.Timer(0.5, pipe.cancel).start()
    started = time.monotonic()
    assert list(pipe) == []
    assert time.monotonic() - started < 3.0
    assert pipe.state == "cancelled"


def test_source_error_is_kept(backend: str) -> None:
    def source() -> Iterator[int]:
        yield from range(5)
        raise OSError("disk gone")

    pipe = Pipeline(source(), backend=backend).map(plus_one)
    assert sorted(pipe) == [1, 2, 3, 4, 5]
    [(stage, item, exc)] = pipe.errors
    assert (stage, item, str(exc)) == ("source", None, "disk gone")

    pipe = Pipeline(source(), backend=backend, on_error="raise").map(plus_one)
    with pytest.raises(ItemFailed, match="disk gone"):
        list(pipe)


def test_late_source_error_still_raises(backend: str) -> None:
    """The source fails only after every item it gave was handed out: still an error."""
    all_out = threading.Event()

    def source() -> Iterator[int]:
        yield from range(3)
        all_out.wait(10)
        raise OSError("late failure")

    pipe = Pipeline(source(), backend=backend, on_error="raise").map(plus_one)
    got = []
    with pytest.raises(ItemFailed, match="late failure"):
        for value in pipe:
            got.append(value)
            if len(got) == 3:
                all_out.set()
    assert sorted(got) == [1, 2, 3]


def test_timeout_when_no_outcome(backend: str) -> None:
    pipe = Pipeline(range(5), backend=backend, timeout=0.3).map(sleep_two_seconds)
    started = time.monotonic()
    with pytest.raises(Timeout):
        list(pipe)
    assert time.monotonic() - started < 2.5
    assert pipe.state == "failed"


def test_closures_and_lambdas_travel(backend: str) -> None:
    offset = 1000
    pipe = Pipeline(range(5), backend=backend).map(lambda x: x + offset).filter(lambda x: x % 2)
    assert sorted(pipe) == [1001, 1003]


def test_runs_once_and_context_manager(backend: str) -> None:
    with Pipeline(range(3), backend=backend).map(plus_one) as pipe:
        assert sorted(pipe) == [1, 2, 3]
        with pytest.raises(UsageError, match="runs once"):
            iter(pipe)
    assert pipe.state == "done"


def test_unstarted_pipeline_closes_cleanly(backend: str) -> None:
    pipe = Pipeline(range(3), backend=backend).map(plus_one)
    pipe.close()
    assert pipe.state == "cancelled"
    assert list(pipe) == []
