"""The wire protocols, with no I/O (in the spirit of h11).

A codec turns a byte stream into messages and messages into bytes. It never touches a socket:
servers, clients and the load generator all feed it whatever bytes they happened to receive,
however the stream was split, and get whole messages back. This is the fix for TCP's
"sticky packets" (粘包): TCP delivers a stream, not messages, so message boundaries must be
carried in the bytes themselves.

Three codecs (see docs/protocol.md for the byte-by-byte format):

``frame`` (default)
    Each message is a 4-byte unsigned big-endian length (``struct`` format ``!I``) followed by
    that many payload bytes. Interoperates with ``struct.pack('!I', len(p)) + p``.
``line``
    Each message ends with ``\\n``; a ``\\r`` before it is dropped. Works with ``nc``/telnet.
``raw``
    No framing: each chunk received is one message. Only for comparison with hand-written
    echo servers; message boundaries are whatever the network delivered.

A codec object holds the decoding state of **one** connection; make one per connection.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Final

from bingfa.errors import FrameTooLarge, MessageTooLarge, ProtocolError, UsageError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOLS",
    "Codec",
    "FrameCodec",
    "LineCodec",
    "RawCodec",
    "make_codec",
]

DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
"""Largest message accepted by default: 16 MiB."""

_HEADER: Final = struct.Struct("!I")
_HEADER_SIZE: Final = _HEADER.size
_MAX_WIRE_LENGTH: Final = 0xFFFFFFFF


class Codec:
    """Base class of the codecs: the interface servers and clients program against.

    Args:
        max_frame_size: the largest message, in bytes, that ``feed`` accepts and ``encode``
            produces. Must be between 0 and 2**32 - 1.

    Raises:
        UsageError: for a ``max_frame_size`` out of range.
    """

    name: ClassVar[str] = "?"

    __slots__ = ("max_frame_size",)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if isinstance(max_frame_size, bool) or not isinstance(max_frame_size, int):
            raise UsageError(f"max_frame_size must be an int, got {type(max_frame_size).__name__}")
        if not 0 <= max_frame_size <= _MAX_WIRE_LENGTH:
            raise UsageError(
                f"max_frame_size must be in 0..{_MAX_WIRE_LENGTH}, got {max_frame_size}"
            )
        self.max_frame_size = max_frame_size

    def feed(self, data: bytes) -> list[bytes]:
        """Consume received bytes; return the messages they complete, in order.

        Any split of the stream gives the same messages. Bytes of an incomplete message are
        kept for the next call.

        Raises:
            ProtocolError: the bytes break the format. Messages completed before the fault are in
                ``exc.decoded``. The codec must not be fed again afterwards.
        """
        raise NotImplementedError

    def encode(self, message: bytes) -> bytes:
        """Return the bytes that carry ``message`` on the wire.

        Raises:
            MessageTooLarge: ``message`` is longer than ``max_frame_size``.
        """
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Number of buffered bytes that do not yet form a complete message."""
        return 0


