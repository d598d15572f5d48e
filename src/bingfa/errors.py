"""bingfa's error hierarchy: every error says who is at fault.

::

    BingfaError
    ├── UsageError            local misuse: a bad argument, a wrong call order (also a ValueError)
    │   └── MessageTooLarge   we were asked to send more than the protocol allows
    ├── RemoteError           the peer misbehaved
    │   ├── ProtocolError     the peer sent bytes that break the wire format
    │   │   └── FrameTooLarge a declared length over the limit (checked before buffering)
    │   └── ConnectionClosed  the peer closed before the reply we were waiting for
    ├── NetworkError          the OS reported a failure: refused, reset, unreachable (wraps OSError)
    ├── ClosedError           we used a resource that was already closed locally
    └── Timeout               an operation ran out of time (also a builtin TimeoutError)

Lower-level exceptions are always chained (``raise ... from exc``), so ``__cause__`` holds the
original ``OSError`` or ``struct.error``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BingfaError",
    "ClosedError",
    "ConnectionClosed",
    "FrameTooLarge",
    "MessageTooLarge",
    "NetworkError",
    "ProtocolError",
    "RemoteError",
    "Timeout",
    "UsageError",
]


class BingfaError(Exception):
    """Base class of every error bingfa raises on purpose."""


class UsageError(BingfaError, ValueError):
    """The caller misused bingfa: a bad argument, an impossible option, a wrong call order."""


class MessageTooLarge(UsageError):
    """A message to be *sent* is larger than the protocol's ``max_frame_size``.

    Attributes:
        size: the message's length in bytes.
        limit: the largest length allowed.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds max_frame_size={limit}")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        # ``args`` holds only the message, which ``__init__`` cannot take back: without this,
        # pickle/copy (e.g. a process pool sending the error back) raise TypeError.
        return (type(self), (self.size, self.limit), self.__dict__)


class RemoteError(BingfaError):
    """The peer at the other end of a connection misbehaved."""


class ProtocolError(RemoteError):
    """The peer sent bytes that break the wire format.

    Attributes:
        reason: a short human-readable reason.
        decoded: complete messages that were decoded from the same input *before* the fault;
            a server still answers them, so a pipelining client loses nothing that was valid.
    """

    def __init__(self, reason: str, decoded: list[bytes] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decoded: list[bytes] = decoded if decoded is not None else []


class FrameTooLarge(ProtocolError):
    """A frame header declared a length over the limit.

    Raised as soon as the 4-byte header is seen, before any of the payload is buffered.

    Attributes:
        size: the declared length.
        limit: the largest length allowed.
        hint: what the bytes look like instead, when they are recognisably another protocol
            (an HTTP request, a TLS handshake), or ``""``.
    """

    def __init__(
        self, size: int, limit: int, decoded: list[bytes] | None = None, hint: str = ""
    ) -> None:
        message = f"declared frame length {size} exceeds max_frame_size={limit}"
        super().__init__(f"{message} ({hint})" if hint else message, decoded)
        self.size = size
        self.limit = limit
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        # See MessageTooLarge.__reduce__.
        return (type(self), (self.size, self.limit, self.decoded, self.hint), self.__dict__)


class ConnectionClosed(RemoteError):
    """The peer closed the connection before sending the reply we were waiting for.

    A bingfa server closes a connection when its handler raised, when the request broke the
    protocol, or when the server shuts down (see docs/protocol.md, "Errors").
    """


class NetworkError(BingfaError):
    """The operating system reported a network failure (refused, reset, unreachable, ...).

    The original ``OSError`` is the ``__cause__``; ``errno`` copies its errno when it has one.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class ClosedError(BingfaError):
    """A resource (client, server, executor) was used after it had been closed locally."""


class Timeout(BingfaError, TimeoutError):
    """An operation did not finish within its timeout.

    Attributes:
        timeout: the limit, in seconds, that ran out.
    """

    def __init__(self, message: str, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
