"""Clients for bingfa's protocols: :class:`Client` (blocking) and :class:`AsyncClient`.

Both wrap the same I/O-free codec as the servers. One client is one connection; requests on
it are answered in order. Neither is safe to share between threads/tasks without a lock.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from types import TracebackType

from bingfa.errors import (
    ClosedError,
    ConnectionClosed,
    MessageTooLarge,
    NetworkError,
    Timeout,
    UsageError,
)
from bingfa.protocol import DEFAULT_MAX_FRAME_SIZE, make_codec

__all__ = ["AsyncClient", "Client", "UdpClient", "client_ssl_context", "parse_address"]

_RECV = 65536


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into ``(host, port)``.

    Raises:
        UsageError: the text is not a valid address.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise UsageError(f"address {text!r} must be HOST:PORT")
        host, port_text = text, str(default_port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"address {text!r}: port {port_text!r} is not a number") from None
    if not host or not 0 < port <= 65535:
        raise UsageError(f"address {text!r} must be HOST:PORT with a port in 1..65535")
    return host, port


def client_ssl_context(
    tls: bool | ssl.SSLContext | None,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> ssl.SSLContext | None:
    """The client TLS context for ``tls``: None (plain TCP), an SSLContext (used as is), or
    True: a default context that verifies the server against ``cafile`` (or the system CAs),
    presenting ``certfile``/``keyfile`` as a client certificate for mutual TLS.

    Raises:
        UsageError: a file cannot be loaded.
    """
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not tls:
        if cafile or certfile:
            raise UsageError("cafile/certfile given without tls=True")
        return None
    try:
        context = ssl.create_default_context(cafile=cafile)
        if certfile:
            context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS files: {exc}") from exc
    return context


def _connect_error(host: str, port: int, exc: OSError) -> NetworkError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return NetworkError(
            f"TLS handshake with {host}:{port} failed: certificate verify failed: "
            f"{exc.verify_message}",
            exc.errno,
        )
    if isinstance(exc, ssl.SSLError):
        return NetworkError(
            f"TLS handshake with {host}:{port} failed: {exc.reason or exc}", exc.errno
        )
    return NetworkError(f"cannot connect to {host}:{port}: {exc.strerror or exc}", exc.errno)


def _closed_message(pending: int) -> str:
    if pending:
        return f"server closed the connection mid-reply ({pending} bytes of a reply received)"
    return (
        "server closed the connection before replying "
        "(its handler failed, the request broke the protocol, or it is shutting down)"
    )


class Client:
    """A blocking client: ``with Client(host, port) as c: reply = c.request(b"hi")``.

    Args:
        host, port: the server.
        protocol: ``frame`` (default), ``line`` or ``raw``. With ``raw`` a reply is whatever one
            read returns; use it only for small messages.
        timeout: seconds for connecting and for each reply; None waits forever.
        max_frame_size: largest message sent or accepted.
        tls: True (verify the server against ``cafile`` or the system CAs) or an
            ``ssl.SSLContext``; see :func:`client_ssl_context`. ``cafile``, ``certfile``,
            ``keyfile`` go with ``tls=True`` (certfile: a client certificate for mutual TLS).
        server_hostname: the name to verify the server's certificate against (default: host).

    Raises (from the constructor, which connects):
        NetworkError: the connection was refused or failed, or the TLS handshake failed
            (``__cause__`` is the OSError / ssl.SSLError).
        Timeout: connecting took longer than ``timeout``.
        UsageError: bad protocol or size.

    The client owns its socket; :meth:`close` (or leaving the ``with`` block) closes it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: str = "frame",
        timeout: float | None = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        tls: bool | ssl.SSLContext | None = None,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self._codec = make_codec(protocol, max_frame_size)
        self.address = (host, port)
        self.timeout = timeout
        self._replies: deque[bytes] = deque()
        context = client_ssl_context(tls, cafile, certfile, keyfile)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if context is not None:
                try:
                    sock = context.wrap_socket(sock, server_hostname=server_hostname or host)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise Timeout(
                f"connecting to {host}:{port} timed out after {timeout}s", timeout
            ) from exc
        except OSError as exc:
            raise _connect_error(host, port, exc) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock: socket.socket | None = sock

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ClosedError("this client is closed")
        return self._sock

    def send(self, payload: bytes) -> None:
        """Send one request without waiting for its reply (for pipelining; see :meth:`recv`).

        Raises:
            MessageTooLarge: payload over ``max_frame_size``. ClosedError, NetworkError, Timeout.
        """
        self._sendall(self._codec.encode(payload))

    def _sendall(self, data: bytes) -> None:
        sock = self._socket()
        try:
            sock.sendall(data)
        except TimeoutError as exc:
            raise Timeout(f"sending to {self.address} timed out", self.timeout) from exc
        except OSError as exc:
            raise NetworkError(
                f"sending to {self.address} failed: {exc.strerror or exc}", exc.errno
            ) from exc

    def recv(self) -> bytes:
        """Return the next reply, waiting up to ``timeout`` for each read.

        Raises:
            ConnectionClosed: the server closed before a whole reply arrived.
            ProtocolError: the server's bytes break the protocol.
            Timeout, NetworkError, ClosedError.
        """
        replies = self._replies
        sock = self._socket()
        while not replies:
            try:
                data = sock.recv(_RECV)
            except TimeoutError as exc:
                raise Timeout(
                    f"no reply from {self.address} within {self.timeout}s", self.timeout
                ) from exc
            except OSError as exc:
                raise NetworkError(
                    f"receiving from {self.address} failed: {exc.strerror or exc}", exc.errno
                ) from exc
            if not data:
                raise ConnectionClosed(_closed_message(self._codec.pending))
            replies.extend(self._codec.feed(data))
        return replies.popleft()

    def request(self, payload: bytes) -> bytes:
        """Send ``payload`` and return its reply. Raises what :meth:`send`/:meth:`recv` raise."""
        self.send(payload)
        return self.recv()

    def request_many(self, payloads: Iterable[bytes]) -> list[bytes]:
        """Pipeline: send every payload in one write, then return the replies in order."""
        encode = self._codec.encode
        frames = [encode(p) for p in payloads]
        self._sendall(b"".join(frames))
        return [self.recv() for _ in frames]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of :class:`Client`: ``async with AsyncClient(host, port) as c: ...``.

    Connects on ``await client.connect()`` or on entering ``async with``. Raises the same errors
    as :class:`Client`. Owns its stream; :meth:`close` closes it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: str = "frame",
        timeout: float | None = 10.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        tls: bool | ssl.SSLContext | None = None,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self._codec = make_codec(protocol, max_frame_size)
        self.address = (host, port)
        self.timeout = timeout
        self._ssl = client_ssl_context(tls, cafile, certfile, keyfile)
        self._server_hostname = server_hostname
        self._replies: deque[bytes] = deque()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection. Raises NetworkError or Timeout."""
        host, port = self.address
        try:
            async with asyncio.timeout(self.timeout):
                if self._ssl is None:
                    self._reader, self._writer = await asyncio.open_connection(host, port)
                else:
                    self._reader, self._writer = await asyncio.open_connection(
                        host, port, ssl=self._ssl, server_hostname=self._server_hostname or host
                    )
        except TimeoutError as exc:
            raise Timeout(
                f"connecting to {host}:{port} timed out after {self.timeout}s", self.timeout
            ) from exc
        except OSError as exc:
            raise _connect_error(host, port, exc) from exc

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise ClosedError("this client is not connected (closed, or connect() not awaited)")
        return self._reader, self._writer

    async def send(self, payload: bytes) -> None:
        """Send one request without waiting for its reply."""
        _, writer = self._streams()
        writer.write(self._codec.encode(payload))
        try:
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except TimeoutError as exc:
            raise Timeout(f"sending to {self.address} timed out", self.timeout) from exc
        except OSError as exc:
            raise NetworkError(f"sending to {self.address} failed: {exc}", exc.errno) from exc

    async def recv(self) -> bytes:
        """Return the next reply (see :meth:`Client.recv`)."""
        reader, _ = self._streams()
        while not self._replies:
            try:
                async with asyncio.timeout(self.timeout):
                    data = await reader.read(_RECV)
            except TimeoutError as exc:
                raise Timeout(
                    f"no reply from {self.address} within {self.timeout}s", self.timeout
                ) from exc
            except OSError as exc:
                raise NetworkError(
                    f"receiving from {self.address} failed: {exc}", exc.errno
                ) from exc
            if not data:
                raise ConnectionClosed(_closed_message(self._codec.pending))
            self._replies.extend(self._codec.feed(data))
        return self._replies.popleft()

    async def request(self, payload: bytes) -> bytes:
        """Send ``payload`` and return its reply."""
        await self.send(payload)
        return await self.recv()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def __aenter__(self) -> AsyncClient:
        if self._writer is None:
            await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class UdpClient:
    """A UDP client: ``UdpClient(host, port).request(payload, timeout=1.0, retries=3)``.

    UDP loses datagrams, so :meth:`request` retries. Matching replies to requests: a socket
    has at most one request outstanding, and it is *connected* to the server, so only the
    server's datagrams reach it. A retry goes out on a **new** socket (a new source port)
    while the earlier attempts' sockets keep listening: a late reply to an earlier attempt is
    accepted as the reply (requests are assumed idempotent), and once the request is answered
    every attempt socket is closed, so a late duplicate can never be taken for the reply to a
    later request. Without a retry, the socket is reused for the next request.

    The client owns its sockets; :meth:`close` (or ``with``) closes them. Not thread-safe.
    """

    def __init__(self, host: str, port: int, *, max_datagram_size: int = 65507) -> None:
        self.address = (host, port)
        self.max_datagram_size = max_datagram_size
        self._sock: socket.socket | None = None
        self._closed = False

    def _new_socket(self) -> socket.socket:
        host, port = self.address
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(info[0], socket.SOCK_DGRAM)
            sock.connect(info[4])
        except OSError as exc:
            raise NetworkError(f"cannot reach {host}:{port} over UDP: {exc}", exc.errno) from exc
        return sock

    def request(self, payload: bytes, timeout: float = 1.0, retries: int = 3) -> bytes:
        """Send ``payload`` as one datagram and return the reply datagram.

        Args:
            timeout: seconds to wait for a reply before each retry.
            retries: how many times to resend after a timeout (0: send once).

        Raises:
            MessageTooLarge: payload over ``max_datagram_size``.
            Timeout: no reply after ``retries + 1`` attempts (``timeout`` each).
            NetworkError: the OS reported an error (e.g. ICMP port unreachable on every try).
            ClosedError: the client is closed.
        """
        if self._closed:
            raise ClosedError("this client is closed")
        if len(payload) > self.max_datagram_size:
            raise MessageTooLarge(len(payload), self.max_datagram_size)
        if retries < 0 or timeout <= 0:
            raise UsageError("retries must be >= 0 and timeout > 0")
        attempts: list[socket.socket] = []
        last_error: OSError | None = None
        try:
            for _ in range(retries + 1):
                sock = self._sock if (self._sock is not None and not attempts) else None
                if sock is None:
                    sock = self._new_socket()
                self._sock = None
                attempts.append(sock)
                try:
                    sock.send(payload)
                except OSError as exc:
                    last_error = exc
                ready, _, _ = select.select(attempts, [], [], timeout)
                for s in ready:
                    try:
                        reply = s.recv(65536)
                    except OSError as exc:  # e.g. ECONNREFUSED from an ICMP unreachable
                        last_error = exc
                        continue
                    if len(attempts) == 1:
                        self._sock = s  # no retry happened: safe to reuse
                        attempts.remove(s)
                    return reply
        finally:
            for s in attempts:
                s.close()
        host, port = self.address
        if last_error is not None:
            raise NetworkError(
                f"no reply from {host}:{port} over UDP after {retries + 1} tries: {last_error}",
                last_error.errno,
            ) from last_error
        raise Timeout(
            f"no reply from {host}:{port} over UDP after {retries + 1} tries of {timeout}s", timeout
        )

    def close(self) -> None:
        """Close the client (idempotent)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> UdpClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
