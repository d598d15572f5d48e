"""``bingfa.executor.map``, the model chooser, the probe, progress and the map driver."""

from __future__ import annotations

import functools
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from executor_helpers import asquare, block, burn, fail_at, square

from bingfa.errors import UsageError
from bingfa.executor import (
    Choice,
    MapRun,
    TaskTimeout,
    choose_model,
    cpu_count,
    map,
    probe,
)
from bingfa.executor._backend import Backend
from bingfa.executor._jobs import Job
from bingfa.executor._maprun import MAX_CHUNK, Chunker
from bingfa.executor._progress import NullProgress, RichProgress, make_progress

pytestmark = pytest.mark.timeout(60)


def nap(x: int) -> int:
    time.sleep(0.02)
    return x


# --- the chooser ----------------------------------------------------------------------------


def test_choose_coroutines() -> None:
    assert choose_model(asquare, 100).model == "asyncio"
    very_many = choose_model(asquare, 1_000_000)
    assert very_many.model == "hybrid" and "very many" in very_many.reason


def test_choose_from_a_kind_hint() -> None:
    cpu = choose_model(square, 1000, "cpu")
    assert (cpu.model, cpu.workers) == ("process", cpu_count())
    assert "CPU-bound" in cpu.reason and "kind='cpu'" in cpu.reason
    few = choose_model(square, 10, "io")
    assert (few.model, few.workers) == ("thread", 10)
    many = choose_model(square, 5000, "io")
    assert many.model == "gevent" and "many" in many.reason
    huge = choose_model(square, 1_000_000, "io")
    assert huge.model == "gevent" and huge.options == {"processes": cpu_count()}
    unknown = choose_model(square, None, "io")
    assert unknown.model == "gevent"
    with pytest.raises(UsageError):
        choose_model(square, 10, "gpu")  # type: ignore[arg-type]


def test_choose_from_measurements() -> None:
    cpu = choose_model(square, 1000, cpu_fraction=0.95, seconds_per_item=0.01)
    assert cpu.model == "process" and "95% CPU" in cpu.reason
    tiny = choose_model(square, 1000, cpu_fraction=0.95, seconds_per_item=1e-6)
    assert tiny.model == "thread" and "cost more than they save" in tiny.reason
    waiting = choose_model(square, 20, cpu_fraction=0.02, seconds_per_item=0.05)
    assert waiting.model == "thread"
    mixed_many = choose_model(square, 10_000, cpu_fraction=0.5, seconds_per_item=0.01)
    assert mixed_many.model == "hybrid"
    assert choose_model(square).model == "thread"  # nothing known: the safe default
    assert "model=thread" in str(choose_model(square))


def test_probe_tells_cpu_from_waiting() -> None:
    cpu = probe(burn, iter([300_000] * 3))
    assert cpu.cpu_fraction > 0.7
    assert len(cpu.items) == len(cpu.outcomes) >= 1
    waiting = probe(nap, iter(range(3)))
    assert waiting.cpu_fraction < 0.3
    assert waiting.outcomes == [(True, 0), (True, 1), (True, 2)]
    assert 0.015 < waiting.seconds_per_item < 0.5


def test_probe_stops_at_its_budget() -> None:
    p = probe(block, iter([0.15] * 10), max_items=10, budget=0.2)
    assert len(p.items) == 2


# --- module-level map -----------------------------------------------------------------------


def test_map_auto_probes_says_why_and_keeps_probe_results(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def counted(x: int) -> int:
        with lock:
            calls.append(x)
        time.sleep(0.01)
        return x * 2

    with caplog.at_level(logging.INFO, logger="bingfa.executor"):
        result = map(counted, range(20), progress=False)
        assert list(result) == [x * 2 for x in range(20)]
    assert result.choice.model == "thread"
    assert result.choice.probed >= 1 and "probe" in result.choice.reason
    assert sorted(calls) == list(range(20))  # probed items were not run twice
    assert any("chose" in r.message or "model=thread" in r.message for r in caplog.records)


def test_map_auto_with_cpu_hint_uses_processes() -> None:
    result = map(square, range(1000), kind="cpu", progress=False)
    assert list(result) == [x * x for x in range(1000)]
    assert result.choice.model == "process"


def test_map_explicit_model_and_infinite_input() -> None:
    with map(
        square, itertools.count(), model="thread", workers=3, progress=False, buffersize=16
    ) as result:
        assert list(itertools.islice(result, 100)) == [x * x for x in range(100)]
        assert result.choice.model == "thread" and result.choice.workers == 3


def test_map_coroutine_function_goes_to_asyncio() -> None:
    result = map(asquare, range(50), progress=False)
    assert result.choice.model == "asyncio"
    assert list(result) == [x * x for x in range(50)]


def test_map_unordered() -> None:
    got = list(map(nap, range(30), model="thread", workers=8, ordered=False, progress=False))
    assert sorted(got) == list(range(30))


def test_map_per_task_timeout_stops_a_running_task() -> None:
    result = map(block, [0.01, 30, 0.01], model="process", workers=1, timeout=0.5, progress=False)
    assert next(result) == 0.01
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout):
        next(result)
    assert time.monotonic() - t0 < 5


