"""Multi-process serving, measured: the GIL made visible, and offload for event loops.

Run: ``.venv/bin/python benchmarks/bench_workers.py [--duration S] [--n N]``

1. ``cpu`` requests (N iterations of pure Python each) from 8 closed-loop clients against
   asyncio ``--workers 1``, asyncio ``--workers 2`` (shared socket, and ``--reuse-port``) and
   ``thread`` in one process, in the same run. On 2 cores the target is workers 2 ÷ workers 1
   ≥ 1.8×; threads in one process cannot beat one core (the GIL).
2. asyncio ``--offload process`` vs ``--offload none``: 8 clients send ``cpu N`` while 50 other
   clients send small echo requests; the echo clients' p50/p99 latency is reported for each.

Clients are threads in this process (they mostly wait); servers are ``bingfa serve`` children.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import threading
import time
from typing import Any

from bingfa import Client
from bingfa.spawn import ServerProcess

HERE = pathlib.Path(__file__).parent


def drive(
    address: tuple[str, int], clients: int, payload: bytes, duration: float
) -> tuple[int, list[float]]:
    """Closed loop: ``clients`` threads send ``payload`` for ``duration`` s; (count, latencies)."""
    stop = time.monotonic() + duration
    latencies: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        mine = []
        with Client(*address, timeout=120) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                c.request(payload)
                mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_scaling(n: int, duration: float) -> None:
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("asyncio --workers 1", "asyncio", {"workers": 1}),
        ("asyncio --workers 2", "asyncio", {"workers": 2}),
        ("asyncio --workers 2 --reuse-port", "asyncio", {"workers": 2, "reuse_port": True}),
        ("thread (1 process)", "thread", {}),
    ]
    rates: dict[str, float] = {}
    for label, model, options in variants:
        with ServerProcess("cpu", model, **options) as server:
            drive(server.address, 8, b"%d" % n, 0.5)  # warm-up
            count, _ = drive(server.address, 8, b"%d" % n, duration)
        rates[label] = count / duration
    base = rates["asyncio --workers 1"]
    print(f"\ncpu requests (N={n}), 8 clients, {duration:.0f} s each, {os.cpu_count()} cores")
    print(f"{'server':34} {'req/s':>8} {'÷ workers 1':>12}")
    for label, rate in rates.items():
        print(f"{label:34} {rate:8.1f} {rate / base:12.2f}")
    ratio = rates["asyncio --workers 2 --reuse-port"] / base
    verdict = "PASS" if ratio >= 1.8 else "MISS"
    print(f"workers 2 (reuse-port) ÷ workers 1 = {ratio:.2f}  (target ≥ 1.8)  {verdict}")
    print("(8 persistent connections: a shared socket may hand most of them to one worker)")


def offload(n: int, duration: float) -> None:
    env = {"PYTHONPATH": str(HERE)}
    print(f"\nasyncio, 8 clients sending 'cpu {n}' + 50 clients sending echo, {duration:.0f} s")
    print(f"{'offload':10} {'echo req':>9} {'echo p50 ms':>12} {'echo p99 ms':>12} {'cpu req':>8}")
    for mode in ("none", "process"):
        with ServerProcess("mixed_app:mixed", "asyncio", env=env, offload=mode) as server:
            cpu_result: list[int] = []

            def load(address: Any = server.address, out: list[int] = cpu_result) -> None:
                out.append(drive(address, 8, b"cpu %d" % n, duration)[0])

            heavy = threading.Thread(target=load)
            heavy.start()
            time.sleep(0.2)
            count, lat = drive(server.address, 50, b"echo", duration - 0.4)
            heavy.join()
        print(
            f"{mode:10} {count:9d} {percentile(lat, 0.5) * 1e3:12.1f} "
            f"{percentile(lat, 0.99) * 1e3:12.1f} {cpu_result[0]:8d}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--n", type=int, default=200_000, help="iterations per cpu request")
    args = parser.parse_args()
    cpu_scaling(args.n, args.duration)
    offload(args.n, args.duration)


if __name__ == "__main__":
    main()
