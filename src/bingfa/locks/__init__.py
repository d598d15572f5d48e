"""bingfa.locks: deadlock detection and lock diagnostics for Python threads ("lockdep for Python").

Off by default and free when off. When enabled, ``threading.Lock`` and ``threading.RLock``
(and through them ``Condition``, ``Semaphore``, ``Event``, ``Barrier``, ``queue.Queue`` and
``concurrent.futures``) create *tracked* locks, and four kinds of findings are reported:

* ``"potential-deadlock"``: two locks (or lock classes: all locks created at one source line)
  were taken in orders that form a cycle, e.g. ``A`` then ``B`` in one place and ``B`` then
  ``A`` in another. Reported as soon as the cycle closes, even though this run did not hang.
* ``"deadlock"``: threads blocked on each other right now (a cycle in the wait-for graph),
  with every thread's stack; ``on_deadlock`` decides whether to report, raise
  :class:`DeadlockError` in one of them, or exit with status :data:`EXIT_DEADLOCK`.
* ``"misuse"``: releasing a lock the thread does not hold, re-acquiring a ``Lock`` it holds.
* ``"long-wait"``: an acquire waited longer than ``warn_after`` seconds (holder's stack shown).

Use it as ``python -m bingfa.locks [options] script.py [args]``, with
``enable()``/``disable()``/``with instrumented():``, or in pytest with ``--bingfa-locks``.
See docs/locks.md.
"""

from __future__ import annotations

from bingfa.locks._core import (
    EXIT_DEADLOCK,
    disable,
    enable,
    format_stats,
    instrumented,
    is_enabled,
    reports,
    reset,
    stats,
)
from bingfa.locks._report import (
    DeadlockError,
    LockInfo,
    LockStats,
    OrderEdge,
    Report,
    StackFrame,
    ThreadInfo,
)

__all__ = [
    "EXIT_DEADLOCK",
    "DeadlockError",
    "LockInfo",
    "LockStats",
    "OrderEdge",
    "Report",
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
