"""``fork``: one child process per connection (the seeds' "fork a Process per client").

Each accepted connection is served by a child made with :func:`os.fork`: handlers really run in
parallel on every core (no GIL between processes), a crash or a stray ``os._exit`` in a handler
takes down one connection only, and a handler that overruns ``request_timeout`` can really be
stopped (its process is ended). The cost is a fork per connection (about a millisecond, and a
few hundred KiB of copied pages) — fine for long or CPU-heavy connections, wasteful for many
short ones; ``--workers`` with an in-process model is the cheap way to use every core.

Like :class:`socketserver.ForkingMixIn`, ``config.max_children`` bounds the children alive at
once: while that many are alive the parent stops accepting and further connections wait in the
listen backlog. Finished children are reaped promptly (SIGCHLD wakes the accept loop when it
runs in the main thread; otherwise the loop polls every 50 ms), so no zombies accumulate.

Parent and child share nothing mutable after the fork:

* the parent is single-threaded (the accept loop) and forks with SIGTERM/SIGINT/SIGUSR1/SIGCHLD/
  SIGHUP blocked, so no parent signal handler can run in the child before the child installs
  its own;
* the child closes its copies of the listener and of the parent's wake-up socket pair, never
  touches the parent's selector, replaces the inherited stats object, and relies on
  :mod:`logging` re-initialising its handler locks after fork (``os.register_at_fork``);
* the child serves with :func:`~bingfa.server._blocking.serve_connection` and always ends with
  :func:`os._exit` (0 when served, 1 on any exception) — it never returns into the parent's code.

Signals in a child: SIGTERM or SIGINT shut its socket for reading (``SHUT_RD``), so the request
in progress completes, its reply is sent, and the child exits 0; SIGUSR1 is ignored (the parent
reports stats for all of them).

Counters: each child publishes its requests/bytes/errors in its own slot of an anonymous shared
memory map, so the parent's :meth:`~bingfa.server._base.BaseServer.report_stats` includes the
connections still open, not only the finished ones.

Shutdown of the parent: stop accepting, SIGTERM every child, wait up to ``graceful_timeout``
for them to finish their requests, SIGKILL the stragglers, reap all.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any, NoReturn

from bingfa.server._base import ConnStats, ServerStats, describe_status, stop_reading
from bingfa.server._blocking import BlockingServer, serve_connection

__all__ = ["ForkServer"]

log = logging.getLogger("bingfa.server")

_SLOT_FIELDS = 4  # requests, bytes_in, bytes_out, errors — unsigned 64-bit each
_REQUESTS, _BYTES_IN, _BYTES_OUT, _ERRORS = range(_SLOT_FIELDS)
_DEFAULT_SLOTS = 65536  # shared-memory slots without max_children: 2 MiB of address space,
# of which only the pages of slots in use are ever touched.

_BLOCK_AROUND_FORK = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD, signal.SIGHUP}
)
_POLL_REAP = 0.05  # reaping period when no SIGCHLD handler can be installed (not main thread)
_SAFETY_REAP = 1.0  # with the SIGCHLD handler: a scan anyway this often, in case one was missed


class _ForkStats(ServerStats):
    """The parent's counters: its own (refused connections) plus every child's slot.

    A slot is a row of ``_SLOT_FIELDS`` unsigned 64-bit counters in an anonymous shared map,
    claimed before the fork and folded into the totals when the child is reaped. Only the
    accept-loop thread calls :meth:`claim`, :meth:`forked` and :meth:`reaped`.
    """

    def __init__(self, slots: int) -> None:
        super().__init__()
        self._map = mmap.mmap(-1, slots * _SLOT_FIELDS * 8)  # MAP_SHARED | MAP_ANONYMOUS
        self.view = memoryview(self._map).cast("Q")
        self._free = list(range(slots - 1, -1, -1))
        self._live: dict[int, int] = {}  # pid -> slot (-1: no slot was free)
        self._forked = 0
        self._done = [0] * _SLOT_FIELDS
        self._children_lock = threading.Lock()  # report_stats may run on another thread

    def claim(self) -> int:
        """A zeroed slot for the next child, or -1 when all are taken (its counts are lost)."""
        if not self._free:
            return -1
        slot = self._free.pop()
        base = slot * _SLOT_FIELDS
        for i in range(_SLOT_FIELDS):
            self.view[base + i] = 0
        return slot

    def release(self, slot: int) -> None:
        """Give back a slot whose child was never started."""
        if slot >= 0:
            self._free.append(slot)

    def forked(self, pid: int, slot: int) -> None:
        """Child ``pid`` now serves a connection, counting into ``slot``."""
        with self._children_lock:
            self._live[pid] = slot
            self._forked += 1

    def reaped(self, pid: int) -> None:
        """Child ``pid`` is gone: fold its slot into the totals and free it."""
        with self._children_lock:
            slot = self._live.pop(pid, -1)
            if slot >= 0:
                base = slot * _SLOT_FIELDS
                for i in range(_SLOT_FIELDS):
                    self._done[i] += self.view[base + i]
        if slot >= 0:
            self._free.append(slot)

    def snapshot(self) -> dict[str, int]:
        snap = super().snapshot()
        with self._children_lock:
            totals = list(self._done)
            for slot in self._live.values():
                if slot >= 0:
                    base = slot * _SLOT_FIELDS
                    for i in range(_SLOT_FIELDS):
                        totals[i] += self.view[base + i]
            snap["open_connections"] = len(self._live)
            snap["total_connections"] = self._forked
        snap["requests"] += totals[_REQUESTS]
        snap["bytes_in"] += totals[_BYTES_IN]
        snap["bytes_out"] += totals[_BYTES_OUT]
        snap["errors"] += totals[_ERRORS]
        return snap


class _ChildStats(ServerStats):
    """A child's ``server.stats``: errors also go to its shared slot."""

    def __init__(self, view: memoryview, slot: int) -> None:
        super().__init__()
        self._view = view
        self._index = slot * _SLOT_FIELDS + _ERRORS if slot >= 0 else -1

    def error(self) -> None:
        super().error()
        if self._index >= 0:
            self._view[self._index] += 1


