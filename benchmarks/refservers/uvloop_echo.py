"""Reference server: a bare uvloop ``asyncio.Protocol`` echo server (raw echo, no framing).

The zero-overhead baseline for bingfa's ``asyncio`` model: ``data_received`` writes the chunk
straight back. uvloop sets TCP_NODELAY on TCP transports itself, as bingfa does.

Usage: ``python uvloop_echo.py [--host 127.0.0.1] [--port 0]``. Prints one stdout line,
``refserver: listening on HOST:PORT (server=uvloop pid=PID)``, and exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import uvloop


class Echo(asyncio.Protocol):
    """Write every received chunk back as it is."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(Echo, host, port, backlog=1024)
    bound_port = server.sockets[0].getsockname()[1]
    pid = os.getpid()
    print(f"refserver: listening on {host}:{bound_port} (server=uvloop pid={pid})", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
