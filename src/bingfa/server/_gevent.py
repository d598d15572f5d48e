"""``gevent``: a greenlet per connection on gevent's ``StreamServer`` (the seeds' gevent server).

Thousands of mostly-idle or IO-waiting connections cost little (a greenlet, not a thread), and
plain blocking handler code — ``time.sleep``, ``socket``, ``urllib`` — becomes cooperative
because the process is monkey-patched. CPU-bound handlers still stall every connection of the
process: use worker processes for those.

Limits: ``max_connections`` resets connections over the limit; ``idle_timeout`` works as in
the thread models (cooperative socket timeouts); ``request_timeout`` raises ``gevent.Timeout``
inside the handler's greenlet at its next cooperative switch — real interruption for
IO-waiting handlers, none for one that computes without yielding. ``offload="thread"`` (the
default) runs ``kind="cpu"`` handlers in gevent's native thread pool so the hub keeps serving
other connections; ``offload="process"`` is for the asyncio model — here it is refused with a
UsageError (use ``--workers`` for CPU-bound work under gevent). A TLS handshake must finish
within ``handshake_timeout`` in all (a ``gevent.Timeout``: gevent's own socket timeout is per
read, so a client trickling its hello could stretch it otherwise).

Patching must come first in the process, before ``threading``/``socket``/``ssl`` are used,
or the process is half-patched. ``bingfa serve --model gevent`` arranges this (see
:mod:`bingfa._entry`): the CLI patches before importing anything else. Used as a library, call
:func:`patch` as the first statement of your program; :class:`GeventServer` refuses to run in an
unpatched process rather than serve with blocking sockets.
"""

from __future__ import annotations

import signal
import socket
from contextlib import AbstractContextManager
from typing import Any

from bingfa.apps import SyncHandler
from bingfa.errors import UsageError
from bingfa.server._base import BaseServer, ConnStats, stop_reading
from bingfa.server._blocking import serve_connection

__all__ = ["GeventServer", "RequestTimedOut", "is_patched", "patch"]


class RequestTimedOut(Exception):
    """Raised inside a handler's greenlet when it outlives ``request_timeout``."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"handler exceeded request_timeout={limit}s")


def patch() -> None:
    """Monkey-patch the standard library for gevent (``gevent.monkey.patch_all``)."""
    from gevent import monkey

    monkey.patch_all()


def is_patched() -> bool:
    """True when ``socket`` and ``time`` are monkey-patched by gevent in this process."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("time"))


def _within(seconds: float) -> AbstractContextManager[object]:
    """The TLS handshake's deadline in a greenlet: gevent's ``SSLSocket.do_handshake`` applies
    the socket timeout to each wait, so a client trickling its hello a byte at a time would
    stretch it without end; a ``gevent.Timeout`` bounds the whole handshake instead (its
    ``TimeoutError`` is reported like any failed handshake)."""
    import gevent

    timeout: AbstractContextManager[object] = gevent.Timeout(
        seconds, TimeoutError(f"no TLS handshake within {seconds:.3g}s")
    )
    return timeout


class GeventServer(BaseServer):
    """A greenlet per connection. Requires a monkey-patched process (:func:`patch`).

    Signals: when ``handle_signals`` is set, SIGINT/SIGTERM are installed with
    ``gevent.signal_handler`` so they run in the hub, not between arbitrary bytecodes.
    """

    model = "gevent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not is_patched():
            raise UsageError(
                "the gevent model needs a monkey-patched process: run `bingfa serve --model "
                "gevent`, or call bingfa.server.patch_gevent() before anything else"
            )
        import gevent

        if self.config.offload == "process":
            raise UsageError(
                "offload='process' is available for the asyncio model; under gevent use "
                "--workers N for CPU-bound handlers"
            )
        self._hub = gevent.get_hub()
        self._call: SyncHandler = self._make_call()
        self._conns: set[ConnStats] = set()
        # Thread-safe wake-up: shutdown() may be called from another OS thread.
        self._waker = self._hub.loop.async_()
        self.handle_signals = False

    def _make_call(self) -> SyncHandler:
        """The handler as the connection greenlets call it: through gevent's thread pool for
        ``kind="cpu"`` (offload thread), under ``gevent.Timeout`` with a request timeout."""
        import gevent

        plain = self.app.call_sync()
        call = plain
        if self.app.kind == "cpu" and self.config.offload == "thread" and self.app.sync:
            pool = self._hub.threadpool

            def pooled(request: bytes, ctx: Any) -> bytes | None:
                result: bytes | None = pool.apply(plain, (request, ctx))
                return result

            call = pooled
        limit = self.config.request_timeout
        if limit is None:
            return call
        inner = call

        def timed(request: bytes, ctx: Any) -> bytes | None:
            with gevent.Timeout(limit, RequestTimedOut(limit)):
                return inner(request, ctx)

        return timed

    def _wake(self) -> None:
        self._waker.send()

    def _handle(self, sock: socket.socket, peer: Any) -> None:
        limit = self.config.max_connections
        if limit is not None and len(self._conns) >= limit:
            self.refuse(sock, peer)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ConnStats(peer, sock)
        self._conns.add(conn)
        try:
            serve_connection(self, self._call, sock, peer, conn, handshake_guard=_within)
        finally:
            self._conns.discard(conn)

    def _report_every(self, interval: float) -> None:
        import gevent

        while True:
            gevent.sleep(interval)
            self.report_stats()

    def _serve(self, listener: socket.socket) -> None:
        import gevent
        from gevent.event import Event
        from gevent.pool import Pool
        from gevent.server import StreamServer

        stop = Event()
        self._waker.start(stop.set)
        handlers = []
        if self.handle_signals:
            handlers = [
                gevent.signal_handler(sig, self.shutdown) for sig in (signal.SIGINT, signal.SIGTERM)
            ]
            handlers.append(gevent.signal_handler(signal.SIGUSR1, self.report_stats))
        reporter = None
        if self.config.stats_interval:
            reporter = gevent.spawn(self._report_every, self.config.stats_interval)
        pool = Pool()
        server = StreamServer(listener, self._handle, spawn=pool)
        try:
            server.start()
            if not self.stopping:
                stop.wait()
            server.stop_accepting()
            # Shut down reading: idle connections end at once, in-flight replies still go out.
            for conn in list(self._conns):
                if conn.sock is not None:
                    stop_reading(conn.sock)
            if not pool.join(timeout=self.config.graceful_timeout):
                pool.kill(timeout=1.0)
        finally:
            if reporter is not None:
                reporter.kill()
            server.close()
            self._waker.stop()
            for h in handlers:
                h.cancel()
