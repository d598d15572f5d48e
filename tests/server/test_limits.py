"""Limits, timeouts, stats and offload — the same behaviour under every model."""

from __future__ import annotations

import concurrent.futures
import resource
import socket
import struct
import time
from typing import Any

import psutil
import pytest
from server_helpers import frame, wait_for_log

from bingfa import Client, ConnectionClosed, NetworkError
from bingfa.server import MODELS

ALL_MODELS = [pytest.param(m, id=m) for m in MODELS]


def eof_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the server closed ``sock`` (EOF or reset); fails after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


@pytest.mark.parametrize("model", ALL_MODELS)
def test_max_connections_refuses_promptly_and_spares_existing(
    spawn_server: Any, model: str
) -> None:
    server = spawn_server("echo", model, max_connections=3)
    clients = [Client(*server.address, timeout=5) for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            assert c.request(b"%d" % i) == b"%d" % i
        start = time.monotonic()
        with pytest.raises((NetworkError, ConnectionClosed)):
            with Client(*server.address, timeout=5) as extra:
                extra.request(b"over the limit")
        assert time.monotonic() - start < 2
        for i, c in enumerate(clients):
            assert c.request(b"again %d" % i) == b"again %d" % i
        clients.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the freed slot is taken again once the server saw the close
            try:
                with Client(*server.address, timeout=5) as late:
                    assert late.request(b"late") == b"late"
                break
            except (NetworkError, ConnectionClosed):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for c in clients:
            c.close()
    wait_for_log(server, r"max_connections=3 reached")


@pytest.mark.parametrize("model", ALL_MODELS)
def test_idle_timeout_closes_idle_and_trickling_connections(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model, idle_timeout=0.5)
    with (
        socket.create_connection(server.address) as idle,
        socket.create_connection(server.address) as trickle,
        Client(*server.address) as active,
    ):
        # A slowloris client: one byte of a frame header at a time, never a whole request.
        start = time.monotonic()
        closed = False
        for byte in struct.pack("!I", 1000):
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            assert active.request(b"busy") == b"busy"  # activity keeps this one open
        assert eof_within(idle, 3) < 3
        if not closed:
            assert eof_within(trickle, 3) < 3
        assert time.monotonic() - start < 4
        assert active.request(b"still open") == b"still open"
    wait_for_log(server, r"idle_timeout")


@pytest.mark.parametrize("model", ALL_MODELS)
def test_request_timeout_abandons_the_handler(spawn_server: Any, model: str) -> None:
    server = spawn_server("bingfa_testapps:blocking", model, request_timeout=0.3)
    with Client(*server.address, timeout=10) as slow, Client(*server.address) as other:
        start = time.monotonic()
        with pytest.raises((ConnectionClosed, NetworkError)):
            slow.request(b"3000")
        assert time.monotonic() - start < 2.5
        assert other.request(b"10") == b"10"
    wait_for_log(server, r"request_timeout")


@pytest.mark.parametrize("model", ALL_MODELS)
def test_slowloris_does_not_starve_good_clients(spawn_server: Any, model: str) -> None:
    """500 stalled connections, 20 good clients: the documented setting is --idle-timeout for
    the thread pool (its workers would otherwise all be held); other models need nothing."""
    options: dict[str, Any] = {"threads": 32}
    if model == "threadpool":
        options["idle_timeout"] = 1.0
    server = spawn_server("echo", model, **options)
    stalled = []
    try:
        for _ in range(500):
            s = socket.create_connection(server.address)
            s.sendall(b"\x00")
            stalled.append(s)

        def good(i: int) -> int:
            with Client(*server.address, timeout=20) as c:
                return sum(c.request(b"%d-%d" % (i, j)) == b"%d-%d" % (i, j) for j in range(10))

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            assert list(pool.map(good, range(20))) == [10] * 20
        assert time.monotonic() - start < 15
    finally:
        for s in stalled:
            s.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_accept_survives_emfile(spawn_server: Any, model: str) -> None:
    """Out of descriptors: the server backs off instead of spinning or dying, then recovers."""
    server = spawn_server("echo", model)
    proc = psutil.Process(server.pid)
    with Client(*server.address) as c:
        assert c.request(b"warm") == b"warm"
    time.sleep(0.3)  # let lazily started pools/threads open their descriptors
    limit = proc.num_fds() + 4
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (limit, hard))
    socks = []
    cpu_before = sum(proc.cpu_times()[:2])
    try:
        for i in range(30):
            s = socket.create_connection(server.address, timeout=3)
            s.sendall(frame(b"%d" % i))
            socks.append(s)
        time.sleep(1.5)
        cpu_spent = sum(proc.cpu_times()[:2]) - cpu_before
        assert cpu_spent < 0.75, f"server burned {cpu_spent:.2f}s CPU in 1.5s: spinning on EMFILE"
    finally:
        for s in socks:
            s.close()
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
    deadline = time.monotonic() + 10
    while True:
        try:
            with Client(*server.address, timeout=3) as c:
                assert c.request(b"recovered") == b"recovered"
            break
        except (NetworkError, ConnectionClosed, TimeoutError):
            assert time.monotonic() < deadline, "server did not recover from EMFILE"
            time.sleep(0.1)
    assert proc.is_running()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_stats_on_sigusr1_and_interval(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model, stats_interval=0.3)
    with Client(*server.address) as c:
        for _ in range(7):
            assert c.request(b"x" * 10) == b"x" * 10
        time.sleep(0.1)
        server.signal(10)  # SIGUSR1
        match = wait_for_log(server, r"stats: open_connections=1 total_connections=1 requests=7 ")
    assert "bytes_in=98 bytes_out=98" in server.log()[match.start() :]
    # The interval reporter runs too: more stats lines appear without any signal.
    wait_for_log(server, r"(stats: .*\n.*){3}")


