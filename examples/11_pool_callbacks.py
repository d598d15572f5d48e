"""进程池与线程池:submit、result、add_done_callback

Pools with done-callbacks: ``submit``, ``Future.result``, ``add_done_callback``, ``shutdown``
(seed 000 【五】, seeds 001, 003, 004; docs/executors.md).

``bingfa.executor.Executor`` is a ``concurrent.futures.Executor`` (the seeds'
``ThreadPoolExecutor``/``ProcessPoolExecutor``) that runs under any model. The seed's lessons,
each with numbers:

1. ``submit`` returns at once (asynchronous submission): the main thread goes on while the
   pool works; a done-callback gets each future as soon as it finishes — and
   ``pool.submit(...).add_done_callback(cb)`` returns ``None``, which is why the seed printed
   "None" twenty times;
2. calling ``result()`` right after each ``submit`` makes the program serial; submitting
   everything first and collecting afterwards keeps it concurrent (timed);
3. a process pool: tasks run in other processes (their pids are counted), callbacks run back
   here in the parent; a task that raises fails only its own future;
4. ``bingfa.executor.map``: one call that picks the model itself and says why.

Run: ``.venv/bin/python examples/11_pool_callbacks.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future

from bingfa.executor import Executor
from bingfa.executor import map as bmap

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
TASKS = 20
POOL = 5
NAP = 0.02 if QUICK else 0.1  # the seed's time.sleep(2)


def task(n: int) -> int:
    time.sleep(NAP)
    return n * n


def task_with_pid(n: int) -> tuple[int, int]:
    if n == 13:
        raise ValueError("unlucky 13")
    time.sleep(NAP)
    return n * n, os.getpid()


def cpu_task(n: int) -> int:
    total = 0
    for i in range(200_000 + n):
        total += i % 7
    return total


def thread_pool_callbacks() -> None:
    print(f"1. thread pool ({POOL} workers), {TASKS} tasks, done-callbacks:")
    done: list[tuple[int, str]] = []
    lock = threading.Lock()

    def call_back(future: Future[int]) -> None:  # runs as soon as its task is done
        with lock:
            done.append((future.result(), threading.current_thread().name))

    with Executor("thread", workers=POOL) as pool:
        start = time.perf_counter()
        # The seed's res = pool.submit(...).add_done_callback(...): res is always None.
        returned = [pool.submit(task, n).add_done_callback(call_back) for n in range(TASKS)]  # type: ignore[func-returns-value]
        submitted = time.perf_counter() - start
        print(f"  submit() x{TASKS} took {submitted * 1000:.1f} ms; callbacks so far: {len(done)}")
        print(f"  add_done_callback returned: {set(returned)} (what the seed printed)")
    # leaving the with block = pool.shutdown(wait=True): every task and callback has run
    elapsed = time.perf_counter() - start
    squares = sorted(r for r, _ in done)
    print(f"  callbacks: {len(done)}, results {squares[:5]}..., sum {sum(squares)}")
    print(f"  {elapsed:.2f} s for {TASKS} x {NAP} s of sleep with {POOL} workers")


def serial_vs_concurrent() -> None:
    print("2. result() right after submit() vs after submitting all:")
    with Executor("thread", workers=POOL) as pool:
        start = time.perf_counter()
        serial = [pool.submit(task, n).result() for n in range(TASKS)]
        t_serial = time.perf_counter() - start
        start = time.perf_counter()
        futures = [pool.submit(task, n) for n in range(TASKS)]
        concurrent = [f.result() for f in futures]
        t_concurrent = time.perf_counter() - start
    assert serial == concurrent
    print(f"  submit + result() each: {t_serial:.2f} s (serial)")
    print(
        f"  submit all, then result(): {t_concurrent:.2f} s ({t_serial / t_concurrent:.1f}x faster)"
    )


def process_pool_callbacks() -> None:
    workers = 2
    print(f"3. process pool ({workers} processes), one task raises:")
    results: list[int] = []
    pids: set[int] = set()
    errors: list[str] = []
    callback_pids: set[int] = set()

    def call_back(future: Future[tuple[int, int]]) -> None:
        callback_pids.add(os.getpid())
        exc = future.exception()
        if exc is not None:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        square, pid = future.result()
        results.append(square)
        pids.add(pid)

    with Executor("process", workers=workers) as pool:
        for n in range(TASKS):
            pool.submit(task_with_pid, n).add_done_callback(call_back)
    calls = len(results) + len(errors)
    print(f"  callbacks: {calls}, successes {len(results)}, failures {len(errors)}")
    print(f"  failure: {errors[0] if errors else '-'}")
    print(
        f"  worker pids: {len(pids)} distinct, none of them this process: {os.getpid() not in pids}"
    )
    print(f"  callbacks ran in the parent process: {callback_pids == {os.getpid()}}")


def auto_map() -> None:
    print("4. bingfa.executor.map, model='auto' (an IO-bound and a CPU-bound function):")
    for fn in (task, cpu_task):
        start = time.perf_counter()
        with bmap(fn, range(TASKS), progress=False) as results:
            values = list(results)
            choice = results.choice
        elapsed = time.perf_counter() - start
        name = fn.__name__
        print(f"  {name}: chose {choice.model!r} with {choice.workers} workers: {choice.reason}")
        print(f"    {len(values)} results in {elapsed:.2f} s")


def main() -> None:
    thread_pool_callbacks()
    serial_vs_concurrent()
    process_pool_callbacks()
    auto_map()


if __name__ == "__main__":
    main()
