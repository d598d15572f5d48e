"""线程队列:先进先出、后进先出、优先级队列

Thread queues: FIFO, LIFO and priority (seed 000 【四】, seed 003 ``queue`` API).

Threads of one process share memory, so why a queue? Because a queue is "a pipe plus a lock":
``put``/``get`` are safe from any number of threads, and they *block* (with an optional
timeout) when the queue is full or empty, which is how producers and consumers pace each
other.

The seed's priority-queue sketch creates ``PriorityQueue(3)`` and then puts **four** items:
the fourth ``put`` blocks forever, because nobody takes one out. Here the fourth put uses a
timeout and the program prints the ``queue.Full`` it gets, then repeats with room for four.

Run: ``.venv/bin/python examples/04_queues.py``
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any


def drain(q: queue.Queue[Any]) -> list[Any]:
    """Everything in ``q``, in the order ``get`` hands it out."""
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def main() -> None:
    fifo: queue.Queue[int] = queue.Queue(3)
    lifo: queue.LifoQueue[int] = queue.LifoQueue(3)
    for q in (fifo, lifo):
        for item in (1, 2, 3):
            q.put(item)
    print(f"put 1, 2, 3 -> FIFO order: {drain(fifo)}")
    print(f"put 1, 2, 3 -> LIFO order: {drain(lifo)}")

    items = [(10, "111"), (100, "222"), (0, "333"), (-5, "444")]  # (priority, data)
    small: queue.PriorityQueue[tuple[int, str]] = queue.PriorityQueue(3)
    for entry in items[:3]:
        small.put(entry)
    start = time.perf_counter()
    try:
        small.put(items[3], timeout=0.2)
    except queue.Full:
        waited = time.perf_counter() - start
        print(
            f"4th put into PriorityQueue(3): queue.Full after {waited:.2f} s "
            "(without a timeout it blocks forever, as in the seed)"
        )
    roomy: queue.PriorityQueue[tuple[int, str]] = queue.PriorityQueue(4)
    for entry in items:
        roomy.put(entry)
    print(f"priority order (smaller number first): {drain(roomy)}")

    # get() with a timeout on an empty queue: queue.Empty instead of a hang.
    try:
        fifo.get(timeout=0.1)
    except queue.Empty:
        print("get(timeout=0.1) on an empty queue: queue.Empty")

    # A worker thread serving jobs by priority; task_done()/join() tell when all are handled.
    jobs: queue.PriorityQueue[tuple[int, str]] = queue.PriorityQueue()
    handled: list[str] = []

    def worker() -> None:
        while True:
            _, name = jobs.get()
            if name == "stop":
                jobs.task_done()
                return
            handled.append(name)
            jobs.task_done()

    for priority, name in [(3, "low"), (1, "urgent"), (2, "normal"), (99, "stop")]:
        jobs.put((priority, name))
    thread = threading.Thread(target=worker)
    thread.start()
    jobs.join()  # returns once task_done() was called for every put()
    thread.join()
    print(f"worker handled jobs in priority order: {handled}")


if __name__ == "__main__":
    main()
