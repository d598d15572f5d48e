"""UDP serving under every UDP model: datagrams in, datagrams out, nothing crashes."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from typing import Any

import pytest

from bingfa import MessageTooLarge, NetworkError, Timeout
from bingfa.client import UdpClient
from bingfa.server import UDP_MODELS

pytestmark = pytest.mark.parametrize("model", [pytest.param(m, id=m) for m in UDP_MODELS])


def test_upper_and_echo(spawn_server: Any, model: str) -> None:
    server = spawn_server("upper", model, udp=True)
    with UdpClient(*server.address) as client:
        assert client.request(b"hello") == b"HELLO"
        assert client.request("并发".encode()) == "并发".encode()
        assert client.request(b"") == b""


def test_thousand_datagrams_from_twenty_clients(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model, udp=True)

    def run(client_id: int) -> int:
        good = 0
        with UdpClient(*server.address) as client:
            for i in range(50):
                message = b"%d:%d" % (client_id, i)
                if client.request(message, timeout=0.5, retries=5) == message:
                    good += 1
        return good

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert sum(pool.map(run, range(20))) == 1000


def test_65000_byte_datagram(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model, udp=True)
    payload = bytes(range(256)) * 253 + b"x" * 232
    assert len(payload) == 65000
    with UdpClient(*server.address) as client:
        assert client.request(payload) == payload


def test_datagram_over_limit_is_dropped_and_counted(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model, udp=True, max_datagram_size=1000)
    with UdpClient(*server.address) as client:
        with pytest.raises(Timeout):
            client.request(b"y" * 1001, timeout=0.3, retries=1)
        assert client.request(b"y" * 1000) == b"y" * 1000
    server.signal(10)  # SIGUSR1: stats
    deadline = time.monotonic() + 5
    while "dropped=2" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert "more than max_datagram_size=1000 bytes" in server.log()


def test_handler_exception_drops_only_that_reply(spawn_server: Any, model: str) -> None:
    server = spawn_server("bingfa_testapps:fragile", model, udp=True)
    with UdpClient(*server.address) as client:
        with pytest.raises(Timeout):
            client.request(b"boom", timeout=0.3, retries=0)
        assert client.request(b"fine") == b"fine"
    assert "RuntimeError: boom requested" in server.log()


def test_sleeps_overlap(spawn_server: Any, model: str) -> None:
    server = spawn_server("sleep", model, udp=True, threads=32)

    def run(_: int) -> bytes:
        with UdpClient(*server.address) as client:
            return client.request(b"300", timeout=5, retries=0)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert list(pool.map(run, range(20))) == [b"300"] * 20
    assert time.monotonic() - start < 2.0


def test_client_side_errors(spawn_server: Any, model: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with UdpClient("127.0.0.1", port) as client:
        with pytest.raises((NetworkError, Timeout)):  # ICMP unreachable, or silence
            client.request(b"nobody", timeout=0.2, retries=1)
        with pytest.raises(MessageTooLarge):
            client.request(b"z" * 70000)


def test_workers_share_the_socket(spawn_server: Any, model: str) -> None:
    """--udp --workers 2: worker processes (not the supervisor) answer from the shared socket."""
    import psutil

    server = spawn_server("bingfa_testapps:pid", model, udp=True, workers=2)
    workers = {p.pid for p in psutil.Process(server.pid).children()}
    assert len(workers) == 2
    with UdpClient(*server.address) as client:
        pids = {int(client.request(b"%d" % i, timeout=0.5, retries=5)) for i in range(200)}
    assert pids and pids <= workers
