"""进程间通信:Queue、Pipe、Manager、共享 Array 与进程锁

Process IPC: Queue, Pipe, Manager, shared Array, and the process lock (seeds 001, 003, 004).

Processes do not share memory: a global changed in a child is unchanged in the parent. To
talk they need IPC, and each tool below is shown with numbers you can check:

1. a global variable: the child's change is invisible to the parent;
2. ``multiprocessing.Queue``: workers send (pid, result) back to the parent;
3. ``Pipe()``: two ends; a child answers pings on its end;
4. ``Manager()``: a server process holding a dict/list that every process can use through a
   proxy. ``d["n"] += 1`` is a read *then* a write (two round trips), so without a lock
   updates get lost; with ``manager.Lock()`` none are;
5. ``Array("i", n)`` / ``Value``: a block of shared memory, with its own lock.

Run: ``.venv/bin/python examples/10_process_ipc.py [--quick]``
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from multiprocessing.connection import Connection
from typing import Any

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
WORKERS = 4
INCREMENTS = 100 if QUICK else 300  # per worker, for the Manager counter

counter = 0  # a plain global: each process has its own copy


def bump_global() -> None:
    global counter
    counter += 100
    print(f"  child {os.getpid()}: counter = {counter}")


def square(q: Any, n: int) -> None:
    q.put((os.getpid(), n, n * n))


def answer_pings(conn: Connection) -> None:
    while True:
        message = conn.recv()
        if message is None:
            break
        conn.send(f"pong {message} from {os.getpid()}")
    conn.close()


def count_in_manager(shared: Any, log: Any, lock: Any, times: int) -> None:
    for _ in range(times):
        if lock is None:
            shared["n"] += 1  # get, add, set: another process can slip in between
        else:
            with lock:
                shared["n"] += 1
    log.append(os.getpid())


def fill_array(arr: Any, total: Any, start: int, stop: int) -> None:
    for i in range(start, stop):
        arr[i] = i * i
        with total.get_lock():  # Value("i") comes with a lock; += is read-modify-write
            total.value += i * i


def run_all(procs: list[mp.Process]) -> None:
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def main() -> None:
    print("1. a global variable:")
    child = mp.Process(target=bump_global)
    run_all([child])
    print(f"  parent: counter = {counter} (unchanged: no shared memory)")

    print("2. Queue:")
    q: mp.Queue[tuple[int, int, int]] = mp.Queue()
    procs = [mp.Process(target=square, args=(q, n)) for n in range(WORKERS)]
    for p in procs:
        p.start()
    results = sorted((q.get(timeout=30) for _ in procs), key=lambda r: r[1])
    for p in procs:
        p.join()
    print(f"  results: {[r[2] for r in results]} from {len({r[0] for r in results})} processes")

    print("3. Pipe:")
    parent_end, child_end = mp.Pipe()
    pinger = mp.Process(target=answer_pings, args=(child_end,))
    pinger.start()
    child_end.close()  # the parent keeps only its own end
    replies = []
    for n in range(3):
        parent_end.send(n)
        replies.append(parent_end.recv())
    parent_end.send(None)
    pinger.join()
    parent_end.close()
    print(f"  {len(replies)} replies: {replies[0]!r} ...")

    print("4. Manager:")
    with mp.Manager() as manager:
        for use_lock in (False, True):
            shared = manager.dict(n=0)
            log = manager.list()
            lock = manager.Lock() if use_lock else None
            procs = [
                mp.Process(target=count_in_manager, args=(shared, log, lock, INCREMENTS))
                for _ in range(WORKERS)
            ]
            run_all(procs)
            expected = WORKERS * INCREMENTS
            label = "with manager.Lock()" if use_lock else "without a lock     "
            print(
                f"  {label}: counter = {shared['n']} of {expected} "
                f"(lost updates: {expected - shared['n']}; {len(log)} processes logged)"
            )

    print("5. shared Array and Value:")
    size = 20
    arr = mp.Array("i", size)
    total = mp.Value("i", 0)
    half = size // 2
    run_all(
        [
            mp.Process(target=fill_array, args=(arr, total, 0, half)),
            mp.Process(target=fill_array, args=(arr, total, half, size)),
        ]
    )
    squares: list[int] = arr[:]
    ok = squares == [i * i for i in range(size)] and total.value == sum(squares)
    verdict = "ok" if ok else "WRONG"
    print(f"  array written by 2 processes: {squares[:6]}... sum {total.value} ({verdict})")


if __name__ == "__main__":
    main()
