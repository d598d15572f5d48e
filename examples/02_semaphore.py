"""信号量:5 个座位,20 个线程抢

Semaphore: five seats, twenty threads (seed 000 【二】, seed 003 BoundedSemaphore).

A mutex is one toilet; a semaphore is a room with N of them. ``Semaphore(5)`` lets at most
five threads inside the ``with`` block at once; the other fifteen wait at ``acquire()``.
The seed note only *printed* "正在使用" and asked the reader to believe the grouping; here every
thread records how many threads are inside when it enters, and the program prints the maximum it
measured (it must be 5: never more, and with 20 threads queueing, the room does fill up).

It also shows why ``BoundedSemaphore`` exists: one ``release()`` too many silently adds a sixth
seat to a plain ``Semaphore``; a ``BoundedSemaphore`` raises ``ValueError`` instead.

Run: ``.venv/bin/python examples/02_semaphore.py [--quick]``
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
SEATS = 5
THREADS = 20
HOLD = (0.02, 0.06) if QUICK else (0.1, 0.4)  # seconds a thread keeps its seat

seats = threading.Semaphore(SEATS)
start_together = threading.Barrier(THREADS)  # every thread is ready before anyone grabs a seat
inside_lock = threading.Lock()  # protects the two counters below
inside = 0
max_inside = 0


def player(name: str) -> None:
    """Take a seat, play for a random while, leave (the ``with`` releases even on error)."""
    global inside, max_inside
    start_together.wait()
    with seats:
        with inside_lock:
            inside += 1
            max_inside = max(max_inside, inside)
            now = inside
        print(f"  {name} 正在使用 (inside now: {now})")
        time.sleep(random.uniform(*HOLD))
        with inside_lock:
            inside -= 1


def extra_release_demo() -> None:
    """One release() too many: Semaphore grows a seat, BoundedSemaphore refuses."""
    plain = threading.Semaphore(1)
    plain.release()  # a bug: nobody acquired it
    grabbed = sum(plain.acquire(timeout=0) for _ in range(3))
    print(f"Semaphore(1) after one extra release(): {grabbed} threads can get in (a hidden bug)")
    bounded = threading.BoundedSemaphore(1)
    try:
        bounded.release()
    except ValueError as exc:
        print(f"BoundedSemaphore(1) extra release(): ValueError: {exc}")


def main() -> None:
    print(f"{THREADS} threads, Semaphore({SEATS}):")
    start = time.perf_counter()
    threads = [threading.Thread(target=player, args=(f"玩家{i:02d}",)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    print(f"max concurrent: {max_inside} (seats {SEATS}, threads {THREADS})")
    print(f"all {THREADS} threads done in {elapsed:.2f} s; inside at the end: {inside}")
    extra_release_demo()


if __name__ == "__main__":
    main()
