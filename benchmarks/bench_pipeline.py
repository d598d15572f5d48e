"""Items per second through a 3-stage pipeline, per backend, beside a bare hand-written loop.

    python benchmarks/bench_pipeline.py [--quick] [--redis URL] [--json PATH]

For each backend the same work - three trivial stages (``x + 1``), one worker each, queues of
64 - runs twice in the same process: through ``bingfa.pipeline.Pipeline``, and through the
plainest code that does the same job:

memory
    three threads joined by ``queue.Queue(64)``s, a sentinel at the end.
process
    three processes joined by ``multiprocessing.Queue(64)``s (forkserver), a sentinel.
redis
    raw redis-py: a producer ``XADD``s in pipelined batches of 500, three consumer threads
    ``XREADGROUP COUNT 200`` / ``XADD`` to the next stream / ``XACK`` in one pipeline, and a
    collector ``XREAD``s the last stream. (The pipeline adds: pickled envelopes, MULTI/EXEC,
    run-liveness checks, heartbeats, stats counters, trimming, de-duplication.)

The ratio is baseline items/s divided by pipeline items/s: the pipeline's overhead (2.0 means
half the speed of the bare loop). Both sides include their start-up and shutdown. Redis needs
a server: ``--redis URL``, else ``BINGFA_BENCH_REDIS_URL``, else redis://127.0.0.1:6379/15 if it
answers, else a throwaway ``redis-server`` if the binary is on PATH; otherwise that row is
skipped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bingfa.pipeline import Pipeline
from bingfa.pipeline.testing import RedisServer, redis_answers

STOP = None


def inc(x: int) -> int:
    return x + 1


# --- memory -----------------------------------------------------------------------------------


def bare_threads(n: int) -> int:
    qs: list[queue.Queue[Any]] = [queue.Queue(64) for _ in range(4)]

    def stage(q_in: queue.Queue[Any], q_out: queue.Queue[Any]) -> None:
        while True:
            x = q_in.get()
            if x is STOP:
                q_out.put(STOP)
                return
            q_out.put(x + 1)

    threads = [threading.Thread(target=stage, args=(qs[i], qs[i + 1])) for i in range(3)]
    for t in threads:
        t.start()

    def feed() -> None:
        for i in range(n):
            qs[0].put(i)
        qs[0].put(STOP)

    feeder = threading.Thread(target=feed)
    feeder.start()
    count = 0
    while qs[3].get() is not STOP:
        count += 1
    feeder.join()
    for t in threads:
        t.join()
    return count


def pipeline_run(n: int, backend: str, **kwargs: Any) -> int:
    pipe = Pipeline(range(n), 64, backend=backend, **kwargs).map(inc).map(inc).map(inc)
    return sum(1 for _ in pipe)


# --- process ----------------------------------------------------------------------------------


def _mp_stage(q_in: Any, q_out: Any) -> None:
    while True:
        x = q_in.get()
        if x is STOP:
            q_out.put(STOP)
            return
        q_out.put(x + 1)


def bare_processes(n: int) -> int:
    ctx = multiprocessing.get_context("forkserver")
    qs = [ctx.Queue(64) for _ in range(4)]
    procs = [ctx.Process(target=_mp_stage, args=(qs[i], qs[i + 1])) for i in range(3)]
    for p in procs:
        p.start()

    def feed() -> None:
        for i in range(n):
            qs[0].put(i)
        qs[0].put(STOP)

    feeder = threading.Thread(target=feed)
    feeder.start()
    count = 0
    while qs[3].get() is not STOP:
        count += 1
    feeder.join()
    for p in procs:
        p.join()
    return count


# --- redis ------------------------------------------------------------------------------------


def bare_redis(n: int, url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    streams = [f"{prefix}:{i}" for i in range(4)]
    for s in streams[:3]:
        client.xgroup_create(s, "g", "0", mkstream=True)
    stop = threading.Event()

    def stage(i: int) -> None:
        src, dst = streams[i], streams[i + 1]
        while not stop.is_set():
            resp = client.xreadgroup("g", f"c{i}", {src: ">"}, count=200, block=100)
            if not resp:
                continue
            entries = resp[0][1]
            pipe = client.pipeline(transaction=False)
            for _eid, fields in entries:
                pipe.xadd(dst, {"d": str(int(fields[b"d"]) + 1)})
            pipe.xack(src, "g", *[eid for eid, _ in entries])
            pipe.execute()

    def feed() -> None:
        for start in range(0, n, 500):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(n, start + 500)):
                pipe.xadd(streams[0], {"d": str(i)})
            pipe.execute()

    threads = [threading.Thread(target=stage, args=(i,), daemon=True) for i in range(3)]
    threads.append(threading.Thread(target=feed, daemon=True))
    for t in threads:
        t.start()
    count, last = 0, "0-0"
    while count < n:
        resp = client.xread({streams[3]: last}, count=1000, block=1000)
        for _s, entries in resp or ():
            count += len(entries)
            last = entries[-1][0]
    stop.set()
    for t in threads:
        t.join(5)
    client.delete(*streams)
    client.close()
    return count


# --- driver -----------------------------------------------------------------------------------


def measure(fn: Callable[[int], int], n: int) -> float:
    """Items per second of ``fn(n)``, which must return how many items came out."""
    started = time.perf_counter()
    got = fn(n)
    took = time.perf_counter() - started
    if got != n:
        raise SystemExit(f"benchmark bug: {got} items came out, expected {n}")
    return n / took


def find_redis(arg: str | None) -> tuple[str | None, RedisServer | None]:
    url = arg or os.environ.get("BINGFA_BENCH_REDIS_URL") or "redis://127.0.0.1:6379/15"
    if redis_answers(url):
        return url, None
    if arg:
        raise SystemExit(f"no Redis server answers at {arg}")
    try:
        server = RedisServer().start()
    except Exception as exc:
        print(f"(redis row skipped: {exc})", file=sys.stderr)
        return None, None
    return server.url(15), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer items (a smoke run)")
    parser.add_argument("--redis", default=None, help="Redis URL for the redis row")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--rounds", type=int, default=None, help="best of N (default 3; 1 quick)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = (
        {"memory": 20_000, "process": 5_000, "redis": 5_000}
        if args.quick
        else {"memory": 200_000, "process": 50_000, "redis": 50_000}
    )
    url, server = find_redis(args.redis)
    rows: list[dict[str, Any]] = []
    try:
        plans: list[tuple[str, str, Callable[[int], int], Callable[[int], int]]] = [
            ("memory", "queue.Queue + threads", lambda n: pipeline_run(n, "memory"), bare_threads),
            (
                "process",
                "multiprocessing.Queue + processes",
                lambda n: pipeline_run(n, "process"),
                bare_processes,
            ),
        ]
        if url is not None:
            redis_url = url
            plans.append(
                (
                    "redis",
                    "raw redis-py streams loop",
                    lambda n: pipeline_run(n, redis_url),
                    lambda n: bare_redis(n, redis_url),
                )
            )
        for backend, baseline, run_pipe, run_bare in plans:
            n = sizes[backend]
            pipe_rate = bare_rate = 0.0
            for _ in range(rounds):  # interleaved, so drift affects both sides alike
                pipe_rate = max(pipe_rate, measure(run_pipe, n))
                bare_rate = max(bare_rate, measure(run_bare, n))
            rows.append(
                {
                    "backend": backend,
                    "items": n,
                    "pipeline_items_per_s": round(pipe_rate),
                    "baseline": baseline,
                    "baseline_items_per_s": round(bare_rate),
                    "overhead_ratio": round(bare_rate / pipe_rate, 2),
                }
            )
    finally:
        if server is not None:
            server.stop()
    print(f"3-stage pipeline (x + 1, one worker per stage, queues of 64), best of {rounds}")
    header = (
        f"{'backend':<8} {'items':>8} {'pipeline/s':>11}  {'baseline':<34} "
        f"{'baseline/s':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['backend']:<8} {r['items']:>8} {r['pipeline_items_per_s']:>11,}  "
            f"{r['baseline']:<34} {r['baseline_items_per_s']:>11,} {r['overhead_ratio']:>6.2f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": "pipeline", "rounds": rounds, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
