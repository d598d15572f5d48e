"""``--workers N``: N worker processes sharing one listening socket, under a supervisor.

The supervisor binds the socket itself (:func:`~bingfa.server._base.make_listener`) and starts
every worker as a *fresh interpreter*::

    python -m bingfa serve APP --model MODEL --listen-fd FD [options...]

with only FD (plus stdin/stdout/stderr) surviving the ``exec``. Nothing the supervisor created —
threads, event loops, a gevent hub, locks — can exist in a worker, and gevent workers patch
first through :mod:`bingfa._entry` exactly as a single-process server does. The workers all
accept from the same kernel queue (an inherited socket, not ``SO_REUSEPORT``): a worker that
dies leaves its queued connections to the others, a busy worker simply does not accept, and
``--port 0`` works. See docs/workers.md for the reasoning and the measured spread.

:meth:`Supervisor.listen` returns only once every worker is listening, so the one "listening"
line ``bingfa serve`` prints means, as for a single process, that connections are served; an
app whose workers cannot start never gets that line (``listen`` raises instead).

The supervisor is one thread running one :func:`select.poll` loop over a signal wake-up pipe
(:func:`signal.set_wakeup_fd`) and the workers' stdout pipes. It

* reads every worker's stdout continuously (so no pipe ever fills): the ``bingfa: listening``
  line marks a worker ready, ``bingfa-stats {json}`` lines carry its counters, anything else is
  relayed to stderr. Workers' stderr *is* the supervisor's stderr (their log lines carry their
  own pids). The supervisor itself never writes to stdout;
* restarts a worker that exits or is killed (at once, logging its pid and status); when more
  than N workers died in the last 10 s, restarts wait an exponential backoff (0.1 s doubling,
  capped at 5 s) so a crashing app cannot fork-bomb the machine;
* gives up — logs why and exits 1 (from :meth:`~Supervisor.listen` as an error, later as
  :meth:`~Supervisor.run`'s status) — after ``max_failed_starts`` consecutive workers exited
  before they were listening (an app that fails to import, a bad option);
* SIGTERM / SIGINT: closes its copy of the listener, forwards SIGTERM to the workers (they stop
  accepting and let in-flight requests finish within ``graceful_timeout``), waits up to
  ``graceful_timeout`` + 3 s, SIGKILLs stragglers, returns 0. A second SIGTERM/SIGINT kills
  the workers at once;
* SIGHUP: starts N new workers; once every one of them is listening, SIGTERMs the old ones
  (which drain). A new worker that fails to start aborts the reload: the old ones keep serving;
* SIGUSR1: forwards SIGUSR1 to the workers, collects their ``bingfa-stats`` replies (up to 1 s)
  and logs one ``stats: workers=N open_connections=... requests=...`` line with the sums,
  followed by one line per worker.

Workers get ``PR_SET_PDEATHSIG=SIGTERM`` on Linux: if the supervisor is killed outright, its
workers drain and exit instead of lingering on the port.

When the command line selects gevent, :mod:`bingfa._entry` monkey-patches this process too;
the supervisor therefore calls the *original* ``os.fork``/``os.waitpid``/``signal.signal``/
``select.poll`` (:func:`gevent.monkey.get_original`), never gevent's cooperative versions.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from bingfa.errors import BingfaError, UsageError
from bingfa.server._base import ServerConfig, ServerStats, describe_status, make_listener

__all__ = ["Supervisor"]

log = logging.getLogger("bingfa.supervisor")

RESTART_WINDOW = 10.0
"""Seconds over which worker deaths are counted to decide on a restart backoff."""
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
SHUTDOWN_MARGIN = 3.0
"""Seconds beyond ``graceful_timeout`` that workers get to exit after SIGTERM."""
STATS_WAIT = 1.0
"""Seconds to wait for the workers' ``bingfa-stats`` replies to SIGUSR1."""

