"""The memory and process backends' own behaviour, executor models per stage, the live
display, and argument checking."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest
from pipeline_helpers import die, evens, is_even, make_unpicklable, plus_one, square, tens

from bingfa.errors import UsageError
from bingfa.executor import WorkerDied
from bingfa.pipeline import ItemError, Pipeline, Stage, stage
from bingfa.pipeline._live import make_live, render

pytestmark = pytest.mark.timeout(60)


def pid_of(_: object) -> int:
    return os.getpid()


async def async_double(x: int) -> int:
    await asyncio.sleep(0.001)
    return 2 * x


@pytest.mark.parametrize("model", ["thread", "process", "asyncio", "gevent"])
def test_memory_stage_on_an_executor_model(model: str) -> None:
    pipe = Pipeline(range(20)).map(square, workers=2, model=model).map(plus_one)  # type: ignore[arg-type]
    assert sorted(pipe) == sorted(x * x + 1 for x in range(20))


def test_process_model_really_uses_other_processes() -> None:
    pids = set(Pipeline(range(8)).map(pid_of, workers=2, model="process"))
    assert pids and os.getpid() not in pids
    pids = set(Pipeline(range(8), backend="process").map(pid_of, workers=2))
    assert len(pids) >= 1 and os.getpid() not in pids


def test_async_stage_needs_an_async_model() -> None:
    with pytest.raises(UsageError, match="coroutine function"):
        Pipeline(range(3)).map(async_double)
    pipe = Pipeline(range(5), ordered=True).map(async_double, workers=3, model="asyncio")
    assert list(pipe) == [0, 2, 4, 6, 8]


def test_system_exit_in_a_stage_is_an_item_error_not_a_hang() -> None:
    def leave(x: int) -> int:
        if x == 2:
            raise SystemExit(3)
        return x

    pipe = Pipeline(range(5), timeout=10).map(leave)
    assert sorted(pipe) == [0, 1, 3, 4]
    [(stage_name, item, exc)] = pipe.errors
    assert (stage_name, item, type(exc)) == ("leave", 2, SystemExit)


def test_ordered_output_skips_failed_and_dropped_items() -> None:
    def boom(x: int) -> int:
        if x == 3:
            raise KeyError(x)
        return x

    pipe = Pipeline(range(10), ordered=True).map(boom, workers=3).filter(is_even, workers=2)
    assert list(pipe) == [0, 2, 4, 6, 8]
    assert [e.item for e in pipe.errors] == [3]


def test_incomparable_priorities_fail_the_item_not_the_queue() -> None:
    pipe = Pipeline([1, "a", 2, 0], order="priority").map(plus_one)
    assert sorted(pipe) == [1, 2, 3]
    [err] = pipe.errors
    assert err.item == "a" and isinstance(err.exception, TypeError)
    assert "mutually comparable" in str(err.exception)


def test_local_traceback_names_the_function() -> None:
    def explode(x: int) -> int:
        raise ZeroDivisionError("nope")

    pipe = Pipeline([1]).map(explode)
    assert list(pipe) == []
    [err] = pipe.errors
    assert isinstance(err, ItemError)
    assert err.exception.__traceback__ is not None
    assert "explode" in err.traceback and "ZeroDivisionError: nope" in err.traceback


def test_process_worker_death_is_reported_not_hung() -> None:
    pipe = Pipeline(range(10), backend="process").map(die)
    started = time.monotonic()
    with pytest.raises(WorkerDied, match="stage 'die'"):
        list(pipe)
    assert time.monotonic() - started < 10
    assert pipe.state == "failed"


def test_process_stage_that_cannot_load_in_the_worker() -> None:
    import sys
    import types

    module = types.ModuleType("only_in_the_parent")
    exec("def f(x):\n    return x\n", module.__dict__)
    sys.modules["only_in_the_parent"] = module  # pickled by reference, not importable there
    try:
        pipe = Pipeline(range(3), backend="process").map(module.f)
        with pytest.raises(UsageError, match="could not start in its worker process"):
            list(pipe)
    finally:
        del sys.modules["only_in_the_parent"]


def test_process_unpicklable_result_is_an_item_error() -> None:
    pipe = Pipeline(range(3), backend="process").map(make_unpicklable)
    assert list(pipe) == []
    assert len(pipe.errors) == 3
    assert all("refuses to be pickled" in str(e.exception) for e in pipe.errors)
    assert "Traceback in stage 'make_unpicklable'" in pipe.errors[0].traceback


def test_process_exception_has_remote_traceback() -> None:
    def bad(x: int) -> int:
        return 1 // 0

    pipe = Pipeline([1], backend="process").map(bad)
    assert list(pipe) == []
    [err] = pipe.errors
    assert isinstance(err.exception, ZeroDivisionError)
    assert "Traceback in stage 'bad', worker pid" in err.traceback
    assert "1 // 0" in err.traceback


def test_drain_while_the_source_blocks_keeps_the_late_item() -> None:
    release = threading.Event()

    def source() -> Iterator[int]:
        yield 1
        release.wait(10)
        yield 2

    pipe = Pipeline(source()).map(plus_one)
    got = []
    for value in pipe:
        got.append(value)
        pipe.drain()  # the feeder is now blocked inside the source's next()
    release.set()
    assert got == [2]
    deadline = time.monotonic() + 5
    while not pipe.leftover and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipe.leftover == [2]


def test_stage_objects() -> None:
    @stage(kind="filter", name="odd")
    def odd(x: int) -> bool:
        return x % 2 == 1

    assert isinstance(odd, Stage) and odd(3) is True
    pipe = Pipeline(range(6), ordered=True).map(tens).filter(evens).filter(odd)
    assert pipe.stages == ["tens", "evens", "odd"]
    assert list(pipe) == []  # multiples of ten are even, never odd
    with pytest.raises(UsageError, match="is a filter stage"):
        Pipeline([1]).map(evens)


def test_stage_names() -> None:
    pipe = Pipeline([1]).map(square).map(square).map(lambda x: x).filter(lambda x: x)
    assert pipe.stages == ["square", "square-2", "map2", "filter3"]
    with pytest.raises(UsageError, match="two stages named"):
        Pipeline([1]).map(square, name="a").map(square, name="a")
    with pytest.raises(UsageError, match="letters, digits"):
        Pipeline([1]).map(square, name="has space")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "kafka"}, "unknown backend"),
        ({"order": "random"}, "order must be one of"),
        ({"on_error": "ignore"}, "on_error must be"),
        ({"queue_size": 0}, "queue_size must be"),
        ({"retries": -1}, "retries must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"name": "a b"}, "pipeline name"),
    ],
)
def test_bad_pipeline_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Pipeline(range(3), **kwargs)  # type: ignore[arg-type]


def test_bad_stage_arguments() -> None:
    with pytest.raises(UsageError, match="workers must be"):
        Pipeline([1]).map(square, workers=0)  # only Redis stages may have no local workers
    with pytest.raises(UsageError, match="unknown model"):
        Pipeline([1]).map(square, model="fibers")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="needs a callable"):
        Pipeline([1]).map(42)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="runs every stage in worker processes"):
        list(Pipeline([1], backend="process").map(square, model="asyncio"))
    with pytest.raises(UsageError, match="no stage"):
        list(Pipeline([1]))
    with pytest.raises(UsageError, match="source must be iterable"):
        Pipeline(42)  # type: ignore[arg-type]
    pipe = Pipeline([1]).map(square)
    assert list(pipe) == [1]
    with pytest.raises(UsageError, match="before the pipeline starts"):
        pipe.map(square)


def test_stats_and_live_rendering() -> None:
    pipe = Pipeline(range(30), queue_size=5).map(square, workers=3).filter(is_even)
    before = pipe.stats()
    assert before.state == "new" and before.pulled == 0 and before.capacity == 5 + 3 + 5 + 1 + 5
    assert len(list(pipe)) == 15
    stats = pipe.stats()
    assert stats.state == "done" and stats.emitted == 15 and stats.dropped == 15
    assert stats.stages[0].rate > 0
    text = stats.format()
    assert "square" in text and "is_even" in text
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(render(stats))
    assert "is_even (filter)" in console.export_text()
    assert make_live(pipe) is None  # stderr is not a terminal under pytest
    assert sorted(Pipeline(range(3), progress=True).map(square)) == [0, 1, 4]
