"""The pipe protocol between the caller and its worker processes.

Each worker has its own pair of pipes (tasks in, results out), so the caller always knows which
worker holds which job. A frame is a 4-byte little-endian length and a body; the body's first
byte is its kind:

caller → worker
    ``J`` job id (u64), then the pickled ``(fn_blob, args_list, kwargs_list, timeout)``;
    ``S`` stop after the jobs already sent; ``I`` pickled init dict (Popen-started workers).
worker → caller
    ``Y`` ready (i32 pid); ``E`` the initializer failed (pickled wrapped exception);
    ``R`` job id, elapsed seconds (f64), index of its first outcome (u32; earlier ones came
    in ``P`` frames), pickled outcomes; ``P`` job id, first index (u32), number of outcomes
    (u32, so the caller can fail exactly those items if they do not unpickle), pickled
    outcomes of a finished prefix of a long batch; ``F`` job id, pickled wrapped
    exception for the whole job (its payload could not be loaded); ``X`` retiring: send no more
    jobs (a hybrid worker abandoned a timed-out thread and will exit when idle).

Workers read and write blocking (:class:`BufferedFrameReader`, :func:`write_frame`); the
caller's IO thread uses non-blocking fds and :class:`FrameBuffer`.
"""

from __future__ import annotations

import os
import struct
from typing import Final

__all__ = [
    "BufferedFrameReader",
    "FrameBuffer",
    "frame",
    "write_frame",
]

_LEN: Final = struct.Struct("<I")
JOB: Final = struct.Struct("<cQ")
RESULT: Final = struct.Struct("<cQdI")
PARTIAL: Final = struct.Struct("<cQII")
JOBFAIL: Final = struct.Struct("<cQ")
READY: Final = struct.Struct("<ci")

K_JOB: Final = b"J"
K_STOP: Final = b"S"
K_INIT: Final = b"I"
K_READY: Final = b"Y"
K_INITFAIL: Final = b"E"
K_RESULT: Final = b"R"
K_PARTIAL: Final = b"P"
K_JOBFAIL: Final = b"F"
K_RETIRE: Final = b"X"


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix."""
    return _LEN.pack(len(body)) + body


def write_frame(fd: int, body: bytes) -> None:
    """Write one frame to a *blocking* fd (raises ``OSError``/``BrokenPipeError`` if gone)."""
    data = memoryview(frame(body))
    while data:
        n = os.write(fd, data)
        data = data[n:]


class FrameBuffer:
    """Incremental frame parser for bytes read from a non-blocking fd."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the bodies of every frame now complete, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


class BufferedFrameReader:
    """Reads frames from a *blocking* fd with as few ``read`` calls as possible (one per
    frame, or fewer when frames arrive together)."""

    __slots__ = ("_buf", "_fd", "_frames")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = FrameBuffer()
        self._frames: list[bytes] = []

    def next(self) -> bytes | None:
        """The next frame body, blocking; ``None`` at end of file."""
        frames = self._frames
        while not frames:
            data = os.read(self._fd, 1 << 18)
            if not data:
                return None
            frames.extend(self._buf.feed(data))
        return frames.pop(0)
