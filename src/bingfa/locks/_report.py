"""Report objects of :mod:`bingfa.locks` and their text form.

Every finding is a :class:`Report`: a frozen dataclass that carries a ready-to-print ``message``
plus the structured facts behind it (locks with their creation sites, order edges with the stack
where each was first taken, threads with their stacks). Nothing here touches a lock.
"""

from __future__ import annotations

import ast
import linecache
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from bingfa.errors import BingfaError

__all__ = [
    "DeadlockError",
    "LockInfo",
    "LockStats",
    "OrderEdge",
    "Report",
    "ReportKind",
    "StackFrame",
    "ThreadInfo",
    "format_stack",
    "format_stats",
    "guess_name",
]

ReportKind = Literal["potential-deadlock", "deadlock", "misuse", "long-wait"]

_RULE = "=" * 78


@dataclass(frozen=True)
class StackFrame:
    """One frame of a captured stack.

    Attributes:
        filename: the code object's file name, as Python reports it.
        lineno: the line being executed.
        function: the function's name.
    """

    filename: str
    lineno: int
    function: str

    @property
    def site(self) -> str:
        """``"filename:lineno"``."""
        return f"{self.filename}:{self.lineno}"

    @property
    def line(self) -> str:
        """The stripped source line (empty when the source is not available)."""
        return linecache.getline(self.filename, self.lineno).strip()

    def __str__(self) -> str:
        return f'File "{self.filename}", line {self.lineno}, in {self.function}'


@dataclass(frozen=True)
class LockInfo:
    """A lock (or, in a class-level order report, a lock class) named in a report.

    Attributes:
        name: a readable name: the assignment target on the creation line when there is one
            (``"mutexA"``, ``"self.mutex"``), else the kind; instance-level reports append
            ``#n``, the instance's number among the locks created at that site.
        kind: ``"Lock"`` or ``"RLock"``.
        site: the creation site ``"filename:lineno"`` (the lock's *class*).
    """

    name: str
    kind: str
    site: str

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} created at {self.site})"


@dataclass(frozen=True)
class OrderEdge:
    """A lock-order dependency: ``acquired`` was taken (blocking) while ``held`` was held.

    Attributes:
        held: the lock that was already held.
        acquired: the lock that was then acquired.
        thread: the name of the thread that first took the locks in this order.
        stack: that thread's stack at that moment, innermost frame first; ``stack[0]`` is the
            acquire site.
    """

    held: LockInfo
    acquired: LockInfo
    thread: str
    stack: tuple[StackFrame, ...]

    @property
    def site(self) -> str:
        """The acquire site ``"filename:lineno"`` (``"?"`` when no frame was captured)."""
        return self.stack[0].site if self.stack else "?"


@dataclass(frozen=True)
class ThreadInfo:
    """A thread named in a report.

    Attributes:
        name: the thread's name (``threading.Thread.name`` when known).
        ident: its ``threading.get_ident()`` value.
        stack: its stack when the report was made, innermost frame first.
        waiting_for: the lock it is blocked on, if any.
        holding: the tracked locks it holds, oldest first.
    """

    name: str
    ident: int
    stack: tuple[StackFrame, ...]
    waiting_for: LockInfo | None = None
    holding: tuple[LockInfo, ...] = ()


@dataclass(frozen=True)
class Report:
    """One finding of :mod:`bingfa.locks`.

    Attributes:
        kind: ``"potential-deadlock"`` (a lock-order cycle; this run need not have hung),
            ``"deadlock"`` (threads blocked on each other right now), ``"misuse"`` (a release
            of a lock the thread does not hold, or a Lock re-acquired by its holder) or
            ``"long-wait"`` (a wait longer than ``warn_after``).
        message: the full human-readable text, as written to the sink.
        locks: the locks involved, with their creation sites.
        threads: the threads involved, with their stacks.
        edges: for a potential deadlock, the order edges of the cycle, in cycle order.
    """

    kind: ReportKind
    message: str
    locks: tuple[LockInfo, ...] = ()
    threads: tuple[ThreadInfo, ...] = ()
    edges: tuple[OrderEdge, ...] = ()

    def __str__(self) -> str:
        return self.message


