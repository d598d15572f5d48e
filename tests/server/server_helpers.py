"""Helpers shared by the server tests. Frames are built with bare ``struct`` on purpose: the
tests check bingfa against the wire format, not against its own codec."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from typing import TypeVar

import psutil

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