class FrameCodec(Codec):
    """``!I`` length header + payload. The length is checked before any payload is buffered."""

    name = "frame"

    __slots__ = ("_buf",)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size)
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        limit = self.max_frame_size
        if not buf:
            # Fast path, the common case on a request/response connection: the chunk holds
            # exactly one whole frame. No copy into the buffer, one slice out.
            n = len(data)
            if n >= _HEADER_SIZE:
                (size,) = _HEADER.unpack_from(data)
                if size + _HEADER_SIZE == n and size <= limit:
                    payload = data[_HEADER_SIZE:]
                    return [payload if payload.__class__ is bytes else bytes(payload)]
            elif n == 0:
                return []
        buf += data
        out: list[bytes] = []
        pos = 0
        end_of_data = len(buf)
        unpack_from = _HEADER.unpack_from
        while end_of_data - pos >= _HEADER_SIZE:
            (size,) = unpack_from(buf, pos)
            if size > limit:
                hint = _foreign_protocol(bytes(buf[pos : pos + _HEADER_SIZE]))
                # Drop everything: the stream cannot be resynchronised after a bad header.
                buf.clear()
                raise FrameTooLarge(size, limit, out, hint)
            end = pos + _HEADER_SIZE + size
            if end > end_of_data:
                break
            out.append(bytes(buf[pos + _HEADER_SIZE : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def encode(self, message: bytes) -> bytes:
        try:
            size = len(message)
            if size > self.max_frame_size:
                raise MessageTooLarge(size, self.max_frame_size)
            return _HEADER.pack(size) + message
        except TypeError:
            raise _not_bytes(message) from None

    @property
    def pending(self) -> int:
        return len(self._buf)


class LineCodec(Codec):
    """Newline-terminated messages; CRLF accepted. A line longer than the limit is an error."""

    name = "line"

    __slots__ = ("_buf",)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__(max_frame_size)
        self._buf = bytearray()

    def _partial_too_long(self, partial: bytes | bytearray) -> bool:
        """Whether an unterminated line can no longer fit the limit, whatever follows.

        A trailing ``\\r`` does not count yet: it is dropped if the next byte is ``\\n``, so a
        line of exactly ``max_frame_size`` bytes split between ``\\r`` and ``\\n`` is accepted.
        """
        n = len(partial) - (1 if partial.endswith(b"\r") else 0)
        return n > self.max_frame_size

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        limit = self.max_frame_size
        if b"\n" not in data:
            buf += data
            if self._partial_too_long(buf):
                size = len(buf)
                buf.clear()
                raise ProtocolError(
                    f"line of at least {size} bytes without a newline exceeds "
                    f"max_frame_size={limit}"
                )
            return []
        buf += data
        lines = buf.split(b"\n")
        rest = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                buf.clear()
                raise ProtocolError(
                    f"line of {len(line)} bytes exceeds max_frame_size={limit}", out
                )
            out.append(bytes(line))
        if self._partial_too_long(rest):
            buf.clear()
            raise ProtocolError(
                f"line of at least {len(rest)} bytes without a newline exceeds "
                f"max_frame_size={limit}",
                out,
            )
        self._buf = bytearray(rest)
        return out

    def encode(self, message: bytes) -> bytes:
        try:
            if len(message) > self.max_frame_size:
                raise MessageTooLarge(len(message), self.max_frame_size)
            newline = b"\n" in message
        except TypeError:
            raise _not_bytes(message) from None
        if newline:
            raise UsageError("a message of the line protocol cannot contain a newline")
        if message.endswith(b"\r"):
            # The receiver drops a \r before the \n: the message would arrive shortened.
            raise UsageError("a message of the line protocol cannot end with a carriage return")
        return message + b"\n"

    @property
    def pending(self) -> int:
        return len(self._buf)


class RawCodec(Codec):
    """No framing: every non-empty chunk is one message, every message is sent as it is."""

    name = "raw"

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if len(data) > self.max_frame_size:
            raise FrameTooLarge(len(data), self.max_frame_size)
        return [data if data.__class__ is bytes else bytes(data)]

    def encode(self, message: bytes) -> bytes:
        if message.__class__ is not bytes and not isinstance(
            message, bytes | bytearray | memoryview
        ):
            raise _not_bytes(message)
        if len(message) > self.max_frame_size:
            raise MessageTooLarge(len(message), self.max_frame_size)
        return message


#: first bytes of other protocols people point at a frame server by mistake
_HTTP_METHODS: Final = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN")


def _foreign_protocol(header: bytes) -> str:
    """What a frame header that declared an absurd length looks like, or ``""``."""
    if header.startswith(_HTTP_METHODS) or header == b"PRI ":
        shown = header.decode("ascii", "replace")
        return (
            f"the bytes look like an HTTP request ({shown!r}...): this server speaks the frame "
            "protocol, a 4-byte big-endian length and then the payload (docs/protocol.md)"
        )
    if header[:1] == b"\x16" and header[1:2] == b"\x03":
        return "the bytes look like a TLS handshake: is the client using TLS and the server not?"
    return ""


def _not_bytes(message: object) -> UsageError:
    """The error for a message (a handler's reply, a client's request) that is not bytes."""
    hint = " - encode text first, e.g. reply.encode()" if isinstance(message, str) else ""
    return UsageError(
        f"a message must be bytes (a handler returns bytes or None), not "
        f"{type(message).__name__}{hint}"
    )


PROTOCOLS: Final[dict[str, type[Codec]]] = {
    "frame": FrameCodec,
    "line": LineCodec,
    "raw": RawCodec,
}
"""Protocol name → codec class."""


def make_codec(protocol: str, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> Codec:
    """Return a new codec for one connection.

    Args:
        protocol: ``"frame"``, ``"line"`` or ``"raw"``.
        max_frame_size: see :class:`Codec`.

    Raises:
        UsageError: unknown protocol name or bad ``max_frame_size``.
    """
    try:
        cls = PROTOCOLS[protocol]
    except KeyError:
        raise UsageError(
            f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}"
        ) from None
    return cls(max_frame_size)