def test_map_raises_a_failing_item_in_order_and_releases_workers() -> None:
    result = map(functools.partial(fail_at, bad=5), range(10), model="process", progress=False)
    assert [next(result) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError):
        next(result)
    assert result.closed  # the executor was released


def test_map_rejects_bad_arguments() -> None:
    with pytest.raises(UsageError):
        map(square, [1], model="fibers")
    with pytest.raises(UsageError):
        map(square, [1], model="thread", timeout=0)
    with pytest.raises(UsageError):
        map(asquare, [1], model="thread", progress=False)
    with pytest.raises(UsageError):
        map(square, [1], model="thread", timeout=1, chunksize=10, progress=False)


# --- progress -------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_off_without_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(make_progress(True, "x", 10), NullProgress)
    monkeypatch.setattr("sys.stderr", FakeTTY())
    assert isinstance(make_progress(False, "x", 10), NullProgress)


def test_progress_bar_shows_count_and_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    bar = make_progress(True, "demo", 10)
    assert isinstance(bar, RichProgress)
    for _ in range(10):
        bar.advance(1)
    bar.close()
    bar.close()  # idempotent
    out = tty.getvalue()
    assert "demo" in out and "10/10" in out and "/s" in out


def test_map_drives_the_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    assert list(map(square, range(50), model="thread", progress=True)) == [x * x for x in range(50)]
    assert "50/50" in tty.getvalue()


# --- the driver -----------------------------------------------------------------------------


def test_chunker() -> None:
    c = Chunker("auto", 0.01, 2, False, None, None)
    assert c.next_size() == 1  # nothing measured yet
    c.observe(10, 0.0001)  # 10 µs per item
    assert c.next_size() == 1000
    c2 = Chunker("auto", 0.01, 2, False, 10_000, None)
    c2.observe(1000, 0.0001)
    assert c2.next_size() == 10_000 // 8  # multiprocessing.Pool's cap for known lengths
    c3 = Chunker("auto", 0.01, 2, False, None, None)
    c3.observe(1000, 1e-9)
    assert c3.next_size() == MAX_CHUNK
    concurrent = Chunker("auto", 0.01, 1000, True, None, None)
    assert concurrent.next_size() == 125  # concurrent items: parallelism / 8 ...
    concurrent.observe(125, 0.012)  # ... IO-bound (each waits ~10 ms): stays there
    assert concurrent.next_size() == 125
    cheap = Chunker("auto", 0.01, 1000, True, None, None)
    cheap.observe(125, 125 * 2e-6)  # ... tiny: bigger batches
    assert cheap.next_size() == 5000
    assert Chunker("auto", 0.01, 2, False, None, 5.0).next_size() == 1  # timeout: one by one
    assert Chunker(7, 0.01, 2, False, None, None).next_size() == 7
    with pytest.raises(UsageError):
        Chunker(0, 0.01, 2, False, None, None)
    with pytest.raises(UsageError):
        Chunker(5, 0.01, 2, False, None, 1.0)


class FlakyBackend(Backend):
    """Runs jobs inline; the first batch it sees reports its second half as never started."""

    model = "fake"

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit_job(self, job: Job) -> None:
        self.jobs.append(job)
        job.future.set_running_or_notify_cancel()
        values: list[Any] = [job.call(i) for i in range(len(job))]
        if len(self.jobs) == 1:
            half = len(values) // 2
            values[half:] = [None] * (len(values) - half)
            job.resolve(values, None, half, 0.001)
        else:
            job.resolve(values, None, None, 0.001)

    def parallelism(self, fn: Callable[..., Any]) -> int:
        return 1

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        pass

    def terminate(self) -> None:
        pass


def test_driver_resubmits_items_that_never_ran() -> None:
    backend = FlakyBackend()
    run = MapRun(backend, square, iter(range(10)), chunksize=10)
    assert list(run) == [i * i for i in range(10)]
    assert [len(j) for j in backend.jobs] == [10, 5]  # the 5 unstarted items went again


def test_choice_is_frozen_and_printable() -> None:
    c = Choice("thread", 4, "because", "io")
    assert str(c) == "model=thread workers=4: because"
    model, reason = c
    assert (model, reason) == ("thread", "because")
    with pytest.raises(AttributeError):
        c.model = "process"  # type: ignore[misc]
