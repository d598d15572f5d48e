"""Cost of bingfa.locks instrumentation on uncontended locks.

Run as ``python benchmarks/bench_locks.py [--quick]``. Prints one table: nanoseconds per
acquire+release pair for a plain ``threading.Lock``/``RLock`` and for tracked ones (same
process, same loop), and the ratio. The target is a ratio of at most 3 for the plain
uncontended Lock (``acquire(); release()``). The last line measures the floor: a wrapper whose
methods do nothing but forward to a real lock — no pure-Python wrapper can go below it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bingfa import locks

Case = Callable[[int], None]


_LockLike = Any  # threading.Lock/RLock objects, plain or tracked


def _pair(lock: _LockLike) -> Case:
    def run(n: int) -> None:
        for _ in range(n):
            lock.acquire()
            lock.release()

    return run


def _with(lock: _LockLike) -> Case:
    def run(n: int) -> None:
        for _ in range(n):
            with lock:
                pass

    return run


def _nested(outer: threading.Lock, inner: _LockLike) -> Case:
    def run(n: int) -> None:
        for _ in range(n):
            with outer, inner:
                pass

    return run


def _empty(n: int) -> None:
    for _ in range(n):
        pass


def _time(case: Case, n: int) -> float:
    """Seconds per iteration of one run, loop overhead included."""
    t0 = time.perf_counter()
    case(n)
    return (time.perf_counter() - t0) / n


def _measure(variants: dict[str, Case], n: int, rounds: int) -> dict[str, float]:
    """Best seconds per iteration of each variant, measured round-robin.

    Interleaving the variants and keeping each one's minimum makes the comparison fair on a
    noisy machine: all variants get the same chances to hit a quiet moment.
    """
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, case in variants.items():
            best[name] = min(best[name], _time(case, n))
    return best


class _Forwarder:
    """The floor of any pure-Python lock wrapper: methods that only forward to a real lock.
    Whatever a wrapper records, it pays at least this Python call per operation."""

    __slots__ = ("_acquire", "_release")

    def __init__(self) -> None:
        raw = threading.Lock()
        self._acquire = raw.acquire
        self._release = raw.release

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._acquire(blocking, timeout)

    def release(self) -> None:
        self._release()


def _make() -> dict[str, _LockLike]:
    """Locks of every kind, created under the current threading.Lock/RLock."""
    return {
        "lock": threading.Lock(),
        "rlock": threading.RLock(),
        "outer": threading.Lock(),
        "inner": threading.Lock(),
    }


def _cases(made: dict[str, _LockLike]) -> dict[str, Case]:
    return {
        "Lock acquire()+release()": _pair(made["lock"]),
        "Lock with-block": _with(made["lock"]),
        "RLock acquire()+release()": _pair(made["rlock"]),
        "RLock with-block": _with(made["rlock"]),
        "two nested Locks (with)": _nested(made["outer"], made["inner"]),
    }


def main() -> None:
    quick = "--quick" in sys.argv
    n = 20_000 if quick else 50_000
    rounds = 10 if quick else 40
    plain = _cases(_make())
    with locks.instrumented():
        tracked = _cases(_make())
        for case in tracked.values():  # warm up: the nested case learns its order edge here
            case(1000)
        with locks.instrumented(stats=True):
            timed = _cases(_make())
            for case in timed.values():
                case(1000)
        rows: list[tuple[str, float, float, float]] = []
        loop = _measure({"loop": _empty}, n, rounds)["loop"]
        for name in plain:
            best = _measure(
                {"plain": plain[name], "tracked": tracked[name], "stats": timed[name]}, n, rounds
            )
            rows.append((name, best["plain"] - loop, best["tracked"] - loop, best["stats"] - loop))
    print(f"bingfa.locks overhead, ns per iteration (empty-loop {loop * 1e9:.0f} ns subtracted)")
    print(f"{'case':<28} {'plain':>7} {'tracked':>8} {'ratio':>6} {'+stats':>7} {'ratio':>6}")
    for name, base, inst, stat in rows:
        print(
            f"{name:<28} {base * 1e9:>7.0f} {inst * 1e9:>8.0f} {inst / base:>5.2f}x"
            f" {stat * 1e9:>7.0f} {stat / base:>5.2f}x"
        )
    floor = _measure(
        {"plain": plain["Lock acquire()+release()"], "fwd": _pair(_Forwarder())}, n, rounds
    )
    print(
        f"floor: a wrapper that only forwards acquire()/release() costs"
        f" {(floor['fwd'] - loop) / (floor['plain'] - loop):.2f}x a plain Lock in this run"
    )
    print(f"python {sys.version.split()[0]}; reports made: {len(locks.reports())}")


if __name__ == "__main__":
    main()
