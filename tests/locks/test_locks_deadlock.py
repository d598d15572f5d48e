"""Actual deadlocks (watchdog), misuse, long waits, statistics, and the lock protocol itself."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bingfa import locks
from bingfa.errors import BingfaError

Instrument = Callable[..., list[locks.Report]]
RunPy = Callable[..., subprocess.CompletedProcess[str]]


def wait_for_report(kind: str, timeout: float = 5.0) -> locks.Report:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for report in locks.reports():
            if report.kind == kind:
                return report
        time.sleep(0.01)
    raise AssertionError(f"no {kind!r} report within {timeout} s: {locks.reports()}")


# --------------------------------------------------------------------------- actual deadlocks

DEADLOCK_PROGRAM = """
    import threading

    a = threading.Lock()
    b = threading.Lock()
    barrier = threading.Barrier(2)


    def one():
        with a:
            barrier.wait()
            with b:  # ONE
                pass


    def two():
        with b:
            barrier.wait()
            with a:  # TWO
                pass


    threads = [threading.Thread(target=one, name="worker-one", daemon=True),
               threading.Thread(target=two, name="worker-two", daemon=True)]
    for t in threads:
        t.start()
"""


def test_real_deadlock_raises_in_one_thread_within_two_seconds(instrument: Instrument) -> None:
    instrument(on_deadlock="raise")
    a = threading.Lock()
    b = threading.Lock()
    barrier = threading.Barrier(2, timeout=10)
    blocked_at: dict[str, float] = {}
    errors: dict[str, locks.DeadlockError] = {}
    done: list[str] = []

    def worker(first: threading.Lock, second: threading.Lock) -> None:
        name = threading.current_thread().name
        try:
            with first:
                barrier.wait()
                blocked_at[name] = time.monotonic()
                with second:
                    done.append(name)
        except locks.DeadlockError as exc:
            errors[name] = exc
            blocked_at[name + ":raised"] = time.monotonic()

    threads = [
        threading.Thread(target=worker, args=(a, b), name="left"),
        threading.Thread(target=worker, args=(b, a), name="right"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)

    assert len(errors) == 1 and len(done) == 1  # one victim; the other thread went on
    (victim, error) = next(iter(errors.items()))
    assert isinstance(error, BingfaError) and isinstance(error, RuntimeError)
    assert blocked_at[victim + ":raised"] - max(blocked_at["left"], blocked_at["right"]) < 2.0
    report = error.report
    assert report.kind == "deadlock"
    assert report in locks.reports()
    assert {t.name for t in report.threads} == {"left", "right"}
    for info in report.threads:
        assert info.waiting_for is not None
        assert info.stack and info.stack[0].function == "worker"
        assert info.stack[0].filename == __file__
        assert f"thread {info.name!r}" in report.message
    assert "Raising DeadlockError" in report.message
    # the inversion itself was reported before either thread blocked
    assert locks.reports()[0].kind == "potential-deadlock"


def test_deadlock_with_on_deadlock_exit_ends_the_process(run_py: RunPy) -> None:
    started = time.monotonic()
    proc = run_py(
        DEADLOCK_PROGRAM + "    for t in threads:\n        t.join()\n",
        "-m",
        "bingfa.locks",
        "--on-deadlock",
        "exit",
    )
    assert proc.returncode == locks.EXIT_DEADLOCK == 86
    assert time.monotonic() - started < 15
    err = proc.stderr
    assert "DEADLOCK: 2 threads wait for each other forever" in err
    assert "thread 'worker-one'" in err and "thread 'worker-two'" in err
    lines = DEADLOCK_PROGRAM.splitlines()
    one = next(i for i, line in enumerate(lines, 1) if line.endswith("# ONE"))
    two = next(i for i, line in enumerate(lines, 1) if line.endswith("# TWO"))
    # the program is dedented and written as prog.py: line numbers are kept
    assert f'File "prog.py", line {one}, in one' in err
    assert f'File "prog.py", line {two}, in two' in err
    assert "Exiting with status 86" in err


def test_deadlock_in_report_mode_is_reported_within_two_seconds(run_py: RunPy) -> None:
    proc = run_py(
        DEADLOCK_PROGRAM
        + """
    import os, sys, time
    from bingfa import locks
    barrier_passed = time.monotonic()
    while time.monotonic() - barrier_passed < 10:
        found = [r for r in locks.reports() if r.kind == "deadlock"]
        if found:
            print("detected after", round(time.monotonic() - barrier_passed, 3))
            print(sorted(t.name for t in found[0].threads))
            sys.stdout.flush()
            os._exit(0)
        time.sleep(0.01)
    os._exit(3)