def test_offload_process_keeps_the_loop_responsive(spawn_server: Any) -> None:
    """asyncio + cpu app: with --offload process a long computation runs in a pool process,
    with --offload none it stalls every other client of the loop."""
    latencies = {}
    for offload in ("none", "process"):
        server = spawn_server("cpu", "asyncio", offload=offload, offload_workers=2)
        with Client(*server.address, timeout=30) as heavy, Client(*server.address) as light:
            assert light.request(b"10")
            time.sleep(0.5)  # the pool processes start in the background
            heavy.send(b"6000000")
            time.sleep(0.1)
            start = time.monotonic()
            assert light.request(b"10")
            latencies[offload] = time.monotonic() - start
            heavy.recv()
            if offload == "process":
                assert psutil.Process(server.pid).children(recursive=True)
    assert latencies["process"] < 0.25, latencies
    assert latencies["none"] > 0.25, latencies


def _offload_workers(server_pid: int) -> list[psutil.Process]:
    """The offload pool's worker processes: the fork server's children under the server."""
    workers = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if "forkserver" in " ".join(child.cmdline()):
                workers.extend(child.children())
        except psutil.NoSuchProcess:
            continue
    return workers


def test_offload_process_worker_killed_fails_only_its_request(spawn_server: Any) -> None:
    """kill -9 of the process running a request (the OOM killer, a segfaulting C extension):
    that request's connection is closed, the pool replaces the worker, and the server goes on
    answering - no pool-wide BrokenProcessPool."""
    server = spawn_server("cpu", "asyncio", offload="process", offload_workers=2)
    with Client(*server.address, timeout=30) as light:
        assert light.request(b"10")
    deadline = time.monotonic() + 10
    while len(_offload_workers(server.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = _offload_workers(server.pid)
    assert len(victims) == 2, victims
    with Client(*server.address, timeout=30) as heavy:
        heavy.send(b"200000000")  # far longer than the test: it must be the kill that ends it
        time.sleep(0.3)
        for proc in victims:
            proc.kill()
        with pytest.raises((ConnectionClosed, NetworkError)):
            heavy.recv()
    for _ in range(3):
        with Client(*server.address, timeout=30) as c:
            assert c.request(b"10")
    assert psutil.Process(server.pid).is_running()
    assert "WorkerDied" in server.log() or "was killed by SIGKILL" in server.log()


def test_threadpool_shutdown_answers_queued_requests(spawn_server: Any) -> None:
    """A connection still queued for a worker at SIGTERM is answered if it already sent its
    request (and closed if it sent nothing), not dropped."""
    server = spawn_server("sleep", "threadpool", threads=1)
    with (
        Client(*server.address) as busy,
        Client(*server.address) as queued,
        socket.create_connection(server.address) as silent,
    ):
        busy.send(b"300")
        queued.send(b"1")  # waits in the pool's queue: the only worker is busy
        time.sleep(0.1)
        server.signal(15)
        assert busy.recv() == b"300"
        assert queued.recv() == b"1"
        assert eof_within(silent, 5) < 5
    assert server.wait(10) == 0
