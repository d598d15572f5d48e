"""Reference server: a bare gevent ``StreamServer`` echo server (raw echo, no framing).

The zero-overhead baseline for bingfa's ``gevent`` model: a greenlet per connection doing
``recv`` → ``sendall`` of the same bytes. TCP_NODELAY is set per connection, as bingfa does.
No monkey-patching: a bare StreamServer does not need it (its sockets are gevent's own).

Usage: ``python gevent_echo.py [--host 127.0.0.1] [--port 0]``. Prints one stdout line,
``refserver: listening on HOST:PORT (server=gevent pid=PID)``, and exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
from typing import Any

import gevent
from gevent.server import StreamServer


def handle(sock: Any, address: Any) -> None:
    """Echo until the peer closes."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv = sock.recv
    sendall = sock.sendall
    try:
        while data := recv(65536):
            sendall(data)
    except OSError:  # reset by the peer
        pass


def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = StreamServer((host, port), handle, backlog=1024)
    server.start()
    bound_port = server.address[1]
    pid = os.getpid()
    print(f"refserver: listening on {host}:{bound_port} (server=gevent pid={pid})", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, server.stop)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    main(args.host, args.port)