""",
        "-m",
        "bingfa.locks",
    )
    assert proc.returncode == 0, proc.stderr
    first, names = proc.stdout.splitlines()[:2]
    assert float(first.split()[-1]) < 2.0
    assert names == "['worker-one', 'worker-two']"
    assert "These threads will not make progress" in proc.stderr


# --------------------------------------------------------------------------- misuse


def test_releasing_an_unlocked_lock_is_reported_and_still_raises(instrument: Instrument) -> None:
    instrument()
    lock = threading.Lock()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lock.release()
    (report,) = locks.reports()
    assert report.kind == "misuse"
    assert "not locked" in report.message
    assert report.locks[0].name == "lock#1"  # instance 1 of the locks created on that line
    assert report.threads[0].stack[0].function.startswith("test_releasing")


def test_releasing_an_rlock_owned_by_another_thread(instrument: Instrument) -> None:
    instrument()
    rlock = threading.RLock()
    taken = threading.Event()
    go = threading.Event()

    def owner() -> None:
        with rlock:
            taken.set()
            go.wait(10)

    t = threading.Thread(target=owner, name="the-owner")
    t.start()
    assert taken.wait(10)
    try:
        with pytest.raises(RuntimeError, match="un-acquired"):
            rlock.release()
    finally:
        go.set()
        t.join(10)
    (report,) = locks.reports()
    assert report.kind == "misuse"
    assert "held by 'the-owner'" in report.message
    assert [info.name for info in report.threads] == [threading.current_thread().name, "the-owner"]


def test_lock_released_by_another_thread_is_legal_and_bookkeeping_follows(
    instrument: Instrument,
) -> None:
    """Lock (unlike RLock) may be released by any thread; that is not reported."""
    instrument()
    gate = threading.Lock()
    other = threading.Lock()
    gate.acquire()
    t = threading.Thread(target=gate.release)
    t.start()
    t.join(10)
    assert not gate.locked()
    with other:  # had gate stayed "held" by this thread, this would add gate -> other
        pass
    with other, gate:  # other -> gate: would then close a (false) cycle
        pass
    assert locks.reports() == []


def test_self_deadlock_raises_at_once_with_on_deadlock_raise(instrument: Instrument) -> None:
    instrument(on_deadlock="raise")
    lock = threading.Lock()
    with lock:
        started = time.monotonic()
        with pytest.raises(locks.DeadlockError) as info:
            lock.acquire()
        assert time.monotonic() - started < 1.0
        assert lock.locked()
    assert not lock.locked()
    report = info.value.report
    assert report.kind == "misuse"
    assert "self-deadlock" in report.message
    assert "which it already holds" in report.message


def test_self_deadlock_is_reported_at_once_in_report_mode(instrument: Instrument) -> None:
    """Reported before blocking; here another thread then releases the lock, so no hang."""
    instrument()
    lock = threading.Lock()
    finished = threading.Event()

    def reacquire() -> None:
        lock.acquire()
        lock.acquire()  # blocks until the test thread releases it
        lock.release()
        finished.set()

    t = threading.Thread(target=reacquire, name="self-locker")
    t.start()
    report = wait_for_report("misuse")
    assert "self-deadlock" in report.message and "'self-locker'" in report.message
    assert report.threads[0].stack[0].function == "reacquire"
    lock.release()
    assert finished.wait(10)
    t.join(10)


def test_rlock_reentry_is_not_misuse(instrument: Instrument) -> None:
    instrument(on_deadlock="raise")
    rlock = threading.RLock()
    with rlock, rlock, rlock:
        pass
    assert rlock.acquire(blocking=False)
    rlock.release()
    assert locks.reports() == []


# --------------------------------------------------------------------------- long waits, stats


def test_long_wait_is_reported_with_the_holders_stack(instrument: Instrument) -> None:
    instrument(warn_after=0.2)
    lock = threading.Lock()
    holding = threading.Event()

    def holder() -> None:
        with lock:
            holding.set()
            time.sleep(0.8)  # HOLDER-SLEEP

    t = threading.Thread(target=holder, name="slow-holder")
    t.start()
    assert holding.wait(10)
    with lock:
        pass
    t.join(10)
    (report,) = [r for r in locks.reports() if r.kind == "long-wait"]
    assert "held by 'slow-holder'" in report.message
    waiter, holder_info = report.threads
    assert waiter.name == threading.current_thread().name
    assert holder_info.name == "slow-holder"
    assert holder_info.stack[0].function == "holder"
    assert holder_info.stack[0].line.endswith("# HOLDER-SLEEP")


def test_contention_statistics_for_a_contended_lock(instrument: Instrument) -> None:
    instrument(stats=True)
    hot = threading.Lock()
    holding = threading.Event()

    def holder() -> None:
        with hot:
            holding.set()
            time.sleep(0.3)

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(10)
    hot.acquire()  # CONTENDED
    hot.release()
    t.join(10)
    for _ in range(10):
        with hot:
            pass
    row = next(s for s in locks.stats() if s.lock.name == "hot")
    assert row.timed
    assert row.acquisitions == 12
    assert row.contentions == 1
    assert 0.15 < row.wait_max <= row.wait_total < 5
    assert 0.25 < row.hold_max <= row.hold_total < 5
    ((where, count),) = row.top_sites
    assert count == 1 and where.startswith(__file__ + ":")
    line = int(where.rsplit(":", 1)[1])
    source = Path(__file__).read_text(encoding="utf-8").splitlines()
    assert source[line - 1].endswith("# CONTENDED")
    table = locks.format_stats()
    assert "hot (Lock" in table and "contended at:" in table


def test_contentions_are_counted_even_without_stats_mode(instrument: Instrument) -> None:
    instrument()
    lock = threading.Lock()
    lock.acquire()
    assert not lock.acquire(timeout=0.05)  # a timed wait that fails is a contention
    assert not lock.acquire(blocking=False)  # a failed trylock is not
    lock.release()
    (row,) = [s for s in locks.stats() if s.lock.name == "lock"]
    assert (row.timed, row.contentions, row.acquisitions) == (False, 1, 0)
    assert row.wait_max >= 0.04
    assert "-" in locks.format_stats([row])


# --------------------------------------------------------------------------- lock protocol


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_tracked_locks_keep_the_lock_protocol(instrument: Instrument, kind: str) -> None:
    instrument()
    lock = getattr(threading, kind)()
    assert type(lock).__module__ == "bingfa.locks._core"
    assert "tracked by bingfa.locks" in repr(lock)
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(True, -2)
    assert lock.acquire() is True
    result: list[bool] = []

    def other_thread() -> None:
        result.extend([lock.acquire(False), lock.acquire(True, 0.05)])

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    assert result == [False, False]
    lock.release()
    with lock as entered:
        assert entered is True
    if kind == "Lock":
        assert not lock.locked()
        with lock:
            assert lock.locked()
    lock._at_fork_reinit()
    assert lock.acquire(blocking=False)
    lock.release()
    assert locks.reports() == []


def test_disable_restores_threading_and_old_locks_keep_working(instrument: Instrument) -> None:
    original = threading.Lock
    instrument()
    assert threading.Lock is not original
    lock = threading.Lock()
    cond = threading.Condition()
    locks.disable()
    assert threading.Lock is original is _thread.allocate_lock
    assert not locks.is_enabled()
    with lock, cond:
        cond.notify()
    with locks.instrumented(sink=lambda report: None):
        assert locks.is_enabled()
    assert threading.Lock is original


def test_enable_rejects_bad_options() -> None:
    was_enabled = locks.is_enabled()
    with pytest.raises(BingfaError):
        locks.enable(on_deadlock="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        locks.enable(warn_after=0)
    assert locks.is_enabled() == was_enabled


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_keeps_working(run_py: RunPy) -> None:
    proc = run_py(
        """
        import os, threading
        from bingfa import locks
        locks.enable()
        a = threading.Lock()
        b = threading.RLock()
        with a:
            pid = os.fork()
            if pid == 0:
                ok = True
                with b:
                    t = threading.Thread(target=lambda: None)
                    t.start()
                    t.join()
                os._exit(0 if ok and threading.enumerate() else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        with a, b:
            pass
        print("reports", len(locks.reports()))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["child", "0", "reports", "0"]


def test_instrumentation_is_off_by_default_in_a_fresh_interpreter() -> None:
    code = "import threading, _thread, bingfa.locks; print(threading.Lock is _thread.allocate_lock)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.strip() == "True"


# --------------------------------------------------------------------------- robustness


def test_three_thread_deadlock_cycle_is_found(instrument: Instrument) -> None:
    instrument(on_deadlock="raise")
    chain = [threading.Lock() for _ in range(3)]
    barrier = threading.Barrier(3, timeout=10)
    outcome: dict[str, str] = {}

    def worker(i: int) -> None:
        name = threading.current_thread().name
        try:
            with chain[i]:
                barrier.wait()
                with chain[(i + 1) % 3]:
                    outcome[name] = "done"
        except locks.DeadlockError:
            outcome[name] = "raised"

    threads = [threading.Thread(target=worker, args=(i,), name=f"ring-{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcome.values()) == ["done", "done", "raised"]
    (report,) = [r for r in locks.reports() if r.kind == "deadlock"]
    assert {t.name for t in report.threads} == {"ring-0", "ring-1", "ring-2"}


def test_stress_consistent_order_gives_no_false_reports(instrument: Instrument) -> None:
    """Contended, nested, trylock, timed and condition traffic in a consistent order."""
    instrument(stats=True)
    a, b, c = threading.Lock(), threading.RLock(), threading.Lock()
    cond = threading.Condition(threading.Lock())
    totals = [0, 0]
    ready: list[int] = []

    def worker(seed: int) -> None:
        for i in range(300):
            step = (seed + i) % 4
            if step == 0:
                with a, b, b, c:
                    totals[0] += 1
            elif step == 1:
                with a:
                    if c.acquire(blocking=False):
                        totals[1] += 1
                        c.release()
            elif step == 2:
                if b.acquire(timeout=1):
                    with c:
                        totals[0] += 1
                    b.release()
            else:
                with cond:
                    ready.append(i)
                    cond.notify()
                    cond.wait(0.0005)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert totals[0] == 6 * 150  # steps 0 and 2 always complete
    assert locks.reports() == []
    # bookkeeping is intact afterwards: a consistent order still adds nothing, an inverted
    # one is still caught
    with a, c:
        pass
    assert locks.reports() == []
    with c, a:
        pass
    assert [r.kind for r in locks.reports()] == ["potential-deadlock"]
    assert not any(lock.locked() for lock in (a, c))


def test_a_sink_that_takes_locks_itself_adds_no_edges(instrument: Instrument) -> None:
    import io
    import logging

    stream = io.StringIO()
    logger = logging.getLogger("bingfa.locks.test-sink")
    logger.propagate = False
    instrument(sink=lambda report: logger.warning(report.message))
    handler = logging.StreamHandler(stream)  # its lock is created now: tracked
    logger.addHandler(handler)
    try:
        outer = threading.Lock()
        inner = threading.Lock()
        with outer, inner:
            pass
        with inner, outer:  # the report is made (and logged) while inner is held
            pass
        assert handler.lock is not None
        # Had the sink's own locking been tracked, it added inner -> handler.lock; taking
        # inner under handler.lock would then close a second cycle.
        with handler.lock, inner:
            pass
    finally:
        logger.removeHandler(handler)
    assert [r.kind for r in locks.reports()] == ["potential-deadlock"]
    assert "POTENTIAL DEADLOCK" in stream.getvalue()


def test_a_failing_sink_does_not_break_the_program(instrument: Instrument) -> None:
    def broken(report: locks.Report) -> None:
        raise OSError("disk full")

    instrument(sink=broken)
    a, b = threading.Lock(), threading.Lock()
    with a, b:
        pass
    with b, a:
        pass
    assert [r.kind for r in locks.reports()] == ["potential-deadlock"]


def test_self_deadlock_with_on_deadlock_exit(run_py: RunPy) -> None:
    proc = run_py(
        """
        import threading
        lock = threading.Lock()
        with lock:
            lock.acquire()
        print("unreachable")
        """,
        "-m",
        "bingfa.locks",
        "--on-deadlock=exit",
    )
    assert proc.returncode == 86
    assert "MISUSE: self-deadlock" in proc.stderr
    assert "unreachable" not in proc.stdout


def test_foreign_release_while_the_owner_nests_locks(instrument: Instrument) -> None:
    """Lock.release() from another thread races the owner's scan of its held locks."""
    instrument()
    extra = [threading.Lock() for _ in range(8)]
    inner = threading.Lock()
    failures: list[BaseException] = []
    stop = threading.Event()
    gates: list[threading.Lock] = []

    def releaser() -> None:
        while not stop.is_set():
            if gates:
                gate = gates.pop()
                while not gate.locked():
                    time.sleep(0)
                gate.release()  # legal: a Lock may be released by any thread
            else:
                time.sleep(0)

    def owner() -> None:
        try:
            for _ in range(300):
                gate = threading.Lock()
                gate.acquire()
                for lock in extra:
                    lock.acquire()
                gates.append(gate)
                while gate.locked():
                    with inner:  # scans the held locks while the releaser deletes one
                        pass
                for lock in reversed(extra):
                    lock.release()
        except BaseException as exc:
            failures.append(exc)

    helper = threading.Thread(target=releaser)
    worker = threading.Thread(target=owner)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        helper.start()
        worker.start()
        worker.join(30)
    finally:
        stop.set()
        sys.setswitchinterval(old)
        helper.join(10)
    assert not worker.is_alive()
    assert failures == []
    assert locks.reports() == []
