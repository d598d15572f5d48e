"""Faults of the asyncio model: repeated signals, pipelining memory, running out of descriptors.

Every server here is a real ``bingfa serve`` child on 127.0.0.1, started in a session (and so
a process group) of its own: a test can signal the whole group as a terminal's Ctrl-C would,
and the fixture SIGKILLs the whole group at teardown, even when the test failed.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
from server_helpers import check_request_stats_skips_the_stats_lock, frame

from bingfa.server import create_server

TEST_APPS = str(Path(__file__).parent)
LISTENING = re.compile(r"listening on (?P<host>[\d.]+):(?P<port>\d+) ")


@dataclass
class GroupServer:
    """A ``bingfa serve`` child leading its own process group; stderr goes to ``log_file``."""

    proc: subprocess.Popen[str]
    log_file: IO[bytes]
    host: str = "127.0.0.1"
    port: int = 0
    workers: list[int] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def log(self) -> str:
        with open(self.log_file.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def killpg(self, sig: int) -> None:
        """Signal the whole process group (the supervisor and every worker), like Ctrl-C."""
        os.killpg(self.proc.pid, sig)


GroupFactory = Callable[..., GroupServer]


@pytest.fixture
def group_server() -> Iterator[GroupFactory]:
    """Start ``bingfa serve ARGS...`` children in new sessions; SIGKILL each group at teardown."""
    started: list[GroupServer] = []

    def start(
        *args: str,
        path: tuple[str, ...] = (),
        preexec: Callable[[], None] | None = None,
        timeout: float = 30.0,
    ) -> GroupServer:
        log_file = tempfile.NamedTemporaryFile(prefix="bingfa-fault-", suffix=".log")  # noqa: SIM115
        pythonpath = os.pathsep.join([*path, TEST_APPS, os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": pythonpath}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bingfa", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=preexec,
        )
        server = GroupServer(proc, log_file)
        started.append(server)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                server.host, server.port = match["host"], int(match["port"])
                server.workers = [p.pid for p in psutil.Process(proc.pid).children()]
                return server
        pytest.fail(f"server did not start: {args}\n{server.log()}")

    yield start
    for server in started:
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.proc.wait(10)
        if server.proc.stdout is not None:
            server.proc.stdout.close()
        server.log_file.close()


def read_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock``; fewer only if the peer closed first."""
    chunks = []
    while n:
        try:
            chunk = sock.recv(min(n, 1 << 20))
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> bytes | None:
    """One frame's payload, or None when the connection ended first."""
    header = read_exact(sock, 4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack("!I", header)
    payload = read_exact(sock, length)
    return payload if len(payload) == length else None


def in_flight(address: tuple[str, int], count: int, payload: bytes) -> list[socket.socket]:
    """``count`` connections that each sent one request and wait for the reply."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(address, timeout=15)
        s.sendall(frame(payload))
        socks.append(s)
    return socks


# -- 1. a second signal during the drain --------------------------------------------------------


def test_second_sigterm_does_not_lose_in_flight_requests(group_server: GroupFactory) -> None:
    """SIGTERM twice, 50 ms apart, with 20 one-second requests running: all 20 are answered
    and the server exits 0 (a second signal may shorten the graceful timeout, never kill)."""
    server = group_server("sleep", "--model", "asyncio")
    socks = in_flight(server.address, 20, b"1000")
    try:
        time.sleep(0.2)  # every request is now running on the server
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        replies = [read_frame(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert replies == [b"1000"] * 20, server.log()
    assert server.proc.wait(10) == 0, server.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_group_signal_to_workers_loses_nothing(group_server: GroupFactory, sig: int) -> None:
    """``--workers 2``, the signal sent to the process group (Ctrl-C in a terminal): each worker
    gets it from the terminal *and* the supervisor's SIGTERM; in-flight requests still finish."""
    server = group_server("sleep", "--model", "asyncio", "--workers", "2")
    assert len(server.workers) == 2
    socks = in_flight(server.address, 20, b"1000")
    try:
        time.sleep(0.2)
        server.killpg(sig)
        replies = [read_frame(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert replies == [b"1000"] * 20, server.log()
    assert server.proc.wait(15) == 0, server.log()
    assert "killed by" not in server.log(), server.log()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_new_connections_are_refused_during_the_drain(
    group_server: GroupFactory, loop: str
) -> None:
    """Accepting is bingfa's own (not the loop's server): once stopping, a standalone server
    refuses new clients at once instead of leaving them in a backlog nobody serves."""
    server = group_server("sleep", "--model", "asyncio", "--loop", loop)
    (busy,) = in_flight(server.address, 1, b"1500")
    try:
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.address, timeout=3).close()
        assert read_frame(busy) == b"1500"
    finally:
        busy.close()
    assert server.proc.wait(10) == 0, server.log()


WORKER_DIES_ON_TERM = """
import signal

import bingfa


@bingfa.handler(kind="fast")
def die_on_term(request: bytes) -> bytes:
    # Inline under asyncio, so this runs in the worker's main thread: from now on SIGTERM
    # kills the worker with the default action.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return request
"""


def test_supervisor_warns_when_a_stopping_worker_dies_of_a_signal(
    group_server: GroupFactory, tmp_path: Path
) -> None:
    """A worker that dies of SIGTERM instead of draining lost whatever it held: the supervisor
    says so at WARNING, not as an INFO "stopped"."""
    (tmp_path / "dies_on_term.py").write_text(WORKER_DIES_ON_TERM)
    server = group_server(
        "dies_on_term:die_on_term", "--model", "asyncio", "--workers", "1", path=(str(tmp_path),)
    )
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(frame(b"x"))
        assert read_frame(s) == b"x"
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(15)
    log = server.log()
    line = next((ln for ln in log.splitlines() if "killed by SIGTERM" in ln), "")
    assert " WARNING " in line, log


# -- 2. pipelining is bounded by bytes ------------------------------------------------------------

MIB = 1 << 20


SLOW_DIGEST = """
import time


def digest(request: bytes) -> bytes:
    # A plain (kind "io") handler, so the asyncio model runs it in its thread pool; slower
    # than the loop reads, so a pipelining client's requests queue up. A short reply: the
    # write side never pushes back, only the read-side bound can.
    time.sleep(0.02)
    return b"%d:%d" % (request[0], len(request))
"""


def test_pipelined_big_frames_keep_memory_bounded(
    group_server: GroupFactory, tmp_path: Path
) -> None:
    """One client pipelines 40 frames of 4 MiB to a thread-pool handler without reading the
    replies: the server stops reading once a few MiB are queued (RSS grows < 100 MiB, not by
    the 160 MiB sent), and every reply arrives, in order, once the client reads."""
    (tmp_path / "slow_digest.py").write_text(SLOW_DIGEST)
    server = group_server("slow_digest:digest", "--model", "asyncio", path=(str(tmp_path),))
    proc = psutil.Process(server.proc.pid)
    with socket.create_connection(server.address, timeout=15) as warm:
        warm.sendall(frame(b"w"))  # starts the thread pool: not part of the growth
        assert read_frame(warm) == b"119:1"
    time.sleep(0.2)
    baseline = proc.memory_info().rss
    count, size = 40, 4 * MIB
    sent = [0]

    with socket.create_connection(server.address, timeout=15) as s:

        def send_all() -> None:
            try:
                for i in range(count):
                    s.sendall(frame(bytes([i]) * size))
                    sent[0] += 1
            except OSError:
                pass

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        peak = baseline
        # Sample while the client pushes and reads nothing: until its sends stall (the server
        # stopped reading) or everything was sent and queued.
        last_progress, last_sent = time.monotonic(), -1
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            peak = max(peak, proc.memory_info().rss)
            if sent[0] != last_sent:
                last_sent, last_progress = sent[0], time.monotonic()
            elif time.monotonic() - last_progress > 0.5:
                break
            time.sleep(0.01)
        replies = []
        for i in range(count):
            reply = read_frame(s)
            assert reply is not None, f"connection ended after {i} replies\n{server.log()}"
            replies.append(reply)
            peak = max(peak, proc.memory_info().rss)
        sender.join(10)
    growth = (peak - baseline) / MIB
    assert replies == [b"%d:%d" % (i, size) for i in range(count)]
    assert growth < 100, f"server RSS grew {growth:.0f} MiB for one pipelining client"


# -- 3. out of descriptors ----------------------------------------------------------------------

FD_LIMIT = 128


def low_fd_limit() -> None:
    """``preexec_fn``: the server may hold at most FD_LIMIT descriptors."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_emfile_backs_off_and_answers_everyone_later(group_server: GroupFactory, loop: str) -> None:
    """300 connections to a server allowed 128 descriptors, each sending one request, each
    closed by the client once answered: the server pauses accepting while out of descriptors
    (one rate-limited log line, not a traceback per attempt), leaves the rest in the backlog
    and answers them as descriptors free up — none is accepted and silently dropped."""
    server = group_server("echo", "--model", "asyncio", "--loop", loop, preexec=low_fd_limit)
    total = 300
    answered = dropped = 0
    with selectors.DefaultSelector() as sel:
        try:
            for i in range(total):
                s = socket.create_connection(server.address, timeout=5)
                s.sendall(frame(b"%d" % i))
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, (i, bytearray()))
            deadline = time.monotonic() + 12
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(0.2):
                    sock: Any = key.fileobj
                    i, buf = key.data
                    try:
                        chunk = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except ConnectionError:
                        chunk = b""
                    buf += chunk
                    if bytes(buf) == frame(b"%d" % i):
                        answered += 1
                    elif chunk:
                        continue
                    else:
                        dropped += 1  # EOF or reset without the reply
                    sel.unregister(sock)
                    sock.close()
        finally:
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
    log = server.log()
    emfile_lines = [ln for ln in log.splitlines() if "Too many open files" in ln]
    assert len(emfile_lines) <= 5, f"{len(emfile_lines)} EMFILE lines:\n{log[-3000:]}"
    assert (answered, dropped) == (total, 0), log[-3000:]
    assert server.proc.poll() is None
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(frame(b"after"))
        assert read_frame(s) == b"after"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0, log[-3000:]


# -- SIGUSR1 -----------------------------------------------------------------------------------


def test_request_stats_never_waits_for_the_stats_lock(caplog: pytest.LogCaptureFixture) -> None:
    """``request_stats`` must not take the stats lock (a signal handler that interrupted its
    holder would deadlock): with the lock held it returns at once, and the serving loop makes
    the report once the lock is free."""
    server = create_server("echo", "asyncio", port=0)
    server.listen()
    serving = threading.Thread(target=server.serve_forever, name="test-asyncio-serve")
    serving.start()
    try:
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(frame(b"up"))
            assert read_frame(s) == b"up"
        check_request_stats_skips_the_stats_lock(server, caplog)
    finally:
        server.shutdown()
        serving.join(10)
    assert not serving.is_alive()
