"""UDP servers: each datagram is one request; the reply goes back to its sender as one datagram.

UDP has no connection and no stream, so there is no framing and no "sticky packets": the
datagram boundary is the message boundary. It also has no delivery guarantee: datagrams may be
lost, duplicated or reordered, and a client retries (see :class:`bingfa.UdpClient`). The
handler API is the same as for TCP; ``ctx.peer`` is the sender's address and ``ctx.state`` is a
fresh dict per datagram (there is no connection to keep state for).

Datagrams over ``max_datagram_size`` (read with one spare byte, so an oversized one is seen,
not silently cut) are counted as ``dropped`` and logged — at most one line a second, with the
running count, so a flood cannot flood the log — and never answered. A handler exception
drops that reply (counted as an error, logged with its traceback). When handlers fall behind,
datagrams beyond a bounded queue are dropped and counted — as the network itself would.

Models: ``thread`` (a receiving loop feeding a pool of ``threads`` handler threads),
``gevent`` (the same code in a monkey-patched process: the threads are greenlets), ``asyncio``
(a ``DatagramProtocol``; handlers run inline, as tasks, in the thread pool, or — ``kind="cpu"``
with ``offload="process"`` — in a process pool, as for TCP). ``offload="process"`` is refused
under gevent, as for gevent TCP; the thread model, like every thread model, ignores ``offload``.

Every model logs the counters every ``stats_interval`` seconds, and on SIGUSR1. The report is
never made inside the signal handler: it takes the stats lock, which the code the signal
interrupted may hold (a self-deadlock), so the handler only asks the serving loop to report.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import selectors
import socket
import threading
import time
from typing import Any

from bingfa.apps import Context
from bingfa.errors import UsageError
from bingfa.server._asyncio import LoopSignals, new_event_loop, report_every, report_on_loop
from bingfa.server._base import BaseServer, close_wakeup_pair

__all__ = ["UdpAsyncioServer", "UdpGeventServer", "UdpThreadServer"]

log = logging.getLogger("bingfa.server")

QUEUE_PER_THREAD = 64
"""Datagrams that may wait per handler thread before new ones are dropped."""
RECV_BATCH = 256
"""Datagrams the thread model's receiving loop takes per wake-up before it looks at its
timers and requests again (a flood must not keep it from reporting or stopping)."""


class _UdpMixin(BaseServer):
    """What every UDP model shares: size check, reply sending, accounting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._oversized = 0
        self._last_oversized_log = -math.inf

    def _too_big(self, data: bytes, peer: Any) -> bool:
        """True (counted, maybe logged) when ``data`` is over ``max_datagram_size``. Called
        from one thread only: the receiving loop."""
        limit = self.config.max_datagram_size
        if len(data) <= limit:
            return False
        self.stats.drop()
        self._oversized += 1
        now = time.monotonic()
        if now - self._last_oversized_log >= 1.0:  # like refusals: a flood must not flood the log
            self._last_oversized_log = now
            log.warning(
                "dropped a datagram from %s: more than max_datagram_size=%d bytes "
                "(%d oversized datagrams dropped so far; logged at most once a second)",
                peer,
                limit,
                self._oversized,
            )
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
        self._stats_wanted = False

    def request_stats(self) -> None:
        """Ask the receiving loop to report the counters. Safe from a signal handler: it only
        sets a flag and writes a wake-up byte (the report itself takes the stats lock)."""
        self._stats_wanted = True
        self._wake()

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
        interval = self.config.stats_interval or None
        next_report = math.inf if interval is None else time.monotonic() + interval
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(listener, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self.stopping:
                    timeout = None
                    if interval is not None:
                        timeout = max(0.0, next_report - time.monotonic())
                    for key, _ in sel.select(timeout):
                        if key.fileobj is self._wake_r:
                            self._drain_wake()
                    for _ in range(RECV_BATCH):
                        if self.stopping:
                            break
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
                    # Reports happen here, in the loop, never in the signal handler.
                    if self._stats_wanted:
                        self._stats_wanted = False
                        self.report_stats()
                    if interval is not None and time.monotonic() >= next_report:
                        self.report_stats()
                        next_report = time.monotonic() + interval
        finally:
            for _ in workers:
                work.put(None)
            for t in workers:
                t.join(self.config.graceful_timeout)
            close_wakeup_pair(self._wake_r, self._wake_w)  # unregistered first, then closed

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
        from bingfa.server._gevent import is_patched

        if not is_patched():
            raise UsageError(
                "the gevent model needs a monkey-patched process: run `bingfa serve --udp "
                "--model gevent`, or call bingfa.server.patch_gevent() before anything else"
            )
        super().__init__(*args, **kwargs)
        if self.config.offload == "process":
            # As for gevent TCP: refused rather than silently run in (green) threads.
            self._wake_r.close()
            self._wake_w.close()
            raise UsageError(
                "offload='process' is available for the asyncio model; under gevent use "
                "--workers N for CPU-bound handlers"
            )


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
        elif server.mode == "process":
            from bingfa.server._offload import run_offloaded

            future = loop.run_in_executor(server.executor, run_offloaded, data, ctx)
        else:
            assert server.app.sync is not None
            future = loop.run_in_executor(server.executor, server.app.sync, data, ctx)
        self.tasks.add(future)
        future.add_done_callback(lambda f: self._done(f, data, addr))

    def _done(self, future: asyncio.Future[Any], data: bytes, addr: Any) -> None:
        self.tasks.discard(future)
        if not self.tasks:
            self.server.wake_drain()
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
    """A ``DatagramProtocol`` on an event loop (uvloop when installed).

    Signals (with :func:`bingfa.server.serve`) are handled on the loop until the drain is over,
    as for asyncio TCP (:class:`~bingfa.server._asyncio.LoopSignals`): a repeated SIGINT/SIGTERM
    halves the graceful time left for the datagrams being handled.
    """

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
        self.executor: concurrent.futures.Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._signals: LoopSignals | None = None
        self.handle_signals = False

    def _wake(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass

    def wake_drain(self) -> None:
        """No datagram is being handled any more, or the drain's deadline moved: the drain
        re-checks. Call on the loop."""
        if self._idle is not None:
            self._idle.set()

    def request_stats(self) -> None:
        """Report the counters from the loop, soon (:func:`report_on_loop`)."""
        report_on_loop(self._loop, self.report_stats)

    def _serve(self, listener: socket.socket) -> None:
        loop = new_event_loop(self.config.loop)
        if self.mode == "thread":
            self.executor = concurrent.futures.ThreadPoolExecutor(
                self.config.threads, thread_name_prefix="bingfa-handler"
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
            # Only now: until here a signal must still be handled, not kill the process.
            if self._signals is not None:
                self._signals.restore()
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._loop = loop
        if self.handle_signals:
            self._signals = LoopSignals(self, loop, self.report_stats, self.wake_drain)
            self._signals.install()
        stats_task = None
        if self.config.stats_interval:
            every = report_every(self.config.stats_interval, self.report_stats)
            stats_task = loop.create_task(every)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self, listener), sock=listener
        )
        try:
            if not self.stopping:
                await self._stop.wait()
        finally:
            if stats_task is not None:
                stats_task.cancel()
            await self._drain(protocol)
            transport.close()
            await asyncio.sleep(0)
            if self._signals is not None:
                await self._signals.end_drain()

    async def _drain(self, protocol: _DatagramProtocol) -> None:
        """Let the datagrams being handled finish, within the graceful timeout (which a
        repeated stop signal halves); then give up on their replies."""
        assert self._loop is not None and self._idle is not None
        loop = self._loop
        timeout = self.config.graceful_timeout
        signals = self._signals
        deadline = loop.time() + timeout if signals is None else signals.start_drain(timeout)
        while protocol.tasks:
            if signals is not None:
                deadline = signals.deadline()
            left = deadline - loop.time()
            if left <= 0:
                log.warning(
                    "%d datagrams still being handled after graceful_timeout; "
                    "their replies are dropped",
                    len(protocol.tasks),
                )
                for future in list(protocol.tasks):
                    future.cancel()
                break
            self._idle.clear()  # set when the last one finishes, or the deadline moved
            try:
                await asyncio.wait_for(self._idle.wait(), left)
            except TimeoutError:
                pass
