"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bingfa.spawn import ServerProcess

TESTS = pathlib.Path(__file__).parent
TEST_APPS_PATH = str(TESTS / "server")

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def spawn_server() -> Iterator[ServerFactory]:
    """Start ``bingfa serve`` children; every one is stopped at teardown, even on failure.

    Each child must exit with status 0 on SIGTERM: a server that cannot shut down cleanly fails
    the test that started it.
    """
    started: list[ServerProcess] = []

    def start(
        app: str = "echo",
        model: str | None = "thread",
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> ServerProcess:
        path = os.pathsep.join([TEST_APPS_PATH, os.environ.get("PYTHONPATH", "")])
        server = ServerProcess(app, model, env={"PYTHONPATH": path, **(env or {})}, **options)
        started.append(server)
        return server.start()

    yield start
    statuses = []
    for server in started:
        statuses.append((server.args, server.stop(), server.log()))
    for args, status, log in statuses:
        assert status == 0, f"{' '.join(args)} exited {status}; log:\n{log[-4000:]}"
