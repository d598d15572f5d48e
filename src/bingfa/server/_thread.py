"""``thread``: one OS thread per connection (the seeds' ``threading.Thread(target=...)`` server).

Simple and handler-agnostic (a blocking handler blocks only its own client), but each
connection costs a thread stack and the GIL serialises Python code. Finished threads remove
themselves from the table at once, so nothing accumulates (socketserver's old leak).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from bingfa.server._blocking import BlockingServer

__all__ = ["ThreadServer"]


class ThreadServer(BlockingServer):
    """A thread per connection. See :class:`bingfa.server._base.BaseServer` for the lifecycle."""

    model = "thread"

    def _serve(self, listener: socket.socket) -> None:
        try:
            self._accept_loop(listener)
        finally:
            with self._conns_lock:
                threads = [t for t in self._conns.values() if t is not None]
            self._join(threads)

    def _dispatch(self, conn: socket.socket, peer: Any) -> None:
        thread = threading.Thread(
            target=self._serve_tracked, args=(conn, peer), name=f"bingfa-conn-{peer}"
        )
        with self._conns_lock:
            self._conns[conn] = thread
        thread.start()