LISTENING_PREFIX = "bingfa: listening on "
STATS_PREFIX = "bingfa-stats "
STATS_FIELDS = ServerStats.FIELDS

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1
_LINE_LIMIT = 1 << 20  # a worker's stdout "line" longer than this is relayed in pieces


def _native(module: str, name: str) -> Any:
    """``module.name`` as the interpreter provides it, even if gevent has monkey-patched it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


_fork: Callable[[], int] = _native("os", "fork")
_waitpid: Callable[[int, int], tuple[int, int]] = _native("os", "waitpid")
_signal: Callable[..., Any] = _native("signal", "signal")
_set_wakeup_fd: Callable[..., int] = _native("signal", "set_wakeup_fd")
_poll: Callable[[], Any] = _native("select", "poll")
_POLLIN: int = _native("select", "POLLIN")


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def catches_signal(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux ``/proc``; True if unknown).

    Used before forwarding SIGUSR1, whose default action would kill a worker that has not
    installed its handler yet.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


@dataclass(eq=False)
class _Worker:
    pid: int
    slot: int
    generation: int
    stdout: int  # read end of its stdout pipe; -1 once closed
    started: float
    buffer: bytearray = field(default_factory=bytearray)
    ready: bool = False  # printed its "listening" line
    retiring: bool = False  # we asked it to stop: its exit is expected, not replaced
    start_timed_out: bool = False
    stats: dict[str, int] | None = None

    @property
    def starting(self) -> bool:
        """Started by us, not listening yet, and neither stopped nor timed out."""
        return not (self.ready or self.retiring or self.start_timed_out)

    def label(self) -> str:
        return f"worker {self.pid} (slot {self.slot}, generation {self.generation})"


@dataclass
class _StatsRound:
    expected: set[int]  # workers asked (or to be asked) for their counters
    unsent: set[int]  # ...not signalled yet: no SIGUSR1 handler installed so far
    deadline: float
    replies: dict[int, dict[str, int]] = field(default_factory=dict)


def _noop(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler of the supervisor's signals: the wake-up fd does the work."""


