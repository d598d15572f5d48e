"""GIL 实测:计算密集用进程,IO 密集用线程

The GIL, measured: CPU-bound work in threads vs processes; IO-bound work in threads
(seeds 001, 002, 004).

CPython runs Python bytecode in one thread at a time (the Global Interpreter Lock). So:

* CPU-bound tasks in N threads take about as long as running them one after another;
* the same tasks in N *processes* run on N cores at once (each process has its own GIL);
* IO-bound tasks (here ``time.sleep``, which releases the GIL) overlap fine in threads.

The program calibrates a pure-Python loop to take a fixed time on this machine, runs it
``TASKS`` times sequentially, in threads and in processes — each ``REPEAT`` times, interleaved,
keeping the best, so that other programs disturb all three alike — and prints the timings and
the ratio. The ratio depends on your cores (``os.cpu_count()``) and on what else is running.

Run: ``.venv/bin/python examples/06_gil.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
CORES = os.cpu_count() or 1
TASKS = max(2, min(CORES, 4))
TASK_SECONDS = 0.1 if QUICK else 0.4  # target duration of one CPU task
REPEAT = 3


def count(n: int) -> int:
    """Pure-Python CPU work: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total += i & 7
    return total


def calibrate(seconds: float) -> int:
    """Loop iterations that take about ``seconds`` on this machine."""
    n = 50_000
    while True:
        start = time.perf_counter()
        count(n)
        took = time.perf_counter() - start
        if took > 0.05:
            return int(n * seconds / took)
        n *= 2


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    n = calibrate(TASK_SECONDS)
    load = os.getloadavg()[0]
    print(f"{TASKS} CPU-bound tasks of ~{TASK_SECONDS} s each, {CORES} cores, load {load:.1f}")

    def in_sequence() -> None:
        for _ in range(TASKS):
            count(n)

    def in_threads() -> None:
        threads = [threading.Thread(target=count, args=(n,)) for _ in range(TASKS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    with ProcessPoolExecutor(TASKS) as pool:
        list(pool.map(count, [1] * TASKS))  # start the worker processes before any clock runs

        def in_processes() -> None:
            list(pool.map(count, [n] * TASKS))

        sequential = threaded = processes = float("inf")
        for _ in range(REPEAT):
            sequential = min(sequential, timed(in_sequence))
            threaded = min(threaded, timed(in_threads))
            processes = min(processes, timed(in_processes))

    print(f"sequential: {sequential:.2f} s")
    print(f"threads:    {threaded:.2f} s  (speed-up {sequential / threaded:.2f}x: the GIL)")
    print(f"processes:  {processes:.2f} s  (speed-up {sequential / processes:.2f}x)")
    print(f"ratio threads/processes: {threaded / processes:.2f}x")
    if load >= CORES:
        print(f"  (other programs keep the {CORES} cores busy: processes cannot speed up much now)")

    sleeps = 10
    nap = 0.1
    with ThreadPoolExecutor(sleeps) as threads_pool:
        io_bound = timed(lambda: list(threads_pool.map(time.sleep, [nap] * sleeps)))
    print(
        f"IO-bound: {sleeps} x time.sleep({nap}) in threads: {io_bound:.2f} s "
        f"(sequential would be {sleeps * nap:.1f} s): threads are fine for IO"
    )


if __name__ == "__main__":
    main()
