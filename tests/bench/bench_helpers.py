"""Helpers of the load-generator tests: the server's own request counter (SIGUSR1), a free port."""

from __future__ import annotations

import re
import signal
import socket
import time

from bingfa.spawn import ServerProcess

STATS = re.compile(r"stats: open_connections=(\d+) total_connections=(\d+) requests=(\d+) ")


def server_requests(server: ServerProcess, timeout: float = 10.0) -> int:
    """Ask ``server`` for its counters (SIGUSR1) and return its ``requests`` count from the new
    ``stats:`` log line.

    Waits until the server reports no open connection, so every request the generator sent has
    been counted (the generator has closed its connections when run_bench returns)."""
    deadline = time.monotonic() + timeout
    seen = len(STATS.findall(server.log()))
    while time.monotonic() < deadline:
        server.signal(signal.SIGUSR1)
        poll_until = time.monotonic() + 1.0
        while time.monotonic() < poll_until:
            found = STATS.findall(server.log())
            if len(found) > seen:
                seen = len(found)
                open_conns, _, requests = (int(x) for x in found[-1])
                if open_conns == 0:
                    return requests
                break
            time.sleep(0.02)
        time.sleep(0.1)
    raise AssertionError(f"no stats line with open_connections=0 in:\n{server.log()[-3000:]}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
