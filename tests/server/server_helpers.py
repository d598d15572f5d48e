"""Helpers shared by the server tests. Frames are built with bare ``struct`` on purpose: the
tests check bingfa against the wire format, not against its own codec."""

from __future__ import annotations

import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil
import pytest

from bingfa.spawn import ServerProcess

T = TypeVar("T")


def frame(payload: bytes) -> bytes:
    """``payload`` behind its 4-byte big-endian length, as any client would send it."""
    return struct.pack("!I", len(payload)) + payload


def live_children(server: ServerProcess) -> set[int]:
    """Pids of the server process's live (non-zombie) direct children."""
    pids = set()
    for child in psutil.Process(server.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def wait_for(check: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def wait_for_log(server: ServerProcess, pattern: str, timeout: float = 5.0) -> re.Match[str]:
    """Wait until ``pattern`` appears in the server's log; return its match."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log()
        match = re.search(pattern, log)
        if match:
            return match
        assert time.monotonic() < deadline, f"{pattern!r} not in the log:\n{log[-3000:]}"
        time.sleep(0.02)


def recv_frame(sock: socket.socket) -> bytes:
    """One whole frame's payload from ``sock``; ``ConnectionError`` on EOF before it."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} bytes")
        data += chunk
    return data[4:]


def check_request_stats_skips_the_stats_lock(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """``server.request_stats`` (what SIGUSR1 calls) must not take the stats lock: a signal
    handler runs in the thread it interrupted, and if that thread holds the lock, waiting for it
    is a deadlock. With the lock held it must return at once; the serving loop then makes the
    report once the lock is free."""
    with caplog.at_level(logging.INFO, logger="bingfa.server"):
        lock = server.stats._lock
        lock.acquire()  # as the interrupted serving code would hold it
        try:
            caller = threading.Thread(target=server.request_stats, daemon=True)
            caller.start()
            caller.join(2)
            blocked = caller.is_alive()
        finally:
            lock.release()  # a blocked caller gets it now: nothing is left stuck
        caller.join(5)
        assert not blocked, "request_stats() waited for the stats lock"
        wait_for(lambda: "stats: open_connections=" in caplog.text, 5, "the stats report")
