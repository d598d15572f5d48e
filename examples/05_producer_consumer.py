"""生产者消费者模型:线程版与进程版

Producer–consumer, with threads and with processes (seeds 001, 003, 004).

Producers put items into a *bounded* queue, consumers take them out. The bound is the point:
when consumers are slower, ``put`` blocks and the producers wait, so memory stays bounded.
Each consumer stops when it gets a sentinel (``None``) — one per consumer, sent after every
producer has finished. The seed sketches end their consumers with ``while True`` and no
sentinel, so the program never exits; these versions always finish and count what they did.

1. threads: ``queue.Queue(maxsize)`` shared by producer and consumer threads;
2. processes: ``multiprocessing.Queue`` between producer and consumer *processes* — items are
   pickled through a pipe, and each consumer reports its total back through a second queue;
3. ``bingfa.pipeline.Pipeline``: the same model as a library — a source, a stage with
   ``workers`` consumers, bounded queues in between — with threads (``backend="memory"``) and
   with processes (``backend="process"``). The program counts how far the source ever got
   ahead of the results: never more than ``pipe.capacity`` items (backpressure).

Run: ``.venv/bin/python examples/05_producer_consumer.py [--quick]``
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from typing import Any

from bingfa.pipeline import Pipeline

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
PRODUCERS = 2
CONSUMERS = 3
ITEMS = 50 if QUICK else 200  # per producer
MAXSIZE = 5
WORK = 0.0005 if QUICK else 0.002  # seconds a consumer spends per item


def produce(q: Any, producer: int, count: int) -> None:
    for n in range(count):
        q.put((producer, n))  # blocks while the queue is full


def consume(q: Any, results: Any, name: str) -> None:
    """Take items until the sentinel; report (name, pid, how many, their checksum)."""
    handled = checksum = 0
    while True:
        item = q.get()
        if item is None:
            break
        producer, n = item
        time.sleep(WORK)  # the "work"
        handled += 1
        checksum += producer * 1_000_000 + n
    results.put((name, os.getpid(), handled, checksum))


def expected_checksum() -> int:
    return sum(p * 1_000_000 + n for p in range(PRODUCERS) for n in range(ITEMS))


def with_threads() -> None:
    q: queue.Queue[tuple[int, int] | None] = queue.Queue(maxsize=MAXSIZE)
    results: queue.Queue[tuple[str, int, int, int]] = queue.Queue()
    biggest = 0
    start = time.perf_counter()
    producers = [threading.Thread(target=produce, args=(q, p, ITEMS)) for p in range(PRODUCERS)]
    consumers = [
        threading.Thread(target=consume, args=(q, results, f"consumer-{c}"))
        for c in range(CONSUMERS)
    ]
    for t in producers + consumers:
        t.start()
    while any(t.is_alive() for t in producers):
        biggest = max(biggest, q.qsize())
        time.sleep(0.001)
    for _ in consumers:
        q.put(None)
    for t in producers + consumers:
        t.join()
    elapsed = time.perf_counter() - start
    reports = [results.get() for _ in consumers]
    consumed = sum(r[2] for r in reports)
    ok = sum(r[3] for r in reports) == expected_checksum()
    print(
        f"threads: produced {PRODUCERS * ITEMS}, consumed {consumed}, "
        f"checksum {'ok' if ok else 'WRONG'}, in {elapsed:.2f} s"
    )
    print(f"  per consumer: {', '.join(f'{r[0]}={r[2]}' for r in sorted(reports))}")
    print(f"  largest queue size seen: {biggest} (maxsize {MAXSIZE}: producers were held back)")


def with_processes() -> None:
    q: mp.Queue[tuple[int, int] | None] = mp.Queue(maxsize=MAXSIZE)
    results: mp.Queue[tuple[str, int, int, int]] = mp.Queue()
    start = time.perf_counter()
    producers = [mp.Process(target=produce, args=(q, p, ITEMS)) for p in range(PRODUCERS)]
    consumers = [
        mp.Process(target=consume, args=(q, results, f"consumer-{c}")) for c in range(CONSUMERS)
    ]
    for p in producers + consumers:
        p.start()
    for p in producers:
        p.join()
    for _ in consumers:
        q.put(None)
    # Read the results *before* joining: a process that still has queued data to flush
    # cannot exit, so joining first could wait forever (the multiprocessing docs warn of it).
    reports = [results.get(timeout=30) for _ in consumers]
    for p in consumers:
        p.join()
    elapsed = time.perf_counter() - start
    consumed = sum(r[2] for r in reports)
    ok = sum(r[3] for r in reports) == expected_checksum()
    pids = sorted({r[1] for r in reports})
    print(
        f"processes: produced {PRODUCERS * ITEMS}, consumed {consumed}, "
        f"checksum {'ok' if ok else 'WRONG'}, in {elapsed:.2f} s"
    )
    print(f"  consumer pids: {pids} (main pid {os.getpid()})")
    print(f"  per consumer: {', '.join(f'{r[0]}={r[2]}' for r in sorted(reports))}")


def work(item: tuple[int, int]) -> tuple[int, int, int]:
    """A pipeline stage: the consumer's work for one item; returns (producer, n, pid)."""
    time.sleep(WORK)
    return item[0], item[1], os.getpid()


def with_pipeline(backend: str) -> None:
    produced = 0

    def source() -> Any:  # the producer: the pipeline reads it only as room frees up
        nonlocal produced
        for p in range(PRODUCERS):
            for n in range(ITEMS):
                produced += 1
                yield (p, n)

    start = time.perf_counter()
    ahead = consumed = checksum = 0
    pids: set[int] = set()
    pipe = Pipeline(source(), queue_size=MAXSIZE, backend=backend).map(work, workers=CONSUMERS)
    with pipe:
        for producer, n, pid in pipe:
            consumed += 1
            checksum += producer * 1_000_000 + n
            pids.add(pid)
            ahead = max(ahead, produced - consumed)
    elapsed = time.perf_counter() - start
    ok = checksum == expected_checksum() and not pipe.errors
    where = "this process" if pids == {os.getpid()} else f"{len(pids)} worker processes"
    print(
        f"bingfa.pipeline ({backend}): produced {produced}, consumed {consumed}, "
        f"checksum {'ok' if ok else 'WRONG'}, in {elapsed:.2f} s, stage ran in {where}"
    )
    print(f"  source ahead of results by at most {ahead} items (capacity {pipe.capacity})")


def main() -> None:
    print(f"{PRODUCERS} producers x {ITEMS} items, {CONSUMERS} consumers, queue maxsize {MAXSIZE}")
    with_threads()
    with_processes()
    with_pipeline("memory")
    with_pipeline("process")


if __name__ == "__main__":
    main()
