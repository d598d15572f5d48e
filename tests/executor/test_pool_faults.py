"""The process pool under faults (``process``, ``hybrid`` and ``gevent`` models).

* Pickling that raises - anything, ``SystemExit`` and ``KeyboardInterrupt`` included - on
  either side fails *that* task's future and nothing else: the pool's IO thread and the worker
  carry on.
* A finished task leaves nothing referenced: not in the worker (its function, arguments,
  result) and not in the pool (its job).
* Lifetime: the pool stays registered for interpreter exit until it has stopped, so exiting
  after ``shutdown(wait=False)`` still waits for the work; ``shutdown(wait=False)`` works from
  any thread, under any lock, and more than once; interpreter exit prints no "Exception
  ignored" from multiprocessing's own exit handler.

Every wait is bounded (``RESULT_TIMEOUT``), so a regression fails instead of hanging.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from executor_helpers import (
    BOMB_KINDS,
    MODEL_CONFIG,
    DumpBomb,
    ExecutorFactory,
    LoadBomb,
    Tracked,
    TrackedCallable,
    block,
    freed_in_other_processes,
    getpid,
    identity,
    raise_dump_bomb,
    raise_load_bomb,
    return_dump_bomb,
    return_dump_bomb_at,
    return_load_bomb,
    slow_load_bomb_at,
    square,
)

from bingfa.executor import Executor, InitializerFailed, RemoteTaskError
from bingfa.executor import _backend as backend_module
from bingfa.executor._jobs import BatchResult, Job
from bingfa.executor._pool import ProcessPool

pytestmark = pytest.mark.timeout(120)

POOL_MODELS = ["process", "hybrid", "gevent"]
#: bound for every wait on a result: a hang fails the test instead
RESULT_TIMEOUT = 30.0
TESTS_DIR = str(Path(__file__).resolve().parent)
BOMB_TYPES: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "ValueError": ValueError,
}


def outcome(fut: Any) -> BaseException | None:
    """The future's exception (``None`` on success) - any ``BaseException`` is returned, not
    raised (a ``KeyboardInterrupt`` must not stop the test run); a hang fails the test."""
    try:
        fut.result(timeout=RESULT_TIMEOUT)
    except BaseException as exc:
        if not fut.done():  # the wait timed out (a TaskTimeout is a TimeoutError too)
            pytest.fail(f"no outcome within {RESULT_TIMEOUT} s: the pool hangs")
        return exc
    return None


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def one_worker(model: str, make_executor: ExecutorFactory) -> Any:
    """An executor with exactly one worker process (so "the same worker" is checkable)."""
    return make_executor(model, workers=1) if model == "process" else make_executor(model)


def pool_of(ex: Executor) -> ProcessPool:
    backend = ex._backend
    assert isinstance(backend, ProcessPool)
    return backend


def run_job(ex: Executor, job: Job) -> BatchResult:
    """Run a batch ``job`` on ``ex``'s pool (what the map driver does) and return its result."""
    pool_of(ex).submit_job(job)
    result = job.future.result(timeout=RESULT_TIMEOUT)
    assert isinstance(result, BatchResult)
    return result


# --- unpickling in the caller raises ----------------------------------------------------------


