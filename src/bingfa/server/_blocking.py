"""Shared machinery of the models that serve a connection with blocking socket calls.

``thread``, ``threadpool`` and ``fork`` run :func:`serve_connection` in an OS thread or a child
process, ``gevent`` in a greenlet (its sockets are cooperative). The accept loop of the
thread and fork models lives in :class:`BlockingServer`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeAlias

from bingfa.apps import Context, SyncHandler
from bingfa.errors import ProtocolError
from bingfa.server._base import (
    RECV_SIZE,
    BaseServer,
    ConnStats,
    close_wakeup_pair,
    has_unread,
    shutdown_socket,
    stop_reading,
)

log = logging.getLogger("bingfa.server")

_ACCEPT_BACKOFF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

HandshakeGuard: TypeAlias = Callable[[float], AbstractContextManager[object]]
"""``guard(seconds)``: a context manager that raises an ``OSError`` in the block it guards once
``seconds`` have passed (see :func:`_handshake`)."""

WAKE_STOP = b"x"
WAKE_STATS = b"s"


def serve_connection(
    server: BaseServer,
    call: SyncHandler,
    sock: socket.socket,
    peer: Any,
    conn: ConnStats | None = None,
    since: float | None = None,
    handshake_guard: HandshakeGuard | None = None,
) -> None:
    """Serve one connection with blocking calls until the peer closes or misbehaves.

    Requests are answered in order; replies to requests that arrived together are sent in one
    ``sendall``. A handler exception or a protocol error is logged and closes this connection
    only (after answering the complete requests that came before it). Backpressure is natural:
    while ``sendall`` blocks on a client that does not read, nothing more is read from it.

    With ``config.idle_timeout`` the connection is closed once it completes no request for
    that long (a slowloris client trickling bytes does not reset the clock). With
    ``config.request_timeout`` the running request's start time is published in ``conn`` for
    the server's watchdog. ``since`` (a ``time.monotonic()`` value) starts the idle clock
    earlier than now — the thread pool passes the accept time, so a slowloris connection that
    already waited in its queue is dropped at once. Counts into ``conn`` and ``server.stats``.

    With TLS the handshake comes first, under the same idle clock and within
    ``config.handshake_timeout`` (see :func:`_handshake`); ``handshake_guard`` enforces that
    deadline where the socket's own timeout is per read rather than total (gevent).
    Closes ``sock`` before returning; never raises.
    """
    if conn is None:
        conn = ConnStats(peer, sock)
    if server.draining and not has_unread(sock):
        sock.close()  # shutting down and nothing was asked on it yet (a queued connection)
        return
    stats = server.stats
    now = time.monotonic
    # The idle clock starts before the handshake: a TLS client is held to the same clock as a
    # plaintext one, the handshake counting as part of its first request.
    last_request = now() if since is None else since
    if server.ssl_context is not None:
        tls = _handshake(server, sock, peer, last_request, handshake_guard)
        if tls is None:
            return
        if server.draining and not tls.pending() and not has_unread(tls):
            tls.close()  # shutting down: the handshake was all this connection had sent
            return
        sock = conn.sock = tls
    stats.opened(conn)
    codec = server.new_codec()
    ctx = Context(peer, server.model)
    feed = codec.feed
    encode = codec.encode
    recv = sock.recv
    sendall = sock.sendall
    send = sock.send
    idle = server.config.idle_timeout
    timed = server.config.request_timeout is not None
    if idle is not None:
        # settimeout(0) would mean non-blocking: keep a small positive floor.
        sock.settimeout(max(last_request + idle - now(), 0.001))
    try:
        while True:
            try:
                data = recv(RECV_SIZE)
            except TimeoutError:
                assert idle is not None
                left = last_request + idle - now()
                if left <= 0:
                    log.info("closing %s: no complete request for %.1fs (idle_timeout)", peer, idle)
                    return
                sock.settimeout(max(left, 0.001))
                continue
            except OSError as exc:  # reset by the peer, or shut down by our own shutdown()
                log.debug("connection from %s ended: %s", peer, exc)
                return
            if not data:
                if codec.pending:
                    log.info(
                        "%s closed the connection mid-message (%d bytes discarded)",
                        peer,
                        codec.pending,
                    )
                return
            conn.bytes_in += len(data)
            fault: ProtocolError | None = None
            try:
                messages = feed(data)
            except ProtocolError as exc:
                fault, messages = exc, exc.decoded
            if not messages:
                if fault is not None:
                    log.warning("closing connection from %s: %s", peer, fault.reason)
                    stats.error()
                    return
                continue
            if fault is None and not timed and len(messages) == 1:
                # The request/response fast path: one request, one reply; no list, no join.
                try:
                    reply = call(messages[0], ctx)
                    conn.requests += 1
                    out = None if reply is None else encode(reply)
                except Exception:
                    stats.error()
                    log.exception("handler %s failed for %s; closing", server.app.name, peer)
                    return
                if out is not None:
                    # One send() usually takes a small reply whole; sendall() only for the rest.
                    # (gevent's sendall is Python code with a getsockopt() syscall per call.)
                    sent = send(out)
                    if sent != len(out):
                        sendall(memoryview(out)[sent:])
                    conn.bytes_out += len(out)
                if server.draining and not has_unread(sock):
                    return  # shutting down: answered all that was asked
                if idle is not None:
                    last_request = now()
                    sock.settimeout(idle)
                continue
            replies: list[bytes] = []
            try:
                for message in messages:
                    if timed:
                        conn.started = now()
                    reply = call(message, ctx)
                    conn.requests += 1
                    if reply is not None:
                        replies.append(encode(reply))
            except Exception:
                stats.error()
                if conn.abandoned:
                    return  # the watchdog already logged and closed it
                log.exception("handler %s failed for %s; closing", server.app.name, peer)
                if replies:
                    sendall(b"".join(replies))
                return
            finally:
                conn.started = 0.0
            if conn.abandoned:
                return
            if replies:
                out = replies[0] if len(replies) == 1 else b"".join(replies)
                sendall(out)
                conn.bytes_out += len(out)
            if fault is not None:
                log.warning("closing connection from %s: %s", peer, fault.reason)
                stats.error()
                return
            if server.draining and not has_unread(sock):
                return
            if idle is not None:
                last_request = now()
                sock.settimeout(idle)
    except OSError as exc:  # sendall to a peer that vanished, or that stopped reading
        log.debug("connection from %s ended while sending: %s", peer, exc)
    finally:
        stats.closed(conn)
        sock.close()


def _handshake(
    server: BaseServer,
    sock: socket.socket,
    peer: Any,
    opened: float,
    guard: HandshakeGuard | None = None,
) -> ssl.SSLSocket | None:
    """Run the server side of a TLS handshake on ``sock``, accepted at ``opened`` (monotonic).

    Clocks: the handshake must be over within ``handshake_timeout`` of ``opened``, and within
    ``idle_timeout`` of it (the idle clock runs from accept for TLS as for plaintext). Under
    the thread pool the clock runs while a connection waits for a worker, so a client that has
    sent nothing by its deadline is shed without costing a worker anything; one whose bytes
    already wait gets a full window from the moment a worker starts on it (the queue, not the
    client, took the time). Either way the handshake holds its thread at most that window.

    Two phases. Until the client's first byte, the thread waits on ``sock`` itself (a peek), so
    shutdown's ``SHUT_RD`` on the connection ends the wait at once, as for an idle plaintext
    connection. Then the handshake proper runs to completion or to the deadline — a client that
    is talking is not cut off by shutdown (it may be about to send a request). CPython's
    ``do_handshake`` takes the socket timeout as a total deadline; where it is per read
    (gevent), ``guard(seconds)`` wraps the handshake and must raise an ``OSError`` (such as
    ``TimeoutError``) once the seconds have passed.

    Returns the TLS socket, or None after logging why the handshake failed (bad or missing
    client certificate, a plaintext client, a timeout, a reset; one ended by shutdown only at
    DEBUG). All its descriptors are closed then: the TLS socket's if the wrap succeeded
    (``wrap_socket`` detaches ``sock``), else ``sock``'s. Never raises.
    """
    assert server.ssl_context is not None
    cfg = server.config
    window = cfg.handshake_timeout
    if cfg.idle_timeout is not None:
        window = min(window, cfg.idle_timeout)
    deadline = opened + window
    tls: ssl.SSLSocket | None = None
    reason: str
    try:
        if has_unread(sock):
            deadline = time.monotonic() + window
        else:
            _first_byte(sock, deadline, window)
        left = max(deadline - time.monotonic(), 0.001)  # a timeout of 0 means non-blocking
        sock.settimeout(left)
        tls = server.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with guard(left) if guard is not None else contextlib.nullcontext():
            tls.do_handshake()
        tls.settimeout(None)
        return tls
    except (OSError, ValueError) as exc:
        # A string, not the exception: keeping the exception in this frame would make a cycle
        # (exception -> traceback -> frame) holding the socket until the garbage collector ran.
        reason = str(getattr(exc, "reason", None) or exc)
    if server.draining:  # shutdown stopped reading from it, or it gave up meanwhile
        log.debug("TLS handshake with %s ended by shutdown: %s", peer, reason)
    else:
        log.warning("TLS handshake with %s failed: %s", peer, reason)
        server.stats.error()
    (sock if tls is None else tls).close()
    return None


def _first_byte(sock: socket.socket, deadline: float, window: float) -> None:
    """Wait until ``sock`` has a byte to read, leaving it unread; by ``deadline`` (monotonic).

    Raises:
        TimeoutError: nothing came by then (``window`` is the allowance, for the message).
        ConnectionAbortedError: end of stream first — the client left, or shutdown stopped
            reading from the connection.
        OSError: the connection failed (reset).
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"nothing received within {window:g}s of accept")
    sock.settimeout(left)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        raise TimeoutError(f"nothing received within {window:g}s of accept") from None
    if not first:
        raise ConnectionAbortedError("the connection closed before a TLS hello")


