"""没有 IO 的切换只会更慢:生成器来回切换 vs 普通循环

Switching without IO costs time: generator ping-pong vs a plain loop (seed 000 【六】, seed
003 greenlet).

Coroutines help when a task *waits* (IO): while one waits, another runs. When nothing waits,
switching is pure overhead. The seed measured 10 s for two plain loops and 15 s when one loop
``next()``-ed a generator on every step. The same experiment here, plus the switches real
programs use, each doing the same work — two functions counting — with a switch between the
two after every step:

* plain: ``func1()`` then ``func2()``, no switch at all;
* generator ping-pong (the seed's): ``next(g)`` on every step;
* greenlet ping-pong (what gevent is built on): ``other.switch()`` on every step;
* asyncio: two tasks, ``await asyncio.sleep(0)`` on every step (a trip through the event loop);
* threads: two OS threads handing a token back and forth (a GIL hand-off and a wake-up).

Each is timed (best of ``REPEAT``, runs interleaved so a busy machine disturbs all alike) and
reported as nanoseconds per step and as a multiple of the plain loop. How cheap a generator
switch is depends on the CPython version (3.11 made them much cheaper than the seed's Python),
so read the numbers this program prints rather than the seed's.

Run: ``.venv/bin/python examples/07_switching_cost.py [--quick]``
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

import greenlet  # installed with gevent; switching greenlets needs no monkey-patching

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
SCALE = 1 if QUICK else 2
REPEAT = 3


def plain(n: int) -> None:
    def func(steps: int) -> None:
        total = 0
        for k in range(steps):
            total += k

    func(n)
    func(n)


def generator_ping_pong(n: int) -> None:
    def func1() -> Iterator[None]:
        total = 0
        while True:
            total += 1
            yield  # back to func2: a switch

    g = func1()
    total = 0
    for k in range(n):
        total += k
        next(g)  # into func1: a switch


def greenlet_ping_pong(n: int) -> None:
    def func1() -> None:
        total = 0
        while True:
            total += 1
            back.switch()

    back = greenlet.getcurrent()
    other = greenlet.greenlet(func1)
    total = 0
    for k in range(n):
        total += k
        other.switch()
    other.throw(greenlet.GreenletExit)  # end func1 cleanly


def asyncio_ping_pong(n: int) -> None:
    async def func(steps: int) -> None:
        total = 0
        for k in range(steps):
            total += k
            await asyncio.sleep(0)  # yield to the event loop, which runs the other task

    async def both() -> None:
        await asyncio.gather(func(n), func(n))

    asyncio.run(both())


def thread_ping_pong(n: int) -> None:
    turn = threading.Condition()
    whose = [0]

    def func(me: int) -> None:
        total = 0
        for k in range(n):
            with turn:
                turn.wait_for(lambda: whose[0] == me)
                total += k
                whose[0] = 1 - me
                turn.notify()

    threads = [threading.Thread(target=func, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# (label, function, steps per function): slower mechanisms get fewer steps to stay quick.
VARIANTS: list[tuple[str, Callable[[int], None], int]] = [
    ("plain loop, no switch", plain, 500_000 * SCALE),
    ("generator ping-pong (seed)", generator_ping_pong, 500_000 * SCALE),
    ("greenlet ping-pong", greenlet_ping_pong, 200_000 * SCALE),
    ("asyncio sleep(0) ping-pong", asyncio_ping_pong, 20_000 * SCALE),
    ("thread ping-pong", thread_ping_pong, 2_000 * SCALE),
]


def main() -> None:
    best = {label: float("inf") for label, _, _ in VARIANTS}
    for _ in range(REPEAT):
        for label, run, n in VARIANTS:
            start = time.perf_counter()
            run(n)
            best[label] = min(best[label], (time.perf_counter() - start) / (2 * n))
    base = best[VARIANTS[0][0]]
    print(f"two functions counting, a switch after every step (best of {REPEAT}):")
    for label, _, n in VARIANTS:
        per_step = best[label]
        print(
            f"  {label:<28} {per_step * 1e9:9.1f} ns/step  {per_step / base:7.1f}x plain  "
            f"({2 * n:,} steps)"
        )
    print(
        f"switching without IO: asyncio {best[VARIANTS[3][0]] / base:.0f}x, "
        f"threads {best[VARIANTS[4][0]] / base:.0f}x slower than the plain loop"
    )


if __name__ == "__main__":
    main()
