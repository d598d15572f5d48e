"""``--workers N``: worker processes sharing one socket under the supervisor.

Every server is a real ``bingfa serve --workers N`` child on 127.0.0.1 (``spawn_server`` stops
it at teardown and requires exit status 0). The supervisor's ``listen()`` returns only once
every worker listens, so when ``spawn_server`` returns the workers are all serving.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from server_helpers import live_children, wait_for, wait_for_log

from bingfa import Client, ConnectionClosed, NetworkError, Timeout
from bingfa.spawn import ServerProcess

T = TypeVar("T")

TEST_APPS = str(Path(__file__).parent)
WORKERS_2_PORT_0 = ["--workers", "2", "--port", "0"]


def established(pids: set[int], port: int) -> int:
    """Accepted connections on ``port`` held by the processes ``pids``."""
    count = 0
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        count += sum(
            c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port for c in conns
        )
    return count


class Load:
    """Client threads that each loop: connect, one request, check the reply, close.

    ``dropped`` counts requests whose connection closed (or was reset) before the reply came;
    ``wrong`` counts wrong replies; ``connect_failed`` counts refused/failed connects. Every
    thread has at most one request outstanding, so at most ``threads`` requests can be caught
    in flight by any single event.
    """

    def __init__(
        self, address: tuple[str, int], payload: bytes, check: Callable[[bytes], bool], threads: int
    ) -> None:
        self.address = address
        self.payload = payload
        self.check = check
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.replies: collections.Counter[bytes] = collections.Counter()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _count(self, key: str, reply: bytes | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if reply is not None:
                self.replies[reply] += 1

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                client = Client(*self.address, timeout=10)
            except (NetworkError, Timeout):
                self._count("connect_failed")
                continue
            with client:
                try:
                    reply = client.request(self.payload)
                except (ConnectionClosed, NetworkError):
                    self._count("dropped")
                    continue
                except Timeout:
                    self._count("timeout")
                    continue
            self._count("ok" if self.check(reply) else "wrong", reply)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)


def clients_on_each_worker(
    server: ServerProcess, pids: set[int], per_worker: int
) -> dict[int, list[Client]]:
    """Open connections (asking each its worker's pid) until every worker holds ``per_worker``."""
    held: dict[int, list[Client]] = {pid: [] for pid in pids}
    spare: list[Client] = []

    def one(_: int) -> tuple[int, Client]:
        client = Client(*server.address, timeout=5)
        return int(client.request(b"")), client

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for _ in range(20):
            for pid, client in pool.map(one, range(16)):
                (held[pid] if len(held[pid]) < per_worker else spare).append(client)
            if all(len(v) >= per_worker for v in held.values()):
                break
    for client in spare:
        client.close()
    assert all(len(v) >= per_worker for v in held.values()), {k: len(v) for k, v in held.items()}
    return held


# --- restarts ------------------------------------------------------------------------------


def test_kill9_worker_is_replaced_and_only_its_connections_drop(spawn_server: Any) -> None:
    server = spawn_server("bingfa_testapps:pid", "thread", workers=2)
    workers = live_children(server)
    assert len(workers) == 2
    held = clients_on_each_worker(server, workers, per_worker=3)
    victim, survivor = sorted(workers)
    try:
        with Load(server.address, b"", lambda r: int(r) > 0, threads=4) as load:
            time.sleep(0.3)
            before = load.snapshot()
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            new = wait_for(lambda: live_children(server) - workers, 1.0, "a replacement worker")
            assert time.monotonic() - killed_at < 1.0
            (replacement,) = new
            # Only the victim's own connections are lost; the survivor's stay open and served.
            for client in held[victim]:
                with pytest.raises((ConnectionClosed, NetworkError)):
                    client.request(b"")
            for client in held[survivor]:
                assert client.request(b"") == str(survivor).encode()
            # The replacement takes its share of the load within a few seconds.
            wait_for(
                lambda: load.replies[str(replacement).encode()] > 0, 10.0, "the new worker serving"
            )
            after = load.snapshot()
        assert after["ok"] > before["ok"]
        assert after["wrong"] == after["connect_failed"] == after["timeout"] == 0, after
        # At most the requests in flight on the victim when it was killed (one per thread).
        assert after["dropped"] <= 4, after
    finally:
        for clients in held.values():
            for client in clients:
                client.close()
    log = server.log()
    assert re.search(rf"worker {victim} \(slot \d, generation 0\) killed by SIGKILL", log)


def test_workers_dying_in_a_loop_are_restarted_with_backoff(
    spawn_server: Any, tmp_path: Path
) -> None:
    (tmp_path / "dying.py").write_text(
        "import os\n\n\ndef handler(request):\n"
        "    if request == b'die':\n        os._exit(3)\n    return request\n"
    )
    path = os.pathsep.join([str(tmp_path), TEST_APPS])
    server = spawn_server("dying:handler", "thread", workers=2, env={"PYTHONPATH": path})
    start = time.monotonic()
    for _ in range(5):  # > 2 deaths within 10 s: restarts are delayed 0.1 s, 0.2 s, 0.4 s
        with Client(*server.address, timeout=10) as client:
            with pytest.raises((ConnectionClosed, NetworkError)):
                client.request(b"die")
    wait_for_log(server, r"exit status 3; restarting it in 0\.4s \(5 worker deaths")
    assert "restarting it in 0.1s" in server.log()
    assert "restarting it in 0.2s" in server.log()
    with Client(*server.address, timeout=10) as client:
        assert client.request(b"alive") == b"alive"
    assert time.monotonic() - start < 15
    wait_for(lambda: len(live_children(server)) == 2, 5.0, "two workers again")


def test_app_failing_at_import_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('broken at import')\n")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bingfa", "serve", "brokenapp:handler", *WORKERS_2_PORT_0],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout == ""  # it never claimed to be listening
    assert "RuntimeError: broken at import" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bingfa: error: giving up: 5 workers in a row exited before listening")
    assert "brokenapp:handler cannot be served" in last
    assert elapsed < 30