@pytest.mark.parametrize("kind", BOMB_KINDS)
@pytest.mark.parametrize("model", POOL_MODELS)
def test_result_whose_unpickling_raises_fails_only_its_future(
    model: str, kind: str, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(model)
    exc = outcome(ex.submit(return_load_bomb, kind, os.getpid()))
    # as concurrent.futures does with what a task raised: the future holds it as it is
    assert isinstance(exc, BOMB_TYPES[kind]), repr(exc)
    assert ex.submit(square, 7).result(timeout=RESULT_TIMEOUT) == 49
    assert pool_of(ex)._io.is_alive()


@pytest.mark.parametrize("model", POOL_MODELS)
def test_exception_whose_unpickling_raises_fails_only_its_future(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(model)
    exc = outcome(ex.submit(raise_load_bomb, "SystemExit", os.getpid()))
    assert isinstance(exc, SystemExit), repr(exc)
    assert ex.submit(square, 3).result(timeout=RESULT_TIMEOUT) == 9


def test_partial_results_that_do_not_unpickle_fail_only_their_items(
    make_executor: ExecutorFactory,
) -> None:
    """A long batch on a ``process`` worker reports finished prefixes (``P`` frames); one that
    does not unpickle fails exactly the items it carried, and the batch goes on."""
    ex = make_executor("process", workers=1)
    items = [(i, 0, os.getpid()) for i in range(8)]  # item 0 explodes in the caller
    job = Job(slow_load_bomb_at, items, star=True, single=False)
    result = run_job(ex, job)
    assert result.errors is not None and 0 in result.errors
    # the first prefix is flushed after 50 ms: items 0 and 1, or only 0 on a slow machine
    assert set(result.errors) <= {0, 1, 2}, result.errors
    assert all(isinstance(e, SystemExit) for e in result.errors.values()), result.errors
    good = [i for i in range(8) if i not in result.errors]
    assert [result.values[i] for i in good] == good
    assert ex.submit(square, 4).result(timeout=RESULT_TIMEOUT) == 16


def test_initializer_error_that_does_not_unpickle_breaks_the_pool_cleanly(
    make_executor: ExecutorFactory,
) -> None:
    ex = make_executor(
        "process", workers=1, initializer=raise_load_bomb, initargs=("SystemExit", os.getpid())
    )
    exc = outcome(ex.submit(square, 2))
    assert isinstance(exc, InitializerFailed), repr(exc)
    assert isinstance(exc.__cause__, SystemExit)


# --- pickling or unpickling in the worker raises ----------------------------------------------


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("model", POOL_MODELS)
def test_result_whose_pickling_raises_fails_only_that_task(
    model: str, kind: str, make_executor: ExecutorFactory
) -> None:
    ex = one_worker(model, make_executor)
    before = ex.submit(getpid).result(timeout=RESULT_TIMEOUT)
    exc = outcome(ex.submit(return_dump_bomb, kind))
    assert isinstance(exc, BOMB_TYPES[kind]), repr(exc)
    assert ex.submit(getpid).result(timeout=RESULT_TIMEOUT) == before, "the worker died"


@pytest.mark.parametrize("model", POOL_MODELS)
def test_batch_with_a_result_whose_pickling_raises_fails_only_that_item(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = one_worker(model, make_executor)
    before = ex.submit(getpid).result(timeout=RESULT_TIMEOUT)
    job = Job(return_dump_bomb_at, [0, 1, 2], star=False, single=False)
    result = run_job(ex, job)
    assert result.values[0] == 0 and result.values[2] == 2
    assert result.errors is not None and set(result.errors) == {1}
    assert isinstance(result.errors[1], SystemExit)
    assert ex.submit(getpid).result(timeout=RESULT_TIMEOUT) == before, "the worker died"


@pytest.mark.parametrize("model", POOL_MODELS)
def test_exception_whose_pickling_raises_fails_only_that_task(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = one_worker(model, make_executor)
    before = ex.submit(getpid).result(timeout=RESULT_TIMEOUT)
    exc = outcome(ex.submit(raise_dump_bomb, "SystemExit"))
    assert isinstance(exc, RemoteTaskError), repr(exc)
    assert "DumpBombError" in exc.type_name
    assert "raise_dump_bomb" in str(exc.__cause__)  # the worker's traceback came along
    assert ex.submit(getpid).result(timeout=RESULT_TIMEOUT) == before, "the worker died"


@pytest.mark.parametrize("kind", BOMB_KINDS)
@pytest.mark.parametrize("model", POOL_MODELS)
def test_argument_whose_unpickling_raises_in_the_worker_fails_only_that_task(
    model: str, kind: str, make_executor: ExecutorFactory
) -> None:
    ex = one_worker(model, make_executor)
    before = ex.submit(getpid).result(timeout=RESULT_TIMEOUT)
    exc = outcome(ex.submit(identity, LoadBomb(kind, os.getpid(), here=False)))
    assert isinstance(exc, BOMB_TYPES[kind]), repr(exc)
    assert ex.submit(getpid).result(timeout=RESULT_TIMEOUT) == before, "the worker died"


# --- references are let go of -----------------------------------------------------------------


@pytest.mark.parametrize("model", POOL_MODELS)
def test_an_idle_worker_holds_nothing_of_its_last_task(
    model: str, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    """After a task the worker frees its function, argument and result at once - not when the
    next task arrives (none does here)."""
    ex = one_worker(model, make_executor)
    path = str(tmp_path / "freed")
    fut = ex.submit(TrackedCallable(path, "fn"), Tracked(path, "arg"))
    assert isinstance(fut.result(timeout=RESULT_TIMEOUT), Tracked)
    del fut
    want = {"fn", "arg", "result"}
    assert wait_until(lambda: freed_in_other_processes(path) >= want), (
        f"the worker still holds {sorted(want - freed_in_other_processes(path))}"
    )


@pytest.mark.parametrize("model", POOL_MODELS)
def test_an_idle_worker_holds_nothing_of_its_last_batch(
    model: str, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    """The same for a map batch, whose calls yield (a gevent worker then remembers that the
    function yields - weakly)."""
    ex = one_worker(model, make_executor)
    path = str(tmp_path / "freed")
    fn = TrackedCallable(path, "fn", yields=True)
    job = Job(fn, [Tracked(path, f"arg{i}") for i in range(3)], star=False, single=False)
    result = run_job(ex, job)
    assert result.errors is None and len(result.values) == 3
    del job, result, fn
    want = {"fn", "arg0", "arg1", "arg2", "result"}
    assert wait_until(lambda: freed_in_other_processes(path) >= want), (
        f"the worker still holds {sorted(want - freed_in_other_processes(path))}"
    )


@pytest.mark.parametrize("model", POOL_MODELS)
def test_an_idle_worker_holds_nothing_of_a_closure_sent_by_value(
    model: str, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    """A lambda travels by value (cloudpickle) with what it captured; the worker's caches must
    not keep it (the function cache is weak, the hybrid worker's coroutine check uncached)."""
    ex = one_worker(model, make_executor)
    path = str(tmp_path / "freed")

    def make() -> Callable[[int], int]:
        captured = Tracked(path, "captured")
        return lambda x: x + (captured is not None)

    assert ex.submit(make(), 1).result(timeout=RESULT_TIMEOUT) == 2
    assert wait_until(lambda: "captured" in freed_in_other_processes(path)), (
        "the worker still holds the closure"
    )


@pytest.mark.parametrize("model", POOL_MODELS)
def test_the_pool_holds_nothing_of_a_finished_job(
    model: str, make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    ex = make_executor(model)
    fn = TrackedCallable(str(tmp_path / "freed"), "fn")
    arg = Tracked(str(tmp_path / "freed"), "arg")
    refs: list[weakref.ref[Tracked]] = [weakref.ref(fn), weakref.ref(arg)]
    fut = ex.submit(fn, arg)
    fut.result(timeout=RESULT_TIMEOUT)
    del fn, arg

    def released() -> bool:
        gc.collect()
        return all(r() is None for r in refs)

    assert wait_until(released, 5.0), "the pool still refers to the job's function or argument"


def test_replaced_workers_leave_no_file_descriptors_behind() -> None:
    """Workers are not ``close()``d (see WorkerHandle.close): their sentinels must still go."""

    def open_fds() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    with Executor("process", workers=1) as warm:  # the fork server and friends start once
        warm.submit(square, 1).result(timeout=RESULT_TIMEOUT)
    del warm
    before = open_fds()
    ex = Executor("process", workers=1, max_tasks_per_worker=1)
    pids = {ex.submit(getpid).result(timeout=RESULT_TIMEOUT) for _ in range(8)}
    assert len(pids) == 8
    ex.shutdown(wait=True)
    del ex
    assert open_fds() <= before + 1


# --- lifetime ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", POOL_MODELS)
def test_the_pool_stays_tracked_until_it_has_stopped(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(model)
    pool = pool_of(ex)
    fut = ex.submit(block, 0.5)
    ex.shutdown(wait=False)
    assert pool in backend_module._live, "untracked while work was pending"
    assert fut.result(timeout=RESULT_TIMEOUT) == 0.5
    pool._io.join(RESULT_TIMEOUT)
    assert not pool._io.is_alive()
    assert pool not in backend_module._live
    assert not pool._workers


def run_script(
    tmp_path: Path, body: str, name: str = "script.py"
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` (under a ``__main__`` guard, with the test helpers importable) in a fresh
    interpreter; at most 60 s."""
    source = textwrap.dedent(
        f"""\
        import sys
        sys.path.insert(0, {TESTS_DIR!r})
        from executor_helpers import *
        from bingfa.executor import Executor

        if __name__ == "__main__":
        """
    )
    source += textwrap.indent(textwrap.dedent(body), "    ")
    script = tmp_path / name
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("model", POOL_MODELS)
def test_exit_after_shutdown_without_wait_waits_for_the_work(model: str, tmp_path: Path) -> None:
    """gh-83386: interpreter exit still runs what ``shutdown(wait=False)`` left (queued and
    running tasks), and resolves their futures in this process."""
    done = tmp_path / "done"
    proc = run_script(
        tmp_path,
        f"""\
        ex = Executor({model!r}, **{MODEL_CONFIG[model]!r})
        futures = [ex.submit(block, 0.3) for _ in range(3)]
        futures[-1].add_done_callback(lambda f: open({str(done)!r}, "w").write(repr(f.result())))
        ex.shutdown(wait=False)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert done.exists() and done.read_text() == "0.3", "exit did not wait for the work"


@pytest.mark.parametrize("mode", ["wait=False", "wait=False, cancel_futures=True"])
@pytest.mark.parametrize("model", ["process", "hybrid"])
def test_exit_prints_no_exception_from_multiprocessing(
    model: str, mode: str, tmp_path: Path
) -> None:
    """multiprocessing's exit handler joined Process objects the IO thread had just closed:
    "Exception ignored in atexit callback ... ValueError: process object is closed" (about one
    exit in five). Several exits, side by side."""
    source = f"""\
        ex = Executor({model!r}, **{MODEL_CONFIG[model]!r})
        futures = [ex.submit(block, 0.01) for _ in range(12)]
        futures[0].result(timeout=30)
        ex.shutdown({mode})
        """
    runs = 6
    results: list[subprocess.CompletedProcess[str]] = []

    def one(i: int) -> None:
        results.append(run_script(tmp_path, source, f"exit{i}.py"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == runs
    for proc in results:
        assert "Exception ignored" not in proc.stderr, proc.stderr
        assert proc.returncode == 0, proc.stderr


def test_shutdown_without_wait_takes_no_lock(tmp_path: Path) -> None:
    """``weakref.finalize`` of a collected Executor may run ``shutdown(wait=False)`` wherever the
    garbage collector strikes - also in a thread that holds the pool's (non re-entrant) lock."""
    proc = run_script(
        tmp_path,
        """\
        ex = Executor("process", workers=1)
        pool = ex._backend
        assert ex.submit(square, 2).result(timeout=30) == 4
        with pool._lock:
            pool.shutdown(False, False)
            pool.shutdown(False, False)
        print("returned")
        pool.shutdown(True, False)
        pool._io.join(30)
        print("stopped" if not pool._io.is_alive() and not pool._workers else "running")
        """,
    )
    assert proc.stdout.split() == ["returned", "stopped"], proc.stderr


@pytest.mark.parametrize("model", POOL_MODELS)
def test_a_collected_executor_releases_its_workers(model: str) -> None:
    """What ``Executor`` arranges (``weakref.finalize(executor, backend.shutdown, False,
    False)``): the pending work still completes, then the workers go; a later
    ``shutdown(wait=True)`` (the exit handler's) returns at once."""
    ex = Executor(model, **MODEL_CONFIG[model])  # type: ignore[arg-type]
    pool = pool_of(ex)
    weakref.finalize(ex, pool.shutdown, False, False)
    pids = [w.pid for w in pool._workers.values()]
    fut = ex.submit(block, 0.3)
    del ex
    gc.collect()
    assert fut.result(timeout=RESULT_TIMEOUT) == 0.3
    pool._io.join(RESULT_TIMEOUT)
    assert not pool._io.is_alive()
    assert all(
        not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids
    )
    assert pool not in backend_module._live
    pool.shutdown(True, False)


@pytest.mark.parametrize("model", POOL_MODELS)
def test_collected_in_a_done_callback_in_the_io_thread(model: str) -> None:
    """The last reference to the Executor dropped by a done-callback: its finalizer runs in the
    pool's own IO thread."""
    holder = [Executor(model, **MODEL_CONFIG[model])]  # type: ignore[arg-type]
    pool = pool_of(holder[0])
    weakref.finalize(holder[0], pool.shutdown, False, False)
    ran_in: list[str] = []

    def drop(_: Any) -> None:
        ran_in.append(threading.current_thread().name)
        holder.clear()

    fut = holder[0].submit(block, 0.3)
    fut.add_done_callback(drop)
    assert fut.result(timeout=RESULT_TIMEOUT) == 0.3
    pool._io.join(RESULT_TIMEOUT)
    assert not pool._io.is_alive(), "the pool did not stop"
    assert ran_in and ran_in[0] == pool._io.name
    assert not pool._workers
    pool.shutdown(True, False)


@pytest.mark.parametrize("model", POOL_MODELS)
def test_shutdown_and_wait_from_a_done_callback(model: str, make_executor: ExecutorFactory) -> None:
    """A done-callback runs in the IO thread, which cannot wait for itself: it returns, and the
    pool stops once the work is done."""
    ex = make_executor(model)
    pool = pool_of(ex)
    first = ex.submit(block, 0.2)
    second = ex.submit(block, 0.4)
    ran_in: list[str] = []

    def stop(_: Any) -> None:
        ran_in.append(threading.current_thread().name)
        ex.shutdown(wait=True)
        ran_in.append("returned")

    first.add_done_callback(stop)
    assert first.result(timeout=RESULT_TIMEOUT) == 0.2
    assert second.result(timeout=RESULT_TIMEOUT) == 0.4
    ex.shutdown(wait=True)
    assert ran_in == [pool._io.name, "returned"]
    assert not pool._io.is_alive() and not pool._workers


def test_unpicklable_argument_still_fails_its_future_not_submit(
    make_executor: ExecutorFactory,
) -> None:
    """(Unchanged) pickling in the caller's thread raising an ``Exception`` fails the future;
    the arguments are pickled right in ``submit``."""
    ex = make_executor("process", workers=1)
    exc = outcome(ex.submit(identity, DumpBomb("ValueError")))
    assert isinstance(exc, ValueError | pickle.PicklingError), repr(exc)


@pytest.mark.parametrize("body", [b"Z", b"R\x01"], ids=["unknown-kind", "truncated"])
def test_a_bad_frame_replaces_that_worker(body: bytes, make_executor: ExecutorFactory) -> None:
    """A frame the pool cannot parse means the worker does not speak the protocol: it is
    killed (its jobs fail as WorkerDied) and replaced; the IO thread carries on."""
    ex = make_executor("process", workers=1)
    pool = pool_of(ex)
    before = ex.submit(getpid).result(timeout=RESULT_TIMEOUT)
    (worker,) = pool._workers.values()
    pool._on_frame(worker, body, [])  # only kills the worker: safe from this thread
    assert wait_until(lambda: not psutil.pid_exists(before) or worker.dead)
    after = ex.submit(getpid).result(timeout=RESULT_TIMEOUT)
    assert after != before
    assert pool._io.is_alive()
