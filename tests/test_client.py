"""Client errors say who is at fault."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from bingfa import (
    AsyncClient,
    Client,
    ClosedError,
    ConnectionClosed,
    MessageTooLarge,
    NetworkError,
    ProtocolError,
    Timeout,
    UsageError,
)
from bingfa.client import parse_address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def peer() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listening socket whose behaviour each test scripts by hand."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    yield listener, accepted
    for s in accepted:
        s.close()
    listener.close()


def accept_then(
    listener: socket.socket, accepted: list[socket.socket], reply: bytes | None
) -> None:
    def run() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        conn.recv(1024)
        if reply is None:
            conn.close()
        else:
            conn.sendall(reply)

    threading.Thread(target=run, daemon=True).start()


def test_refused_is_network_error_with_cause() -> None:
    with pytest.raises(NetworkError) as info:
        Client("127.0.0.1", free_port(), timeout=2)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert info.value.errno is not None


def test_no_reply_is_timeout(peer: tuple[socket.socket, list[socket.socket]]) -> None:
    listener, _ = peer
    with Client(*listener.getsockname(), timeout=0.2) as c:
        with pytest.raises(Timeout) as info:
            c.request(b"hello")
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.2


def test_server_close_is_connection_closed(peer: tuple[socket.socket, list[socket.socket]]) -> None:
    listener, accepted = peer
    accept_then(listener, accepted, None)
    with Client(*listener.getsockname()) as c, pytest.raises(ConnectionClosed):
        c.request(b"hello")


def test_bad_reply_is_protocol_error(peer: tuple[socket.socket, list[socket.socket]]) -> None:
    listener, accepted = peer
    accept_then(listener, accepted, b"\xff\xff\xff\xff")
    with Client(*listener.getsockname(), max_frame_size=1000) as c, pytest.raises(ProtocolError):
        c.request(b"hello")


def test_use_after_close_is_closed_error(peer: tuple[socket.socket, list[socket.socket]]) -> None:
    listener, _ = peer
    c = Client(*listener.getsockname())
    c.close()
    c.close()
    with pytest.raises(ClosedError):
        c.request(b"x")


def test_oversized_request_is_usage_error(peer: tuple[socket.socket, list[socket.socket]]) -> None:
    listener, _ = peer
    with Client(*listener.getsockname(), max_frame_size=4) as c:
        with pytest.raises(MessageTooLarge):
            c.request(b"12345")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8086", ("::1", 8086)), ("h:1", ("h", 1))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["nohost", ":80", "h:0", "h:port", "h:99999"])
def test_parse_bad_address(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text)


def test_async_client_errors_and_roundtrip(
    peer: tuple[socket.socket, list[socket.socket]],
) -> None:
    listener, accepted = peer
    accept_then(listener, accepted, b"\x00\x00\x00\x02ok")

    async def main() -> None:
        async with AsyncClient(*listener.getsockname()) as c:
            assert await c.request(b"hi") == b"ok"
        with pytest.raises(ClosedError):
            await c.request(b"again")
        with pytest.raises(NetworkError):
            await AsyncClient("127.0.0.1", free_port()).connect()
        async with AsyncClient(*listener.getsockname(), timeout=0.2) as slow:
            with pytest.raises(Timeout):
                await slow.request(b"nobody answers")

    asyncio.run(main())
