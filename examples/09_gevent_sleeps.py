"""gevent 协程:先打补丁,time.sleep 才会切换

gevent: monkey-patch first, then blocking calls switch greenlets (seed 000 【六】, seed 003).

The seed's lesson: ``gevent.spawn`` runs greenlets in one thread, switching whenever one waits
for IO — but only for IO gevent *knows about*. ``monkey.patch_all()`` replaces ``time.sleep``,
``socket``, ``threading`` ... with cooperative versions, and it must run **first**, before
anything imports those modules (that is why it is the first statement below, and why this
lesson has a file of its own).

The program spawns ``TASKS`` greenlets that each ``time.sleep(NAP)``, and times them:

* patched (this process): the sleeps overlap — about one ``NAP`` in all;
* unpatched: the same file re-run as a child process with ``--no-patch``; now ``time.sleep``
  is the real, blocking one and the greenlets run one after another.

Run: ``.venv/bin/python examples/09_gevent_sleeps.py [--quick]``
"""

import sys

PATCH = "--no-patch" not in sys.argv[1:]
if PATCH:  # must come before any other import that might load socket, threading, time, ssl
    from gevent import monkey

    monkey.patch_all()

import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
TASKS = 10
NAP = 0.1 if QUICK else 0.2


def hello(n: int) -> int:
    time.sleep(NAP)  # cooperative once patched: switches to another greenlet
    return n


def run_greenlets() -> float:
    start = time.perf_counter()
    greenlets = [gevent.spawn(hello, n) for n in range(TASKS)]
    gevent.joinall(greenlets, raise_error=True)
    elapsed = time.perf_counter() - start
    assert [g.value for g in greenlets] == list(range(TASKS))
    return elapsed


def main() -> None:
    elapsed = run_greenlets()
    if not PATCH:
        print(f"{elapsed:.3f}")  # the parent reads this
        return
    print(f"{TASKS} greenlets, each time.sleep({NAP}) (sum {TASKS * NAP:.1f} s)")
    print(f"patched:   {elapsed:.2f} s  (time.sleep is gevent's; the sleeps overlap)")
    child = subprocess.run(
        [sys.executable, __file__, "--no-patch", *sys.argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    unpatched = float(child.stdout.split()[-1])
    print(f"unpatched: {unpatched:.2f} s  (a separate process without monkey.patch_all(): serial)")
    print(f"patching made the greenlets {unpatched / elapsed:.1f}x faster")
    print(f"time.sleep patched here: {monkey.is_module_patched('time')}")


if __name__ == "__main__":
    main()
