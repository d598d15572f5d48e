"""死锁与递归锁:bingfa.locks 报告锁顺序反转,而不是卡死

Deadlock and the RLock cure — bingfa.locks reports the lock-order inversion instead of hanging
(seed 000 【一】, seed 001 "dining philosophers"; docs/locks.md).

The seed's ``MyThread`` takes ``mutexA`` then ``mutexB`` in ``func1``, and ``mutexB`` then
``mutexA`` in ``func2``. With ten threads, one holds B (sleeping in ``func2``) while the next
holds A and wants B: both wait forever and the program hangs. Three runs here, all bounded:

1. the seed's two-lock program with **one** thread, under ``bingfa.locks.instrumented()``:
   one thread cannot deadlock, so it finishes — yet bingfa.locks has seen A→B and B→A and
   reports the *potential* deadlock, before any run is unlucky enough to hang;
2. two threads forced into the real deadlock (a barrier makes each take its first lock before
   asking for the second), with ``on_deadlock="raise"``: the watchdog finds the cycle and one
   thread's ``acquire()`` raises ``DeadlockError``, so it backs off and both finish;
3. the cure from the seed: ``mutexA = mutexB = RLock()`` — one re-entrant lock, so there is no
   order to get wrong — ten threads, no report, all finish.

Run: ``.venv/bin/python examples/01_deadlock_rlock.py [--quick]``
Or run any script under the checker: ``bingfa locks your_script.py`` (``python -m bingfa.locks``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from bingfa import locks

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
NAP = 0.01 if QUICK else 0.1  # the seed's time.sleep(2) in func2, shortened


class MyThread(threading.Thread):
    """The seed's thread: func1 takes A then B, func2 takes B then A."""

    def __init__(self, mutex_a: Any, mutex_b: Any) -> None:
        super().__init__()
        self.mutex_a = mutex_a
        self.mutex_b = mutex_b

    def run(self) -> None:
        self.func1()
        self.func2()

    def func1(self) -> None:
        with self.mutex_a:
            with self.mutex_b:
                pass  # "抢到了A锁", "抢到了B锁"

    def func2(self) -> None:
        with self.mutex_b:
            time.sleep(NAP)
            with self.mutex_a:  # B then A: the opposite order
                pass


def kinds(reports: list[locks.Report]) -> str:
    return ", ".join(r.kind for r in reports) or "none"


def one_thread_inversion() -> None:
    print("1. the seed's program, one thread, under bingfa.locks:")
    with locks.instrumented(sink=lambda report: None):  # keep the reports, print them below
        mutexA = threading.Lock()
        mutexB = threading.Lock()
        t = MyThread(mutexA, mutexB)
        t.start()
        t.join()
        found = locks.reports()
    print(f"  the thread finished (one thread never hangs); reports: {kinds(found)}")
    inversions = [r for r in found if r.kind == "potential-deadlock"]
    if inversions:
        print("  deadlock potential reported:")
        for line in inversions[0].message.splitlines()[:12]:
            print(f"    | {line}")


def forced_deadlock() -> None:
    print("2. two threads really deadlocked, on_deadlock='raise':")
    both_hold_one = threading.Barrier(2)  # created before enabling: not tracked
    outcome: dict[str, str] = {}

    def worker(name: str, first: Any, second: Any) -> None:
        with first:
            both_hold_one.wait(timeout=10)
            try:
                # A plain blocking acquire, as in the seed: without the checker this waits
                # forever. (An acquire with a timeout is not a deadlock: it gives up by itself.)
                with second:
                    outcome[name] = "got both locks"
            except locks.DeadlockError:
                outcome[name] = "DeadlockError: backed off, released its lock"

    with locks.instrumented(on_deadlock="raise", sink=lambda report: None, interval=0.05):
        mutexA = threading.Lock()
        mutexB = threading.Lock()
        start = time.perf_counter()
        # Daemon threads and a join timeout: even if the checker failed, this demo would end.
        threads = [
            threading.Thread(target=worker, args=(n, a, b), name=n, daemon=True)
            for n, a, b in (("thread-1", mutexA, mutexB), ("thread-2", mutexB, mutexA))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        elapsed = time.perf_counter() - start
        found = locks.reports()
        for t in threads:
            if t.is_alive():
                outcome[t.name] = "still blocked after 20 s (not detected)"
    for name in sorted(outcome):
        print(f"  {name}: {outcome[name]}")
    print(f"  deadlock detected and broken in {elapsed:.2f} s; reports: {kinds(found)}")
    for report in found:
        if report.kind == "deadlock":
            lines = report.message.splitlines()
            headline = next((line for line in lines if "DEADLOCK" in line), lines[0])
            print(f"    | {headline}")


def rlock_cure() -> None:
    print("3. the cure: mutexA = mutexB = RLock(), ten threads:")
    with locks.instrumented(sink=lambda report: None):
        mutexA = mutexB = threading.RLock()
        start = time.perf_counter()
        threads = [MyThread(mutexA, mutexB) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        found = locks.reports()
    alive = sum(t.is_alive() for t in threads)
    print(f"  {len(threads) - alive} of {len(threads)} threads finished in {elapsed:.2f} s")
    print(f"  reports: {len(found)} ({kinds(found)})")


def main() -> None:
    one_thread_inversion()
    forced_deadlock()
    rlock_cure()


if __name__ == "__main__":
    main()
