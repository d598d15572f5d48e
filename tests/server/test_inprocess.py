"""Servers used as a library, in this process: lifecycle and nothing left behind."""

from __future__ import annotations

import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme

import bingfa
from bingfa import Client, ClosedError, UsageError
from bingfa.server import BaseServer, create_server

IN_PROCESS_MODELS = ["thread", "threadpool", "asyncio"]  # gevent needs a patched process


def run_in_thread(server: BaseServer) -> threading.Thread:
    server.listen()
    thread = threading.Thread(target=server.serve_forever, name="test-serve")
    thread.start()
    return thread


@pytest.fixture
def baseline_threads() -> Iterator[set[threading.Thread]]:
    yield set(threading.enumerate())


@pytest.mark.parametrize("model", IN_PROCESS_MODELS)
def test_shutdown_leaves_no_thread_behind(
    model: str, baseline_threads: set[threading.Thread]
) -> None:
    server = create_server("sleep", model, port=0, threads=16)
    thread = run_in_thread(server)
    clients = [Client(*server.address) for _ in range(10)]
    try:
        for c in clients:
            assert c.request(b"1") == b"1"
        clients[0].send(b"200")  # in flight during shutdown
        time.sleep(0.05)
        server.shutdown()
        thread.join(10)
        assert not thread.is_alive()
        assert clients[0].recv() == b"200"
    finally:
        for c in clients:
            c.close()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - baseline_threads and time.monotonic() < deadline:
        time.sleep(0.02)
    leftover = set(threading.enumerate()) - baseline_threads
    assert not leftover, f"threads left behind: {leftover}"


@pytest.mark.parametrize("model", IN_PROCESS_MODELS)
def test_finished_connection_threads_do_not_accumulate(model: str) -> None:
    server = create_server("echo", model, port=0, threads=4)
    thread = run_in_thread(server)
    try:
        with Client(*server.address) as c:  # the model's own threads are running after this
            c.request(b"warm-up")
        time.sleep(0.1)
        before = threading.active_count()
        for i in range(200):
            with Client(*server.address) as c:
                assert c.request(b"%d" % i) == b"%d" % i
        time.sleep(0.2)
        assert threading.active_count() <= before
    finally:
        server.shutdown()
        thread.join(10)


def test_shutdown_before_serving_returns_at_once() -> None:
    server = create_server("echo", "thread", port=0)
    server.shutdown()
    start = time.monotonic()
    server.serve_forever()
    assert time.monotonic() - start < 1


def test_server_cannot_be_restarted() -> None:
    server = create_server("echo", "asyncio", port=0)
    server.shutdown()
    server.serve_forever()
    with pytest.raises(ClosedError):
        server.serve_forever()


def test_address_before_listen_is_usage_error() -> None:
    server = create_server("echo", "thread", port=0)
    with pytest.raises(UsageError, match="listen"):
        _ = server.address


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "nope"}, "unknown model"),
        ({"protocol": "smoke"}, "unknown protocol"),
        ({"threads": 0}, "threads"),
        ({"port": 70000}, "port"),
        ({"loop": "tokio"}, "loop"),
    ],
)
def test_bad_options_are_usage_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_server("echo", **kwargs)  # type: ignore[arg-type]


def test_gevent_model_refuses_unpatched_process() -> None:
    with pytest.raises(UsageError, match="monkey-patched"):
        create_server("echo", "gevent", port=0)


def test_port_in_use_is_network_error() -> None:
    first = create_server("echo", "thread", port=0)
    _, port = first.listen()
    try:
        with pytest.raises(bingfa.NetworkError, match="cannot listen"):
            create_server("echo", "thread", port=port).listen()
    finally:
        first.shutdown()
        first.serve_forever()


def test_plain_function_handler_in_process() -> None:
    server = create_server(lambda req: req[::-1], "asyncio", port=0)
    thread = run_in_thread(server)
    try:
        with Client(*server.address) as c:
            assert c.request(b"abc") == b"cba"
    finally:
        server.shutdown()
        thread.join(10)


def test_ipv6_loopback() -> None:
    try:
        server = create_server("upper", "thread", host="::1", port=0)
        server.listen()
    except bingfa.NetworkError:
        pytest.skip("no IPv6 loopback here")
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with Client("::1", server.address[1]) as c:
            assert c.request(b"v6") == b"V6"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.parametrize("model", ["thread", "threadpool"])
def test_shutdown_answers_requests_still_in_the_listen_backlog(model: str) -> None:
    """A client accepted by the kernel but not yet by the server (a server slow to start, or a
    burst just before SIGTERM) that already sent its request is answered, not reset; a
    connection that sent nothing is closed."""
    server = create_server("upper", model, port=0, threads=4)
    server.listen()
    waiting = Client(*server.address)
    silent = socket.create_connection(server.address, timeout=5)
    try:
        waiting.send(b"queued")
        time.sleep(0.05)  # the request reaches the server's kernel buffer
        server.shutdown()  # before the accept loop ever runs
        thread = threading.Thread(target=server.serve_forever, name="test-serve")
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
        assert waiting.recv() == b"QUEUED"
        assert silent.recv(16) == b""  # closed in order, not reset
    finally:
        waiting.close()
        silent.close()


@pytest.mark.parametrize("model", ["thread", "threadpool"])
def test_shutdown_closes_an_idle_tls_connection_from_the_backlog(
    model: str, tmp_path: pathlib.Path
) -> None:
    """Taken from the backlog at shutdown, a TLS client that only shook hands is closed at
    once, not held until the graceful timeout."""
    ca = trustme.CA()
    cert = str(tmp_path / "server.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert)
    server = create_server("upper", model, port=0, threads=4, certfile=cert, graceful_timeout=20)
    server.listen()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    raw = socket.create_connection(server.address, timeout=10)
    outcome: list[object] = []

    def handshake_then_wait() -> None:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                outcome.append(tls.recv(16))
        except (OSError, ssl.SSLError) as exc:
            outcome.append(exc)

    client = threading.Thread(target=handshake_then_wait)
    client.start()
    try:
        time.sleep(0.05)  # the ClientHello waits in the backlogged connection
        server.shutdown()
        start = time.monotonic()
        server.serve_forever()
        took = time.monotonic() - start
        client.join(10)
        assert outcome == [b""], outcome  # the handshake completed, then an orderly close
        assert took < 5
    finally:
        raw.close()
