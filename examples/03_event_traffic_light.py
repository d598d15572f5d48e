"""Event 红绿灯:20 辆车等一次 set()

Event: the traffic light (seed 000 【三】, seed 003).

One thread is the light: red for a while, then green — ``event.set()``. Twenty car threads
call ``event.wait()`` and may only drive once the light is green. Every car records *when* it
drove, so the program can show, with numbers, that no car left before the light turned green
and that all of them left right after (one ``set()`` wakes every waiter).

Also shown: ``wait(timeout)`` returns False instead of waiting forever — the way to wait for a
signal that may never come (a car that gives up), and ``clear()`` turns the light red again.

Run: ``.venv/bin/python examples/03_event_traffic_light.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import threading
import time

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
CARS = 20
RED_SECONDS = 0.3 if QUICK else 1.5

green = threading.Event()
times_lock = threading.Lock()
green_at: list[float] = []
drove_at: list[float] = []
waiting = threading.Semaphore(0)  # each car signals "I am waiting at the light"


def light() -> None:
    """Red, then green: ``set()`` releases every waiting car at once."""
    print("light: red")
    for _ in range(CARS):  # wait until every car is queued, so the demo always shows the wait
        waiting.acquire()
    time.sleep(RED_SECONDS)
    print("light: green")
    green_at.append(time.perf_counter())
    green.set()


def car(number: int) -> None:
    waiting.release()
    green.wait()  # blocks until someone calls green.set()
    with times_lock:
        drove_at.append(time.perf_counter())


def main() -> None:
    print(f"{CARS} cars waiting at a red light for {RED_SECONDS} s")
    cars = [threading.Thread(target=car, args=(i,)) for i in range(CARS)]
    for t in cars:
        t.start()
    signal = threading.Thread(target=light)
    signal.start()
    signal.join()
    for t in cars:
        t.join()
    turned_green = green_at[0]
    early = sum(t < turned_green for t in drove_at)
    spread_ms = (max(drove_at) - turned_green) * 1000
    print(f"cars that drove before green: {early}")
    print(f"cars that drove after green: {len(drove_at) - early} of {CARS}")
    print(f"last car left {spread_ms:.1f} ms after green")

    green.clear()  # red again
    start = time.perf_counter()
    got_green = green.wait(timeout=0.1)
    waited = time.perf_counter() - start
    print(f"wait(timeout=0.1) on a red light: returned {got_green} after {waited:.2f} s")


if __name__ == "__main__":
    main()
