"""5,000 concurrent connections against the event-loop models, bounded to a few seconds."""

from __future__ import annotations

from typing import Any

import pytest

from bingfa.bench import run_bench
from bingfa.bench._limits import FD_MARGIN, ensure_fd_limit

CONNECTIONS = 5000


@pytest.mark.timeout(90)
@pytest.mark.parametrize("model", ["asyncio", "gevent"])
def test_five_thousand_connections(spawn_server: Any, model: str) -> None:
    # The server child inherits this process's limit: raise it before starting the server.
    ensure_fd_limit(CONNECTIONS + FD_MARGIN)
    server = spawn_server("echo", model)
    result = run_bench(
        server.host, server.port, connections=CONNECTIONS, duration=1.0, warmup=0, timeout=20
    )
    assert result.connected == CONNECTIONS
    assert result.error_count == 0, result.errors
    assert result.requests >= CONNECTIONS  # every connection got at least one reply