class _SlotConnStats(ConnStats):
    """A child's connection counters, kept in its shared slot so the parent sees them live."""

    __slots__ = ("_base", "_view")

    def __init__(self, view: memoryview, slot: int, peer: Any, sock: socket.socket) -> None:
        self._view = view if slot >= 0 else memoryview(bytearray(_SLOT_FIELDS * 8)).cast("Q")
        self._base = slot * _SLOT_FIELDS if slot >= 0 else 0
        super().__init__(peer, sock)

    @property  # type: ignore[override]
    def requests(self) -> int:
        return int(self._view[self._base + _REQUESTS])

    @requests.setter
    def requests(self, value: int) -> None:
        self._view[self._base + _REQUESTS] = value

    @property  # type: ignore[override]
    def bytes_in(self) -> int:
        return int(self._view[self._base + _BYTES_IN])

    @bytes_in.setter
    def bytes_in(self, value: int) -> None:
        self._view[self._base + _BYTES_IN] = value

    @property  # type: ignore[override]
    def bytes_out(self) -> int:
        return int(self._view[self._base + _BYTES_OUT])

    @bytes_out.setter
    def bytes_out(self, value: int) -> None:
        self._view[self._base + _BYTES_OUT] = value


class ForkServer(BlockingServer):
    """A child process per connection. See :class:`bingfa.server._base.BaseServer` for the
    lifecycle and the module doc for the parent/child contract.

    Honours ``max_children`` (backlog, not refusal), ``max_connections`` (live children beyond
    it are refused with a reset, as in the other models), ``idle_timeout`` (in the child) and
    ``request_timeout`` (the child ends itself once a request overruns it).
    """

    model = "fork"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self._fork_stats = _ForkStats(cfg.max_children or cfg.max_connections or _DEFAULT_SLOTS)
        self.stats = self._fork_stats
        self._children: dict[int, Any] = {}  # pid -> peer
        self._listen_sock: socket.socket | None = None
        self._sigchld = False  # set by the SIGCHLD handler: some child may have exited
        self._last_scan = 0.0

    @property
    def children(self) -> list[int]:
        """Pids of the children alive (not yet reaped) now."""
        return list(self._children)

    # -- parent -----------------------------------------------------------------------------

    def _serve(self, listener: socket.socket) -> None:
        self._listen_sock = listener
        previous: Any = None
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            previous = signal.signal(signal.SIGCHLD, self._on_sigchld)
            self._tick_interval = _SAFETY_REAP
        else:
            self._tick_interval = _POLL_REAP
        try:
            self._accept_loop(listener)
        finally:
            try:
                self._stop_children()
            finally:
                if in_main:
                    signal.signal(signal.SIGCHLD, previous)

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        self._sigchld = True
        self._send_wake(b"c")

    def _may_accept(self) -> bool:
        limit = self.config.max_children
        return limit is None or len(self._children) < limit

    def _tick(self) -> None:
        now = time.monotonic()
        if self._sigchld or now - self._last_scan >= (self._tick_interval or _POLL_REAP):
            self._sigchld = False
            self._last_scan = now
            self._reap()

    def _reap(self) -> int:
        """Collect every child that has exited; return how many are still alive."""
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # already collected by someone else
                done, status = pid, 0
            if done:
                self._collected(pid, status)
        return len(self._children)

    def _collected(self, pid: int, status: int) -> None:
        peer = self._children.pop(pid, None)
        self._fork_stats.reaped(pid)
        code = os.waitstatus_to_exitcode(status)
        if code < 0 and -code not in (signal.SIGTERM, signal.SIGKILL):
            log.warning("child %d (connection from %s) %s", pid, peer, describe_status(status))
        else:
            log.debug("child %d (connection from %s) ended: %s", pid, peer, describe_status(status))

    def _dispatch(self, conn: socket.socket, peer: Any) -> None:
        limit = self.config.max_connections
        if limit is not None and len(self._children) >= limit:
            self.refuse(conn, peer)
            return
        slot = self._fork_stats.claim()
        for stream in (sys.stdout, sys.stderr):  # or buffered output would be written twice
            with contextlib.suppress(Exception):
                stream.flush()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCK_AROUND_FORK)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            self._fork_stats.release(slot)
            log.error("cannot fork a child for %s (%s); closing the connection", peer, exc)
            conn.close()
            return
        if pid == 0:
            self._child(conn, peer, slot, old_mask)  # never returns
        try:
            self._children[pid] = peer
            self._fork_stats.forked(pid, slot)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            conn.close()  # the child has its own descriptor

    def _stop_children(self) -> None:
        """SIGTERM every child, give them ``graceful_timeout``, SIGKILL the rest, reap all."""
        if not self._reap():
            return
        log.info("stopping: %d children finishing their requests", len(self._children))
        self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + self.config.graceful_timeout
        while self._reap() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._children:
            log.warning(
                "graceful_timeout=%ss passed; killing %d children: %s",
                self.config.graceful_timeout,
                len(self._children),
                sorted(self._children),
            )
            self._signal_children(signal.SIGKILL)
            for pid in list(self._children):
                try:
                    _, status = os.waitpid(pid, 0)
                except ChildProcessError:
                    status = 0
                self._collected(pid, status)

    def _signal_children(self, sig: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # -- child ------------------------------------------------------------------------------

    def _child(self, conn: socket.socket, peer: Any, slot: int, mask: Any) -> NoReturn:
        """Serve ``conn`` in the freshly forked child, then ``os._exit``; never returns."""
        status = 1
        try:
            conn_stats = _SlotConnStats(self._fork_stats.view, slot, peer, conn)
            self._child_setup(conn, conn_stats, slot, mask)
            serve_connection(self, self._call, conn, peer, conn_stats)
            status = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                log.exception("child serving %s failed", peer)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(status)

    def _child_setup(
        self, conn: socket.socket, conn_stats: ConnStats, slot: int, mask: Any
    ) -> None:
        """Drop what belongs to the parent and install the child's signal handling."""
        self._children.clear()
        # Unregister the inherited wake-up fd before closing our copy of it (signals are still
        # blocked here, but a registered closed descriptor must never exist).
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sock in (self._listen_sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()  # our copies only: the parent's descriptors stay open
        self.stats = _ChildStats(self._fork_stats.view, slot)

        def drain(signum: int, frame: FrameType | None) -> None:
            # Finish the request in progress (or the one waiting unread), send its reply, then
            # stop: serve_connection checks `draining` after each reply. conn_stats.sock is the
            # TLS socket after a handshake.
            self.draining = True
            stop_reading(conn_stats.sock or conn)

        signal.signal(signal.SIGTERM, drain)
        signal.signal(signal.SIGINT, drain)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if self.config.request_timeout is not None:
            self._arm_request_watchdog(conn, conn_stats)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _arm_request_watchdog(self, conn: socket.socket, conn_stats: ConnStats) -> None:
        """End this child once a request runs longer than ``request_timeout``.

        A periodic SIGALRM checks the start time serve_connection publishes; the handler runs
        between bytecodes of the handler (``time.sleep`` and blocking I/O are interrupted), so
        pure-C work that never returns to the interpreter delays it until it does.
        """
        limit = self.config.request_timeout
        assert limit is not None
        stats = self.stats

        def check(signum: int, frame: FrameType | None) -> None:
            started = conn_stats.started
            if started and time.monotonic() - started > limit:
                with contextlib.suppress(BaseException):
                    log.warning(
                        "request from %s exceeded request_timeout=%ss; ending its child process "
                        "%d (the handler is stopped, the connection closed)",
                        conn_stats.peer,
                        limit,
                        os.getpid(),
                    )
                    stats.error()
                    conn.shutdown(socket.SHUT_RDWR)
                os._exit(1)

        period = max(min(0.1, limit / 4), 0.005)
        signal.signal(signal.SIGALRM, check)
        signal.setitimer(signal.ITIMER_REAL, period, period)
