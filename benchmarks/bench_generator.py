"""Load-generator capacity: ``bingfa bench``'s generator beside a bare uvloop Protocol client.

What is measured
    Both clients drive the same peer — ``benchmarks/refservers/uvloop_echo.py``, a bare uvloop
    ``asyncio.Protocol`` echo server in a child process — with the same closed-loop load: one
    generator process, 50 connections, 64-byte messages, ``raw`` protocol (each chunk back is one
    reply). Each run is a warm-up then a measured window; the figure is replies per second in
    the window.

    * ``bare``: the least client that does this job — a uvloop Protocol per connection whose
      ``data_received`` counts the 64 bytes back and writes the next 64. No latency, no
      bookkeeping. It is the ceiling of a uvloop client in Python.
    * ``bingfa``: ``bingfa.bench.run_bench(..., processes=1, connections=50, protocol="raw")`` —
      the real generator: per-request timestamps, the HDR latency histogram, timeouts, error
      classification, live counters.

    Target: bingfa ≥ 0.8 × bare. Both run on the same 2 cores as the echo peer, so runs are
    interleaved (bare, bingfa, bare, bingfa, ...) and the median of the per-round ratios is
    reported. Generator CPU µs per reply (user + system of the client process over the window)
    is shown too: it is less sensitive to the machine's load than req/s.

Usage::

    python benchmarks/bench_generator.py            # 3 rounds of 3 s
    python benchmarks/bench_generator.py --quick    # 1 round of 1 s
    python benchmarks/bench_generator.py --json out.json

Exit status: 0 when every run completed (target met or not; ``--strict``: 1 when missed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEER = HERE / "refservers" / "uvloop_echo.py"
TARGET = 0.8
SIZE = 64
CONNECTIONS = 50


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _BareClient(asyncio.Protocol):
    """Write 64 bytes; when all 64 came back, count one reply and write the next 64."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.got = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        while self.got >= SIZE:
            self.got -= SIZE
            self.state["replies"] += 1
            if self.state["running"]:
                assert self.transport is not None
                self.transport.write(self.state["message"])


def _bare_main(
    host: str,
    port: int,
    warmup: float,
    duration: float,
    pipe: multiprocessing.connection.Connection,
) -> None:
    """Child process: the bare uvloop client; sends (replies, seconds, cpu seconds) back."""
    import uvloop

    async def main() -> tuple[int, float, float]:
        loop = asyncio.get_running_loop()
        state: dict[str, Any] = {"replies": 0, "running": True, "message": b"x" * SIZE}
        conns = [
            (await loop.create_connection(lambda: _BareClient(state), host, port))[1]
            for _ in range(CONNECTIONS)
        ]
        for conn in conns:
            assert conn.transport is not None
            conn.transport.write(state["message"])
        await asyncio.sleep(warmup)
        start, n0, cpu0 = time.monotonic(), state["replies"], _cpu()
        await asyncio.sleep(duration)
        end, n1, cpu1 = time.monotonic(), state["replies"], _cpu()
        state["running"] = False
        for conn in conns:
            assert conn.transport is not None
            conn.transport.close()
        return n1 - n0, end - start, cpu1 - cpu0

    pipe.send(uvloop.run(main()))
    pipe.close()


def run_bare(host: str, port: int, warmup: float, duration: float) -> dict[str, float]:
    """One run of the bare client in its own process."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_main, args=(host, port, warmup, duration, child))
    proc.start()
    child.close()
    try:
        if not parent.poll(warmup + duration + 30):
            raise RuntimeError("the bare client did not report")
        replies, seconds, cpu = parent.recv()
    finally:
        proc.join(5)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    return {"rps": replies / seconds, "cpu_us": cpu / replies * 1e6 if replies else 0.0}


def run_bingfa(host: str, port: int, warmup: float, duration: float) -> dict[str, float]:
    """One run of bingfa's generator (one process)."""
    from bingfa.bench import run_bench

    result = run_bench(
        host,
        port,
        protocol="raw",
        connections=CONNECTIONS,
        processes=1,
        warmup=warmup,
        duration=duration,
        payload=b"x" * SIZE,
        timeout=10.0,
    )
    if result.error_count:
        raise RuntimeError(f"bingfa generator saw errors: {result.errors}")
    cpu = result.generator_cpu[0] * result.duration_s
    return {
        "rps": result.rps,
        "cpu_us": cpu / result.requests * 1e6 if result.requests else 0.0,
        "p99_ms": result.latency_ms["p99"] or 0.0,
    }


def start_peer() -> tuple[subprocess.Popen[str], str, int]:
    """Start the bare uvloop echo peer; return it with its address."""
    proc = subprocess.Popen(
        [sys.executable, str(PEER), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"echo peer did not start: {line!r}")
    address = line.split("listening on ", 1)[1].split()[0]
    host, _, port = address.rpartition(":")
    return proc, host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    parser.add_argument("--json", default=None, help="write the numbers here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.25
    peer, host, port = start_peer()
    rounds: list[dict[str, Any]] = []
    try:
        for i in range(args.rounds):
            order = ("bare", "bingfa") if i % 2 == 0 else ("bingfa", "bare")
            entry: dict[str, Any] = {"round": i + 1}
            for who in order:
                run = run_bare if who == "bare" else run_bingfa
                entry[who] = run(host, port, args.warmup, args.duration)
                print(
                    f"round {i + 1} {who:<6} {entry[who]['rps']:>10,.0f} req/s  "
                    f"{entry[who]['cpu_us']:6.1f} µs CPU/reply",
                    file=sys.stderr,
                )
            entry["ratio"] = entry["bingfa"]["rps"] / entry["bare"]["rps"]
            rounds.append(entry)
    finally:
        peer.terminate()
        peer.wait(10)
    ratio = statistics.median(r["ratio"] for r in rounds)
    bare = statistics.median(r["bare"]["rps"] for r in rounds)
    mine = statistics.median(r["bingfa"]["rps"] for r in rounds)
    bare_cpu = statistics.median(r["bare"]["cpu_us"] for r in rounds)
    mine_cpu = statistics.median(r["bingfa"]["cpu_us"] for r in rounds)
    passed = ratio >= TARGET
    per_round = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
    print(
        f"generator capacity, 1 process, {CONNECTIONS} connections, {SIZE}-byte raw echo "
        f"({args.rounds} × {args.duration:g} s, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}):"
    )
    print(f"  bare uvloop Protocol client  {bare:>10,.0f} req/s  {bare_cpu:6.1f} µs CPU/reply")
    print(f"  bingfa bench generator       {mine:>10,.0f} req/s  {mine_cpu:6.1f} µs CPU/reply")
    print(
        f"  ratio bingfa / bare = {ratio:.2f} (median of rounds: {per_round}); "
        f"target ≥ {TARGET} → "
        f"{'PASS' if passed else 'FAIL'}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "benchmark": "bench_generator",
                    "target": TARGET,
                    "ratio": ratio,
                    "passed": passed,
                    "bare_rps": bare,
                    "bingfa_rps": mine,
                    "bare_cpu_us_per_reply": bare_cpu,
                    "bingfa_cpu_us_per_reply": mine_cpu,
                    "rounds": rounds,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
