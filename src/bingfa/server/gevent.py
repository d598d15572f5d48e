"""``gevent``: a greenlet per connection on gevent's ``StreamServer`` (the seeds' gevent server).

Thousands of mostly-idle or IO-waiting connections cost little (a greenlet, not a thread), and
plain blocking handler code — ``time.sleep``, ``socket``, ``urllib`` — becomes cooperative
because the process is monkey-patched. CPU-bound handlers still stall every connection of the
process: use worker processes for those.

Patching must come first in the process, before ``threading``/``socket``/``ssl`` are used,
or the process is half-patched. ``bingfa serve --model gevent`` arranges this (see
:mod:`bingfa._entry`): the CLI patches before importing anything else. Used as a library, call
:func:`patch` as the first statement of your program; :class:`GeventServer` refuses to run in an
unpatched process rather than serve with blocking sockets.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from bingfa.apps import SyncHandler
from bingfa.errors import UsageError
from bingfa.server._blocking import serve_connection
from bingfa.server.base import BaseServer

__all__ = ["GeventServer", "is_patched", "patch"]


def patch() -> None:
    """Monkey-patch the standard library for gevent (``gevent.monkey.patch_all``)."""
    from gevent import monkey

    monkey.patch_all()


def is_patched() -> bool:
    """True when ``socket`` and ``time`` are monkey-patched by gevent in this process."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("time"))


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
                "gevent`, or call bingfa.server.gevent.patch() before anything else"
            )
        import gevent

        self._call: SyncHandler = self.app.call_sync()
        self._conns: set[socket.socket] = set()
        self._hub = gevent.get_hub()
        # Thread-safe wake-up: shutdown() may be called from another OS thread.
        self._waker = self._hub.loop.async_()
        self.handle_signals = False

    def _wake(self) -> None:
        self._waker.send()

    def _handle(self, sock: socket.socket, peer: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns.add(sock)
        try:
            serve_connection(self, self._call, sock, peer)
        finally:
            self._conns.discard(sock)

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
        pool = Pool()
        server = StreamServer(listener, self._handle, spawn=pool)
        try:
            server.start()
            if not self.stopping:
                stop.wait()
            server.stop_accepting()
            # Shut down reading: idle connections end at once, in-flight replies still go out.
            for sock in list(self._conns):
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            if not pool.join(timeout=self.config.shutdown_timeout):
                pool.kill(timeout=1.0)
        finally:
            server.close()
            self._waker.stop()
            for h in handlers:
                h.cancel()
