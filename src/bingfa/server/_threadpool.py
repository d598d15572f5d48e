"""``threadpool``: a fixed pool of ``threads`` workers serving connections from a queue.

Bounded memory and thread count whatever the number of clients. The trade-off: a worker is
held by its connection for the connection's whole life, so with N workers the (N+1)-th client
waits in the queue until some connection closes — and a slow or idle client holds a worker.
Choose ``thread`` or an event-loop model for many long-lived connections. Against slowloris
(many connections that trickle bytes and never finish a request), set ``idle_timeout``: the
idle clock starts at accept time, so a stalled connection that waited in the queue longer
than that is dropped as soon as a worker picks it up. TLS clients run on the same clock, and the
handshake has ``handshake_timeout`` from accept: a client that has sent nothing by then is
closed as soon as a worker picks it up, and none holds a worker in its handshake for longer
than that timeout.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any

from bingfa.server._blocking import BlockingServer

__all__ = ["ThreadPoolServer"]


class ThreadPoolServer(BlockingServer):
    """``config.threads`` workers; connections beyond that wait for a free worker."""

    model = "threadpool"

    def _serve(self, listener: socket.socket) -> None:
        self._queue: queue.SimpleQueue[tuple[socket.socket, Any, float] | None] = (
            queue.SimpleQueue()
        )
        workers = [
            threading.Thread(target=self._work, name=f"bingfa-worker-{i}")
            for i in range(self.config.threads)
        ]
        for t in workers:
            t.start()
        try:
            self._accept_loop(listener)
        finally:
            # Queued connections come first (FIFO): each is answered if its request already
            # arrived, closed otherwise (serve_connection, while draining), within the
            # graceful timeout of _join.
            for _ in workers:
                self._queue.put(None)
            self._join(workers)

    def _dispatch(self, conn: socket.socket, peer: Any) -> None:
        with self._conns_lock:
            self._conns[conn] = None
        # The accept time travels with the connection: with idle_timeout, time spent waiting
        # for a worker counts, so stalled (slowloris) connections are shed quickly.
        self._queue.put((conn, peer, time.monotonic()))

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            self._serve_tracked(*item)