class BlockingServer(BaseServer):
    """Accept loop and connection bookkeeping shared by ``thread``, ``threadpool``, ``fork``.

    The accept loop waits in a selector on the listener and a wake-up socket, so shutdown from
    any thread or a signal handler is prompt. Accept errors that mean "out of resources"
    (EMFILE, ENFILE, ENOBUFS, ENOMEM) are logged and backed off, never fatal. The same loop
    logs stats on request (SIGUSR1, via the wake-up socket) and every ``stats_interval``, and
    runs the request-timeout watchdog.

    Subclasses implement :meth:`_dispatch`; they may override :meth:`_may_accept` (return False
    to leave connections in the backlog for now) and :meth:`_tick` (called on every wake-up,
    at least every ``_tick_interval`` seconds when that is set).
    """

    _tick_interval: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._wake_r.setblocking(False)
        self._conns: dict[socket.socket, threading.Thread | None] = {}
        self._conn_stats: dict[socket.socket, ConnStats] = {}
        self._conns_lock = threading.Lock()
        self._call = self.app.call_sync()

    def _wake(self) -> None:
        self._send_wake(WAKE_STOP)

    def _signal_wakeup_fd(self) -> int | None:
        return self._wake_w.fileno()

    def request_stats(self) -> None:
        """Ask the accept loop to log the stats (safe from a signal handler)."""
        self._send_wake(WAKE_STATS)

    def _send_wake(self, what: bytes) -> None:
        try:
            self._wake_w.send(what)
        except OSError:  # buffer full (already woken) or closed (already stopped)
            pass

    def _may_accept(self) -> bool:
        return True

    def _tick(self) -> None:
        pass

    def _timeouts(self) -> list[float]:
        """Seconds until each periodic duty is due; the selector waits for the nearest."""
        return []

    def _accept_loop(self, listener: socket.socket) -> None:
        """Accept until stopping, handing each connection to :meth:`_dispatch`."""
        listener.setblocking(False)
        cfg = self.config
        backoff = 0.0
        next_stats = time.monotonic() + cfg.stats_interval if cfg.stats_interval else None
        watchdog_period = (
            min(0.1, cfg.request_timeout / 4) if cfg.request_timeout is not None else None
        )
        next_watchdog = time.monotonic() + watchdog_period if watchdog_period else None
        resume_at = 0.0  # after an EMFILE-like accept error, leave the listener alone until then
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            accepting = False
            while not self.stopping:
                now = time.monotonic()
                want = now >= resume_at and self._may_accept()
                if want != accepting:
                    if want:
                        sel.register(listener, selectors.EVENT_READ)
                    else:
                        sel.unregister(listener)
                    accepting = want
                waits = [t - now for t in (next_stats, next_watchdog, resume_at or None) if t]
                waits += self._timeouts()
                if self._tick_interval is not None:
                    waits.append(self._tick_interval)
                events = sel.select(timeout=max(0.0, min(waits)) if waits else None)
                for key, _ in events:
                    if key.fileobj is self._wake_r:
                        self._read_wake()
                self._tick()
                now = time.monotonic()
                if next_stats is not None and now >= next_stats:
                    assert cfg.stats_interval
                    self.report_stats()
                    next_stats = now + cfg.stats_interval
                if next_watchdog is not None and now >= next_watchdog:
                    assert watchdog_period
                    self._check_request_timeouts(now)
                    next_watchdog = now + watchdog_period
                if accepting and any(key.fileobj is listener for key, _ in events):
                    backoff = self._accept_ready(listener, backoff)
                    resume_at = now + backoff if backoff else 0.0
        if self.owns_backlog:
            # Connections still in the listen backlog would be reset when the listener closes,
            # yet a client there may already have sent its request (a server slow to start, a
            # burst just before SIGTERM). Take them now: while draining, serve_connection
            # answers those with a request waiting and closes the others.
            self._accept_ready(listener, 0.0, final=True)
        self._close_wake_sockets()

    def _close_wake_sockets(self) -> None:
        """Close the wake-up socket pair, unregistering it as the signal wake-up fd first
        (:func:`~bingfa.server._base.close_wakeup_pair`)."""
        close_wakeup_pair(self._wake_r, self._wake_w)

    def _read_wake(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except OSError:
            return
        if WAKE_STATS in data:
            self.report_stats()

    def _accept_ready(self, listener: socket.socket, backoff: float, final: bool = False) -> float:
        """Accept every pending connection; return the new accept backoff (0 when fine).

        ``final``: the last sweep of the backlog at shutdown (runs although stopping)."""
        max_conns = self.config.max_connections
        while (final or not self.stopping) and self._may_accept():
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return 0.0
            except OSError as exc:
                if exc.errno not in _ACCEPT_BACKOFF:
                    raise
                backoff = min(max(backoff * 2, 0.01), 1.0)
                log.warning("accept failed (%s); retrying in %.2fs", exc.strerror, backoff)
                # The caller stops watching the listener until the backoff has passed.
                return backoff
            if max_conns is not None and len(self._conns) >= max_conns:
                self.refuse(conn, peer)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._dispatch(conn, peer)
        return 0.0

    def _check_request_timeouts(self, now: float) -> None:
        """Close connections whose running request exceeded ``request_timeout``."""
        limit = self.config.request_timeout
        assert limit is not None
        with self._conns_lock:
            running = list(self._conn_stats.values())
        for conn in running:
            started = conn.started
            if started and now - started > limit and not conn.abandoned:
                conn.abandoned = True
                log.warning(
                    "request from %s exceeded request_timeout=%ss; closing the connection "
                    "(the handler's thread runs on until it returns; its reply is discarded)",
                    conn.peer,
                    limit,
                )
                if conn.sock is not None:
                    shutdown_socket(conn.sock, socket.SHUT_RDWR)

    def _dispatch(self, conn: socket.socket, peer: Any) -> None:
        raise NotImplementedError

    def _serve_tracked(
        self, conn: socket.socket, peer: Any, accepted_at: float | None = None
    ) -> None:
        """Serve ``conn`` and keep it in the open-connection table meanwhile."""
        stats = ConnStats(peer, conn)
        with self._conns_lock:
            self._conn_stats[conn] = stats
        try:
            serve_connection(self, self._call, conn, peer, stats, accepted_at)
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
                self._conn_stats.pop(conn, None)

    def _close_connections(self, how: int) -> None:
        """Shut down every open connection (``SHUT_RD`` lets in-flight replies go out)."""
        with self._conns_lock:
            # Served connections by their current socket (a TLS one after the handshake),
            # queued ones (thread pool) by the accepted socket.
            socks = [c.sock for c in self._conn_stats.values() if c.sock is not None]
            socks += [s for s in self._conns if s not in self._conn_stats]
        for sock in socks:
            if how == socket.SHUT_RD:
                stop_reading(sock)
            else:
                shutdown_socket(sock, how)

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for ``threads`` to end: first gently, then by forcing their sockets shut."""
        self._close_connections(socket.SHUT_RD)
        deadline = time.monotonic() + self.config.graceful_timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self._close_connections(socket.SHUT_RDWR)
            for t in threads:
                t.join(1.0)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("%d connection threads still running at exit: %s", len(alive), alive)
