"""Run every program in ``examples/`` and check that it shows what it claims to show.

Each example runs as a subprocess, exactly as a reader runs it, with ``BINGFA_EXAMPLE_QUICK=1``
(smaller workloads) and a timeout. The checks read the numbers the example printed: they are
measured, so the assertions are about what must hold on any machine (a semaphore of 5 never
lets 6 in; gather with a blocking sleep is serial), never about exact timings.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60  # seconds per example; in quick mode each takes a few seconds


def run_example(name: str, tmp_path: Path) -> str:
    """Run ``examples/<name>`` in quick mode; return its stdout (fail with both streams)."""
    env = {**os.environ, "BINGFA_EXAMPLE_QUICK": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("BINGFA_MODEL", None)  # the examples choose their own models
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,  # anything an example might write lands here
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


def number(pattern: str, text: str) -> float:
    """The first group of ``pattern`` in ``text``, as a float (fails if absent)."""
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in:\n{text}"
    return float(match.group(1).replace(",", ""))


def check_deadlock(out: str) -> None:
    assert "the thread finished (one thread never hangs); reports: potential-deadlock" in out
    assert "deadlock potential reported:" in out
    assert "POTENTIAL DEADLOCK" in out and "mutexA" in out and "mutexB" in out
    # The real deadlock is found and broken: one thread gets DeadlockError, the other proceeds.
    assert out.count("DeadlockError: backed off") == 1
    assert out.count(": got both locks") == 1
    assert "still blocked" not in out
    assert re.search(r"deadlock detected and broken in [\d.]+ s; reports: .*\bdeadlock\b", out)
    assert "10 of 10 threads finished" in out
    assert "reports: 0 (none)" in out


def check_semaphore(out: str) -> None:
    assert "max concurrent: 5 (seats 5, threads 20)" in out
    assert "inside at the end: 0" in out
    assert out.count("正在使用") == 20
    assert "Semaphore(1) after one extra release(): 2 threads can get in" in out
    assert "BoundedSemaphore(1) extra release(): ValueError" in out


def check_event(out: str) -> None:
    assert out.index("light: red") < out.index("light: green")
    assert "cars that drove before green: 0" in out
    assert "cars that drove after green: 20 of 20" in out
    assert re.search(r"wait\(timeout=0\.1\) on a red light: returned False after 0\.\d+ s", out)


def check_queues(out: str) -> None:
    assert "FIFO order: [1, 2, 3]" in out
    assert "LIFO order: [3, 2, 1]" in out
    assert re.search(r"4th put into PriorityQueue\(3\): queue\.Full after 0\.\d+ s", out)
    assert "priority order (smaller number first): [(-5, '444'), (0, '333'), (10, '111')" in out
    assert "queue.Empty" in out
    assert "worker handled jobs in priority order: ['urgent', 'normal', 'low']" in out


def check_producer_consumer(out: str) -> None:
    assert re.search(r"threads: produced 100, consumed 100, checksum ok", out)
    assert re.search(r"processes: produced 100, consumed 100, checksum ok", out)
    assert number(r"largest queue size seen: (\d+)", out) <= 5
    pids = re.search(r"consumer pids: \[([\d, ]+)\] \(main pid (\d+)\)", out)
    assert pids, out
    consumer_pids = {int(p) for p in pids.group(1).split(",")}
    assert len(consumer_pids) == 3 and int(pids.group(2)) not in consumer_pids
    for backend, where in (("memory", "this process"), ("process", r"\d worker process")):
        line = rf"bingfa\.pipeline \({backend}\): produced 100, consumed 100, checksum ok, "
        assert re.search(line + rf"in [\d.]+ s, stage ran in {where}", out), backend
    bounds = re.findall(r"source ahead of results by at most (\d+) items \(capacity (\d+)\)", out)
    assert len(bounds) == 2, out
    for ahead, capacity in bounds:
        # Backpressure: the source is read only as room frees up. (+1: the main thread counts
        # a result just after the pipeline has handed it over and may already have read on.)
        assert int(ahead) <= int(capacity) + 1


def check_gil(out: str) -> None:
    sequential = number(r"sequential: ([\d.]+) s", out)
    threads = number(r"threads: +([\d.]+) s", out)
    number(r"processes: +([\d.]+) s", out)
    number(r"ratio threads/processes: ([\d.]+)x", out)
    # The GIL: CPU-bound threads cannot beat running the same work one after another.
    assert sequential / threads < 1.5, out
    # IO-bound: ten 0.1 s sleeps overlap in threads.
    assert number(r"IO-bound: 10 x time\.sleep\(0\.1\) in threads: ([\d.]+) s", out) < 0.6


def check_switching(out: str) -> None:
    for label in ("plain loop", "generator ping-pong", "greenlet", "asyncio", "thread ping-pong"):
        assert re.search(rf"{label}.* [\d.]+ ns/step", out), label
    assert number(r"switching without IO: asyncio (\d+)x", out) >= 3
    assert number(r"threads (\d+)x slower than the plain loop", out) >= 3


def check_asyncio(out: str) -> None:
    one_by_one = number(r"awaited one by one \(asyncio\.sleep\): +([\d.]+) s", out)
    concurrent = number(r"gather \+ await asyncio\.sleep: +([\d.]+) s", out)
    blocking = number(r"gather \+ time\.sleep \(blocking\): +([\d.]+) s", out)
    offloaded = number(r"gather \+ await asyncio\.to_thread\(time\.sleep\): +([\d.]+) s", out)
    assert one_by_one >= 0.99 and blocking >= 0.99  # 10 x 0.1 s, one after another
    assert concurrent < blocking / 2
    assert offloaded < blocking / 2
    assert number(r"without await \(bug\): +([\d.]+) s", out) < 0.1
    assert "warned 10 times: never awaited" in out


def check_gevent(out: str) -> None:
    patched = number(r"patched: +([\d.]+) s", out)
    unpatched = number(r"unpatched: ([\d.]+) s", out)
    assert unpatched >= 0.99  # ten real time.sleep(0.1) in one thread
    assert patched < unpatched / 2
    assert "time.sleep patched here: True" in out


def check_ipc(out: str) -> None:
    assert "parent: counter = 0 (unchanged" in out
    assert "results: [0, 1, 4, 9] from 4 processes" in out
    assert "3 replies: 'pong 0 from" in out
    assert "with manager.Lock(): counter = 400 of 400 (lost updates: 0; 4 processes logged)" in out
    lost = number(r"without a lock +: counter = \d+ of 400 \(lost updates: (\d+)", out)
    assert 0 <= lost < 400
    assert "sum 2470 (ok)" in out


def check_pool(out: str) -> None:
    assert "add_done_callback returned: {None}" in out
    assert "callbacks: 20, results [0, 1, 4, 9, 16]..., sum 2470" in out
    serial = number(r"submit \+ result\(\) each: ([\d.]+) s", out)
    concurrent = number(r"submit all, then result\(\): ([\d.]+) s", out)
    assert serial >= 0.39 and concurrent < serial / 2  # 20 x 0.02 s vs 5 workers
    assert "callbacks: 20, successes 19, failures 1" in out
    assert "failure: ValueError: unlucky 13" in out
    assert "worker pids: 2 distinct, none of them this process: True" in out
    assert "callbacks ran in the parent process: True" in out
    assert "task: chose 'thread'" in out  # sleeping tasks: 0% CPU
    assert re.search(r"cpu_task: chose '\w+'", out)
    assert out.count("20 results in") == 2


def check_crawler(out: str) -> None:
    sequential = number(r"one by one: 20 pages in ([\d.]+) s", out)
    pooled = number(r"20 files saved in ([\d.]+) s", out)
    assert sequential >= 0.99 and pooled < sequential / 2  # 20 pages x 0.05 s
    assert out.count("fetched 20/21 pages") == 2
    assert "[model=thread, workers=10]" in out and "[model=asyncio, workers=10]" in out
    assert out.count("/missing: RemoteError: HTTP 404") == 2
    assert out.count("files on disk: 20") == 2
    assert "local site stopped" in out


def check_upper_server(out: str) -> None:
    for model in ("thread", "gevent"):
        assert re.search(rf"model {model}: bingfa serve upper on 127\.0\.0\.1:\d+", out), model
    assert out.count("100 clients x 10 requests: 1000 replies upper-cased, 0 wrong") == 2
    assert out.count("server stopped, exit status 0") == 2


def check_udp(out: str) -> None:
    sent = number(r"datagrams sent: (\d+)", out)
    received = number(r"replies received: (\d+)", out)
    assert sent == 10 and 1 <= received <= 10  # UDP may drop; loopback practically never does
    assert "each reply one whole message: True" in out
    assert "hello -> HELLO" in out and "udp -> UDP" in out
    assert re.search(r"no reply after [\d.]+ s: Timeout", out)
    assert "more than max_datagram_size=1000 bytes" in out
    assert "server stopped, exit status 0" in out
    assert re.search(r"4\. nobody listening:\n +(NetworkError|Timeout): no reply", out)


def check_sticky(out: str) -> None:
    assert "messages received: 1 (sent 10)  <- 粘包" in out
    assert "messages received: 3 (sent 1 of 3000 bytes)  <- 半包" in out
    assert "  messages received: 10 (sent 10)\n" in out
    assert "  messages received: 1 (sent 1 of 3000 bytes)\n" in out
    assert "replies: 10 (sent 10), each intact: True" in out


CHECKS: dict[str, Callable[[str], None]] = {
    "01_deadlock_rlock.py": check_deadlock,
    "02_semaphore.py": check_semaphore,
    "03_event_traffic_light.py": check_event,
    "04_queues.py": check_queues,
    "05_producer_consumer.py": check_producer_consumer,
    "06_gil.py": check_gil,
    "07_switching_cost.py": check_switching,
    "08_asyncio_sleeps.py": check_asyncio,
    "09_gevent_sleeps.py": check_gevent,
    "10_process_ipc.py": check_ipc,
    "11_pool_callbacks.py": check_pool,
    "12_crawler.py": check_crawler,
    "13_upper_server.py": check_upper_server,
    "14_udp.py": check_udp,
    "15_sticky_packets.py": check_sticky,
}


def test_every_example_is_checked() -> None:
    on_disk = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert on_disk == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_docstring(name: str) -> None:
    """A one-line Chinese title, then an English explanation and how to run it."""
    source = (EXAMPLES / name).read_text(encoding="utf-8")
    assert source.startswith('"""')
    title = source[3:].splitlines()[0]
    assert re.search(r"[\u4e00-\u9fff]", title), f"{name}: no Chinese title: {title!r}"
    doc = source.split('"""')[1]
    assert f"examples/{name}" in doc, f"{name}: the docstring should say how to run it"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example(name: str, tmp_path: Path) -> None:
    out = run_example(name, tmp_path)
    CHECKS[name](out)
