"""``asyncio``: one event loop (uvloop when installed) on the Protocol path.

Each connection is a :class:`asyncio.Protocol`, not a streams reader/writer pair: the Protocol
path does no per-read task switching and costs 2–3× less CPU per request here.

How a request runs depends on the app (see :mod:`bingfa.apps`) and ``config.offload``:

* ``async def`` handler → awaited on the loop, one request at a time per connection;
* plain handler of kind ``fast``, or any plain handler with ``offload="none"`` → called inline
  in ``data_received``: no task, no thread hop (it must not block);
* plain handler of kind ``io``/``cpu`` with ``offload="thread"`` (default) → a bounded thread
  pool of ``config.threads`` threads, so a blocking call stalls only its own client;
* kind ``cpu`` with ``offload="process"`` → a process pool (:mod:`bingfa.server._offload`), so
  CPU-bound work neither stalls the loop nor fights it for the GIL; kind ``io`` still goes to
  the thread pool.

Replies go out in request order. Backpressure: when the transport's write buffer passes its
high-water mark (a client that does not read), or when more than ``MAX_QUEUED`` requests or
``MAX_QUEUED_BYTES`` of requests wait, the connection stops reading until it drains — so what
one pipelining client costs is bounded by bytes, not only by count.

Accepting is done here (:class:`_Acceptor`), not by ``loop.create_server``: out of descriptors,
both loops misbehave (see the class). Signals (with :func:`bingfa.server.serve`) stay handled
on the loop until the drain is over (:class:`LoopSignals`): a repeated SIGINT/SIGTERM halves
the graceful time left instead of killing the process with its requests.

Limits: ``max_connections`` resets connections over the limit in ``connection_made``;
``idle_timeout`` is a per-connection timer; ``request_timeout`` wraps a queued request in
``asyncio.wait_for`` — an async handler is cancelled, a pooled one is abandoned (its thread or
process finishes the call; the reply is discarded) and the connection is closed either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import signal
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from bingfa.apps import Context
from bingfa.errors import ProtocolError, UsageError
from bingfa.server._base import RECV_SIZE, BaseServer, ConnStats, shutdown_socket

__all__ = ["AsyncioServer", "LoopSignals", "new_event_loop", "report_every", "report_on_loop"]

log = logging.getLogger("bingfa.server")

MAX_QUEUED = 256
"""Requests queued per connection behind a running handler before reading pauses."""
MAX_QUEUED_BYTES = 4 * 1024 * 1024
"""Bytes of requests queued per connection behind a running handler before reading pauses.
At least one request is always queued, so a frame bigger than this is still served."""
ACCEPT_BATCH = 128
"""Connections accepted per wake-up of the listener before other callbacks get the loop."""
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 1.0
"""After a failed accept (EMFILE...), the listener is left alone this long, doubling."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_LINGER = 0.2
"""Seconds after the first stop signal that signals stay handled even when the drain finished
sooner: a stop signal often comes twice within milliseconds (Ctrl-C reaches a ``--workers``
worker from the terminal and again from the supervisor), and the second one must not find the
process exiting with the default action back in place (exit status -15, not 0)."""


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: ``uvloop``, ``asyncio``, or ``auto`` (uvloop when importable).

    Raises:
        UsageError: ``uvloop`` requested but not installed, or an unknown kind.
    """
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise UsageError("--loop uvloop requested but uvloop is not installed") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    elif kind != "asyncio":
        raise UsageError(f"loop must be auto, asyncio or uvloop, got {kind!r}")
    return asyncio.new_event_loop()


def report_on_loop(loop: asyncio.AbstractEventLoop | None, report: Callable[[], object]) -> None:
    """Run ``report`` on ``loop`` soon - safe from a signal handler or any thread, since the
    report takes the stats lock, which the interrupted code may hold - or right here if there
    is no running loop."""
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(report)
            return
        except RuntimeError:  # closed meanwhile
            pass
    report()


async def report_every(interval: float, report: Callable[[], object]) -> None:
    """Call ``report`` every ``interval`` seconds until cancelled (``--stats-interval``)."""
    while True:
        await asyncio.sleep(interval)
        report()


class LoopSignals:
    """SIGINT, SIGTERM and SIGUSR1 of an event-loop server, handled on its loop from before it
    serves until *after* its graceful drain — and then handed back to the handlers that were
    there before (not to the default action, which is what the loops' ``remove_signal_handler``
    leaves: a signal arriving during the drain or the exit would kill the process).

    The first SIGINT/SIGTERM calls ``server.shutdown()``. Each further one halves the time the
    drain has left (:meth:`deadline`) and calls ``on_cut``, so the drain re-reads it; a cut
    that comes before the drain began applies once it begins; one after the drain ended is
    ignored. SIGUSR1 calls ``on_stats``, on the loop (never inside a raw signal handler).

    Use from the loop's thread: :meth:`install` on the running loop, :meth:`restore` once the
    loop has stopped running (before it is closed). Both must run in the main thread.
    """

    def __init__(
        self,
        server: BaseServer,
        loop: asyncio.AbstractEventLoop,
        on_stats: Callable[[], object],
        on_cut: Callable[[], None],
    ) -> None:
        self.server = server
        self.loop = loop
        self.on_stats = on_stats
        self.on_cut = on_cut
        self.previous: dict[int, Any] = {}
        self.cuts = 0
        self.drain_end: float | None = None
        self.drained = False
        self.first_stop: float | None = None

    def install(self) -> None:
        """Handle the signals on ``self.loop`` (which must be running in the main thread)."""
        for sig in (*STOP_SIGNALS, signal.SIGUSR1):
            self.previous[sig] = signal.getsignal(sig)
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def restore(self) -> None:
        """Give the signals back to the handlers that were there before :meth:`install`."""
        if not self.previous:
            return
        # Blocked while swapping: between the loop's removal (which sets the default action)
        # and the old handler's return, a signal would kill the process. The server's own
        # threads (its pool) are gone by now, so none of them can take the signal meanwhile.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self.previous)
        try:
            for sig, previous in self.previous.items():
                self.loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)
        finally:
            self.previous.clear()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def start_drain(self, timeout: float) -> float:
        """Start the drain's clock; return its end (loop time), earlier cuts applied."""
        self.drain_end = self.loop.time() + timeout / 2**self.cuts
        return self.drain_end

    def deadline(self) -> float:
        """The drain's end now (loop time); ``inf`` before :meth:`start_drain`."""
        return math.inf if self.drain_end is None else self.drain_end

    async def end_drain(self) -> None:
        """The drain is over; return once :data:`STOP_LINGER` has passed since the first stop
        signal (at once when the stop did not come from a signal)."""
        self.drained = True
        if self.first_stop is not None:
            left = self.first_stop + STOP_LINGER - self.loop.time()
            if left > 0:
                await asyncio.sleep(left)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if sig == signal.SIGUSR1:
            self.on_stats()
        elif not self.server.stopping:
            self.first_stop = self.loop.time()
            self.server.shutdown()
        elif self.drained:
            log.info("%s received again: already stopped", name)
        else:
            self.cuts += 1
            if self.drain_end is None:
                log.warning("%s received again: the graceful timeout will be halved", name)
            else:
                now = self.loop.time()
                self.drain_end = now + max(self.drain_end - now, 0.0) / 2
                log.warning(
                    "%s received again while requests finish: graceful timeout halved, %.1fs left",
                    name,
                    self.drain_end - now,
                )
            self.on_cut()


