"""One suite, run against every concurrency model (like uvicorn's parametrised protocol fixture).

Every server is a real ``bingfa serve`` child on 127.0.0.1 (see ``spawn_server`` in conftest);
clients are plain ``socket`` + ``struct`` where the wire format itself is under test, and
``bingfa.Client`` elsewhere. A new model is added to ``MODEL_PARAMS`` and must pass all of it.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import struct
import threading
import time
from typing import Any

import psutil
import pytest
from server_helpers import frame

from bingfa import Client, ConnectionClosed
from bingfa.server import MODELS
from bingfa.spawn import ServerProcess

MODEL_PARAMS = [pytest.param(m, id=m) for m in MODELS] + [
    pytest.param(f"{m}:workers=2", id=f"{m}-workers2")
    for m in ("thread", "threadpool", "asyncio", "gevent")
]

pytestmark = pytest.mark.parametrize("model", MODEL_PARAMS)


@pytest.fixture
def spawn_server(spawn_server: Any) -> Any:
    """The conftest factory, reading ``MODEL:workers=N`` params as ``--workers N``."""

    def start(app: str = "echo", model: str = "thread", **options: Any) -> ServerProcess:
        name, _, workers = model.partition(":workers=")
        if workers:
            options.setdefault("workers", int(workers))
        server: ServerProcess = spawn_server(app, name, **options)
        return server

    return start


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionClosed(f"EOF with {n} bytes still expected")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!I", recv_exact(sock, 4))
    return recv_exact(sock, size)


def connect(server: ServerProcess, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=timeout)
    return sock


def assert_serving(server: ServerProcess) -> None:
    """The server still answers a fresh client correctly."""
    with Client(*server.address, timeout=10) as client:
        assert client.request(b"still alive") == b"still alive"


def read_until_eof(sock: socket.socket, limit: float = 10.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


# --- basic behaviour -----------------------------------------------------------------------


def test_echo_and_upper_over_every_protocol(spawn_server: Any, model: str) -> None:
    for protocol in ("frame", "line", "raw"):
        server = spawn_server("upper", model, protocol=protocol)
        with Client(*server.address, protocol=protocol) as client:
            assert client.request(b"hello") == b"HELLO"
            assert client.request("并发 ok".encode()) == "并发 OK".encode()


def test_line_protocol_accepts_crlf(spawn_server: Any, model: str) -> None:
    server = spawn_server("upper", model, protocol="line")
    with connect(server) as sock:
        sock.sendall(b"one\r\ntwo\n")
        assert recv_exact(sock, 8) == b"ONE\nTWO\n"


def test_plain_struct_client_interoperates(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    with connect(server) as sock:
        for payload in (b"a", b"hello world", bytes(range(256)) * 10):
            sock.sendall(struct.pack("!I", len(payload)) + payload)
            assert recv_frame(sock) == payload


def test_zero_length_frame(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    with connect(server) as sock:
        sock.sendall(frame(b"") + frame(b"x"))
        assert recv_frame(sock) == b""
        assert recv_frame(sock) == b"x"


def test_byte_by_byte_split(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = frame(b"split me into bytes") + frame(b"second")
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        assert recv_frame(sock) == b"split me into bytes"
        assert recv_frame(sock) == b"second"


def test_thousand_frames_in_one_send(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    payloads = [b"message %d" % i for i in range(1000)]
    with connect(server) as sock:
        sock.sendall(b"".join(frame(p) for p in payloads))
        assert [recv_frame(sock) for _ in payloads] == payloads


def test_eight_mib_frame(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    payload = os.urandom(8 * 1024 * 1024)
    with connect(server, timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(frame(payload),))
        sender.start()  # send and receive at once: neither side's buffers can hold 8 MiB
        reply = recv_frame(sock)
        sender.join()
    assert reply == payload


def test_connection_context_state_is_per_connection(spawn_server: Any, model: str) -> None:
    server = spawn_server("bingfa_testapps:counter", model)
    name = model.partition(":")[0].encode()
    with Client(*server.address) as a, Client(*server.address) as b:
        assert a.request(b"") == b"1 " + name
        assert a.request(b"") == b"2 " + name
        assert b.request(b"") == b"1 " + name


def test_async_handler(spawn_server: Any, model: str) -> None:
    server = spawn_server("bingfa_testapps:async_upper", model)
    with Client(*server.address) as client:
        assert [client.request(b"x%d" % i) for i in range(20)] == [b"X%d" % i for i in range(20)]


def test_handler_returning_none_sends_nothing(spawn_server: Any, model: str) -> None:
    server = spawn_server("bingfa_testapps:silent", model)
    with connect(server, timeout=0.5) as sock:
        sock.sendall(frame(b"anything"))
        with pytest.raises(TimeoutError):
            sock.recv(10)


# --- concurrency ---------------------------------------------------------------------------


def test_hundred_clients_hundred_requests_each(spawn_server: Any, model: str) -> None:
    server = spawn_server("upper", model, threads=100)

    def run(client_id: int) -> int:
        good = 0
        with Client(*server.address, timeout=30) as client:
            for i in range(100):
                message = b"client %d request %d" % (client_id, i)
                if client.request(message) == message.upper():
                    good += 1
        return good

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(run, range(100)))
    assert results == [100] * 100


def test_fifty_sleeps_overlap(spawn_server: Any, model: str) -> None:
    """50 clients each asking for a 200 ms sleep finish in about one sleep, not fifty."""
    server = spawn_server("sleep", model, threads=64)
    clients = [Client(*server.address, timeout=30) for _ in range(50)]
    try:
        barrier = threading.Barrier(50)

        def run(client: Client) -> bytes:
            barrier.wait()
            return client.request(b"200")

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(run, clients))
        elapsed = time.monotonic() - start
    finally:
        for c in clients:
            c.close()
    assert replies == [b"200"] * 50
    assert elapsed < 2.0, f"50 × 200 ms sleeps took {elapsed:.2f}s: they did not overlap"


def test_blocking_handler_does_not_stall_others(spawn_server: Any, model: str) -> None:
    """A plain handler that blocks (time.sleep) holds up only its own client."""
    server = spawn_server("bingfa_testapps:blocking", model)
    with Client(*server.address) as slow, Client(*server.address) as quick:
        slow.send(b"1500")
        time.sleep(0.1)  # the slow request is now being handled
        start = time.monotonic()
        assert quick.request(b"0") == b"0"
        assert time.monotonic() - start < 1.0
        assert slow.recv() == b"1500"


# --- bad input and faults ------------------------------------------------------------------


def test_oversized_declared_length_closes_only_that_connection(
    spawn_server: Any, model: str
) -> None:
    server = spawn_server("echo", model, max_frame_size=1024)
    with Client(*server.address) as bystander, connect(server) as sock:
        assert bystander.request(b"before") == b"before"
        # A valid frame, then a header declaring 4 GiB - 1: the valid one is still answered.
        sock.sendall(frame(b"valid") + struct.pack("!I", 0xFFFFFFFF) + b"xx")
        assert read_until_eof(sock) == frame(b"valid")
        assert bystander.request(b"after") == b"after"
    assert_serving(server)
    deadline = time.monotonic() + 5
    while "exceeds max_frame_size=1024" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "declared frame length 4294967295 exceeds max_frame_size=1024" in server.log()


def test_garbage_closes_connection_with_logged_reason(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model, max_frame_size=65536)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        assert read_until_eof(sock) == b""
    assert_serving(server)
    assert "closing connection from" in server.log()


def test_handler_exception_closes_that_client_and_logs_traceback(
    spawn_server: Any, model: str
) -> None:
    server = spawn_server("bingfa_testapps:fragile", model)
    with Client(*server.address) as bystander, Client(*server.address) as victim:
        assert victim.request(b"fine") == b"fine"
        with pytest.raises(ConnectionClosed):
            victim.request(b"boom")
        assert bystander.request(b"unaffected") == b"unaffected"
    log = server.log()
    assert "handler bingfa_testapps:fragile failed" in log
    assert "RuntimeError: boom requested" in log


def test_requests_before_a_failing_one_are_answered(spawn_server: Any, model: str) -> None:
    server = spawn_server("bingfa_testapps:fragile", model)
    with connect(server) as sock:
        sock.sendall(frame(b"one") + frame(b"two") + frame(b"boom") + frame(b"never"))
        assert read_until_eof(sock) == frame(b"one") + frame(b"two")


def test_client_vanishing_mid_frame_is_quiet(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    for _ in range(20):
        sock = connect(server)
        sock.sendall(struct.pack("!I", 100) + b"only part")
        sock.close()
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(frame(b"x" * 100_000))
        sock.close()  # RST while the server may be replying
    assert_serving(server)
    log = server.log()
    assert "Traceback" not in log
    assert "ERROR" not in log


def test_half_close_still_gets_replies(spawn_server: Any, model: str) -> None:
    server = spawn_server("sleep", model)
    with connect(server) as sock:
        sock.sendall(b"".join(frame(b"%d" % (i * 10)) for i in range(5)))
        sock.shutdown(socket.SHUT_WR)
        data = read_until_eof(sock)
    assert data == b"".join(frame(b"%d" % (i * 10)) for i in range(5))


def test_slow_reader_cannot_grow_server_memory(spawn_server: Any, model: str) -> None:
    """A client that sends but never reads is held back by TCP backpressure, not buffered."""
    server = spawn_server("echo", model)
    proc = psutil.Process(server.pid)
    assert_serving(server)

    def rss() -> int:  # the server with its workers/children
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:  # a fork child that served its client and left
                continue
        return total

    rss_before = rss()
    chunk = frame(b"y" * (1 << 20))
    sent = 0
    with connect(server, timeout=2) as hog:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        try:
            for _ in range(200):  # 200 MiB offered
                hog.sendall(chunk)
                sent += 1
        except TimeoutError:
            pass
        assert sent < 200, "the server accepted 200 MiB from a client that never reads"
        assert_serving(server)  # others are still served meanwhile
        growth = rss() - rss_before
    assert growth < 64 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.0f} MiB"


# --- shutdown ------------------------------------------------------------------------------


def test_sigterm_closes_connections_and_exits_zero(spawn_server: Any, model: str) -> None:
    server = spawn_server("sleep", model)
    idle = [connect(server) for _ in range(5)]
    busy = Client(*server.address)
    busy.send(b"300")
    time.sleep(0.1)
    start = time.monotonic()
    try:
        server.signal(15)
        assert server.wait(10) == 0
        assert busy.recv() == b"300"  # the in-flight request was answered before closing
        for sock in idle:
            assert read_until_eof(sock, 5) == b""
    finally:
        busy.close()
        for sock in idle:
            sock.close()
    assert time.monotonic() - start < 5
    assert "stopped sleep" in server.log()


def test_sigint_exits_zero(spawn_server: Any, model: str) -> None:
    server = spawn_server("echo", model)
    assert_serving(server)
    server.signal(2)
    assert server.wait(10) == 0


def test_sigterm_answers_a_request_still_unread(spawn_server: Any, model: str) -> None:
    """A request that arrived while its connection was busy, and still waits unread in the
    kernel at SIGTERM, is answered too — shutting the socket for reading would drop it."""
    server = spawn_server("sleep", model)
    with Client(*server.address) as client:
        client.send(b"400")
        time.sleep(0.15)  # the first request is being handled
        client.send(b"1")  # waits in the kernel buffer behind it
        time.sleep(0.05)
        server.signal(15)
        assert client.recv() == b"400"
        assert client.recv() == b"1"
    assert server.wait(10) == 0
