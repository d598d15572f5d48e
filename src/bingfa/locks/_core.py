"""The machinery of :mod:`bingfa.locks`: tracked locks, the lock-order graph, the watchdog.

Design, in short:

* ``enable()`` replaces ``threading.Lock`` and ``threading.RLock`` with :class:`_TrackedLock`
  and :class:`_TrackedRLock`. ``Condition``, ``Semaphore``, ``Event``, ``Barrier``,
  ``queue.Queue`` and ``concurrent.futures`` look those names up when they are *constructed*,
  so the objects they create afterwards are tracked too. ``_thread.allocate_lock`` (which
  ``Condition`` uses for its private waiter locks) is left alone on purpose: waiter locks are
  acquired twice by one thread by design and are not mutexes.
* Each thread keeps the tracked locks it holds in a thread-local, insertion-ordered dict
  (oldest first). A lock's *class* is its creation site (``file:line``, and the column of the
  creating call). A blocking, untimed acquire while holding other locks adds order edges
  ``held class -> acquired class``; known edges cost one set lookup per held lock, new edges
  take the slow path (stack capture, cycle search, report).
* Locks created at the same site form one class, so nesting two of them (the dining
  philosophers' forks, per-account locks) is checked at the *instance* level instead: an edge
  from the nearest held lock of that class to the new one.
* A blocked acquire waits on the raw lock in slices of ``_SLICE`` seconds and is registered in
  ``_waiting``; a watchdog thread (started with ``_thread.start_new_thread``, so it is invisible
  to ``threading.enumerate()``) looks for cycles in the wait-for graph, and between slices the
  waiting thread checks whether it was chosen to raise :class:`DeadlockError`.
* The tool's own state is guarded by a raw lock (``_state_lock``, never held while calling out)
  and a per-thread ``busy`` flag: locks the tool itself takes (say, in a logging sink) never
  add edges or reports.
"""

from __future__ import annotations

import _thread
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import IO, Any, Final, Literal, TypeAlias

from bingfa.errors import UsageError
from bingfa.locks import _report
from bingfa.locks._report import (
    DeadlockError,
    LockInfo,
    LockStats,
    OrderEdge,
    Report,
    ReportKind,
    StackFrame,
    ThreadInfo,
)

__all__ = [
    "EXIT_DEADLOCK",
    "DeadlockError",
    "LockInfo",
    "LockStats",
    "OnDeadlock",
    "OrderEdge",
    "Report",
    "ReportKind",
    "Sink",
    "StackFrame",
    "ThreadInfo",
    "disable",
    "enable",
    "format_stats",
    "instrumented",
    "is_enabled",
    "reports",
    "reset",
    "stats",
]

OnDeadlock: TypeAlias = Literal["report", "raise", "exit"]
Held: TypeAlias = "dict[_Tracked, None]"  # a thread's held locks, oldest first
Sink: TypeAlias = Callable[[Report], object] | IO[str]

EXIT_DEADLOCK: Final = 86
"""Exit status of a process ended by ``on_deadlock="exit"``."""

_allocate_lock = _thread.allocate_lock
_RawRLock: Any = _thread.RLock
_get_ident = _thread.get_ident
_clock = time.perf_counter

_SLICE: Final = 0.05  # a blocked acquire re-checks its abort flag this often (seconds)
_MAX_DEPTH: Final = 48  # only the most recently acquired held locks add order edges
_STACK_LIMIT: Final = 40  # frames kept per captured stack
_MAX_REPORTS: Final = 10_000  # reports kept in memory (the sink still sees every one)

_PKG_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep
_THREADING_FILE: Final = threading.__file__
_HAS_RLOCK: Final = hasattr(_RawRLock(), "_recursion_count")
_STDLIB_DIR: Final = os.path.dirname(os.path.abspath(threading.__file__)) + os.sep


def _checks_instances(filename: str) -> bool:
    """Whether nesting two locks created at ``filename`` is checked per instance.

    Not for the standard library: ``concurrent.futures.wait()`` and ``as_completed()`` take
    all the futures' locks in set-iteration order, which an instance-level check would flag.
    """
    path = os.path.abspath(filename)
    return not (path.startswith(_STDLIB_DIR) and "site-packages" not in path) and not (
        filename.startswith("<frozen")
    )


# --------------------------------------------------------------------------- shared state

_state_lock = _allocate_lock()  # guards the graphs, reports and statistics; never held long
_config_lock = _allocate_lock()  # serialises enable()/disable()
_threads_held: dict[int, Held] = {}  # thread ident -> its held locks
_NOT_HELD: Held = {}  # a lock's ``_held`` before its first acquisition; stays empty
_waiting: dict[int, _Wait] = {}  # thread ident -> the acquire it is blocked in
_classes: dict[tuple[str, str, int, int], _LockClass] = {}  # (kind, file, line, col) -> class
_site_cache: dict[tuple[int, int, str], tuple[CodeType, _LockClass]] = {}  # by code+instruction
_edges: dict[_LockClass, dict[_LockClass, _EdgeRec]] = {}  # class-level order graph
_inst_edges: dict[int, dict[int, _EdgeRec]] = {}  # serial -> serial, same-class nesting
_inst_refs: dict[int, weakref.ref[_Tracked]] = {}  # serial -> lock, to prune dead nodes
_inst_prune_at = 4096
_reported: set[object] = set()  # dedup keys of reports already made
_reports: list[Report] = []
_serials = itertools.count(1)

# configuration, read by the slow paths (module globals are the fastest lookups)
_active = False  # report and record edges? (False after disable(): wrappers still work)
_enabled = False
_on_deadlock: OnDeadlock = "report"
_warn_after: float | None = None
_sink: Callable[[Report], object] | None = None
_interval = 0.1
_stats_mode = False
_watchdog_stop: _thread.LockType | None = None
_saved: tuple[object, object] | None = None  # threading.Lock / RLock before enable()


