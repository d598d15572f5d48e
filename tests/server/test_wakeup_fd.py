"""Stopping a server by signal leaves no dangling signal wake-up fd.

The thread models make their accept loop's wake-up socket the process's
``signal.set_wakeup_fd``. If the socket is closed while still registered, every later signal
(a second Ctrl-C, the SIGCHLD of a fork child finishing) makes CPython write to a dead
descriptor — ``Exception ignored ... signal wakeup fd ... Bad file descriptor`` on stderr — or,
once the number is reused, into some unrelated socket.

Each test runs a real ``bingfa serve`` in a session of its own, so that the signal can go to
its whole process group as Ctrl-C in a terminal does (parent and fork children alike) without
reaching pytest; the group is killed at teardown whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_helpers import frame, recv_frame

_LISTENING = re.compile(r"listening on (?P<host>[\d.]+):(?P<port>\d+) ")

Start = Callable[[str], "Served"]


class Served:
    """A ``bingfa serve sleep`` child leading its own process group; stderr goes to a file."""

    def __init__(self, model: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - open for the child's whole life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bingfa", "serve", "sleep", "--model", model, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the child prints it at once, or dies
        match = _LISTENING.search(line)
        assert match, f"no listening line: {line!r}\n{self.log()}"
        self.address = (match["host"], int(match["port"]))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def killpg(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def close(self) -> None:
        """Kill whatever is left of the group and reap the child."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        else:
            try:  # fork children outliving their parent, if any
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    servers: list[Served] = []

    def launch(model: str) -> Served:
        servers.append(Served(model, tmp_path / f"server-{len(servers)}.log"))
        return servers[-1]

    yield launch
    for served in servers:
        served.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("model", ["thread", "threadpool", "fork", "gevent"])
def test_signal_with_a_connection_open_leaves_no_dangling_wakeup_fd(
    start: Start, model: str, sig: int
) -> None:
    """Ctrl-C twice while a request is in flight (the second lands during the drain): the
    request is answered, the server exits 0, and nothing is written to a closed wake-up fd."""
    served = start(model)
    with (
        socket.create_connection(served.address, timeout=10) as idle,
        socket.create_connection(served.address, timeout=10) as busy,
    ):
        idle.sendall(frame(b"0"))
        assert recv_frame(idle) == b"0"  # connected and served: the connection is open
        busy.sendall(frame(b"800"))
        time.sleep(0.2)  # the request is running
        served.killpg(sig)
        time.sleep(0.3)  # the server is draining: its accept loop is over
        served.killpg(sig)
        assert recv_frame(busy) == b"800"
        assert idle.recv(1) == b""  # idle connections are closed at shutdown
    status = served.proc.wait(10)
    log = served.log()
    assert status == 0, log
    assert "Exception ignored" not in log, log
    assert "Bad file descriptor" not in log, log
