"""asyncio 并发睡眠:一个阻塞调用让整个程序变成串行

asyncio: concurrent sleeps — and one blocking call makes the whole program serial (seed 002).

``TASKS`` coroutines each wait ``NAP`` seconds. Timed four ways:

1. awaited one after another: the sum of the waits;
2. ``asyncio.gather`` with ``await asyncio.sleep``: all waits overlap, about one ``NAP``;
3. ``asyncio.gather`` with ``time.sleep`` inside ``async def`` (the seed's f1/f2): the event
   loop is a single thread, a blocking call stops it, so the "concurrent" program is serial;
4. the cure for a call you cannot make async: ``await asyncio.to_thread(time.sleep, NAP)``
   (it runs in the loop's default thread pool — ``min(32, cpus + 4)`` threads unless set —
   sized here to ``TASKS`` threads so that all of them can wait at once).

And the seed's other bug: ``asyncio.sleep(1)`` *without* ``await`` creates a coroutine and
drops it — it does not wait at all (Python warns "coroutine ... was never awaited").

Run: ``.venv/bin/python examples/08_asyncio_sleeps.py [--quick]``
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
TASKS = 10
NAP = 0.1 if QUICK else 0.2


async def cooperative(n: int) -> int:
    await asyncio.sleep(NAP)  # suspends this task; the loop runs the others meanwhile
    return n


async def blocking(n: int) -> int:
    time.sleep(NAP)  # blocks the loop's only thread: nothing else runs
    return n


async def offloaded(n: int) -> int:
    await asyncio.to_thread(time.sleep, NAP)  # blocking call moved to a worker thread
    return n


async def forgot_await(n: int) -> int:
    asyncio.sleep(NAP)  # type: ignore[unused-coroutine]  # the seed's bug: never runs
    return n


async def one_by_one(job: Callable[[int], Awaitable[int]]) -> list[int]:
    return [await job(n) for n in range(TASKS)]


async def gathered(job: Callable[[int], Awaitable[int]]) -> list[int]:
    return list(await asyncio.gather(*(job(n) for n in range(TASKS))))


def timed(label: str, make: Callable[[], Awaitable[list[int]]]) -> float:
    async def run() -> list[int]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(TASKS))
        return await make()

    start = time.perf_counter()
    results = asyncio.run(run())
    elapsed = time.perf_counter() - start
    assert results == list(range(TASKS)), results
    print(f"{label:<46} {elapsed:5.2f} s")
    return elapsed


def main() -> None:
    print(f"{TASKS} tasks, each waiting {NAP} s (sum {TASKS * NAP:.1f} s)")
    timed("awaited one by one (asyncio.sleep):", lambda: one_by_one(cooperative))
    concurrent = timed("gather + await asyncio.sleep:", lambda: gathered(cooperative))
    serial = timed("gather + time.sleep (blocking):", lambda: gathered(blocking))
    timed("gather + await asyncio.to_thread(time.sleep):", lambda: gathered(offloaded))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        timed("gather + asyncio.sleep without await (bug):", lambda: gathered(forgot_await))
    never_awaited = sum("never awaited" in str(w.message) for w in caught)
    print(f"  -> it did not wait at all; Python warned {never_awaited} times: never awaited")
    print(f"one blocking call made gather {serial / concurrent:.1f}x slower (serial)")


if __name__ == "__main__":
    main()
