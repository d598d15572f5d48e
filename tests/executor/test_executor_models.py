"""One suite, every model: the ``concurrent.futures.Executor`` contract and bingfa's additions."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time
import traceback
from collections.abc import Iterator

import pytest
from executor_helpers import (
    MODEL_CONFIG,
    MODELS,
    ExecutorFactory,
    add,
    blocker_for,
    fail_at,
    fail_for,
    square,
    square_for,
)

from bingfa.executor import Executor, ExecutorClosed, RemoteTraceback, TaskTimeout

pytestmark = pytest.mark.timeout(60)

PROCESS_MODELS = {"process", "gevent", "hybrid", "dask"}


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_is_a_real_concurrent_futures_executor(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(square_for(model), 7)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 49
    assert ex.model == model


def test_results_and_order(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    fn = square_for(model)
    futures = [ex.submit(fn, i) for i in range(30)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(30)]
    assert list(ex.map(fn, range(200))) == [i * i for i in range(200)]
    if model != "asyncio":
        assert ex.submit(add, 1, b=2).result(timeout=30) == 3
        assert list(ex.map(add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]


def test_exception_carries_the_worker_traceback(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    fut = ex.submit(fail_for(model), "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(timeout=30)
    text = "".join(traceback.format_exception(info.value))
    assert "in fail" in text or "in afail" in text  # the worker's frame is in the print-out
    if model in PROCESS_MODELS:
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "ValueError: boom" in str(cause)
        assert "executor_helpers.py" in str(cause)


def test_map_raises_the_first_failure_in_order(model: str, make_executor: ExecutorFactory) -> None:
    if model == "asyncio":
        pytest.skip("fail_at is a plain function; covered for asyncio by the thread pool")
    ex = make_executor(model)
    it = ex.map(fail_at, range(10), itertools.repeat(4))
    got = [next(it) for _ in range(4)]
    assert got == [0, 1, 2, 3]
    with pytest.raises(KeyError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_done_callbacks_as_completed_and_wait(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    fn = square_for(model)
    seen: list[int] = []
    lock = threading.Lock()

    def record(f: cf.Future[int]) -> None:
        with lock:
            seen.append(f.result())

    futures = [ex.submit(fn, i) for i in range(10)]
    for f in futures:
        f.add_done_callback(record)
    done = {f.result() for f in cf.as_completed(futures, timeout=30)}
    assert done == {i * i for i in range(10)}
    finished, not_done = cf.wait(futures, timeout=30)
    assert len(finished) == 10 and not not_done
    deadline = time.monotonic() + 5  # callbacks may still be running right after the result
    while len(seen) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == sorted(i * i for i in range(10))


def test_cancel_a_queued_task(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    blocker = blocker_for(model)
    busy = [ex.submit(blocker, 0.5) for _ in range(2)]  # both slots taken
    time.sleep(0.1)
    queued = ex.submit(blocker, 0.01)
    assert queued.cancel()
    assert queued.cancelled()
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=1)
    assert [f.result(timeout=30) for f in busy] == [0.5, 0.5]


def test_shutdown_cancel_futures(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    blocker = blocker_for(model)
    busy = [ex.submit(blocker, 0.4) for _ in range(2)]
    time.sleep(0.15)
    queued = [ex.submit(blocker, 0.01) for _ in range(3)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert [f.result(timeout=0) for f in busy] == [0.4, 0.4]
    if model != "dask":  # dask cannot tell queued from running: all outstanding are cancelled
        assert all(f.cancelled() for f in queued)
    assert all(f.done() for f in queued)
    with pytest.raises(ExecutorClosed):
        ex.submit(blocker, 0.01)
    with pytest.raises(RuntimeError):  # what concurrent.futures raises
        ex.submit(blocker, 0.01)


def test_shutdown_without_wait_still_runs_queued_work(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(model)
    blocker = blocker_for(model)
    futures = [ex.submit(blocker, 0.2) for _ in range(4)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.15
    assert [f.result(timeout=30) for f in futures] == [0.2] * 4


def test_shutdown_wait_waits(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    futures = [ex.submit(blocker_for(model), 0.2) for _ in range(3)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)


def test_map_with_buffersize_is_lazy_over_an_infinite_iterable(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(model)
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    results = ex.map(square_for(model), numbers(), chunksize=1, buffersize=8)
    assert list(itertools.islice(results, 50)) == [i * i for i in range(50)]
    assert pulled <= 50 + 8  # at most buffersize ahead of the consumer, never "everything"
    results.close()
    # auto-chunking, islice over itertools.count: still finite, still right
    auto = ex.map(square_for(model), itertools.count(), buffersize=64)
    assert list(itertools.islice(auto, 300)) == [i * i for i in range(300)]
    auto.close()


def test_map_unordered_yields_everything(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    got = list(ex.map(square_for(model), range(100), ordered=False))
    assert sorted(got) == [i * i for i in range(100)]


def test_lambdas_and_closures(model: str, make_executor: ExecutorFactory) -> None:
    if model == "asyncio":
        pytest.skip("asyncio runs plain functions in threads: nothing is pickled")
    ex = make_executor(model)
    k = 10
    assert ex.submit(lambda x: x + k, 1).result(timeout=30) == 11

    def outer(n: int) -> int:
        return square(n) + k

    assert list(ex.map(outer, range(5))) == [k, 1 + k, 4 + k, 9 + k, 16 + k]


def test_timeout_stops_a_running_task(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    t0 = time.monotonic()
    # 3 s, not more: the thread and dask models cannot stop it, it runs on in the background
    fut = ex.schedule(blocker_for(model), (3,), timeout=0.3)
    with pytest.raises(TaskTimeout) as info:
        fut.result(timeout=10)
    took = time.monotonic() - t0
    assert 0.25 <= took < 5
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.3
    assert "block" in info.value.task
    # the executor carries on
    assert ex.submit(square_for(model), 5).result(timeout=30) == 25


def test_default_timeout_applies_to_submit(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model, timeout=0.3)
    with pytest.raises(TaskTimeout):
        ex.submit(blocker_for(model), 3).result(timeout=10)


def test_map_timeout_bounds_the_wait(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model)
    ex.submit(square_for(model), 1).result(timeout=30)  # workers up: time only the map
    it = ex.map(blocker_for(model), [0.01, 2.0], timeout=0.5, chunksize=1)
    assert next(it) == 0.01
    with pytest.raises(TimeoutError):
        next(it)


def test_context_manager_shuts_down(model: str) -> None:
    if model == "dask":
        pytest.importorskip("distributed")
    with Executor(model, **MODEL_CONFIG[model]) as ex:  # type: ignore[arg-type]
        fut = ex.submit(square_for(model), 3)
    assert fut.result(timeout=0) == 9
    with pytest.raises(ExecutorClosed):
        ex.submit(square_for(model), 3)
