"""UDP servers: each datagram is one request; the reply goes back to its sender as one datagram.

UDP has no connection and no stream, so there is no framing and no "sticky packets": the
datagram boundary is the message boundary. It also has no delivery guarantee: datagrams may be
lost, duplicated or reordered, and a client retries (see :class:`bingfa.UdpClient`). The
handler API is the same as for TCP; ``ctx.peer`` is the sender's address and ``ctx.state`` is a
fresh dict per datagram (there is no connection to keep state for).

Datagrams over ``max_datagram_size`` (read with one spare byte, so an oversized one is seen,
not silently cut) are counted as ``dropped`` and logged, never answered. A handler exception
drops that reply (counted as an error, logged with its traceback). When handlers fall behind,
datagrams beyond a bounded queue are dropped and counted — as the network itself would.

Models: ``thread`` (a receiving loop feeding a pool of ``threads`` handler threads),
``gevent`` (the same code in a monkey-patched process: the threads are greenlets), ``asyncio``
(a ``DatagramProtocol``; handlers run inline, as tasks, or in the thread pool, as for TCP).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import selectors
import signal
import socket
import threading
from typing import Any

from bingfa.apps import Context
from bingfa.errors import UsageError
from bingfa.server.asyncio import new_event_loop
from bingfa.server.base import BaseServer

__all__ = ["UdpAsyncioServer", "UdpGeventServer", "UdpThreadServer"]

log = logging.getLogger("bingfa.server")

QUEUE_PER_THREAD = 64
"""Datagrams that may wait per handler thread before new ones are dropped."""


class _UdpMixin(BaseServer):
    """What every UDP model shares: size check, reply sending, accounting."""

    def _too_big(self, data: bytes, peer: Any) -> bool:
        limit = self.config.max_datagram_size
        if len(data) <= limit:
            return False
        self.stats.drop()
        log.warning("dropped a datagram from %s: more than max_datagram_size=%d bytes", peer, limit)
        return True

    def _failed(self, peer: Any) -> None:
        self.stats.error()
        log.exception("handler %s failed for a datagram from %s; no reply", self.app.name, peer)

    def _send_failed(self, peer: Any, exc: OSError) -> None:
        self.stats.error()
        log.warning("cannot send the reply to %s: %s", peer, exc)


class UdpThreadServer(_UdpMixin):
    """A receiving loop and a pool of ``config.threads`` handler threads."""

    model = "thread"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._wake_r.setblocking(False)
        self._call = self.app.call_sync()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _signal_wakeup_fd(self) -> int | None:
        return self._wake_w.fileno()

    def _drain_wake(self) -> None:
        # Stop bytes and signal wake-up bytes (SIGUSR1 while serving): read them, or the
        # selector would report the socket readable forever.
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    def _serve(self, listener: socket.socket) -> None:
        threads = self.config.threads
        work: queue.Queue[tuple[bytes, Any] | None] = queue.Queue(threads * QUEUE_PER_THREAD)
        workers = [
            threading.Thread(target=self._work, args=(listener, work), name=f"bingfa-udp-{i}")
            for i in range(threads)
        ]
        for t in workers:
            t.start()
        listener.setblocking(False)
        size = self.config.max_datagram_size + 1
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(listener, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self.stopping:
                    for key, _ in sel.select():
                        if key.fileobj is self._wake_r:
                            self._drain_wake()
                    while not self.stopping:
                        try:
                            data, peer = listener.recvfrom(size)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:  # e.g. ICMP port unreachable from a past send
                            log.debug("recvfrom: %s", exc)
                            continue
                        if self._too_big(data, peer):
                            continue
                        try:
                            work.put_nowait((data, peer))
                        except queue.Full:
                            self.stats.drop()
        finally:
            for _ in workers:
                work.put(None)
            for t in workers:
                t.join(self.config.graceful_timeout)
            self._wake_r.close()
            self._wake_w.close()

    def _work(self, sock: socket.socket, work: queue.Queue[tuple[bytes, Any] | None]) -> None:
        call = self._call
        while True:
            item = work.get()
            if item is None:
                return
            data, peer = item
            try:
                reply = call(data, Context(peer, self.model))
            except Exception:
                self._failed(peer)
                continue
            self.stats.add(1, len(data), len(reply) if reply else 0)
            if reply is not None:
                try:
                    sock.sendto(reply, peer)
                except BlockingIOError:
                    self.stats.drop()  # the kernel's send buffer is full: UDP drops
                except OSError as exc:
                    self._send_failed(peer, exc)


class UdpGeventServer(UdpThreadServer):
    """The thread model's code in a monkey-patched process: its threads are greenlets."""

    model = "gevent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from bingfa.server.gevent import is_patched

        if not is_patched():
            raise UsageError(
                "the gevent model needs a monkey-patched process: run `bingfa serve --udp "
                "--model gevent`, or call bingfa.server.gevent.patch() before anything else"
            )
        super().__init__(*args, **kwargs)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: UdpAsyncioServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.transport: asyncio.DatagramTransport = None  # type: ignore[assignment]
        self.tasks: set[asyncio.Future[Any]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        server = self.server
        if server._too_big(data, addr):
            return
        ctx = Context(addr, "asyncio")
        if server.mode == "inline":
            assert server.app.sync is not None
            try:
                reply = server.app.sync(data, ctx)
            except Exception:
                server._failed(addr)
                return
            self._reply(data, reply, addr)
            return
        if len(self.tasks) >= server.config.threads * QUEUE_PER_THREAD:
            server.stats.drop()
            return
        loop = asyncio.get_running_loop()
        if server.mode == "async":
            assert server.app.async_ is not None
            future: asyncio.Future[Any] = asyncio.ensure_future(server.app.async_(data, ctx))
        else:
            assert server.app.sync is not None
            future = loop.run_in_executor(server.executor, server.app.sync, data, ctx)
        self.tasks.add(future)
        future.add_done_callback(lambda f: self._done(f, data, addr))

    def _done(self, future: asyncio.Future[Any], data: bytes, addr: Any) -> None:
        self.tasks.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            try:
                raise exc
            except Exception:
                self.server._failed(addr)
            return
        self._reply(data, future.result(), addr)

    def _reply(self, data: bytes, reply: bytes | None, addr: Any) -> None:
        self.server.stats.add(1, len(data), len(reply) if reply else 0)
        if reply is not None and not self.transport.is_closing():
            try:
                if reply:
                    self.transport.sendto(reply, addr)
                else:  # transports silently skip empty datagrams; an empty reply is a reply
                    self.sock.sendto(reply, addr)
            except OSError as exc:
                self.server._send_failed(addr, exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


class UdpAsyncioServer(_UdpMixin):
    """A ``DatagramProtocol`` on an event loop (uvloop when installed)."""

    model = "asyncio"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        if app.async_ is not None and (app.sync is None or app.kind != "fast"):
            self.mode = "async"
        elif app.kind == "fast" or self.config.offload == "none":
            self.mode = "inline"
        else:
            self.mode = "thread"
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.handle_signals = False

    def _wake(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass

    def _serve(self, listener: socket.socket) -> None:
        loop = new_event_loop(self.config.loop)
        if self.mode == "thread":
            self.executor = concurrent.futures.ThreadPoolExecutor(
                self.config.threads, thread_name_prefix="bingfa-handler"
            )
        try:
            loop.run_until_complete(self._main(loop, listener))
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True, cancel_futures=True)
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        self._stop = asyncio.Event()
        self._loop = loop
        signals = (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.shutdown)
        if self.handle_signals:
            loop.add_signal_handler(signal.SIGUSR1, self.report_stats)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self, listener), sock=listener
        )
        try:
            if not self.stopping:
                await self._stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self.handle_signals:
                loop.remove_signal_handler(signal.SIGUSR1)
            if protocol.tasks:
                await asyncio.wait(list(protocol.tasks), timeout=self.config.graceful_timeout)
            transport.close()
            await asyncio.sleep(0)
