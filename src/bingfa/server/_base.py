"""The server skeleton every concurrency model plugs into.

A model is one small class: it subclasses :class:`BaseServer` and implements
:meth:`BaseServer._serve` (run until asked to stop) and :meth:`BaseServer._wake` (make ``_serve``
notice the stop request from any thread or a signal handler). Listening-socket creation,
configuration, logging and the connection count live here, once.
"""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import signal
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bingfa.apps import App
from bingfa.errors import ClosedError, NetworkError, UsageError
from bingfa.protocol import DEFAULT_MAX_FRAME_SIZE, PROTOCOLS, Codec, make_codec

__all__ = ["BaseServer", "ConnStats", "ServerConfig", "ServerStats", "make_listener"]

log = logging.getLogger("bingfa.server")

RECV_SIZE = 65536
"""Bytes asked of the kernel per read: big enough for 1000 pipelined small frames at once."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Options shared by every model.

    Attributes:
        host, port: where to listen; port 0 picks a free port (see ``BaseServer.address``).
        protocol: ``frame``, ``line`` or ``raw`` (see :mod:`bingfa.protocol`).
        max_frame_size: largest request accepted; a larger declared length closes the connection.
        threads: worker threads — the pool size of ``threadpool``, and of the thread pool that
            runs blocking handlers under ``asyncio``.
        loop: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``; asyncio model only.
        backlog: the listen backlog.
        graceful_timeout: at shutdown, seconds in-flight requests get to finish before their
            connections are forced closed.
        max_connections: open connections allowed per process; more are accepted and closed at
            once with a TCP reset (the client sees "connection reset"). None: no limit.
        max_children: ``fork`` model: child processes alive at once; further connections wait
            in the backlog until a child exits. None: no limit.
        idle_timeout: a connection that completes no request for this many seconds is closed
            (protects thread models from slowloris). None: never.
        request_timeout: a handler running longer is abandoned and its connection closed (see
            docs/servers.md for what happens to the handler under each model). None: never.
        offload: where event-loop models (asyncio, gevent) run plain handlers that are not
            ``kind="fast"``: ``thread`` (a thread pool, default), ``process`` (``kind="cpu"``
            handlers go to a process pool), or ``none`` (inline: the handler must not block).
        offload_workers: size of the process pool for ``offload="process"``; None: one per core.
        stats_interval: log the counters every this many seconds. None: never.
        listen_fd: serve on this inherited, already-listening socket instead of binding
            (used by the supervisor of worker processes).
        reuse_port: with worker processes, each worker listens on its own ``SO_REUSEPORT``
            socket (the kernel spreads connections evenly by hash) instead of all accepting
            from one shared socket (see docs/workers.md for the trade-off). TCP only.
        udp: serve datagrams instead of TCP connections (models thread, gevent, asyncio).
        max_datagram_size: UDP only: larger datagrams are counted, logged and dropped.
        certfile, keyfile: TCP only: serve TLS with this certificate chain and private key.
        ca_certs: with TLS, require client certificates signed by these CAs (mutual TLS).
        handshake_timeout: seconds a TLS client gets to complete its handshake.
    """

    host: str = "127.0.0.1"
    port: int = 8086
    protocol: str = "frame"
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    threads: int = 64
    loop: str = "auto"
    backlog: int = 1024
    graceful_timeout: float = 30.0
    max_connections: int | None = None
    max_children: int | None = None
    idle_timeout: float | None = None
    request_timeout: float | None = None
    offload: str = "thread"
    offload_workers: int | None = None
    stats_interval: float | None = None
    listen_fd: int | None = None
    reuse_port: bool = False
    udp: bool = False
    max_datagram_size: int = 65507
    certfile: str | None = None
    keyfile: str | None = None
    ca_certs: str | None = None
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {self.protocol!r}; choose from {list(PROTOCOLS)}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be in 0..65535, got {self.port}")
        if self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise UsageError(f"loop must be auto, asyncio or uvloop, got {self.loop!r}")
        if self.offload not in ("none", "thread", "process"):
            raise UsageError(f"offload must be none, thread or process, got {self.offload!r}")
        for name in ("graceful_timeout", "idle_timeout", "request_timeout", "stats_interval"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"{name} must not be negative, got {value}")
        for name in ("max_connections", "max_children", "offload_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if not 1 <= self.max_datagram_size <= 65535:
            raise UsageError(f"max_datagram_size must be in 1..65535, got {self.max_datagram_size}")
        if (self.keyfile or self.ca_certs) and not self.certfile:
            raise UsageError("--keyfile and --ca-certs need --certfile")
        if self.udp and self.reuse_port:
            raise UsageError("--reuse-port is for TCP workers")
        if self.udp and self.certfile:
            raise UsageError("TLS is for TCP; UDP datagrams are served in the clear (see docs)")
        make_codec(self.protocol, self.max_frame_size)  # validates max_frame_size

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context, or None without ``certfile``.

        Raises:
            UsageError: the certificate, key or CA file cannot be loaded.
        """
        if not self.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
            if self.ca_certs:
                context.load_verify_locations(self.ca_certs)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load TLS certificate/key/CA: {exc}") from exc
        return context


def make_listener(
    host: str,
    port: int,
    backlog: int,
    udp: bool = False,
    reuse_port: bool = False,
    listen: bool = True,
) -> socket.socket:
    """Create, bind and listen a TCP socket (IPv4 or IPv6 by ``host``), or bind a UDP socket
    with ``udp``. ``reuse_port`` sets ``SO_REUSEPORT`` (several sockets share the port, the
    kernel spreads connections by hash); ``listen=False`` only binds (reserves the port).
    The caller owns the socket.

    Raises:
        NetworkError: the address cannot be bound (in use, not local, ...).
    """
    try:
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise NetworkError(f"cannot resolve {host!r}: {exc}", exc.errno) from exc
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if listen and not udp:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot listen on {host}:{port}: {exc.strerror}", exc.errno) from exc
    return sock


class ConnStats:
    """Counters of one connection. Written only by the thread/greenlet/task serving it, so the
    hot path needs no lock; :class:`ServerStats` folds them in when the connection closes.

    ``started`` is the monotonic time the running request began (0.0 when none is running):
    the request-timeout watchdog of the thread models reads it.
    """

    __slots__ = ("abandoned", "bytes_in", "bytes_out", "peer", "requests", "sock", "started")

    def __init__(self, peer: Any = None, sock: socket.socket | None = None) -> None:
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = 0.0
        self.abandoned = False
        self.peer = peer
        self.sock = sock


class ServerStats:
    """Counters of one server process: open/total connections, requests, errors, bytes, refused.

    Connection open/close and errors take a lock (rare events); per-request counting happens in
    each connection's own :class:`ConnStats`.
    """

    FIELDS = (
        "open_connections",
        "total_connections",
        "requests",
        "errors",
        "bytes_in",
        "bytes_out",
        "refused",
        "dropped",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open: set[ConnStats] = set()
        self.total_connections = 0
        self.refused = 0
        self.errors = 0
        self.dropped = 0
        self._closed = [0, 0, 0]  # requests, bytes_in, bytes_out of closed connections

    def opened(self, conn: ConnStats) -> None:
        with self._lock:
            self.open.add(conn)
            self.total_connections += 1

    def closed(self, conn: ConnStats) -> None:
        with self._lock:
            self.open.discard(conn)
            closed = self._closed
            closed[0] += conn.requests
            closed[1] += conn.bytes_in
            closed[2] += conn.bytes_out

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def refuse(self) -> None:
        with self._lock:
            self.refused += 1

    def drop(self) -> None:
        """Count a datagram dropped (oversized, or the handlers fell behind)."""
        with self._lock:
            self.dropped += 1

    def add(self, requests: int, bytes_in: int, bytes_out: int) -> None:
        """Count requests handled outside any connection (UDP)."""
        with self._lock:
            closed = self._closed
            closed[0] += requests
            closed[1] += bytes_in
            closed[2] += bytes_out

    def snapshot(self) -> dict[str, int]:
        """The counters now, as a dict keyed by :attr:`FIELDS`."""
        with self._lock:
            open_conns = list(self.open)
            requests, bytes_in, bytes_out = self._closed
            total, refused, errors = self.total_connections, self.refused, self.errors
            dropped = self.dropped
        for c in open_conns:
            requests += c.requests
            bytes_in += c.bytes_in
            bytes_out += c.bytes_out
        return {
            "open_connections": len(open_conns),
            "total_connections": total,
            "requests": requests,
            "errors": errors,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "refused": refused,
            "dropped": dropped,
        }


def shutdown_socket(sock: socket.socket, how: int) -> None:
    """``shutdown(2)`` on the descriptor, ignoring errors. On a TLS socket this bypasses
    ``SSLSocket.shutdown``, which would drop the TLS state an in-flight reply still needs."""
    try:
        socket.socket.shutdown(sock, how)
    except (OSError, ValueError):
        pass


def has_unread(sock: socket.socket) -> bool:
    """True when bytes the peer sent wait unread in the kernel (a request not yet taken)."""
    # FIONREAD on the descriptor: works for plain, TLS and gevent sockets alike, never blocks.
    try:
        count = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except (OSError, ValueError):
        return False
    return count[0] > 0


def stop_reading(sock: socket.socket) -> None:
    """Graceful-shutdown step for one connection: ``SHUT_RD`` wakes a thread blocked in
    ``recv`` with EOF, while its replies can still go out. Skipped while a request waits
    unread — shutting down then would discard it (and reset the connection); the serving
    loop answers it and then stops by itself (see ``BaseServer.draining``)."""
    if not has_unread(sock):
        shutdown_socket(sock, socket.SHUT_RD)


def close_wakeup_pair(wake_r: socket.socket, wake_w: socket.socket) -> None:
    """Close a wake-up socket pair whose writing end may be the signal wake-up fd.

    :func:`bingfa.server.serve` registers a server's ``wake_w`` with
    :func:`signal.set_wakeup_fd` and restores the previous value only once ``serve_forever``
    returns - after the drain. A signal meanwhile (a second Ctrl-C, a fork child's SIGCHLD) would
    make CPython write to the closed descriptor ("Exception ignored ... Bad file descriptor"), or
    into whatever socket reuses its number. So the registration goes first: the wake-up fd is
    set to -1 if it is ours (``serve`` then puts back the one before it), left alone otherwise.
    """
    if wake_w.fileno() >= 0 and threading.current_thread() is threading.main_thread():
        ours = wake_w.fileno()
        current = signal.set_wakeup_fd(-1)  # only the main thread may set it
        if current not in (ours, -1):
            # Someone else's: put it back. (There is no way to read it without replacing it;
            # a signal in between only misses one wake-up byte.)
            try:
                signal.set_wakeup_fd(current)
            except (ValueError, OSError):
                pass
    wake_r.close()
    wake_w.close()


def describe_status(status: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL`` for a :func:`os.waitpid` status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}"


def refuse_connection(sock: socket.socket) -> None:
    """Close an accepted connection at once with a TCP reset (SO_LINGER 0): over the limit."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class BaseServer(ABC):
    """One server: a listening socket, an app, a concurrency model.

    Lifecycle: construct → :meth:`listen` (optional; binds so that :attr:`address` is known) →
    :meth:`serve_forever` (blocks) → :meth:`shutdown` from another thread or a signal handler
    makes ``serve_forever`` close the listener and every connection, wait for the model's
    threads/greenlets/tasks (up to ``graceful_timeout``) and return. The server owns and closes
    the listening socket and every accepted connection.
    """

    model: ClassVar[str] = "?"

    def __init__(self, app: App, config: ServerConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise UsageError("pass either a ServerConfig or keyword options, not both")
        self.app = app
        self.config = config or ServerConfig(**options)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        # A plain bool the connection loops read after each reply (cheaper than the Event).
        self.draining = False
        self._served = False
        self.stats = ServerStats()
        self._last_refusal_log = 0.0
        self.ssl_context = self.config.ssl_context()

    # -- shared ---------------------------------------------------------------------------

    def listen(self) -> tuple[str, int]:
        """Bind and listen now (idempotent); return the bound ``(host, port)``.

        Raises:
            NetworkError: the address cannot be bound.
        """
        if self._listener is None:
            cfg = self.config
            if cfg.listen_fd is not None and cfg.reuse_port:
                # A worker with --reuse-port: the supervisor's socket only reserves the port;
                # this worker listens on a socket of its own in the SO_REUSEPORT group.
                with socket.socket(fileno=cfg.listen_fd) as reserved:
                    host, port = reserved.getsockname()[:2]
                self._listener = make_listener(host, port, cfg.backlog, reuse_port=True)
            elif cfg.listen_fd is not None:
                self._listener = socket.socket(fileno=cfg.listen_fd)
            else:
                self._listener = make_listener(cfg.host, cfg.port, cfg.backlog, cfg.udp)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """The bound address. Raises UsageError before :meth:`listen`."""
        if self._listener is None:
            raise UsageError("the server is not listening yet; call listen() first")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def transport_name(self) -> str:
        """``udp``, ``tls+<protocol>`` or the protocol name: for logs."""
        if self.config.udp:
            return "udp"
        return f"tls+{self.config.protocol}" if self.ssl_context else self.config.protocol

    def new_codec(self) -> Codec:
        """A fresh codec for one connection."""
        return make_codec(self.config.protocol, self.config.max_frame_size)

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`; then close everything and return.

        Raises:
            ClosedError: the server already served once (servers are not restartable).
            NetworkError: the address cannot be bound.
        """
        if self._served:
            raise ClosedError("this server has already run; create a new one")
        self._served = True
        listener = self._listener or self._listener_now()
        host, port = self.address
        log.info(
            "serving %s on %s:%d (model=%s, protocol=%s)",
            self.app.name,
            host,
            port,
            self.model,
            self.transport_name,
        )
        try:
            self._serve(listener)
        finally:
            listener.close()
            log.info("stopped %s on %s:%d", self.app.name, host, port)

    def _listener_now(self) -> socket.socket:
        self.listen()
        assert self._listener is not None
        return self._listener

    def _signal_wakeup_fd(self) -> int | None:
        """A non-blocking descriptor whose readability wakes the serving loop, for
        :func:`signal.set_wakeup_fd`; None when the model handles signals on its own loop.

        Why: a process-directed signal may be delivered to any thread. Python runs the handler
        in the main thread only when that thread next executes bytecode — never, if it sleeps
        in ``select()`` while a worker thread took the signal. The wake-up byte ends the sleep.
        """
        return None

    @property
    def owns_backlog(self) -> bool:
        """True when the listen backlog is this server's alone: it listens on its own socket
        (standalone, or a ``reuse_port`` worker). A worker on the supervisor's shared socket
        must leave the backlog to its siblings — during a reload they serve it."""
        return self.config.listen_fd is None or self.config.reuse_port

    def shutdown(self) -> None:
        """Ask :meth:`serve_forever` to stop. Safe from any thread and from signal handlers;
        idempotent; returns at once (``serve_forever`` returns once everything is closed)."""
        if not self._stopping.is_set():
            self.draining = True
            self._stopping.set()
            self._wake()

    def report_stats(self) -> dict[str, int]:
        """Log the counters; a worker under the supervisor (``listen_fd`` set) also writes them
        to stdout as one ``bingfa-stats {json}`` line for the supervisor to aggregate.
        Call from the model's own thread/loop, not from a raw signal handler."""
        snap = self.stats.snapshot()
        log.info("stats: %s", " ".join(f"{k}={v}" for k, v in snap.items()))
        if self.config.listen_fd is not None:
            sys.stdout.write(f"bingfa-stats {json.dumps({'pid': os.getpid(), **snap})}\n")
            sys.stdout.flush()
        return snap

    def refuse(self, sock: socket.socket, peer: Any) -> None:
        """Refuse a connection over ``max_connections``: reset it, count it, log it."""
        refuse_connection(sock)
        self.note_refused(peer)

    def note_refused(self, peer: Any) -> None:
        """Count a refused connection and log it, at most once a second (a flood of refusals
        must not flood the log)."""
        self.stats.refuse()
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warning(
                "refusing connection from %s: max_connections=%s reached (%d refused so far)",
                peer,
                self.config.max_connections,
                self.stats.refused,
            )

    def request_stats(self) -> None:
        """Ask the server to :meth:`report_stats` soon. Safe from a signal handler; models
        whose loop must do the reporting override it."""
        self.report_stats()

    @property
    def stopping(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._stopping.is_set()

    # -- per model -------------------------------------------------------------------------

    @abstractmethod
    def _serve(self, listener: socket.socket) -> None:
        """Accept and serve connections on ``listener`` until ``self.stopping``; then close
        every connection and wait for the model's workers. Must not close ``listener``."""

    @abstractmethod
    def _wake(self) -> None:
        """Make a running ``_serve`` notice ``self.stopping`` promptly. Called from any thread
        or a signal handler; must be async-signal-tolerant (no locks that ``_serve`` holds)."""