# Per-thread bookkeeping: ``held`` (tracked locks held, oldest first) and ``busy`` (the tool
# itself is running in this thread). A plain _thread._local is ~10 ns faster to read than a
# subclass with __init__, so a thread's first access goes through AttributeError instead.
_tls = _thread._local()


def _init_thread() -> Held:
    """Create (and register, for the watchdog) the calling thread's held-locks dict."""
    held: Held = {}
    _tls.held = held
    _tls.busy = False
    _threads_held[_get_ident()] = held
    return held


def _held_list() -> Held:
    try:
        held: Held = _tls.held
    except AttributeError:
        held = _init_thread()
    return held


def _is_busy() -> bool:
    return bool(getattr(_tls, "busy", False))


def _set_busy(value: bool) -> None:
    _held_list()
    _tls.busy = value


class _LockClass:
    """All locks created at one site: the node of the order graph, and the stats bucket."""

    __slots__ = (
        "_name",
        "after",
        "col",
        "count",
        "filename",
        "hold_max",
        "hold_total",
        "instances",
        "kind",
        "lineno",
        "n_acq",
        "n_cont",
        "sites",
        "timed",
        "wait_max",
        "wait_total",
    )

    def __init__(self, kind: str, filename: str, lineno: int, col: int) -> None:
        self.kind = kind
        self.filename = filename
        self.lineno = lineno
        self.col = col  # column of the creating call: tells apart a, b = Lock(), Lock()
        self.after: set[_LockClass] = set()  # classes known to be taken while this is held
        self.instances = _checks_instances(filename)  # same-class nesting checked per lock?
        self.clear_edges()
        self.count = 0
        self._name: str | None = None
        self.timed = False
        self.reset_stats()

    def clear_edges(self) -> None:
        """Forget the known successors; a class whose same-class nesting is not checked
        lists itself, so such nesting stays on the fast path."""
        self.after.clear()
        if not self.instances:
            self.after.add(self)

    def reset_stats(self) -> None:
        self.n_acq = 0
        self.n_cont = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.hold_total = 0.0
        self.hold_max = 0.0
        self.sites: dict[str, int] = {}

    @property
    def site(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def info(self, index: int | None = None) -> LockInfo:
        """This class (or its ``index``-th instance) as a :class:`LockInfo`."""
        if self._name is None:
            self._name = _report.guess_name(self.filename, self.lineno, self.kind, self.col)
        name = self._name if index is None else f"{self._name}#{index}"
        return LockInfo(name, self.kind, self.site)


@dataclass(frozen=True, eq=False)
class _EdgeRec:
    """An order edge as first seen: endpoints (class, instance index or None), stack, thread."""

    src: tuple[_LockClass, int | None]
    dst: tuple[_LockClass, int | None]
    stack: tuple[StackFrame, ...]
    thread: str

    def edge(self) -> OrderEdge:
        return OrderEdge(
            self.src[0].info(self.src[1]), self.dst[0].info(self.dst[1]), self.thread, self.stack
        )


class _Wait:
    """A thread blocked in a tracked acquire."""

    __slots__ = ("abort", "infinite", "lock", "reported", "t0", "tid", "warned")

    def __init__(self, lock: _Tracked, tid: int, t0: float, infinite: bool) -> None:
        self.lock = lock
        self.tid = tid
        self.t0 = t0
        self.infinite = infinite
        self.abort: Report | None = None  # set by the watchdog: raise DeadlockError(abort)
        self.warned = False
        self.reported = False


# --------------------------------------------------------------------------- tracked locks


class _Tracked:
    """Fields shared by the tracked Lock and RLock (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_a",
        "_after",
        "_cls",
        "_held",
        "_index",
        "_r",
        "_raw",
        "_serial",
        "_t0",
    )
    _reentrant: bool = False
    _kind: str = "Lock"

    _raw: Any
    _a: Callable[..., bool]
    _r: Callable[[], None]
    _cls: _LockClass
    _after: set[_LockClass]
    _held: Held  # the held dict of the thread that acquired it last (may be stale)
    _index: int
    _serial: int
    _t0: float

    def _setup(self, raw: Any, frame: FrameType | None, timed: bool) -> None:
        self._raw = raw
        self._a = raw.acquire
        self._r = raw.release
        cls = _class_for(self._kind, frame)
        if timed:
            cls.timed = True
        self._cls = cls
        self._after = cls.after
        self._held = _NOT_HELD
        self._t0 = 0.0
        cls.count += 1
        self._index = cls.count
        self._serial = next(_serials)

    def _at_fork_reinit(self) -> None:
        self._raw._at_fork_reinit()
        self._held = _NOT_HELD

    def __repr__(self) -> str:
        raw = repr(self._raw)
        return f"{raw[:-1]} tracked by bingfa.locks: {self._cls.info(self._index)}>"


class _TrackedLock(_Tracked):
    """A ``threading.Lock`` whose use feeds the lock-order graph and the wait-for graph.

    Same protocol as the lock it wraps: ``acquire(blocking=True, timeout=-1)``, ``release()``,
    ``locked()``, the context manager and ``_at_fork_reinit()``; same exceptions.
    """

    __slots__ = ()

    def __init__(self) -> None:
        self._setup(_allocate_lock(), sys._getframe(1), False)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock; see ``threading.Lock.acquire``."""
        if blocking is True and timeout == -1:
            try:
                held = _tls.held
            except AttributeError:
                held = _init_thread()
            if held:
                if len(held) > _MAX_DEPTH:
                    _check_order(self, held)
                else:
                    cls = self._cls
                    try:
                        for h in held:
                            if cls not in h._after:
                                _check_order(self, held)
                                break
                    except RuntimeError:  # another thread released one of our locks mid-loop
                        _check_order(self, held)
            if self._a(False):
                held[self] = None
                self._held = held
                return True
            return _contended(self, held, -1.0)
        return _acquire_general(self, blocking, timeout)

    def __enter__(self) -> bool:
        try:
            held = _tls.held
        except AttributeError:
            held = _init_thread()
        if held:
            if len(held) > _MAX_DEPTH:
                _check_order(self, held)
            else:
                cls = self._cls
                try:
                    for h in held:
                        if cls not in h._after:
                            _check_order(self, held)
                            break
                except RuntimeError:  # another thread released one of our locks mid-loop
                    _check_order(self, held)
        if self._a(False):
            held[self] = None
            self._held = held
            return True
        return _contended(self, held, -1.0)

    def release(self) -> None:
        """Release the lock; ``RuntimeError`` if it is not locked (reported as misuse)."""
        try:
            del self._held[self]
        except KeyError:
            _release_slow(self)
        self._r()

    def __exit__(self, t: object, v: object, tb: object) -> None:
        try:
            del self._held[self]
        except KeyError:
            _release_slow(self)
        self._r()

    def locked(self) -> bool:
        """Whether the lock is held (by any thread)."""
        return bool(self._raw.locked())

    acquire_lock = acquire
    release_lock = release
    locked_lock = locked


class _TrackedRLock(_Tracked):
    """A ``threading.RLock`` that feeds the order and wait-for graphs.

    Recursive acquisitions by the owner never block and add nothing. ``_is_owned``,
    ``_release_save`` and ``_acquire_restore`` are provided, so ``Condition.wait`` works and
    the lock leaves the thread's held locks while it waits.
    """

    __slots__ = ("_rc",)
    _reentrant = True
    _kind = "RLock"
    _rc: Callable[[], int]

    def __init__(self) -> None:
        raw = _RawRLock()
        self._rc = raw._recursion_count
        self._setup(raw, sys._getframe(1), False)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock; see ``threading.RLock.acquire``."""
        if self._rc():
            return self._a(blocking, timeout)
        if blocking is True and timeout == -1:
            try:
                held = _tls.held
            except AttributeError:
                held = _init_thread()
            if held:
                if len(held) > _MAX_DEPTH:
                    _check_order(self, held)
                else:
                    cls = self._cls
                    try:
                        for h in held:
                            if cls not in h._after:
                                _check_order(self, held)
                                break
                    except RuntimeError:  # another thread released one of our locks mid-loop
                        _check_order(self, held)
            if self._a(False):
                held[self] = None
                self._held = held
                return True
            return _contended(self, held, -1.0)
        return _acquire_general(self, blocking, timeout)

    def __enter__(self) -> bool:
        if self._rc():
            return self._a()
        try:
            held = _tls.held
        except AttributeError:
            held = _init_thread()
        if held:
            if len(held) > _MAX_DEPTH:
                _check_order(self, held)
            else:
                cls = self._cls
                try:
                    for h in held:
                        if cls not in h._after:
                            _check_order(self, held)
                            break
                except RuntimeError:  # another thread released one of our locks mid-loop
                    _check_order(self, held)
        if self._a(False):
            held[self] = None
            self._held = held
            return True
        return _contended(self, held, -1.0)

    def release(self) -> None:
        """Release once; ``RuntimeError`` if the caller does not own it (reported as misuse)."""
        if self._rc() == 1:
            try:
                del self._held[self]
            except KeyError:
                pass
        try:
            self._r()
        except RuntimeError:
            _misuse_release(self)
            raise

    def __exit__(self, t: object, v: object, tb: object) -> None:
        if self._rc() == 1:
            try:
                del self._held[self]
            except KeyError:
                pass
        try:
            self._r()
        except RuntimeError:
            _misuse_release(self)
            raise

    def _is_owned(self) -> bool:
        return bool(self._raw._is_owned())

    def _recursion_count(self) -> int:
        return self._rc()

    def _release_save(self) -> tuple[int, int]:
        if self._rc():
            self._on_release()
            _forget_held(self)
        state: tuple[int, int] = self._raw._release_save()
        return state

    def _acquire_restore(self, state: tuple[int, int]) -> None:
        self.acquire()  # tracked: order check, sliced wait, held locks
        for _ in range(state[0] - 1):
            self._a()

    def _on_release(self) -> None:
        """Hook for the timed subclass: the lock is about to be fully released."""


class _TimedLock(_TrackedLock):
    """A tracked Lock that also counts acquisitions and measures hold times."""

    __slots__ = ()

    def __init__(self) -> None:
        self._setup(_allocate_lock(), sys._getframe(1), True)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock; see ``threading.Lock.acquire``."""
        if _TrackedLock.acquire(self, blocking, timeout):
            self._t0 = _clock()
            self._cls.n_acq += 1
            return True
        return False

    def __enter__(self) -> bool:
        return self.acquire()

    def release(self) -> None:
        """Release the lock; see ``threading.Lock.release``."""
        t0 = self._t0
        _TrackedLock.release(self)
        dt = _clock() - t0
        cls = self._cls
        cls.hold_total += dt
        if dt > cls.hold_max:
            cls.hold_max = dt

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self.release()

    acquire_lock = acquire
    release_lock = release


class _TimedRLock(_TrackedRLock):
    """A tracked RLock that also counts acquisitions and measures hold times."""

    __slots__ = ()

    def __init__(self) -> None:
        raw = _RawRLock()
        self._rc = raw._recursion_count
        self._setup(raw, sys._getframe(1), True)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock; see ``threading.RLock.acquire``."""
        if self._rc():
            return self._a(blocking, timeout)
        if _TrackedRLock.acquire(self, blocking, timeout):
            self._t0 = _clock()
            self._cls.n_acq += 1
            return True
        return False

    def __enter__(self) -> bool:
        return self.acquire()

    def release(self) -> None:
        """Release once; see ``threading.RLock.release``."""
        if self._rc() == 1:
            t0 = self._t0
            _TrackedRLock.release(self)
            dt = _clock() - t0
            cls = self._cls
            cls.hold_total += dt
            if dt > cls.hold_max:
                cls.hold_max = dt
        else:
            _TrackedRLock.release(self)

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self.release()

    def _on_release(self) -> None:
        _note_hold(self._cls, _clock() - self._t0)


def _note_hold(cls: _LockClass, dt: float) -> None:
    cls.hold_total += dt
    if dt > cls.hold_max:
        cls.hold_max = dt


# --------------------------------------------------------------------------- slow paths


def _acquire_general(lock: _Tracked, blocking: bool, timeout: float) -> bool:
    """Trylocks, timed acquires and odd argument spellings; same errors as ``_thread.lock``.

    Trylocks and timed acquires add no order edges (they cannot deadlock), but the lock they
    take is held, so locks taken under it get edges from it.
    """
    if not blocking:
        if timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if not lock._a(False):
            return False
    elif timeout == -1:  # blocking given as a truthy non-True value: the plain path
        if isinstance(lock, _TrackedRLock):
            return _TrackedRLock.acquire(lock)
        assert isinstance(lock, _TrackedLock)
        return _TrackedLock.acquire(lock)
    else:
        if timeout < 0:
            raise ValueError("timeout value must be positive")
        if timeout > threading.TIMEOUT_MAX:
            raise OverflowError("timeout value is too large")
        if not lock._a(False):
            return _contended(lock, _held_list(), float(timeout))
    held = _held_list()
    held[lock] = None
    lock._held = held
    return True


def _contended(lock: _Tracked, held: Held, timeout: float) -> bool:
    """The lock is taken: wait for it in slices (``timeout < 0``: forever), as a known waiter."""
    if timeout < 0 and not lock._reentrant and _active and lock in held:
        _self_deadlock(lock)
    tid = _get_ident()
    t0 = _clock()
    site = _caller_site(sys._getframe(1))
    rec = _Wait(lock, tid, t0, timeout < 0)
    _waiting[tid] = rec
    acquire = lock._a
    got = False
    try:
        if timeout < 0:
            while not acquire(True, _SLICE):
                _between_slices(rec)
            got = True
        else:
            deadline = t0 + timeout
            while True:
                remaining = deadline - _clock()
                if remaining <= 0:
                    got = acquire(False)
                    break
                if acquire(True, remaining if remaining < _SLICE else _SLICE):
                    got = True
                    break
                _between_slices(rec)
    finally:
        if _waiting.get(tid) is rec:
            del _waiting[tid]
    waited = _clock() - t0
    cls = lock._cls
    with _state_lock:
        cls.n_cont += 1
        cls.wait_total += waited
        if waited > cls.wait_max:
            cls.wait_max = waited
        cls.sites[site] = cls.sites.get(site, 0) + 1
    if got:
        held[lock] = None
        lock._held = held
    return got


def _between_slices(rec: _Wait) -> None:
    if rec.abort is not None:
        raise DeadlockError(rec.abort)
    warn = _warn_after
    if warn is not None and not rec.warned and _active and _clock() - rec.t0 >= warn:
        rec.warned = True
        _report_long_wait(rec)


def _forget_held(lock: _Tracked) -> None:
    """Drop ``lock`` from the held locks it was recorded in (out-of-order or foreign release)."""
    lock._held.pop(lock, None)
    lock._held = _NOT_HELD


def _release_slow(lock: _Tracked) -> None:
    """A Lock released that is not recorded as held: it is not locked (misuse; the raw
    release then raises ``RuntimeError``), or it was locked without a record (for example
    across a fork), in which case there is nothing to forget."""
    if lock._raw.locked():
        _forget_held(lock)
    else:
        lock._held = _NOT_HELD
        if _active:
            _misuse_release(lock)


def _check_order(lock: _Tracked, held: Held) -> None:
    """Record new order edges into ``lock`` from the held locks; report cycles they close.

    Called before the acquire can block, when some held lock has no known edge to
    ``lock``'s class (or is of the same class), or when more than ``_MAX_DEPTH`` locks are
    held (only the ``_MAX_DEPTH`` most recently acquired ones are then considered).
    """
    if not _active or _tls.busy:
        return
    cls = lock._cls
    new: list[_LockClass] = []
    nearest: _Tracked | None = None
    for h in list(held)[-_MAX_DEPTH:]:  # a snapshot: other threads may release our locks
        if h is lock:
            continue
        hc = h._cls
        if hc is cls:
            if cls.instances:
                nearest = h
        elif cls not in hc.after and hc not in new:
            new.append(hc)
    if nearest is not None and lock._serial in _inst_edges.get(nearest._serial, ()):
        nearest = None
    if not new and nearest is None:
        return
    _tls.busy = True
    try:
        stack = _capture_stack(sys._getframe(1))
        thread = _thread_name(_get_ident())
        cycles: list[tuple[list[_EdgeRec], bool]] = []
        with _state_lock:
            for hc in new:
                if cls in hc.after:
                    continue
                rec = _EdgeRec((hc, None), (cls, None), stack, thread)
                _edges.setdefault(hc, {})[cls] = rec
                hc.after.add(cls)
                path = _find_path(_edges, cls, hc)
                if path is not None:
                    cycle = [rec, *path]
                    key = frozenset((e.src[0], e.dst[0]) for e in cycle)
                    if key not in _reported:
                        _reported.add(key)
                        cycles.append((cycle, False))
            if nearest is not None:
                a, b = nearest._serial, lock._serial
                edges = _inst_edges.setdefault(a, {})
                if b not in edges:
                    rec = _EdgeRec((cls, nearest._index), (cls, lock._index), stack, thread)
                    edges[b] = rec
                    _inst_refs.setdefault(a, weakref.ref(nearest))
                    _inst_refs.setdefault(b, weakref.ref(lock))
                    ipath = _find_path(_inst_edges, b, a)
                    if ipath is not None:
                        cycle = [rec, *ipath]
                        ikey = frozenset(id(e) for e in cycle)
                        if ikey not in _reported:
                            _reported.add(ikey)
                            cycles.append((cycle, True))
                    if len(_inst_refs) > _inst_prune_at:
                        _prune_instances()
        for cycle, instances in cycles:
            edges_out = _rotate(tuple(e.edge() for e in cycle))
            _emit(
                Report(
                    kind="potential-deadlock",
                    message=_report.format_potential(edges_out, instances=instances),
                    locks=tuple(e.held for e in edges_out),
                    edges=edges_out,
                )
            )
    finally:
        _tls.busy = False


def _rotate(edges: tuple[OrderEdge, ...]) -> tuple[OrderEdge, ...]:
    """The same cycle, starting at the edge whose held lock was created first (by site)."""

    def key(edge: OrderEdge) -> tuple[str, int, str]:
        path, _, line = edge.held.site.rpartition(":")
        return (path, int(line) if line.isdigit() else 0, edge.held.name)

    start = min(range(len(edges)), key=lambda i: key(edges[i]))
    return edges[start:] + edges[:start]


def _find_path(
    graph: dict[Any, dict[Any, _EdgeRec]], start: object, goal: object
) -> list[_EdgeRec] | None:
    """Shortest edge path ``start -> ... -> goal`` in ``graph`` (breadth first), or None."""
    if start == goal:
        return []
    parent: dict[object, tuple[object, _EdgeRec]] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt: list[object] = []
        for node in frontier:
            for succ, rec in graph.get(node, {}).items():
                if succ in seen:
                    continue
                seen.add(succ)
                parent[succ] = (node, rec)
                if succ == goal:
                    path: list[_EdgeRec] = []
                    cur: object = succ
                    while cur != start:
                        prev, edge = parent[cur]
                        path.append(edge)
                        cur = prev
                    path.reverse()
                    return path
                nxt.append(succ)
        frontier = nxt
    return None


def _prune_instances() -> None:
    """Forget instance-level edges of locks that no longer exist (``_state_lock`` held)."""
    global _inst_prune_at
    dead = {serial for serial, ref in _inst_refs.items() if ref() is None}
    for serial in dead:
        del _inst_refs[serial]
        _inst_edges.pop(serial, None)
    for succs in _inst_edges.values():
        for serial in dead.intersection(succs):
            del succs[serial]
    _inst_prune_at = max(4096, 2 * len(_inst_refs))


# --------------------------------------------------------------------------- reports


def _emit(report: Report) -> None:
    """Keep ``report`` and hand it to the sink (the tool's own lock use is not tracked)."""
    with _state_lock:
        if len(_reports) < _MAX_REPORTS:
            _reports.append(report)
    busy = _is_busy()
    _set_busy(True)
    try:
        sink = _sink if _sink is not None else _write_stderr
        sink(report)
    except Exception:  # a broken sink must not break the program under test
        pass
    finally:
        _tls.busy = busy


def _write_stderr(report: Report) -> None:
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    if stream is not None:
        stream.write(report.message + "\n")
        stream.flush()


def _exit_now(report: Report) -> None:
    """``on_deadlock="exit"``: make sure the report reached stderr, then ``os._exit(86)``."""
    if _sink is not None:
        try:
            _write_stderr(report)
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    os._exit(EXIT_DEADLOCK)


def _self_deadlock(lock: _Tracked) -> None:
    """A thread acquires (blocking, untimed) a Lock it already holds: report, then act."""
    tid = _get_ident()
    key = ("self-deadlock", lock._serial, tid)
    if key in _reported:
        return
    _reported.add(key)
    info = lock._cls.info(lock._index)
    me = _thread_info(tid, sys._getframe(1), waiting_for=info)
    action = {
        "raise": "Raising DeadlockError in this thread (on_deadlock='raise').",
        "exit": f"Exiting with status {EXIT_DEADLOCK} (on_deadlock='exit').",
        "report": "This thread now waits forever unless another thread releases the lock.",
    }[_on_deadlock]
    body = (
        f"  thread {me.name!r} acquires {info}, which it already holds: a Lock is not"
        f" re-entrant, so this is a self-deadlock (use an RLock, or do not re-acquire).\n  {action}"
    )
    report = Report(
        kind="misuse",
        message=_report.format_block("MISUSE: self-deadlock", body, [me], {}),
        locks=(info,),
        threads=(me,),
    )
    _emit(report)
    if _on_deadlock == "raise":
        raise DeadlockError(report)
    if _on_deadlock == "exit":
        _exit_now(report)


def _misuse_release(lock: _Tracked) -> None:
    """Report a release of a Lock that is not locked, or of an RLock the caller does not own."""
    tid = _get_ident()
    frame = sys._getframe(1)
    site = _caller_site(frame)
    key = ("release", lock._serial, site)
    if key in _reported:
        return
    _reported.add(key)
    info = lock._cls.info(lock._index)
    me = _thread_info(tid, frame)
    threads = [me]
    if lock._reentrant:
        owner = _owner_of(lock)
        whose = "nobody holds it" if owner is None else f"it is held by {_thread_name(owner)!r}"
        if owner is not None:
            threads.append(_thread_info(owner, sys._current_frames().get(owner)))
        what = f"releases {info}, which it does not own ({whose}): RuntimeError follows."
    else:
        what = f"releases {info}, which is not locked: RuntimeError follows."
    body = f"  thread {me.name!r} {what}"
    _emit(
        Report(
            kind="misuse",
            message=_report.format_block("MISUSE: release of a lock not held", body, threads, {}),
            locks=(info,),
            threads=tuple(threads),
        )
    )


def _report_long_wait(rec: _Wait) -> None:
    """Called by the waiting thread itself once its wait passed ``warn_after``."""
    lock = rec.lock
    info = lock._cls.info(lock._index)
    owner = _owner_of(lock)
    me = _thread_info(rec.tid, sys._getframe(1), waiting_for=info)
    threads = [me]
    owners: dict[int, str] = {}
    if owner is not None:
        owners[rec.tid] = _thread_name(owner)
        threads.append(_thread_info(owner, sys._current_frames().get(owner)))
    holder = f"held by {owners[rec.tid]!r}" if owner is not None else "holder unknown"
    body = (
        f"  thread {me.name!r} has waited {_clock() - rec.t0:.2f} s (warn_after={_warn_after})"
        f" for {info}, {holder}."
    )
    _emit(
        Report(
            kind="long-wait",
            message=_report.format_block("LONG WAIT", body, threads, owners),
            locks=(info,),
            threads=tuple(threads),
        )
    )


# --------------------------------------------------------------------------- threads & stacks

_internal_cache: dict[str, bool] = {}
_outer_cache: dict[str, bool] = {}
_outer_stop_dirs: tuple[str, ...] = ()  # stack capture stops at frames under these dirs


def set_outer_stop_dirs(dirs: tuple[str, ...]) -> None:
    """Stop captured stacks at frames from ``dirs`` (the pytest plugin passes pytest's own)."""
    global _outer_stop_dirs
    _outer_stop_dirs = tuple(os.path.abspath(d) + os.sep for d in dirs)
    _outer_cache.clear()


def _outer_stop(filename: str) -> bool:
    hit = _outer_cache.get(filename)
    if hit is None:
        hit = os.path.abspath(filename).startswith(_outer_stop_dirs) if _outer_stop_dirs else False
        _outer_cache[filename] = hit
    return hit


def _internal(filename: str) -> bool:
    """Frames of this package and of threading.py are skipped at the top of stacks."""
    hit = _internal_cache.get(filename)
    if hit is None:
        hit = filename == _THREADING_FILE or os.path.abspath(filename).startswith(_PKG_DIR)
        _internal_cache[filename] = hit
    return hit


def _user_frame(frame: FrameType | None) -> FrameType | None:
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


def _class_for(kind: str, frame: FrameType | None) -> _LockClass:
    """The class of a lock created now: the first user frame's file, line and call column."""
    frame = _user_frame(frame)
    if frame is None:
        key = (kind, "<unknown>", 0, -1)
    else:
        code = frame.f_code
        lasti = frame.f_lasti
        fast = (id(code), lasti, kind)
        hit = _site_cache.get(fast)
        if hit is not None and hit[0] is code:
            return hit[1]
        key = (kind, code.co_filename, frame.f_lineno, _column(code, lasti))
    cls = _classes.get(key)
    if cls is None:
        cls = _classes.setdefault(key, _LockClass(*key))
    if frame is not None:
        _site_cache[fast] = (code, cls)
    return cls


def _column(code: CodeType, lasti: int) -> int:
    """The start column of the instruction at byte offset ``lasti`` (-1 if unknown)."""
    for position in itertools.islice(code.co_positions(), lasti // 2, None):
        col = position[2]
        return -1 if col is None else col
    return -1


def _caller_site(frame: FrameType | None) -> str:
    frame = _user_frame(frame)
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _capture_stack(frame: FrameType | None) -> tuple[StackFrame, ...]:
    """The stack from ``frame`` outwards, innermost first, without the tool's own frames.

    Frames of this package and threading.py are skipped at the inner end; the walk stops at
    an outer frame of this package (the ``python -m bingfa.locks`` runner) or under
    ``_outer_stop_dirs`` (pytest's), and outer threading.py frames (``Thread._bootstrap``
    ...) are dropped.
    """
    frame = _user_frame(frame)
    out: list[StackFrame] = []
    while frame is not None and len(out) < _STACK_LIMIT:
        code = frame.f_code
        filename = code.co_filename
        if (filename != _THREADING_FILE and _internal(filename)) or _outer_stop(filename):
            break
        out.append(StackFrame(filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    while out and out[-1].filename == _THREADING_FILE:
        out.pop()
    return tuple(out)


def _thread_name(tid: int) -> str:
    active: dict[int, threading.Thread] = getattr(threading, "_active", {})
    thread = active.get(tid)
    return thread.name if thread is not None else f"thread-{tid}"


def _owner_of(lock: _Tracked) -> int | None:
    for tid, held in list(_threads_held.items()):
        if lock in list(held):
            return tid
    return None


def _holdings(tid: int) -> tuple[LockInfo, ...]:
    held = _threads_held.get(tid)
    if held is None:
        return ()
    return tuple(h._cls.info(h._index) for h in list(held))


def _thread_info(
    tid: int, frame: FrameType | None, waiting_for: LockInfo | None = None
) -> ThreadInfo:
    return ThreadInfo(
        name=_thread_name(tid),
        ident=tid,
        stack=_capture_stack(frame),
        waiting_for=waiting_for,
        holding=_holdings(tid),
    )


# --------------------------------------------------------------------------- watchdog


def _watchdog(stop: _thread.LockType, interval: float) -> None:
    """Body of the watchdog thread: every ``interval`` s, look for wait-for cycles."""
    _set_busy(True)
    prune_at = 64
    while not stop.acquire(True, interval):
        try:
            _scan_deadlocks()
            if len(_threads_held) > prune_at:
                prune_at = max(64, 2 * _prune_threads())
        except Exception:  # never let the watchdog die (or print) on a transient error
            pass


def _prune_threads() -> int:
    """Forget the held dicts of finished threads that hold nothing; return how many remain."""
    alive = sys._current_frames()
    for tid, held in list(_threads_held.items()):
        if not held and tid not in alive:
            _threads_held.pop(tid, None)
    return len(_threads_held)


def _wait_cycles(min_age: float) -> list[list[_Wait]]:
    """Cycles in the wait-for graph among untimed waits older than ``min_age`` seconds."""
    now = _clock()
    waits = {t: r for t, r in list(_waiting.items()) if r.infinite and now - r.t0 >= min_age}
    if len(waits) < 2:
        return []
    owners: dict[int, int] = {}
    for holder, held in list(_threads_held.items()):
        for lock in list(held):
            owners[id(lock)] = holder
    cycles: list[list[_Wait]] = []
    done: set[int] = set()
    for start in waits:
        path: list[int] = []
        index: dict[int, int] = {}
        tid: int | None = start
        while tid is not None and tid in waits and tid not in done and tid not in index:
            index[tid] = len(path)
            path.append(tid)
            tid = owners.get(id(waits[tid].lock))
        if tid is not None and tid in index:
            cycle = path[index[tid] :]
            if len(cycle) >= 2:  # a thread waiting for itself was reported synchronously
                cycles.append([waits[t] for t in cycle])
        done.update(path)
    return cycles


def _scan_deadlocks() -> None:
    if len(_waiting) < 2:
        return
    for cycle in _wait_cycles(_interval):
        if all(rec.reported for rec in cycle):
            continue
        # Re-check against fresh snapshots: report only a cycle that is still there.
        again = {frozenset(id(r) for r in c) for c in _wait_cycles(0.0)}
        if frozenset(id(r) for r in cycle) not in again:
            continue
        _report_deadlock(cycle)


def _report_deadlock(cycle: list[_Wait]) -> None:
    for rec in cycle:
        rec.reported = True
    frames = sys._current_frames()
    victim = max(cycle, key=lambda r: r.t0)
    threads: list[ThreadInfo] = []
    owners: dict[int, str] = {}
    for i, rec in enumerate(cycle):
        nxt = cycle[(i + 1) % len(cycle)]
        owners[rec.tid] = _thread_name(nxt.tid)
        info = rec.lock._cls.info(rec.lock._index)
        threads.append(_thread_info(rec.tid, frames.get(rec.tid), waiting_for=info))
    if _on_deadlock == "raise":
        action = (
            f"Raising DeadlockError in thread {_thread_name(victim.tid)!r} (on_deadlock='raise')."
        )
    elif _on_deadlock == "exit":
        action = f"Exiting with status {EXIT_DEADLOCK} (on_deadlock='exit')."
    else:
        action = "These threads will not make progress (on_deadlock='report')."
    report = Report(
        kind="deadlock",
        message=_report.format_deadlock(threads, owners, action),
        locks=tuple(t.waiting_for for t in threads if t.waiting_for is not None),
        threads=tuple(threads),
    )
    _emit(report)
    if _on_deadlock == "raise":
        victim.abort = report
    elif _on_deadlock == "exit":
        _exit_now(report)


def _start_watchdog(interval: float) -> None:
    global _watchdog_stop
    stop = _allocate_lock()
    stop.acquire()
    _watchdog_stop = stop
    _thread.start_new_thread(_watchdog, (stop, interval))


def _stop_watchdog() -> None:
    global _watchdog_stop
    if _watchdog_stop is not None:
        _watchdog_stop.release()
        _watchdog_stop = None


def _after_fork_in_child() -> None:
    """Only the forking thread survives a fork: forget the others, restart the watchdog."""
    global _state_lock, _config_lock
    _state_lock = _allocate_lock()
    _config_lock = _allocate_lock()
    held = _held_list()
    _threads_held.clear()
    _threads_held[_get_ident()] = held
    _waiting.clear()
    # threading._after_fork() just built a new _active_limbo_lock with our RLock: undo that.
    if isinstance(getattr(threading, "_active_limbo_lock", None), _Tracked):
        threading._active_limbo_lock = _thread.RLock()  # type: ignore[attr-defined]
    if _enabled:
        _start_watchdog(_interval)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- public API


def _make_sink(sink: Sink | None) -> Callable[[Report], object] | None:
    if sink is None or callable(sink):
        return sink
    stream = sink

    def write(report: Report) -> None:
        stream.write(report.message + "\n")
        stream.flush()

    return write


def enable(
    *,
    on_deadlock: OnDeadlock = "report",
    warn_after: float | None = None,
    stats: bool = False,
    sink: Sink | None = None,
    interval: float = 0.1,
) -> None:
    """Start instrumenting: ``threading.Lock()``/``RLock()`` create tracked locks from now on.

    Args:
        on_deadlock: what to do when an actual deadlock is found (a wait-for cycle, or a
            thread re-acquiring a ``Lock`` it holds): ``"report"`` only reports;
            ``"raise"`` makes the blocked ``acquire()`` of one involved thread raise
            :class:`DeadlockError`; ``"exit"`` writes the report to stderr and ends the
            process with ``os._exit(EXIT_DEADLOCK)`` (86).
        warn_after: report a ``"long-wait"`` when an acquire has waited this many seconds
            (``None``: never).
        stats: also count acquisitions and measure hold times (costs two clock reads per
            acquire/release pair); contentions and wait times are always measured.
        sink: where reports go besides :func:`reports`: a callable taking a :class:`Report`,
            or a text stream (``report.message`` is written); ``None`` means ``sys.stderr``.
        interval: how often (seconds) the watchdog looks for deadlocks.

    Enabling from the disabled state starts afresh (order graph, reports and statistics are
    cleared, as by :func:`reset`); calling it while enabled only changes the settings.
    Locks created before this call are not tracked.

    Raises:
        UsageError: an invalid option value.
    """
    global _active, _enabled, _on_deadlock, _warn_after, _sink, _interval, _stats_mode, _saved
    if on_deadlock not in ("report", "raise", "exit"):
        raise UsageError(f"on_deadlock must be 'report', 'raise' or 'exit', not {on_deadlock!r}")
    if warn_after is not None and not warn_after > 0:
        raise UsageError(f"warn_after must be a positive number of seconds, not {warn_after!r}")
    if not interval > 0:
        raise UsageError(f"interval must be positive, not {interval!r}")
    if sink is not None and not callable(sink) and not hasattr(sink, "write"):
        raise UsageError("sink must be a callable taking a Report, or a text stream")
    if not _HAS_RLOCK:  # pragma: no cover - every CPython >= 3.11 has it
        raise UsageError("this Python's _thread.RLock lacks _recursion_count()")
    with _config_lock:
        if not _enabled:
            reset()
        _on_deadlock = on_deadlock
        _warn_after = warn_after
        _sink = _make_sink(sink)
        _interval = interval
        _stats_mode = stats
        if _saved is None:
            _saved = (threading.Lock, threading.RLock)
        patches: dict[str, object] = {
            "Lock": _TimedLock if stats else _TrackedLock,
            "RLock": _TimedRLock if stats else _TrackedRLock,
        }
        for name, value in patches.items():
            setattr(threading, name, value)
        _stop_watchdog()
        _start_watchdog(interval)
        _active = True
        _enabled = True


def disable() -> None:
    """Stop instrumenting: restore ``threading.Lock``/``RLock`` and stop the watchdog.

    Locks created while enabled keep working (they are still real locks) but add no more
    edges or reports. :func:`reports` and :func:`stats` still return what was collected.
    Calling it when not enabled does nothing.
    """
    global _active, _enabled, _saved
    with _config_lock:
        if not _enabled:
            return
        if _saved is not None:
            lock, rlock = _saved
            restore = {"Lock": lock, "RLock": rlock}
            mine = (_TrackedLock, _TimedLock, _TrackedRLock, _TimedRLock)
            for name, value in restore.items():
                if getattr(threading, name) in mine:
                    setattr(threading, name, value)
            _saved = None
        _stop_watchdog()
        _active = False
        _enabled = False


def is_enabled() -> bool:
    """Whether instrumentation is on."""
    return _enabled


@contextmanager
def instrumented(
    *,
    on_deadlock: OnDeadlock = "report",
    warn_after: float | None = None,
    stats: bool = False,
    sink: Sink | None = None,
    interval: float = 0.1,
) -> Iterator[None]:
    """``enable(...)`` for the ``with`` block, then ``disable()``.

    If instrumentation was already on, the previous settings are restored at the end instead
    of disabling (so a block inside a ``--bingfa-locks`` pytest session is harmless).
    """
    previous = (
        dict(
            on_deadlock=_on_deadlock,
            warn_after=_warn_after,
            stats=_stats_mode,
            sink=_sink,
            interval=_interval,
        )
        if _enabled
        else None
    )
    enable(
        on_deadlock=on_deadlock, warn_after=warn_after, stats=stats, sink=sink, interval=interval
    )
    try:
        yield
    finally:
        if previous is None:
            disable()
        else:
            enable(**previous)  # type: ignore[arg-type]


def reset() -> None:
    """Forget the order graph, the reports and the statistics collected so far."""
    global _inst_prune_at
    with _state_lock:
        for cls in list(_classes.values()):
            cls.clear_edges()
            cls.reset_stats()
        _edges.clear()
        _inst_edges.clear()
        _inst_refs.clear()
        _inst_prune_at = 4096
        _reported.clear()
        _reports.clear()


def reports() -> list[Report]:
    """The reports made since instrumentation was enabled (or :func:`reset`), oldest first."""
    with _state_lock:
        return list(_reports)


def stats() -> list[LockStats]:
    """Per-lock-class statistics, most contended first (classes never used are left out)."""
    rows: list[tuple[_LockClass, LockStats]] = []
    with _state_lock:
        classes = [c for c in _classes.values() if c.n_acq or c.n_cont]
        snapshot = [
            (
                c,
                c.timed,
                c.n_acq,
                c.n_cont,
                c.wait_total,
                c.wait_max,
                c.hold_total,
                c.hold_max,
                dict(c.sites),
            )
            for c in classes
        ]
    for c, timed, n_acq, n_cont, wt, wm, ht, hm, sites in snapshot:
        top = tuple(sorted(sites.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        rows.append((c, LockStats(c.info(), timed, n_acq, n_cont, wt, wm, ht, hm, top)))
    rows.sort(
        key=lambda r: (-r[1].contentions, -r[1].wait_total, -r[1].acquisitions, r[1].lock.site)
    )
    return [row for _, row in rows]


def format_stats(items: list[LockStats] | None = None, *, limit: int = 20) -> str:
    """:func:`stats` (or ``items``) as a printable table, at most ``limit`` rows."""
    return _report.format_stats(stats() if items is None else items, limit=limit)