class Supervisor:
    """Run ``workers`` processes serving ``app`` under ``model`` on one shared socket.

    Args:
        app: the app spec given to ``bingfa serve`` (``echo``, ``module:attr``).
        model: an in-process model (``thread``, ``threadpool``, ``gevent``, ``asyncio``).
        workers: how many worker processes to keep running (≥ 1).
        options: :class:`~bingfa.server._base.ServerConfig` keyword fields from the command
            line; None values are "not set" and are not passed on. ``host``/``port`` (and
            ``backlog``) are used by the supervisor to bind; the rest go to every worker as
            ``--flags``.
        log_level: the workers' ``--log-level``.
        start_timeout: seconds a new worker gets to print its listening line before it is
            killed and counted as a failed start.
        max_failed_starts: consecutive workers exiting before they listen that make the
            supervisor give up (exit status 1).

    Lifecycle: :meth:`listen` (binds, starts the workers, returns the address once they all
    listen) → :meth:`run` (supervises; blocks until SIGTERM/SIGINT or giving up; returns the
    exit status). Both must run in the main thread (they handle signals). A supervisor runs
    once.

    Raises:
        UsageError: a bad model, worker count or option.
    """

    def __init__(
        self,
        app: str,
        model: str,
        workers: int,
        options: dict[str, Any],
        *,
        log_level: str = "info",
        start_timeout: float = 60.0,
        max_failed_starts: int = 5,
    ) -> None:
        from bingfa.server import MODELS

        if model not in MODELS:
            raise UsageError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        if model == "fork":
            raise UsageError("--workers does not apply to the fork model (use --max-children)")
        if workers < 1:
            raise UsageError(f"workers must be at least 1, got {workers}")
        if max_failed_starts < 1:
            raise UsageError(f"max_failed_starts must be at least 1, got {max_failed_starts}")
        given = {k: v for k, v in options.items() if v is not None}
        try:
            self.config = ServerConfig(**given)  # validates every option before any fork
        except TypeError as exc:
            raise UsageError(f"bad server option: {exc}") from None
        self.app = app
        self.model = model
        self.workers = workers
        self.options = given
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.max_failed_starts = max_failed_starts
        self._listener: socket.socket | None = None
        self._ran = False
        self._started = False
        self._wake: tuple[int, int] | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._previous_wakeup = -1
        self._give_up_reason = ""
        self._pid = os.getpid()
        self._prctl = _load_prctl()
        self._workers: dict[int, _Worker] = {}  # pid -> worker
        self._by_fd: dict[int, _Worker] = {}
        self._poller: Any = None
        self._generation = 0
        self._pending: int | None = None  # generation being started by a reload
        self._reload_again = False
        self._restart_at: dict[int, float] = {}  # slot -> when to start its replacement
        self._deaths: collections.deque[float] = collections.deque()
        self._backoff = BACKOFF_MIN
        self._failed_starts = 0
        self._stats_round: _StatsRound | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._killed = False
        self._exit_status = 0
        self._argv: list[str] = []
        self._maxfd = 65536

    # -- public -------------------------------------------------------------------------------

    def listen(self) -> tuple[str, int]:
        """Bind, start the workers and wait until every one of them is listening; return the
        bound ``(host, port)``. Idempotent.

        So the "listening" line the command line prints after this means what it means for a
        single process: connections are being served. Signal handling starts here (SIGTERM
        during start-up is honoured by :meth:`run`).

        Raises:
            NetworkError: the address cannot be bound.
            BingfaError: workers kept exiting before they were listening (the app cannot be
                loaded, a bad option...); every worker is gone and the socket closed.
            UsageError: not called from the main thread.
        """
        if self._listener is None:
            cfg = self.config
            # With reuse_port the supervisor only reserves the port (bound, not listening, so
            # the kernel never routes a connection to it); each worker listens on its own.
            self._listener = make_listener(
                cfg.host,
                cfg.port,
                cfg.backlog,
                cfg.udp,
                reuse_port=cfg.reuse_port,
                listen=not cfg.reuse_port,
            )
        address = self._listener.getsockname()[:2]
        if not self._started:
            self._started = True
            try:
                self._start()
                self._loop(lambda: self._stopping or self._all_ready())
                if self._stopping and self._exit_status:
                    self._loop(lambda: not self._workers)
                    raise BingfaError(self._give_up_reason)
            except BaseException:
                self.close()
                raise
        return address[0], address[1]

    def _all_ready(self) -> bool:
        current = self._generation
        ready = sum(w.ready for w in self._workers.values() if w.generation == current)
        return ready >= self.workers

    def worker_argv(self) -> list[str]:
        """The command line of a worker (needs :meth:`listen` first)."""
        if self._listener is None:
            raise UsageError("call listen() first")
        argv = [sys.executable, "-m", "bingfa", "serve", self.app, "--model", self.model]
        argv += ["--listen-fd", str(self._listener.fileno()), "--log-level", self.log_level]
        for key, value in self.options.items():
            if key in ("host", "port", "backlog") or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
        return argv

    @property
    def pids(self) -> list[int]:
        """Pids of the worker processes alive now (including retiring ones)."""
        return list(self._workers)

    def run(self) -> int:
        """Supervise the workers (starting them first if :meth:`listen` was not called) until
        told to stop; return the exit status.

        0 after SIGTERM/SIGINT (workers drained, or killed after the grace period); 1 when
        workers kept failing to start. Every worker is gone and the socket closed when this
        returns, even if it raises.

        Raises:
            UsageError: not called from the main thread, or called twice.
            BingfaError, NetworkError: as :meth:`listen`, when it was not called before.
        """
        if self._ran:
            raise UsageError("this supervisor has already run; create a new one")
        self._ran = True
        self.listen()
        try:
            self._loop(lambda: self._stopping and not self._workers)
            log.info("supervisor %d: all workers stopped", self._pid)
            return self._exit_status
        finally:
            self.close()

    def close(self) -> None:
        """Kill (SIGKILL) and reap any worker left, restore the signal handlers, close the
        socket. Idempotent; :meth:`run` does it on its way out."""
        self._kill_all()
        if self._wake is not None:
            wake_r, wake_w = self._wake
            self._wake = None
            _set_wakeup_fd(self._previous_wakeup)
            for sig, handler in self._previous_handlers.items():
                _signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        if self._listener is not None:
            self._listener.close()

    def _start(self) -> None:
        """Install the signal handling and the poller, then spawn the first workers."""
        if threading.current_thread() is not threading.main_thread():
            raise UsageError("a Supervisor handles signals, so it must run in the main thread")
        if not sys.executable:
            raise UsageError("cannot start workers: sys.executable is unknown")
        self._argv = self.worker_argv()
        with contextlib.suppress(ValueError, OSError):
            self._maxfd = max(os.sysconf("SC_OPEN_MAX"), 256)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake = (wake_r, wake_w)
        self._previous_handlers = {sig: _signal(sig, _noop) for sig in _HANDLED}
        self._previous_wakeup = _set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self._poller = _poll()
        self._poller.register(wake_r, _POLLIN)
        host, port = self.listen()
        log.info(
            "supervisor %d: starting %d %s workers of %s on %s:%d",
            self._pid,
            self.workers,
            self.model,
            self.app,
            host,
            port,
        )
        for slot in range(self.workers):
            self._spawn(slot, self._generation)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, done: Callable[[], bool]) -> None:
        """Poll, handle signals and worker output, reap, run timers — until ``done()``."""
        assert self._wake is not None
        wake_r = self._wake[0]
        while not done():
            timeout = self._next_timeout(time.monotonic())
            signals: list[int] = []
            for fd, _ in self._poller.poll(math.ceil(timeout * 1000)):
                if fd == wake_r:
                    signals += self._read_signals(wake_r)
                else:
                    self._read_worker(fd)
            for sig in dict.fromkeys(signals):
                self._on_signal(sig)
            self._reap()
            self._run_timers(time.monotonic())

    def _next_timeout(self, now: float) -> float:
        """Seconds until the nearest timer; at most 1 s (a periodic reap, should a SIGCHLD
        wake-up ever be lost)."""
        due = [now + 1.0]
        if not self._stopping:
            due += self._restart_at.values()
        elif not self._killed:
            due.append(self._stop_deadline)
        if self._stats_round is not None:
            due.append(self._stats_round.deadline)
            if self._stats_round.unsent:
                due.append(now + 0.02)
        due += (w.started + self.start_timeout for w in self._workers.values() if w.starting)
        return max(0.0, min(due) - now)

    def _read_signals(self, fd: int) -> list[int]:
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 512):
                data += chunk
        return list(data)

    def _on_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(sig).name
            if not self._stopping:
                self._begin_stop(f"{name} received", 0)
            elif not self._killed:
                log.warning("%s received again: killing the workers now", name)
                self._kill_remaining()
        elif sig == signal.SIGHUP:
            if self._stopping:
                log.info("SIGHUP ignored: shutting down")
            elif self._pending is not None:
                log.info("SIGHUP during a reload: another reload follows this one")
                self._reload_again = True
            else:
                self._start_reload()
        elif sig == signal.SIGUSR1:
            self._request_stats()

    def _run_timers(self, now: float) -> None:
        if self._stopping:
            if not self._killed and now >= self._stop_deadline:
                log.warning(
                    "workers still running %.1fs after SIGTERM: killing %s",
                    self.config.graceful_timeout + SHUTDOWN_MARGIN,
                    sorted(self._workers),
                )
                self._kill_remaining()
        else:
            for slot, when in list(self._restart_at.items()):
                if when <= now:
                    del self._restart_at[slot]
                    self._spawn(slot, self._generation)
        for w in list(self._workers.values()):
            if w.starting and now - w.started > self.start_timeout:
                log.error(
                    "%s did not start listening within %.0fs; killing it",
                    w.label(),
                    self.start_timeout,
                )
                w.start_timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
        rnd = self._stats_round
        if rnd is not None:
            self._send_stats_requests(rnd)
            rnd.expected &= self._workers.keys() | rnd.replies.keys()
            if now >= rnd.deadline or rnd.expected <= rnd.replies.keys():
                self._stats_round = None
                self._log_stats(rnd)

    # -- starting and reaping workers ---------------------------------------------------------

    def _spawn(self, slot: int, generation: int) -> _Worker | None:
        """Fork and exec one worker; None (after logging and scheduling) if that failed."""
        try:
            r, w = os.pipe()
        except OSError as exc:
            self._spawn_failed(slot, generation, f"cannot create a pipe: {exc}")
            return None
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = _fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(r)
            os.close(w)
            self._spawn_failed(slot, generation, f"cannot fork: {exc}")
            return None
        if pid == 0:
            self._exec_worker(w)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(w)
        os.set_blocking(r, False)
        worker = _Worker(pid, slot, generation, r, time.monotonic())
        self._workers[pid] = worker
        self._by_fd[r] = worker
        self._poller.register(r, _POLLIN)
        log.info("started %s", worker.label())
        return worker

    def _exec_worker(self, stdout_w: int) -> NoReturn:
        """In the forked child: set up descriptors and signals, then exec the worker."""
        try:
            assert self._listener is not None
            listen_fd = self._listener.fileno()
            os.dup2(stdout_w, 1)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.closerange(3, listen_fd)
            os.closerange(listen_fd + 1, self._maxfd)
            os.set_inheritable(listen_fd, True)
            _set_wakeup_fd(-1)
            for sig in (*_HANDLED, signal.SIGPIPE, signal.SIGXFSZ):
                _signal(sig, signal.SIG_DFL)
            if self._prctl is not None:
                ulong = ctypes.c_ulong
                self._prctl(_PR_SET_PDEATHSIG, ulong(signal.SIGTERM), ulong(0), ulong(0), ulong(0))
                if os.getppid() != self._pid:  # the supervisor died before prctl took hold
                    os._exit(1)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execve(self._argv[0], self._argv, os.environ)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(2, f"bingfa: cannot start a worker: {exc!r}\n".encode())
        finally:
            os._exit(127)

    def _spawn_failed(self, slot: int, generation: int, why: str) -> None:
        log.error("cannot start a worker for slot %d: %s", slot, why)
        if generation == self._pending:
            self._abort_reload(why)
        else:
            self._failed_start(slot, why)

    def _reap(self) -> None:
        for w in list(self._workers.values()):
            try:
                pid, status = _waitpid(w.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = w.pid, 0
            if pid:
                self._on_exit(w, status)

    def _on_exit(self, w: _Worker, status: int) -> None:
        self._drain(w)  # a "listening" line still in the pipe counts
        self._close_stdout(w)
        del self._workers[w.pid]
        how = describe_status(status)
        code = os.waitstatus_to_exitcode(status)
        if w.retiring:
            # Only a clean exit is a clean stop: a worker killed by a signal (even the SIGTERM
            # it was sent) did not drain, and whatever it was serving was lost.
            if code == 0:
                log.info("%s stopped (%s)", w.label(), how)
            else:
                log.warning("%s stopped with %s", w.label(), how)
            return
        if self._pending is not None and w.generation == self._pending:
            state = "after" if w.ready else "before"
            self._abort_reload(f"new {w.label()} {how} {state} it was listening")
            return
        if not w.ready:
            log.error("%s %s before it was listening", w.label(), how)
            self._failed_start(w.slot, how)
            return
        delay = self._restart_delay()
        if delay:
            log.error(
                "%s %s; restarting it in %.1fs (%d worker deaths in the last %.0fs)",
                w.label(),
                how,
                delay,
                len(self._deaths),
                RESTART_WINDOW,
            )
        else:
            log.error("%s %s; restarting it", w.label(), how)
        self._restart_at[w.slot] = time.monotonic() + delay

    def _failed_start(self, slot: int, how: str) -> None:
        self._failed_starts += 1
        if self._failed_starts >= self.max_failed_starts:
            self._give_up_reason = (
                f"giving up: {self._failed_starts} workers in a row exited before listening "
                f"(the last: {how}); {self.app} cannot be served — see the errors above"
            )
            log.error("%s", self._give_up_reason)
            self._begin_stop("workers keep failing to start", 1)
            return
        delay = self._restart_delay()
        log.info(
            "restarting slot %d %s (%d/%d failed starts in a row)",
            slot,
            f"in {delay:.1f}s" if delay else "now",
            self._failed_starts,
            self.max_failed_starts,
        )
        self._restart_at[slot] = time.monotonic() + delay

    def _restart_delay(self) -> float:
        """Record a death; 0 normally, a growing backoff if > N deaths in the window."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - RESTART_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) <= self.workers:
            self._backoff = BACKOFF_MIN
            return 0.0
        delay = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return delay

    def _retire(self, w: _Worker) -> None:
        """Ask ``w`` to finish its requests and exit; its exit is then not replaced."""
        w.retiring = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGTERM)

    def _begin_stop(self, reason: str, status: int) -> None:
        self._stopping = True
        self._exit_status = status
        self._restart_at.clear()
        self._pending = None
        self._stop_deadline = time.monotonic() + self.config.graceful_timeout + SHUTDOWN_MARGIN
        if self._listener is not None:
            self._listener.close()  # the port closes once the last worker lets go of it
        log.info(
            "supervisor %d: %s; stopping %d workers (graceful_timeout=%ss)",
            self._pid,
            reason,
            len(self._workers),
            self.config.graceful_timeout,
        )
        for w in list(self._workers.values()):
            self._retire(w)

    def _kill_remaining(self) -> None:
        self._killed = True
        for pid in list(self._workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        """Last resort on the way out of :meth:`run`: SIGKILL and reap whatever is left."""
        if not self._workers:
            return
        self._kill_remaining()
        for w in list(self._workers.values()):
            with contextlib.suppress(ChildProcessError):
                _waitpid(w.pid, 0)
            self._close_stdout(w)
        self._workers.clear()

    # -- reload -------------------------------------------------------------------------------

    def _start_reload(self) -> None:
        generation = self._generation + 1
        self._pending = generation
        old = sorted(w.pid for w in self._workers.values() if not w.retiring)
        log.info(
            "SIGHUP: starting %d new workers (generation %d) to replace %s",
            self.workers,
            generation,
            old,
        )
        for slot in range(self.workers):
            if self._pending != generation:  # a spawn failure aborted it
                return
            self._spawn(slot, generation)

    def _check_reload_done(self) -> None:
        pending = self._pending
        new = [w for w in self._workers.values() if w.generation == pending and w.ready]
        if pending is None or len(new) < self.workers:
            return
        old = [w for w in self._workers.values() if w.generation != pending and not w.retiring]
        for w in old:
            self._retire(w)
        self._generation = pending
        self._pending = None
        self._restart_at.clear()
        log.info(
            "reload done: workers %s replace %s (which finish their requests)",
            sorted(w.pid for w in new),
            sorted(w.pid for w in old),
        )
        if self._reload_again:
            self._reload_again = False
            self._start_reload()

    def _abort_reload(self, why: str) -> None:
        pending = self._pending
        self._pending = None
        self._reload_again = False
        log.error("reload failed: %s; the current workers keep serving", why)
        for w in list(self._workers.values()):
            if w.generation == pending and not w.retiring:
                self._retire(w)

    # -- worker stdout ------------------------------------------------------------------------

    def _read_worker(self, fd: int) -> None:
        w = self._by_fd.get(fd)
        if w is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stdout(w)
            return
        self._feed(w, data)

    def _drain(self, w: _Worker) -> None:
        while w.stdout >= 0:
            try:
                data = os.read(w.stdout, 65536)
            except BlockingIOError:  # a grandchild may still hold the pipe open
                break
            except OSError:
                data = b""
            if not data:
                break
            self._feed(w, data)
        if w.buffer:
            self._on_line(w, bytes(w.buffer))
            w.buffer.clear()

    def _feed(self, w: _Worker, data: bytes) -> None:
        buf = w.buffer
        buf += data
        while True:
            end = buf.find(b"\n")
            if end < 0:
                break
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._on_line(w, line)
        if len(buf) > _LINE_LIMIT:
            self._relay(bytes(buf))
            buf.clear()

    def _close_stdout(self, w: _Worker) -> None:
        if w.stdout >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._poller.unregister(w.stdout)
            self._by_fd.pop(w.stdout, None)
            os.close(w.stdout)
            w.stdout = -1

    def _on_line(self, w: _Worker, raw: bytes) -> None:
        """One line a worker wrote to stdout: readiness, stats, or output to relay."""
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if text.startswith(STATS_PREFIX):
            try:
                data = json.loads(text[len(STATS_PREFIX) :])
                snap = {k: int(data[k]) for k in STATS_FIELDS if k in data}
            except (ValueError, TypeError, AttributeError):
                log.debug("unreadable stats line from worker %d: %r", w.pid, text)
                return
            w.stats = snap
            rnd = self._stats_round
            if rnd is not None and w.pid in rnd.expected:
                rnd.replies[w.pid] = snap
        elif text.startswith(LISTENING_PREFIX) and not w.ready:
            w.ready = True
            self._failed_starts = 0
            log.info("%s is listening", w.label())
            if self._pending is not None and w.generation == self._pending:
                self._check_reload_done()
        else:
            self._relay(raw + b"\n")

    def _relay(self, data: bytes) -> None:
        """Pass a worker's other stdout output on to stderr (stdout is for the one line)."""
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            os.write(2, data)

    # -- stats --------------------------------------------------------------------------------

    def _request_stats(self) -> None:
        if self._stats_round is not None:
            log.info("SIGUSR1: stats already being collected")
            return
        expected = {w.pid for w in self._workers.values() if w.ready}
        self._stats_round = _StatsRound(expected, set(expected), time.monotonic() + STATS_WAIT)
        self._send_stats_requests(self._stats_round)

    def _send_stats_requests(self, rnd: _StatsRound) -> None:
        """SIGUSR1 each worker of ``rnd`` not signalled yet — once it handles SIGUSR1 (a worker
        prints its listening line a moment before it installs its handlers, and SIGUSR1's
        default action would kill it)."""
        for pid in list(rnd.unsent):
            if pid not in self._workers:
                rnd.unsent.discard(pid)
                rnd.expected.discard(pid)
            elif catches_signal(pid, signal.SIGUSR1):
                rnd.unsent.discard(pid)
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    rnd.expected.discard(pid)

    def _log_stats(self, rnd: _StatsRound) -> None:
        totals = dict.fromkeys(STATS_FIELDS, 0)
        for snap in rnd.replies.values():
            for k, v in snap.items():
                totals[k] += v
        missing = len(rnd.expected - rnd.replies.keys())
        log.info(
            "stats: workers=%d %s%s",
            len(rnd.replies),
            " ".join(f"{k}={v}" for k, v in totals.items()),
            f" (no reply from {missing} workers)" if missing else "",
        )
        for pid, snap in sorted(rnd.replies.items()):
            log.info("stats: worker %d: %s", pid, " ".join(f"{k}={v}" for k, v in snap.items()))
