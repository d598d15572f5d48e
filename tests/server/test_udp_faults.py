"""UDP faults: the stats interval, ``--offload process``, SIGUSR1 during a flood, log floods.

Every server is a real ``bingfa serve --udp`` child on 127.0.0.1, stopped by ``spawn_server`` at
teardown (which also requires exit status 0: a server that deadlocked fails there too).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from server_helpers import check_request_stats_skips_the_stats_lock, wait_for_log

from bingfa.client import UdpClient
from bingfa.server import UDP_MODELS, create_server

UDP = [pytest.param(m, id=m) for m in UDP_MODELS]
TEST_APPS = str(Path(__file__).parent)


def flood(address: tuple[str, int], payload: bytes, seconds: float, stop: threading.Event) -> int:
    """Send ``payload`` to ``address`` as fast as possible for ``seconds``; return the count."""
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                s.sendto(payload, address)
            except OSError:  # ENOBUFS, or ICMP unreachable reported on a later send
                time.sleep(0.001)
                continue
            sent += 1
    return sent


# -- (a) --stats-interval ---------------------------------------------------------------------


@pytest.mark.parametrize("model", UDP)
def test_stats_interval_is_honoured(spawn_server: Any, model: str) -> None:
    """``--stats-interval`` logs the counters periodically, without any signal."""
    server = spawn_server("echo", model, udp=True, stats_interval=0.2)
    with UdpClient(*server.address) as client:
        for i in range(3):
            assert client.request(b"%d" % i) == b"%d" % i
    wait_for_log(server, r"(stats: [^\n]*requests=3 [^\n]*\n[^\n]*){2}", timeout=5)


# -- (b) --offload process ------------------------------------------------------------------------

CPU_PID = """
import os

import bingfa


@bingfa.handler(kind="cpu")
def where(request: bytes) -> bytes:
    return str(os.getpid()).encode()
"""


def test_offload_process_runs_cpu_handlers_in_a_pool_process(
    spawn_server: Any, tmp_path: Path
) -> None:
    """asyncio UDP with ``--offload process``: a ``kind="cpu"`` handler runs in a pool process
    (not silently in a thread of the server)."""
    (tmp_path / "cpu_pid.py").write_text(CPU_PID)
    server = spawn_server(
        "cpu_pid:where",
        "asyncio",
        udp=True,
        offload="process",
        offload_workers=1,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), TEST_APPS])},
    )
    with UdpClient(*server.address) as client:
        pid = int(client.request(b"x", timeout=5, retries=3))
    pool = {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
    assert pid != server.pid
    assert pid in pool


def test_offload_process_is_refused_under_gevent() -> None:
    """gevent UDP cannot offload to processes (as gevent TCP): a clear usage error, not threads."""
    command = ["serve", "cpu", "--udp", "--model", "gevent", "--offload", "process", "--port", "0"]
    out = subprocess.run(
        [sys.executable, "-m", "bingfa", *command],
        capture_output=True,
        text=True,
        timeout=15,  # before the fix it served instead of refusing: this stops that child
    )
    assert out.returncode == 2, out
    assert "offload" in out.stderr and "gevent" in out.stderr, out.stderr
    assert "listening" not in out.stdout


# -- (c) SIGUSR1 during a flood -------------------------------------------------------------------


@pytest.mark.parametrize("model", UDP)
def test_sigusr1_during_a_flood_does_not_deadlock(spawn_server: Any, model: str) -> None:
    """Hundreds of SIGUSR1 while a flood keeps the receiving loop counting drops (the stats
    lock taken over and over): each report runs outside the signal handler, so the process
    never deadlocks on its own lock; it keeps answering and stops cleanly (exit 0)."""
    server = spawn_server("bingfa_testapps:blocking", model, udp=True, threads=1)
    stop = threading.Event()
    sender = threading.Thread(target=flood, args=(server.address, b"5", 3.0, stop), daemon=True)
    sender.start()
    try:
        time.sleep(0.2)
        for _ in range(300):
            server.signal(signal.SIGUSR1)
            time.sleep(0.005)
    finally:
        stop.set()
        sender.join(10)
    wait_for_log(server, r"stats: .*dropped=[1-9]")
    with UdpClient(*server.address) as client:
        assert client.request(b"1", timeout=2, retries=3) == b"1"
    assert server.stop() == 0, server.log()[-3000:]


@pytest.mark.parametrize("model", ["thread", "asyncio"])  # gevent needs a patched process
def test_request_stats_never_waits_for_the_stats_lock(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``request_stats`` (what SIGUSR1 calls) must not take the stats lock: a signal handler
    runs in the thread it interrupted, and if that thread holds the lock (counting a drop),
    waiting for it is a deadlock. Here the lock is held while ``request_stats`` is called;
    the report must come from the serving loop once the lock is free."""
    server = create_server("echo", model, port=0, udp=True, threads=2)
    server.listen()
    serving = threading.Thread(target=server.serve_forever, name="test-udp-serve")
    serving.start()
    try:
        with UdpClient(*server.address) as client:
            assert client.request(b"up", timeout=2, retries=3) == b"up"
        check_request_stats_skips_the_stats_lock(server, caplog)
    finally:
        server.shutdown()
        serving.join(10)
    assert not serving.is_alive()


# -- (d) oversized datagrams ----------------------------------------------------------------------


@pytest.mark.parametrize("model", UDP)
def test_oversized_flood_logs_a_few_lines(spawn_server: Any, model: str) -> None:
    """Thousands of oversized datagrams in a second: every one dropped and counted, but the
    log gets at most about one line a second (as refusals), with the number dropped."""
    server = spawn_server("echo", model, udp=True, max_datagram_size=100)
    stop = threading.Event()
    sent = flood(server.address, b"z" * 101, 1.0, stop)
    assert sent > 500
    with UdpClient(*server.address) as client:
        assert client.request(b"ok", timeout=2, retries=3) == b"ok"
    server.signal(signal.SIGUSR1)
    match = wait_for_log(server, r"stats: .* dropped=(\d+)")
    dropped = int(match[1])
    assert dropped > 100, server.log()[-2000:]
    lines = re.findall(r".*more than max_datagram_size=100 bytes.*", server.log())
    assert 1 <= len(lines) <= 5, f"{len(lines)} lines for {dropped} drops"
    assert all(re.search(r"\(\d+ oversized datagrams dropped so far", ln) for ln in lines), lines
