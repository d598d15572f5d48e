"""Shared machinery of the models that serve a connection with blocking socket calls.

``thread`` and ``threadpool`` run :func:`serve_connection` in an OS thread, ``gevent`` in a
greenlet (its sockets are cooperative). The accept loop of the thread models lives in
:class:`BlockingServer`.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from typing import Any

from bingfa.apps import Context, SyncHandler
from bingfa.errors import ProtocolError
from bingfa.server.base import RECV_SIZE, BaseServer

log = logging.getLogger("bingfa.server")

_ACCEPT_BACKOFF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def serve_connection(server: BaseServer, call: SyncHandler, sock: socket.socket, peer: Any) -> None:
    """Serve one connection with blocking calls until the peer closes or misbehaves.

    Requests are answered in order; replies to requests that arrived together are sent in one
    ``sendall``. A handler exception or a protocol error is logged and closes this connection
    only (after answering the complete requests that came before it). Backpressure is natural:
    while ``sendall`` blocks on a client that does not read, nothing more is read from it.
    Closes ``sock`` before returning; never raises.
    """
    codec = server.new_codec()
    ctx = Context(peer, server.model)
    feed = codec.feed
    encode = codec.encode
    recv = sock.recv
    sendall = sock.sendall
    try:
        while True:
            try:
                data = recv(RECV_SIZE)
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
            fault: ProtocolError | None = None
            try:
                messages = feed(data)
            except ProtocolError as exc:
                fault, messages = exc, exc.decoded
            if len(messages) == 1 and fault is None:
                # The request/response fast path: no list, no join.
                try:
                    reply = call(messages[0], ctx)
                    out = None if reply is None else encode(reply)
                except Exception:
                    log.exception("handler %s failed for %s; closing", server.app.name, peer)
                    return
                if out is not None:
                    sendall(out)
                continue
            replies: list[bytes] = []
            try:
                for message in messages:
                    reply = call(message, ctx)
                    if reply is not None:
                        replies.append(encode(reply))
            except Exception:
                log.exception("handler %s failed for %s; closing", server.app.name, peer)
                if replies:
                    sendall(b"".join(replies))
                return
            if replies:
                sendall(b"".join(replies))
            if fault is not None:
                log.warning("closing connection from %s: %s", peer, fault.reason)
                return
    except OSError as exc:  # sendall to a peer that vanished
        log.debug("connection from %s ended while sending: %s", peer, exc)
    finally:
        sock.close()


class BlockingServer(BaseServer):
    """Accept loop and connection bookkeeping shared by ``thread`` and ``threadpool``.

    The accept loop waits in a selector on the listener and a wake-up socket, so shutdown from
    any thread or a signal handler is prompt. Accept errors that mean "out of resources"
    (EMFILE, ENFILE, ENOBUFS, ENOMEM) are logged and backed off, never fatal.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._conns: dict[socket.socket, threading.Thread | None] = {}
        self._conns_lock = threading.Lock()
        self._call = self.app.call_sync()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # buffer full (already woken) or closed (already stopped)
            pass

    def _accept_loop(self, listener: socket.socket) -> None:
        """Accept until stopping, handing each connection to :meth:`_dispatch`."""
        listener.setblocking(False)
        backoff = 0.0
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping:
                sel.select(timeout=backoff or None)
                while not self.stopping:
                    try:
                        conn, peer = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        backoff = 0.0
                        break
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_BACKOFF:
                            raise
                        backoff = min(max(backoff * 2, 0.01), 1.0)
                        log.warning("accept failed (%s); retrying in %.2fs", exc.strerror, backoff)
                        # Wait without spinning; keep the listener registered so a freed
                        # descriptor lets us resume at once.
                        time.sleep(backoff)
                        break
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._dispatch(conn, peer)
        self._wake_r.close()
        self._wake_w.close()

    def _dispatch(self, conn: socket.socket, peer: Any) -> None:
        raise NotImplementedError

    def _serve_tracked(self, conn: socket.socket, peer: Any) -> None:
        """Serve ``conn`` and keep it in the open-connection table meanwhile."""
        try:
            serve_connection(self, self._call, conn, peer)
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)

    def _close_connections(self, how: int) -> None:
        """Shut down every open connection (``SHUT_RD`` lets in-flight replies go out)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(how)
            except OSError:
                pass

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for ``threads`` to end: first gently, then by forcing their sockets shut."""
        self._close_connections(socket.SHUT_RD)
        deadline = time.monotonic() + self.config.shutdown_timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            self._close_connections(socket.SHUT_RDWR)
            for t in threads:
                t.join(1.0)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("%d connection threads still running at exit: %s", len(alive), alive)
