"""Worker processes: death, timeouts, pickling, initializers, recycling, start method."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from executor_helpers import (
    ExecutorFactory,
    block,
    broken_init,
    die,
    die_at,
    getpid,
    log_and_die_at,
    pid_after,
    raise_unpicklable,
    recall,
    remember,
    returns_unpicklable,
    slow_die_at,
    square,
    write_pid_then_sleep,
)

from bingfa.errors import UsageError
from bingfa.executor import (
    Executor,
    InitializerFailed,
    RemoteTaskError,
    TaskTimeout,
    WorkerDied,
)
from bingfa.executor._jobs import BatchResult, Job

pytestmark = pytest.mark.timeout(60)


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} did not appear")


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("model", ["process", "hybrid"])
def test_kill_9_fails_only_that_task_and_the_pool_carries_on(
    model: str, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    ex = make_executor(model, workers=2) if model == "process" else make_executor(model)
    marker = tmp_path / "pid"
    victim = ex.submit(write_pid_then_sleep, str(marker), 30)
    pid = int(wait_for_file(marker))
    bystander = ex.submit(pid_after, 0.3) if model == "process" else None
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied) as info:
        victim.result(timeout=10)
    assert time.monotonic() - t0 < 3  # noticed promptly: never a hang
    err = info.value
    assert err.pid == pid
    assert err.exitcode == -signal.SIGKILL
    assert err.signal == signal.SIGKILL
    assert "write_pid_then_sleep" in err.task
    assert "SIGKILL" in str(err)
    if bystander is not None:  # the other worker's task is untouched
        assert bystander.result(timeout=10) != pid
    # the dead worker was replaced: new work runs, in processes other than the dead one
    pids = {f.result(timeout=30) for f in [ex.submit(pid_after, 0.05) for _ in range(6)]}
    assert pid not in pids
    assert gone(pid)


@pytest.mark.parametrize(
    ("how", "arg", "code"),
    [("kill", 0, -signal.SIGKILL), ("segv", 0, -signal.SIGSEGV), ("exit", 3, 3)],
)
def test_worker_death_modes(how: str, arg: int, code: int, make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=1)
    with pytest.raises(WorkerDied) as info:
        ex.submit(die, how, arg).result(timeout=10)
    assert info.value.exitcode == code
    assert ex.submit(square, 4).result(timeout=30) == 16


def test_crash_inside_a_batch_pins_the_call_and_reports_unstarted_items(
    make_executor: ExecutorFactory,
) -> None:
    ex = make_executor("process", workers=1)
    job = Job(slow_die_at, [(i, 3) for i in range(8)], True, None, single=False)
    ex._backend.submit_job(job)
    res = job.future.result(timeout=10)
    assert isinstance(res, BatchResult)
    assert res.not_run_from == 4  # 4..7 never started: the map driver runs them again
    assert res.errors is not None and set(res.errors) == {0, 1, 2, 3}
    culprit = res.errors[3]
    assert isinstance(culprit, WorkerDied)
    assert "slow_die_at(3, 3)" in culprit.task
    assert culprit.reason == "while running the task"
    for i in range(3):  # ran, but the results died with the worker
        assert isinstance(res.errors[i], WorkerDied)
        assert "before reporting" in res.errors[i].reason


def test_crash_among_tiny_calls_fails_their_small_group(make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=1)
    job = Job(die_at, list(range(50)), False, None, single=False)  # star=False: die_at(x)
    ex._backend.submit_job(job)
    res = job.future.result(timeout=10)
    assert isinstance(res, BatchResult)
    assert res.errors is not None
    assert isinstance(res.errors[0], WorkerDied)  # die_at(x) with bad=0: item 0 kills it
    assert res.errors[0].reason == "while running the task"  # the first group has one call
    assert res.not_run_from == 1


def test_map_reruns_items_a_dead_worker_never_started(
    make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    ex = make_executor("process", workers=1)
    log = tmp_path / "ran"
    # one batch of 10; item 0 kills the worker before 1..9 start: they must run (exactly once)
    it = ex.map(log_and_die_at, range(10), [0] * 10, [str(log)] * 10, chunksize=10)
    with pytest.raises(WorkerDied):
        next(it)
    assert sorted(int(x) for x in log.read_text().split()) == list(range(10))


def test_timeout_kills_and_replaces_the_worker(make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=1)
    before = ex.submit(getpid).result(timeout=30)
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        ex.schedule(block, (30,), timeout=0.5).result(timeout=10)
    took = time.monotonic() - t0
    assert 0.45 < took < 3
    assert info.value.pid == before
    assert "block(30)" in info.value.task
    assert gone(before)
    after = ex.submit(getpid).result(timeout=30)
    assert after != before


def test_queued_time_does_not_count_toward_the_timeout(make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=1)
    first = ex.submit(block, 0.6)
    second = ex.schedule(block, (0.3,), timeout=0.5)  # waits ~0.6s in the queue, runs 0.3s
    assert first.result(timeout=10) == 0.6
    assert second.result(timeout=10) == 0.3


def test_unpicklable_argument_result_and_exception(make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=1)
    with pytest.raises((TypeError, pickle.PicklingError)):
        ex.submit(square, threading.Lock()).result(timeout=30)
    with pytest.raises(pickle.PicklingError, match="could not be pickled"):
        ex.submit(returns_unpicklable).result(timeout=30)
    with pytest.raises(RemoteTaskError) as info:
        ex.submit(raise_unpicklable).result(timeout=30)
    assert "Unpicklable" in info.value.type_name
    assert "raise_unpicklable" in str(info.value.__cause__)
    assert ex.submit(square, 5).result(timeout=30) == 25


@pytest.mark.parametrize("model", ["process", "hybrid", "gevent", "thread", "asyncio"])
def test_initializer_runs_in_every_worker(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model, initializer=remember, initargs=("answer", 42))
    futures = [ex.submit(recall, "answer") for _ in range(6)]
    assert [f.result(timeout=30) for f in futures] == [42] * 6


def test_failing_initializer_breaks_the_executor(make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=1, initializer=broken_init)
    fut = ex.submit(square, 2)
    with pytest.raises(InitializerFailed) as info:
        fut.result(timeout=30)
    assert "initializer is broken" in str(info.value)
    with pytest.raises(InitializerFailed):
        ex.submit(square, 2)


@pytest.mark.parametrize("model", ["process", "hybrid", "gevent"])
def test_max_tasks_per_worker_recycles_workers(model: str, make_executor: ExecutorFactory) -> None:
    ex = make_executor(model, workers=1, max_tasks_per_worker=2)
    pids = [ex.submit(getpid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]


def test_forkserver_is_the_default_and_fork_is_refused() -> None:
    with Executor("process", 1) as ex:
        assert ex._backend._spec.ctx.get_start_method() == "forkserver"  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="fork"):
        Executor("process", 1, mp_context="fork")
    with Executor("process", 1, mp_context="spawn") as ex:
        assert ex.submit(square, 3).result(timeout=60) == 9


def test_shutdown_leaves_no_worker_processes() -> None:
    ex = Executor("process", 2)
    pids = {f.result(timeout=30) for f in [ex.submit(pid_after, 0.1) for _ in range(4)]}
    ex.shutdown(wait=True)
    assert pids and all(gone(p) for p in pids)


def test_terminate_returns_fast_and_kills_running_tasks(make_executor: ExecutorFactory) -> None:
    ex = make_executor("process", workers=2)
    running = [ex.submit(pid_after, 30) for _ in range(2)]
    queued = ex.submit(square, 1)
    time.sleep(0.3)
    t0 = time.monotonic()
    ex.terminate()
    assert time.monotonic() - t0 < 1.5
    assert queued.cancelled()
    for f in running:
        with pytest.raises(Exception, match="terminated"):
            f.result(timeout=1)


def test_a_worker_exits_when_its_caller_is_gone(tmp_path: Path) -> None:
    """The lifeline: a worker stuck in a long task exits when the caller dies (kill -9)."""
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = {[os.path.dirname(__file__)]!r}
        from executor_helpers import write_pid_then_sleep
        from bingfa.executor import Executor
        ex = Executor("process", 1)
        ex.submit(write_pid_then_sleep, {str(marker)!r}, 60)
        import time; time.sleep(60)
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", script])
    try:
        worker = int(wait_for_file(marker, 30))
        caller.kill()
        caller.wait(10)
        assert gone(worker, 5)
    finally:
        caller.kill()
        caller.wait(10)
