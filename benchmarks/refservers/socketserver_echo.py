"""Reference server: a bare ``socketserver.ThreadingTCPServer`` echo server (raw echo).

The zero-overhead baseline for bingfa's ``thread`` and ``threadpool`` models: a thread per
connection doing ``recv`` → ``sendall`` of the same bytes. TCP_NODELAY is set per connection,
as bingfa does.

Usage: ``python socketserver_echo.py [--host 127.0.0.1] [--port 0]``. Prints one stdout line,
``refserver: listening on HOST:PORT (server=socketserver pid=PID)``, and exits 0 on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
from types import FrameType


class EchoHandler(socketserver.BaseRequestHandler):
    """Echo until the peer closes."""

    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv = sock.recv
        sendall = sock.sendall
        try:
            while data := recv(65536):
                sendall(data)
        except OSError:  # reset by the peer
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    """ThreadingTCPServer with daemon connection threads and a deep listen backlog."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    with EchoServer((host, port), EchoHandler) as server:
        bound_port = server.server_address[1]
        pid = os.getpid()
        print(
            f"refserver: listening on {host}:{bound_port} (server=socketserver pid={pid})",
            flush=True,
        )
        server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    main(args.host, args.port)
