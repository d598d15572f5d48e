"""Review of issue 12: each test reproduces a bug found in review and fails until it is fixed.

The scripts run as real subprocesses (like a user's ``python script.py``) with a timeout, in
their own session, and are killed if they overrun.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterable
from concurrent.futures import CancelledError, wait
from pathlib import Path

import pytest

import bingfa
from bingfa.executor import Executor
from bingfa.executor._errors import ExecutorClosed

SCRIPT_TIMEOUT_S = 90


def run(tmp_path: Path, source: str, *, stdin: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as ``python script.py`` (or ``python - < script.py``); kill on timeout."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    argv = [sys.executable, "-"] if stdin else [sys.executable, str(script)]
    with open(script) as src:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            stdin=src if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            pytest.fail(f"script hung\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# --- 1. initializer state never reaches tasks defined in __main__ (process models) ----------


INIT_SCRIPT = """
    import os
    from bingfa.executor import Executor

    conn = None

    def init(tag):
        global conn
        conn = f"{{tag}}-{{os.getpid()}}"

    def task(x):
        return conn

    def main():
        with Executor({model!r}, workers=1, initializer=init, initargs=("db",)) as ex:
            print("submit", ex.submit(task, 1).result())
            print("map", list(ex.map(task, range(2))))

    {call}