# --- signals -------------------------------------------------------------------------------


def test_sigterm_lets_twenty_sleeping_requests_finish(spawn_server: Any) -> None:
    server = spawn_server("sleep", "thread", workers=2, graceful_timeout=5)
    workers = live_children(server)
    clients = [Client(*server.address, timeout=10) for _ in range(20)]
    try:
        for client in clients:
            client.send(b"500")
        wait_for(lambda: established(workers, server.port) == 20, 5.0, "20 accepted connections")
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        assert [client.recv() for client in clients] == [b"500"] * 20
        assert server.wait(10) == 0
        assert time.monotonic() - start < 5  # well within graceful_timeout + margin
    finally:
        for client in clients:
            client.close()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).is_running() for pid in workers)
    assert "stopping 2 workers" in server.log()


def test_sighup_replaces_every_worker_without_losing_requests(spawn_server: Any) -> None:
    """SIGHUP: new workers start, then the old ones drain. Requests already received by an old
    worker (``inflight``: 800 ms sleeps sent before the SIGHUP) are answered on their own
    connection; the load running throughout (fresh connection per request) sees no failure —
    no refused connect, no connection closed before its reply, no wrong reply."""
    server = spawn_server("sleep", "thread", workers=2)
    old = live_children(server)
    inflight = [Client(*server.address, timeout=10) for _ in range(6)]
    try:
        with Load(server.address, b"20", lambda r: r == b"20", threads=4) as load:
            time.sleep(0.3)
            for client in inflight:
                client.send(b"800")
            wait_for(lambda: established(old, server.port) >= 6, 5.0, "in-flight requests")
            server.signal(signal.SIGHUP)

            def replaced() -> set[int]:
                pids = live_children(server)
                return pids if len(pids) == 2 and not pids & old else set()

            new = wait_for(replaced, 20.0, "every worker replaced")
            assert [client.recv() for client in inflight] == [b"800"] * 6
            wait_for(lambda: sum(load.replies.values()) > 0, 5.0, "load replies")
            time.sleep(0.5)  # and load keeps flowing through the new workers
            counts = load.snapshot()
    finally:
        for client in inflight:
            client.close()
    assert counts["ok"] > 0
    failures = {k: counts[k] for k in ("dropped", "wrong", "connect_failed", "timeout")}
    assert failures == dict.fromkeys(failures, 0), counts
    log = server.log()
    assert f"reload done: workers {sorted(new)} replace {sorted(old)}" in log
    for pid in old:
        assert re.search(rf"worker {pid} \(slot \d, generation 0\) stopped \(exit status 0\)", log)


