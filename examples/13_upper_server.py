"""大写回显 TCP 服务端 + 100 个线程客户端

The upper-case TCP server and its 100-thread client (seed 000 【五】 and 【六】, seed 001).

The seeds' server creates a ``Thread`` per client and forgets to ``start()`` it (so no client
is ever answered), and their client loops forever with ``recv(1024)`` (so it never finishes
and, under load, mixes messages up — see 15_sticky_packets.py). Here:

* the server is ``bingfa serve upper`` — the seeds' handler, ``request.upper()`` — started as
  a child process with ``bingfa.spawn.ServerProcess`` (a free port on 127.0.0.1) under several
  concurrency models: a thread per connection (the seed's first server), a greenlet per
  connection (its gevent server), and an asyncio event loop;
* the client is 100 threads, each with its own connection (``bingfa.Client``, frame protocol).
  They all connect first and wait at a barrier, so the server really holds 100 connections at
  once; then each sends ``REQUESTS`` messages and checks every reply;
* the program prints the totals per model and stops each server (SIGTERM, exit status 0).

Run: ``.venv/bin/python examples/13_upper_server.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import threading
import time

import bingfa
from bingfa.spawn import ServerProcess

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
CLIENTS = 100
REQUESTS = 10 if QUICK else 50  # per client
MODELS = ("thread", "gevent") if QUICK else ("thread", "gevent", "asyncio")


def client(
    host: str, port: int, barrier: threading.Barrier, results: list[tuple[int, int]]
) -> None:
    """One client thread: connect, wait for all others, send, check every reply."""
    name = threading.current_thread().name
    ok = bad = 0
    with bingfa.Client(host, port, timeout=30) as conn:
        barrier.wait(timeout=60)  # all 100 connections are open before anyone sends
        for count in range(REQUESTS):
            message = f"{count} is running {name} 并发".encode()
            if conn.request(message) == message.upper():
                ok += 1
            else:
                bad += 1
    results.append((ok, bad))  # list.append is atomic: no lock needed


def run_model(model: str) -> None:
    with ServerProcess("upper", model) as server:
        print(
            f"model {model}: bingfa serve upper on {server.host}:{server.port} (pid {server.pid})"
        )
        barrier = threading.Barrier(CLIENTS)
        results: list[tuple[int, int]] = []
        threads = [
            threading.Thread(target=client, args=(server.host, server.port, barrier, results))
            for _ in range(CLIENTS)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        ok = sum(r[0] for r in results)
        bad = sum(r[1] for r in results)
        status = server.stop()
    print(
        f"  {len(results)} clients x {REQUESTS} requests: {ok} replies upper-cased, "
        f"{bad} wrong, {elapsed:.2f} s ({ok / elapsed:,.0f} req/s)"
    )
    print(f"  server stopped, exit status {status}")


def main() -> None:
    print(f"{CLIENTS} client threads, {REQUESTS} requests each")
    for model in MODELS:
        run_model(model)


if __name__ == "__main__":
    main()