"""


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
@pytest.mark.parametrize("model", ["process", "hybrid", "gevent"])
def test_initializer_sets_global_that_main_tasks_see(
    tmp_path: Path, model: str, guarded: bool
) -> None:
    """The initializer's documented use - set up per-worker state in a global - works with
    ``ProcessPoolExecutor`` (forkserver prints ``db-<pid>``). Here the initializer is always
    pickled by value, so it assigns ``conn`` in a private copy of the script's globals, and the
    task (by reference when guarded, by value when not) reads ``None``: silently wrong."""
    call = 'if __name__ == "__main__":\n        main()' if guarded else "main()"
    res = run(tmp_path, INIT_SCRIPT.format(model=model, call=call))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "None" not in res.stdout, res.stdout
    assert res.stdout.count("db-") == 3, res.stdout


# --- 2. asyncio: work of a collected / shut-down-without-wait executor is lost at exit ------


def test_asyncio_plain_tasks_survive_exit_after_shutdown_nowait(tmp_path: Path) -> None:
    """``shutdown(wait=False)`` then exit must run pending tasks (gh-83386; claimed fixed).
    Under ``asyncio`` the plain-function thread pool is ``untrack``-ed and the backend is only
    weakly tracked: once the executor object is gone (here: a local of ``start()``), the loop
    thread stops, the backend (kept only by a reference cycle through its loop) is freed by the
    next garbage collection, and nobody waits for the daemon threads at exit. Without the
    explicit ``gc.collect()`` it is a race: 0 of 6 tasks ran in 8 of 10 runs of a plain script.
    (thread, process, hybrid, gevent: all run.)"""
    out = tmp_path / "ran.txt"
    res = run(
        tmp_path,
        f"""
        import gc
        import time
        from bingfa.executor import Executor

        def work(i):
            time.sleep(0.02)
            with open({str(out)!r}, "a") as f:
                f.write(f"{{i}}\\n")

        def start():
            ex = Executor("asyncio", threads=2)
            for i in range(30):
                ex.submit(work, i)
            ex.shutdown(wait=False)

        start()
        time.sleep(0.1)  # the loop thread stops (no coroutine was outstanding) ...
        gc.collect()  # ... and any collection, as happens at any time in a program, frees it
        """,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ran = out.read_text().split() if out.exists() else []
    assert len(ran) == 30, f"only {len(ran)} of 30 tasks ran before exit"


# --- 3. thread model: max_tasks_per_worker + shutdown strands queued tasks ------------------


def test_thread_max_tasks_per_worker_shutdown_runs_queued_tasks() -> None:
    """A thread that reaches ``max_tasks_per_worker`` while the executor is closing is not
    replaced, so the queued tasks are never run: ``shutdown(wait=True)`` returns with futures
    PENDING forever. (ProcessPoolExecutor(max_tasks_per_child=1) runs all four.)"""
    ex = Executor("thread", workers=1, max_tasks_per_worker=1)
    try:
        fs = [ex.submit(time.sleep, 0.02) for _ in range(4)]
        ex.shutdown(wait=True)
        _, not_done = wait(fs, timeout=5)
        assert not not_done, f"{len(not_done)} of 4 futures still pending after shutdown(wait=True)"
    finally:
        ex.terminate()


# --- 4. MapRun.close() from another thread crashes the consumer with an internal error -------


def test_maprun_close_from_another_thread_ends_iteration_cleanly() -> None:
    """``MapRun.close`` explicitly tolerates being called from another thread ("generator
    already executing"), but it clears the in-flight deque under the consumer's feet: the
    consumer dies with ``IndexError: pop from an empty deque`` (60 of 60 trials)."""
    ex = Executor("thread", workers=4)
    try:
        for _ in range(5):
            m = ex.map(time.sleep, [0.002] * 400, chunksize=1)
            seen: list[BaseException | None] = []
            t = threading.Thread(target=_consume, args=(m, seen))
            t.start()
            time.sleep(0.02)
            m.close()
            t.join(10)
            assert not t.is_alive()
            exc = seen[0]
            assert exc is None or isinstance(exc, CancelledError | ExecutorClosed), repr(exc)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _consume(m: Iterable[object], seen: list[BaseException | None]) -> None:
    try:
        for _r in m:
            pass
        seen.append(None)
    except BaseException as exc:
        seen.append(exc)


# --- 5. a default/per-task timeout leaks one timer-heap entry per finished task -------------


def test_finished_tasks_with_timeout_do_not_accumulate() -> None:
    """``Executor("thread", timeout=3600)``: every task leaves a cancelled ``TimerHandle`` in the
    timer's heap until its deadline - ~165 bytes per task, 100k tasks ≈ 16 MB, for an hour. A
    long-running service grows without bound relative to its throughput."""
    ex = Executor("thread", workers=4, timeout=3600)
    try:
        for f in [ex.submit(abs, i) for i in range(2000)]:  # warm up
            f.result()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(4):
                fs = [ex.submit(abs, i) for i in range(5000)]
                for f in fs:
                    f.result()
                del fs, f
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 1_000_000, f"{grown / 1e6:.1f} MB kept after 20000 finished tasks"
    finally:
        ex.shutdown()


# --- 6. eager map pickles every argument up front and keeps the copies -----------------------


@pytest.mark.parametrize("model", ["process", "hybrid"])
def test_eager_map_does_not_hold_a_pickled_copy_of_every_argument(model: str) -> None:
    """``ex.map`` submits every batch at once; ``ProcessPool.submit_job`` used to pickle each job
    in the caller right then and keep ``job.payload``. ProcessPoolExecutor only pickles what
    its call queue holds. Measured with 100 × 2 MB arguments before the fix: peak RSS +10 MB
    (stdlib), +260 MB (process), +420 MB (hybrid)."""
    data = [bytes([i]) * (1 << 20) for i in range(30)]  # 30 MB of arguments
    ex = Executor(model, workers=1)  # type: ignore[arg-type]
    try:
        ex.submit(len, b"").result(30)  # workers up
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            m = ex.map(_slow_len, data, chunksize=1)
            extra = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        m.close()
        # what the workers hold to run next is pickled (a hybrid worker takes several batches
        # at once, as the stdlib's call queue holds a few); the rest stays unpickled
        assert extra < 15 << 20, f"map() allocated {extra / 2**20:.0f} MB for 30 MB of arguments"
    finally:
        ex.terminate()


def _slow_len(b: bytes) -> int:
    time.sleep(0.05)
    return len(b)


# --- 7. a script fed on stdin (python - < script.py) ----------------------------------------


def test_process_model_in_a_script_read_from_stdin(tmp_path: Path) -> None:
    """``__main__.__file__`` is ``"<stdin>"``: ``_main_reimported`` says workers import the
    script, ``started_unguarded`` cannot stat it, so workers try to run ``<cwd>/<stdin>``
    (FileNotFoundError) and the map fails with "worker ... exited with status 1 during
    start-up, repeatedly" - guard or no guard."""
    res = run(
        tmp_path,
        """
        from bingfa.executor import Executor
        def sq(x):
            return x * x
        if __name__ == "__main__":
            with Executor("process", workers=2) as ex:
                print(list(ex.map(sq, range(5))))
        """,
        stdin=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[0, 1, 4, 9, 16]" in res.stdout


# --- 8. a result that fails to unpickle takes its batch-mates down -------------------------


@pytest.mark.xfail(
    strict=True,
    reason="known limitation (docs/executors.md, differences table): a batch's results travel "
    "in one pickle, so one that cannot be unpickled fails the batch; chunksize=1 isolates calls",
)
def test_map_unpicklable_result_fails_only_its_own_item() -> None:
    """The claim is that an unpickling fault fails only its future; in a ``map`` batch the whole
    batch's payload fails to load, so the good results before the bad one are lost too (the
    differences table promises that with ``chunksize=n`` only the failing call fails)."""
    ex = Executor("process", workers=1)
    try:
        got: list[object] = []
        with pytest.raises(Exception, match="cannot unpickle"):
            for r in ex.map(_make_bad_at_5, range(10), chunksize=10):
                got.append(r)
        assert got == [0, 1, 2, 3, 4]
    finally:
        ex.terminate()


class _BadLoad:
    def __init__(self) -> None:
        self.pid = os.getpid()

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (_rebuild, (self.pid,))


def _rebuild(pid: int) -> str:
    if pid != os.getpid():
        raise ValueError(f"cannot unpickle here (made in {pid})")
    return "ok"


def _make_bad_at_5(i: int) -> object:
    return _BadLoad() if i == 5 else i


# --- 9. model="auto" starts worker processes for microseconds of work ----------------------


def test_auto_map_of_tiny_items_starts_no_worker_processes() -> None:
    """``probe`` times a ~0.1 µs function with clocks that cost ~0.5 µs each, so a pure-CPU
    function measures ~50% CPU ("mixed") and ``model="auto"`` picks ``hybrid`` (worker
    processes) for 100k items: 0.25-1 s against 0.02 s serial. The decision table's own rule -
    under ``MIN_PROCESS_WORK_S`` of work, processes cost more than they save - is applied only
    to the "cpu" verdict."""
    with bingfa.map(abs, range(100_000), progress=False) as r:
        assert sum(1 for _ in r) == 100_000
    assert r.choice.model not in ("process", "hybrid", "gevent"), str(r.choice)