def test_sigusr1_logs_aggregated_stats(spawn_server: Any) -> None:
    # gevent: the supervisor process itself is monkey-patched by bingfa._entry here.
    server = spawn_server("echo", "gevent", workers=2)
    clients = [Client(*server.address) for _ in range(3)]
    try:
        for i in range(7):
            assert clients[i % 3].request(b"%d" % i) == b"%d" % i
        server.signal(signal.SIGUSR1)
        wait_for_log(server, r"stats: workers=2 open_connections=3 total_connections=3 requests=7 ")
    finally:
        for client in clients:
            client.close()
    per_worker = re.findall(r"stats: worker (\d+): open_connections=", server.log())
    assert {int(p) for p in per_worker} == live_children(server)


# --- sizing and spread ---------------------------------------------------------------------


def test_workers_auto_starts_one_per_core(spawn_server: Any) -> None:
    server = spawn_server("echo", "asyncio", workers="auto")
    cores = os.cpu_count() or 1
    assert len(live_children(server)) == cores
    assert f"starting {cores} asyncio workers" in server.log()
    with Client(*server.address) as client:
        assert client.request(b"hi") == b"hi"


def test_connections_spread_over_workers(spawn_server: Any) -> None:
    """200 connections from 50 concurrent clients reach every worker. How evenly depends on
    scheduling (every idle worker is woken, the first to run accepts): measured spreads, from
    100/100 to 13/187, are in docs/workers.md."""
    server = spawn_server("bingfa_testapps:pid", "asyncio", workers=2)

    def one(_: int) -> int:
        with Client(*server.address, timeout=10) as client:
            return int(client.request(b""))

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        served = collections.Counter(pool.map(one, range(200)))
    assert set(served) == live_children(server), served


def test_a_busy_worker_leaves_new_connections_to_the_others(
    spawn_server: Any, tmp_path: Path
) -> None:
    """The shared accept queue (not SO_REUSEPORT): a worker whose event loop is blocked does
    not accept, so no new connection waits behind it."""
    (tmp_path / "stall.py").write_text(
        "import os, time\n\n\ndef handler(request):\n"
        "    time.sleep(int(request or 0) / 1000)\n    return str(os.getpid()).encode()\n"
    )
    path = os.pathsep.join([str(tmp_path), TEST_APPS])
    # offload=none: the handler runs on the loop, so a 2.5 s sleep blocks its whole worker.
    server = spawn_server(
        "stall:handler", "asyncio", workers=2, offload="none", env={"PYTHONPATH": path}
    )
    with Client(*server.address, timeout=10) as blocker:
        blocker.send(b"2500")
        time.sleep(0.2)
        start = time.monotonic()
        served: collections.Counter[int] = collections.Counter()
        for _ in range(30):
            with Client(*server.address, timeout=10) as client:
                served[int(client.request(b""))] += 1
        elapsed = time.monotonic() - start
        stalled = int(blocker.recv())
    assert stalled not in served, served
    assert sum(served.values()) == 30
    assert elapsed < 2.0, f"30 requests took {elapsed:.2f}s: some waited for the stalled worker"


def test_workers_exit_when_the_supervisor_is_killed() -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed supervisor's workers get SIGTERM and leave the port."""
    env = {"PYTHONPATH": TEST_APPS}
    with ServerProcess("echo", "thread", env=env, workers=2) as server:
        workers = [psutil.Process(pid) for pid in live_children(server)]
        assert len(workers) == 2
        os.kill(server.pid, signal.SIGKILL)
        try:
            _, alive = psutil.wait_procs(workers, timeout=10)
            assert not alive
        finally:
            for proc in workers:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()


def test_reuse_port_spreads_persistent_connections(spawn_server: Any) -> None:
    """--reuse-port: each worker listens on its own SO_REUSEPORT socket, so even connections
    opened one after another reach both workers (the kernel hashes them; with a shared socket
    the worker that happens to be awake tends to take them all)."""
    server = spawn_server("bingfa_testapps:pid", "asyncio", workers=2, reuse_port=True)
    clients = [Client(*server.address) for _ in range(40)]
    try:
        pids = {c.request(b"x") for c in clients}
    finally:
        for c in clients:
            c.close()
    assert len(pids) == 2  # all 40 on one worker: probability 2**-39 with an even hash