class DeadlockError(BingfaError, RuntimeError):
    """Raised by a blocked ``acquire()`` when ``on_deadlock="raise"`` and a deadlock is found.

    It is raised in *one* thread of a wait-for cycle (the one that started waiting last), or
    in a thread that acquires a ``Lock`` it already holds. Unwinding its ``with`` blocks
    releases that thread's locks, which lets the other threads go on.

    Attributes:
        report: the :class:`Report` describing the deadlock.
    """

    def __init__(self, report: Report) -> None:
        first = report.message.strip().splitlines()
        super().__init__(first[1] if len(first) > 1 else report.kind)
        self.report = report


@dataclass(frozen=True)
class LockStats:
    """Contention statistics of one lock class (all locks created at one site).

    Acquisition counts and hold times are only measured for locks created while
    ``enable(stats=True)`` was in force (``timed`` says so); contentions and wait times are
    always measured, since they only cost anything when a thread has to wait anyway.

    Attributes:
        lock: the lock class.
        timed: whether acquisitions and hold times were measured for this class.
        acquisitions: successful acquisitions (recursive RLock re-entries not counted).
        contentions: acquisitions that found the lock taken and had to wait (trylocks never
            count).
        wait_total: seconds spent waiting, summed.
        wait_max: the longest single wait, in seconds.
        hold_total: seconds the locks were held, summed.
        hold_max: the longest single hold, in seconds.
        top_sites: the sites (``"file:line"``) where threads waited most, with counts,
            most frequent first (at most five).
    """

    lock: LockInfo
    timed: bool
    acquisitions: int
    contentions: int
    wait_total: float
    wait_max: float
    hold_total: float
    hold_max: float
    top_sites: tuple[tuple[str, int], ...]


_TARGET = re.compile(r"^\s*([A-Za-z_][\w.]*(?:\[[^\]=]*\])?)\s*(?::[^=]+)?=(?!=)")


def guess_name(filename: str, lineno: int, kind: str, col: int = -1) -> str:
    """The assignment target of the lock created at ``col`` on a source line, else ``kind``.

    ``mutexA = threading.Lock()`` gives ``"mutexA"``; in ``a, b = Lock(), Lock()`` the call
    at ``col`` picks ``"a"`` or ``"b"``; ``self.mutex = ...`` gives ``"self.mutex"``.
    """
    line = linecache.getline(filename, lineno)
    stripped = line.lstrip()
    try:
        tree = ast.parse(stripped)
    except SyntaxError:  # part of a longer statement: fall back to a plain pattern
        match = _TARGET.match(line)
        return match.group(1) if match else kind
    offset = col - (len(line) - len(stripped))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        target = targets[0]
        if (
            isinstance(target, ast.Tuple | ast.List)
            and isinstance(value, ast.Tuple | ast.List)
            and len(target.elts) == len(value.elts)
        ):
            for elt_target, elt_value in zip(target.elts, value.elts, strict=True):
                end = elt_value.end_col_offset or 0
                if elt_value.col_offset <= offset < end:
                    return ast.unparse(elt_target)
        return " = ".join(ast.unparse(t) for t in targets)
    return kind


def format_stack(stack: Sequence[StackFrame], indent: str = "    ", limit: int = 10) -> str:
    """A stack (innermost first) as traceback-style lines, most recent call last.

    Only the ``limit`` innermost frames are shown; the outer ones are summarised in one line.
    """
    if not stack:
        return f"{indent}(no Python frames)"
    lines: list[str] = []
    if len(stack) > limit:
        lines.append(f"{indent}... {len(stack) - limit} outer frame(s) not shown")
    for frame in reversed(stack[:limit]):
        lines.append(f"{indent}{frame}")
        source = frame.line
        if source:
            lines.append(f"{indent}  {source}")
    return "\n".join(lines)


