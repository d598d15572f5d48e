"""The server skeleton every concurrency model plugs into.

A model is one small class: it subclasses :class:`BaseServer` and implements
:meth:`BaseServer._serve` (run until asked to stop) and :meth:`BaseServer._wake` (make ``_serve``
notice the stop request from any thread or a signal handler). Listening-socket creation,
configuration, logging and the connection count live here, once.
"""

from __future__ import annotations

import logging
import socket
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bingfa.apps import App
from bingfa.errors import ClosedError, NetworkError, UsageError
from bingfa.protocol import DEFAULT_MAX_FRAME_SIZE, PROTOCOLS, Codec, make_codec

__all__ = ["BaseServer", "ServerConfig", "make_listener"]

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
        shutdown_timeout: seconds to wait for connection threads/tasks to end at shutdown.
    """

    host: str = "127.0.0.1"
    port: int = 8086
    protocol: str = "frame"
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    threads: int = 64
    loop: str = "auto"
    backlog: int = 1024
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {self.protocol!r}; choose from {list(PROTOCOLS)}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be in 0..65535, got {self.port}")
        if self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise UsageError(f"loop must be auto, asyncio or uvloop, got {self.loop!r}")
        make_codec(self.protocol, self.max_frame_size)  # validates max_frame_size


def make_listener(host: str, port: int, backlog: int) -> socket.socket:
    """Create, bind and listen a TCP socket (IPv4 or IPv6 by ``host``). The caller owns it.

    Raises:
        NetworkError: the address cannot be bound (in use, not local, ...).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise NetworkError(f"cannot resolve {host!r}: {exc}", exc.errno) from exc
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot listen on {host}:{port}: {exc.strerror}", exc.errno) from exc
    return sock


class BaseServer(ABC):
    """One server: a listening socket, an app, a concurrency model.

    Lifecycle: construct → :meth:`listen` (optional; binds so that :attr:`address` is known) →
    :meth:`serve_forever` (blocks) → :meth:`shutdown` from another thread or a signal handler
    makes ``serve_forever`` close the listener and every connection, wait for the model's
    threads/greenlets/tasks (up to ``shutdown_timeout``) and return. The server owns and closes
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
        self._served = False

    # -- shared ---------------------------------------------------------------------------

    def listen(self) -> tuple[str, int]:
        """Bind and listen now (idempotent); return the bound ``(host, port)``.

        Raises:
            NetworkError: the address cannot be bound.
        """
        if self._listener is None:
            cfg = self.config
            self._listener = make_listener(cfg.host, cfg.port, cfg.backlog)
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """The bound address. Raises UsageError before :meth:`listen`."""
        if self._listener is None:
            raise UsageError("the server is not listening yet; call listen() first")
        host, port = self._listener.getsockname()[:2]
        return host, port

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
            self.config.protocol,
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

    def shutdown(self) -> None:
        """Ask :meth:`serve_forever` to stop. Safe from any thread and from signal handlers;
        idempotent; returns at once (``serve_forever`` returns once everything is closed)."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._wake()

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