class _Connection(asyncio.Protocol):
    """One client connection. Owned by the server's connection set until ``connection_lost``."""

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        codec = server.new_codec()
        self.feed = codec.feed
        self.encode = codec.encode
        self.mode = server.mode
        self.inline = server.mode == "inline"
        self.sync = server.app.sync
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0  # total size of ``pending``: the read-pause bound
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.ctx: Context = None  # type: ignore[assignment]
        self.stats: ConnStats = None  # type: ignore[assignment]
        self.peer: Any = None
        self.lost = False
        self.refused = False
        self.close_when_done = False
        self.write_paused = False
        self.read_paused = False
        self.writable: asyncio.Future[None] | None = None
        self.last_request = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.write = transport.write  # type: ignore[attr-defined]
        self.peer = transport.get_extra_info("peername")
        server = self.server
        limit = server.config.max_connections
        if limit is not None and len(server.connections) >= limit:
            self.refused = True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()
            server.note_refused(self.peer)
            return
        self.ctx = Context(self.peer, "asyncio")
        self.stats = ConnStats(self.peer)
        server.stats.opened(self.stats)
        server.connections.add(self)
        idle = server.config.idle_timeout
        if idle is not None:
            loop = asyncio.get_running_loop()
            self.last_request = loop.time()
            self.idle_timer = loop.call_later(idle, self._check_idle)

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        stats.bytes_in += len(data)
        fault: ProtocolError | None = None
        try:
            messages = self.feed(data)
        except ProtocolError as exc:
            fault, messages = exc, exc.decoded
        if self.inline and self.task is None and fault is None and len(messages) == 1:
            # The request/response fast path: one request, one reply; no list, no join.
            try:
                reply = self.sync(messages[0], self.ctx)  # type: ignore[misc]
                out = None if reply is None else self.encode(reply)
            except Exception:
                self._handler_failed()
                return
            stats.requests += 1
            if out is not None:
                stats.bytes_out += len(out)
                self.write(out)
            if self.idle_timer is not None:
                self.last_request = asyncio.get_running_loop().time()
            return
        if self.mode == "inline" and self.task is None:
            self._answer_inline(messages)
        elif messages:
            self.pending.extend(messages)
            self.pending_bytes += sum(map(len, messages))
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self._drain())
            self._update_reading()
        if fault is not None:
            log.warning("closing connection from %s: %s", self.peer, fault.reason)
            self.server.stats.error()
            self._close_after_pending()

    def eof_received(self) -> bool:
        # Half-close: the client sent everything it will send; answer what is queued first.
        if self.task is not None:
            self.close_when_done = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.lost = True
        if exc is not None:
            log.debug("connection from %s lost: %s", self.peer, exc)
        server = self.server
        server.connections.discard(self)
        server.stats.closed(self.stats)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.task is not None and self.mode == "async":
            self.task.cancel()
        self._wake_writer()
        if not server.connections and server.idle is not None:
            server.idle.set()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        self._update_reading()

    # -- internals ------------------------------------------------------------------------

    def _answer_inline(self, messages: list[bytes]) -> None:
        sync = self.sync
        assert sync is not None
        ctx = self.ctx
        encode = self.encode
        out: list[bytes] = []
        try:
            for message in messages:
                reply = sync(message, ctx)
                if reply is not None:
                    out.append(encode(reply))
        except Exception:
            self.stats.requests += len(out)
            self._handler_failed(out)
            return
        self.stats.requests += len(messages)
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.stats.bytes_out += len(data)
            self.transport.write(data)
        if self.idle_timer is not None:
            self.last_request = asyncio.get_running_loop().time()

    def _handler_failed(self, replies: list[bytes] | None = None) -> None:
        self.server.stats.error()
        log.exception("handler %s failed for %s; closing", self.server.app.name, self.peer)
        if replies:
            self.transport.write(b"".join(replies))
        self._clear_pending()
        self.transport.close()

    def _clear_pending(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0

    def _close_after_pending(self) -> None:
        if self.task is None:
            self.transport.close()
        else:
            self.close_when_done = True
            self.transport.pause_reading()

    def _update_reading(self) -> None:
        if self.lost or self.transport.is_closing():
            return
        want_pause = (
            self.write_paused
            or len(self.pending) >= MAX_QUEUED
            or self.pending_bytes >= MAX_QUEUED_BYTES
        )
        if want_pause != self.read_paused:
            self.read_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _wake_writer(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def _check_idle(self) -> None:
        if self.lost:
            return
        idle = self.server.config.idle_timeout
        assert idle is not None
        loop = asyncio.get_running_loop()
        left = self.last_request + idle - loop.time()
        if self.task is None and left <= 0:
            log.info("closing %s: no complete request for %.1fs (idle_timeout)", self.peer, idle)
            self.transport.close()
            return
        self.idle_timer = loop.call_later(max(left, 0.05), self._check_idle)

    async def _drain(self) -> None:
        """Answer queued requests one by one, in order (async or pooled handlers)."""
        loop = asyncio.get_running_loop()
        server = self.server
        ctx = self.ctx
        call = server.queued_call
        timeout = server.config.request_timeout
        try:
            while self.pending and not self.lost:
                message = self.pending.popleft()
                self.pending_bytes -= len(message)
                self._update_reading()
                if timeout is None:
                    reply = await call(message, ctx)
                else:
                    try:
                        reply = await asyncio.wait_for(call(message, ctx), timeout)
                    except TimeoutError:
                        server.stats.error()
                        log.warning(
                            "request from %s exceeded request_timeout=%ss; closing the connection",
                            self.peer,
                            timeout,
                        )
                        self._clear_pending()
                        self.transport.close()
                        return
                self.stats.requests += 1
                if self.lost:
                    return
                if self.idle_timer is not None:
                    self.last_request = loop.time()
                if reply is not None:
                    data = self.encode(reply)
                    self.stats.bytes_out += len(data)
                    self.transport.write(data)
                if self.write_paused and not self.lost:
                    self.writable = loop.create_future()
                    await self.writable
                    self.writable = None
        except asyncio.CancelledError:
            raise
        except Exception:
            self._handler_failed()
            return
        finally:
            self.task = None
        if not self.lost and (self.close_when_done or server.stopping):
            self.transport.close()


class _RawInlineConnection(_Connection):
    """``raw`` protocol with an inline handler: a chunk is the request, so the codec (which
    would only check the size and wrap the chunk in a list) is skipped. Used when no size
    limit can be hit (chunks are at most 256 KiB) and no idle timer runs; this is the path
    the CPU-per-request benchmark compares with a bare uvloop echo Protocol."""

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        stats.bytes_in += len(data)
        try:
            reply = self.sync(data, self.ctx)  # type: ignore[misc]
        except Exception:
            self._handler_failed()
            return
        stats.requests += 1
        if reply is not None:
            stats.bytes_out += len(reply)
            self.write(reply)


class _TlsTransport:
    """What a :class:`_Connection` writes to when TLS is on: encrypts into the raw transport.

    Only the transport methods ``_Connection`` uses are provided.
    """

    def __init__(self, conn: _TlsConnection, raw: asyncio.Transport) -> None:
        self.conn = conn
        self.raw = raw

    def write(self, data: bytes) -> None:
        try:
            self.conn.sslobj.write(data)
        except ssl.SSLError as exc:
            log.debug("TLS write to %s failed: %s", self.conn.peer, exc)
            self.raw.abort()
            return
        self.conn.flush()

    def close(self) -> None:
        if not self.raw.is_closing():
            try:
                self.conn.sslobj.unwrap()  # queue close_notify
            except ssl.SSLError:
                pass
            self.conn.flush()
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.conn.sslobj
        return self.raw.get_extra_info(name, default)


class _TlsConnection(_Connection):
    """A connection behind TLS, done with ``ssl.MemoryBIO`` inside the protocol.

    Not the loop's own TLS (``create_server(ssl=...)``): that drops failed handshakes silently
    (a plaintext client, a bad client certificate) and buffers 256 KiB per connection in both
    uvloop and the stdlib. Here a failed handshake is logged and counted, memory is OpenSSL's
    per-connection state plus what is in flight, and it works the same on either loop.
    """

    def __init__(self, server: AsyncioServer) -> None:
        super().__init__(server)
        assert server.ssl_context is not None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = server.ssl_context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.raw: asyncio.Transport = None  # type: ignore[assignment]
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.plain_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.handshake_timer = asyncio.get_running_loop().call_later(
            self.server.config.handshake_timeout, self._handshake_timed_out
        )

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if self.stats is None:  # still handshaking
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                return
            except ssl.SSLError as exc:
                self._handshake_failed(exc)
                return
            self.flush()
            if self.handshake_timer is not None:
                self.handshake_timer.cancel()
            super().connection_made(_TlsTransport(self, self.raw))  # type: ignore[arg-type]
            if self.refused:
                return
        chunks = []
        try:
            while True:
                chunk = self.sslobj.read(RECV_SIZE)
                if not chunk:  # close_notify from the client
                    self.plain_eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            log.info("TLS error from %s: %s; closing", self.peer, exc.reason or exc)
            self.flush()
            self.raw.abort()
            return
        self.flush()  # TLS 1.3 may answer reads with its own records (key updates, alerts)
        if chunks:
            super().data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if self.plain_eof and not self.raw.is_closing() and not self.eof_received():
            self.transport.close()

    def flush(self) -> None:
        """Send whatever TLS produced (handshake, records, alerts) to the raw transport."""
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.raw.write(data)

    def eof_received(self) -> bool:
        if self.stats is None:
            self._handshake_failed(ConnectionAbortedError("the client closed mid-handshake"))
            return False
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        if self.stats is not None:
            super().connection_lost(exc)

    def _handshake_failed(self, exc: Exception) -> None:
        self.flush()  # let the client see the alert, when there is one
        log.warning(
            "TLS handshake with %s failed: %s", self.peer, getattr(exc, "reason", None) or exc
        )
        self.server.stats.error()
        self.raw.close()

    def _handshake_timed_out(self) -> None:
        if self.stats is None and not self.raw.is_closing():
            self._handshake_failed(TimeoutError("no handshake within handshake_timeout"))


class _Acceptor:
    """Accepts connections on the loop itself and hands each to ``connect_accepted_socket``.

    Not ``loop.create_server``: when the process runs out of descriptors, uvloop (libuv's
    "EMFILE trick") accepts the pending connections and closes them unanswered without a log
    line, and the stdlib loop logs a traceback per attempt — up to ``backlog`` per wake-up,
    scheduling as many retries — and spins. Here an accept error (EMFILE, ENFILE, ENOBUFS,
    ENOMEM...) stops watching the listener for a backoff (10 ms doubling to 1 s, reset by the
    next successful accept), as the thread models do: connections wait in the kernel's backlog
    and are served once descriptors free up. It logs at most one line a second.

    Owned by the server's ``_main``; :meth:`close` stops it and waits for the connections
    accepted but not yet handed to their protocol, so a drain that follows sees them all.
    """

    def __init__(
        self,
        server: AsyncioServer,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.server = server
        self.loop = loop
        self.listener = listener
        self.factory = factory
        self.fd = listener.fileno()
        self.watching = False
        self.closed = False
        self.backoff = 0.0
        self.failures = 0
        self.last_log = -math.inf
        self.retry: asyncio.TimerHandle | None = None
        self.connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.listener.setblocking(False)
        self._watch()

    async def close(self) -> None:
        """Stop accepting (the backlog is left to the listener's owner); wait for the
        connections accepted so far to reach ``connection_made``."""
        self.closed = True
        self._unwatch()
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.connecting:
            await asyncio.gather(*self.connecting, return_exceptions=True)

    def _watch(self) -> None:
        if not self.watching and not self.closed:
            self.loop.add_reader(self.fd, self._accept)
            self.watching = True

    def _unwatch(self) -> None:
        if self.watching:
            self.loop.remove_reader(self.fd)
            self.watching = False

    def _accept(self) -> None:
        listener = self.listener
        for _ in range(ACCEPT_BATCH):
            if self.closed:
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while queued: next one
                continue
            except OSError as exc:
                self._back_off(exc)
                return
            self.backoff = 0.0
            conn.setblocking(False)
            task = self.loop.create_task(self._connect(conn))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError as exc:  # e.g. the client reset it already
            log.debug("cannot set up an accepted connection: %s", exc)
            conn.close()

    def _back_off(self, exc: OSError) -> None:
        self.failures += 1
        self.backoff = min(max(self.backoff * 2, ACCEPT_BACKOFF_MIN), ACCEPT_BACKOFF_MAX)
        # Unwatched meanwhile: a level-triggered listener with a full descriptor table would
        # otherwise wake the loop again at once, forever.
        self._unwatch()
        self.retry = self.loop.call_later(self.backoff, self._resume)
        now = self.loop.time()
        if now - self.last_log >= 1.0:
            self.last_log = now
            log.warning(
                "accept failed (%s); pausing accepting for %.2fs, connections wait in the "
                "backlog (%d failed accepts so far; logged at most once a second)",
                exc.strerror or exc,
                self.backoff,
                self.failures,
            )

    def _resume(self) -> None:
        self.retry = None
        if not self.server.stopping:
            self._watch()
            self._accept()  # at once: the listener may have been readable all along


class AsyncioServer(BaseServer):
    """An event loop serving every connection; see the module doc for how handlers run."""

    model = "asyncio"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        offload = self.config.offload
        if app.async_ is not None and (app.sync is None or app.kind != "fast"):
            self.mode = "async"
        elif app.kind == "fast" or offload == "none":
            self.mode = "inline"
        elif offload == "process" and app.kind == "cpu":
            self.mode = "process"
        else:
            self.mode = "thread"
        self.connections: set[_Connection] = set()
        self.executor: concurrent.futures.Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.handle_signals = False
        self.idle: asyncio.Event | None = None
        self._signals: LoopSignals | None = None

    async def queued_call(self, message: bytes, ctx: Context) -> bytes | None:
        """Run one queued request the way ``self.mode`` says."""
        if self.mode == "async":
            assert self.app.async_ is not None
            return await self.app.async_(message, ctx)
        loop = asyncio.get_running_loop()
        if self.mode == "process":
            from bingfa.server._offload import run_offloaded

            return await loop.run_in_executor(self.executor, run_offloaded, message, ctx)
        assert self.app.sync is not None
        return await loop.run_in_executor(self.executor, self.app.sync, message, ctx)

    def _wake(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop closed meanwhile
                pass

    def request_stats(self) -> None:
        """Report the counters from the loop, soon (:func:`report_on_loop`)."""
        report_on_loop(self._loop, self.report_stats)

    def _serve(self, listener: socket.socket) -> None:
        loop = new_event_loop(self.config.loop)
        if self.mode == "thread":
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config.threads, thread_name_prefix="bingfa-handler"
            )
        elif self.mode == "process":
            from bingfa.server._offload import make_process_pool

            assert self.app.sync is not None
            self.executor = make_process_pool(self.app.sync, self.config.offload_workers)
        try:
            loop.run_until_complete(self._main(loop, listener))
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True, cancel_futures=True)
            loop.run_until_complete(loop.shutdown_asyncgens())
            # Only now: until here a signal must still be handled, not kill the process.
            if self._signals is not None:
                self._signals.restore()
            loop.close()

    def _hurry(self) -> None:
        """A repeated stop signal cut the drain's deadline: wake the drain to re-read it."""
        if self.idle is not None:
            self.idle.set()

    async def _main(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        self._stop = asyncio.Event()
        self.idle = asyncio.Event()
        self._loop = loop
        if self.handle_signals:
            self._signals = LoopSignals(self, loop, self.report_stats, self._hurry)
            self._signals.install()
        stats_task = None
        if self.config.stats_interval:
            every = report_every(self.config.stats_interval, self.report_stats)
            stats_task = loop.create_task(every)
        factory: Any = _Connection
        cfg = self.config
        if self.ssl_context is not None:
            factory = _TlsConnection
        elif (
            self.mode == "inline"
            and cfg.protocol == "raw"
            and cfg.idle_timeout is None
            and cfg.max_frame_size >= 256 * 1024
        ):
            factory = _RawInlineConnection
        acceptor = _Acceptor(self, loop, listener, lambda: factory(self))
        acceptor.start()
        try:
            if not self.stopping:
                await self._stop.wait()
        finally:
            await acceptor.close()
            if self.owns_backlog:
                # New clients are refused at once, as when a loop's own server closes its
                # socket (serve_forever closes the listener only after the drain). SHUT_RD
                # on a listening socket resets its backlog, so never on a shared --workers
                # socket: that backlog is the siblings'.
                shutdown_socket(listener, socket.SHUT_RD)
            if stats_task is not None:
                stats_task.cancel()
            await self._close_connections()
            if self._signals is not None:
                await self._signals.end_drain()

    async def _close_connections(self) -> None:
        """Close idle connections now; let busy ones answer what they hold, within the graceful
        timeout (which a repeated stop signal halves: see :class:`LoopSignals`)."""
        for conn in list(self.connections):
            if conn.task is None:
                conn.transport.close()
            else:
                conn.close_when_done = True
                conn.transport.pause_reading()
        loop = asyncio.get_running_loop()
        timeout = self.config.graceful_timeout
        signals = self._signals
        deadline = loop.time() + timeout if signals is None else signals.start_drain(timeout)
        while self.connections and self.idle is not None:
            if signals is not None:
                deadline = signals.deadline()
            left = deadline - loop.time()
            if left <= 0:
                log.warning(
                    "%d connections still busy after graceful_timeout; aborting them",
                    len(self.connections),
                )
                for conn in list(self.connections):
                    if conn.task is not None:
                        conn.task.cancel()
                    conn.transport.abort()
                break
            self.idle.clear()  # set by the last connection_lost, or by _hurry
            try:
                await asyncio.wait_for(self.idle.wait(), left)
            except TimeoutError:
                pass
        # Let transports run connection_lost before the loop closes.
        await asyncio.sleep(0)