def format_potential(edges: Sequence[OrderEdge], *, instances: bool) -> str:
    """The message of a potential-deadlock report for the cycle ``edges``."""
    locks = [edge.held for edge in edges]
    out = [
        _RULE,
        "bingfa.locks: POTENTIAL DEADLOCK: lock-order inversion (this run did not need to hang)",
    ]
    if instances:
        out.append(
            "Locks created at the same site were acquired in an order that forms a cycle;"
            " threads doing this concurrently can deadlock:"
        )
    else:
        out.append(
            "These locks were acquired in orders that form a cycle; threads interleaving"
            " differently can deadlock:"
        )
    out.extend(f"  {lock}" for lock in locks)
    for edge in edges:
        out.append("")
        out.append(
            f"  {edge.acquired.name} acquired while holding {edge.held.name}, first in thread"
            f" {edge.thread!r} at {edge.site}:"
        )
        out.append(format_stack(edge.stack))
    out.append("")
    out.append(
        "Fix: take these locks in one global order everywhere (or guard both resources with a"
        " single RLock)."
    )
    out.append(_RULE)
    return "\n".join(out)


def format_threads(threads: Iterable[ThreadInfo], owners: dict[int, str]) -> str:
    """Thread blocks (name, wait, holdings, stack) for deadlock and long-wait reports.

    ``owners`` maps a thread ident to the name of the thread holding the lock it waits for.
    """
    out: list[str] = []
    for info in threads:
        out.append("")
        head = f"  thread {info.name!r} (ident {info.ident})"
        if info.waiting_for is not None:
            head += f" waits for {info.waiting_for}"
            owner = owners.get(info.ident)
            if owner is not None:
                head += f", held by {owner!r}"
        out.append(head)
        if info.holding:
            out.append("    holding: " + ", ".join(str(lock) for lock in info.holding))
        out.append("    stack (most recent call last):")
        out.append(format_stack(info.stack, "      "))
    return "\n".join(out)


def format_deadlock(threads: Sequence[ThreadInfo], owners: dict[int, str], action: str) -> str:
    """The message of a deadlock report."""
    return "\n".join(
        [
            _RULE,
            f"bingfa.locks: DEADLOCK: {len(threads)} threads wait for each other forever",
            format_threads(threads, owners),
            "",
            action,
            _RULE,
        ]
    )


def format_block(
    title: str, body: str, threads: Sequence[ThreadInfo], owners: dict[int, str]
) -> str:
    """A titled report (misuse, long wait) followed by thread blocks."""
    parts = [_RULE, f"bingfa.locks: {title}", body]
    if threads:
        parts.append(format_threads(threads, owners))
    parts.append(_RULE)
    return "\n".join(parts)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def format_stats(items: Iterable[LockStats], *, limit: int = 20) -> str:
    """A lock_stat-like table of ``items`` (at most ``limit`` rows), times in milliseconds."""
    rows = list(items)[:limit]
    header = (
        f"{'lock class':<44} {'acquired':>9} {'contended':>9} {'wait tot':>10}"
        f" {'wait max':>10} {'hold tot':>10} {'hold max':>10}"
    )
    out = ["bingfa.locks: lock statistics (per creation site; times in ms)", header]
    if not rows:
        out.append("  (no tracked lock was acquired)")
    for row in rows:
        name = f"{row.lock.name} ({row.lock.kind} {_short(row.lock.site)})"
        if len(name) > 44:
            name = name[:41] + "..."
        acquired = str(row.acquisitions) if row.timed else "-"
        hold_tot = _ms(row.hold_total) if row.timed else "-"
        hold_max = _ms(row.hold_max) if row.timed else "-"
        out.append(
            f"{name:<44} {acquired:>9} {row.contentions:>9} {_ms(row.wait_total):>10}"
            f" {_ms(row.wait_max):>10} {hold_tot:>10} {hold_max:>10}"
        )
        if row.top_sites:
            sites = ", ".join(f"{_short(site)} ({count})" for site, count in row.top_sites)
            out.append(f"    contended at: {sites}")
    if any(not row.timed for row in rows):
        out.append("  ('-': acquisitions and hold times need enable(stats=True) / --stats)")
    return "\n".join(out)


def _short(site: str) -> str:
    """``site`` with its directory part dropped (``/a/b/c.py:12`` -> ``c.py:12``)."""
    path, _, line = site.rpartition(":")
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return f"{base}:{line}" if path else site
