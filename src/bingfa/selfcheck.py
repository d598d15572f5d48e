"""``bingfa demo``'s self-check: every model serves ``upper``; many clients check every reply."""

from __future__ import annotations

import concurrent.futures
import time

from rich.console import Console
from rich.table import Table

from bingfa.client import Client
from bingfa.server import MODELS
from bingfa.spawn import ServerProcess

__all__ = ["run_selfcheck"]


def _client_run(host: str, port: int, client_id: int, requests: int) -> int:
    """Send ``requests`` messages; return how many replies were exactly right."""
    ok = 0
    with Client(host, port, timeout=10) as client:
        for i in range(requests):
            message = f"client {client_id} message {i} 并发".encode()
            if client.request(message) == message.upper():
                ok += 1
    return ok


def run_selfcheck(clients: int = 20, requests: int = 200) -> int:
    """Serve ``upper`` under each model in a child process, drive it with ``clients`` threads of
    ``requests`` requests each, stop it with SIGTERM, and print a table.

    Returns:
        0 when every reply was right and every server exited 0; 1 otherwise.
    """
    console = Console()
    table = Table(title=f"bingfa self-check: upper, {clients} clients × {requests} requests")
    for column in ("model", "replies ok", "seconds", "req/s", "exit status", "result"):
        table.add_column(column, justify="left" if column in ("model", "result") else "right")
    failures = 0
    for model in MODELS:
        expected = clients * requests
        ok = 0
        error = ""
        server = ServerProcess("upper", model)
        status: int | None = None
        start = time.perf_counter()
        try:
            server.start()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                futures = [
                    pool.submit(_client_run, server.host, server.port, c, requests)
                    for c in range(clients)
                ]
                ok = sum(f.result() for f in futures)
        except Exception as exc:  # the demo reports every failure in its table
            error = f"{type(exc).__name__}: {exc}"
        finally:
            elapsed = time.perf_counter() - start
            status = server.stop()
        good = ok == expected and status == 0 and not error
        failures += not good
        table.add_row(
            model,
            f"{ok}/{expected}",
            f"{elapsed:.2f}",
            f"{ok / elapsed:,.0f}",
            str(status),
            "[green]ok[/green]" if good else f"[red]FAILED[/red] {error}",
        )
    console.print(table)
    return 1 if failures else 0
