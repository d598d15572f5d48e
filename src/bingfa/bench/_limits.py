"""Operating-system limits that decide how many connections one machine can open.

Two limits matter to a load generator that opens thousands of connections:

* ``RLIMIT_NOFILE`` — file descriptors per process. Every connection is one. The soft limit is
  raised up to the hard limit automatically (any process may do that); past the hard limit
  only an administrator can help.
* the ephemeral port range (``/proc/sys/net/ipv4/ip_local_port_range``) — every connection to
  one server address needs its own local port, so no more connections than ports in the range
  can be open to one ``HOST:PORT`` at once (ports in TIME_WAIT from earlier runs count too).

Both checks raise :class:`~bingfa.errors.UsageError` with the command that fixes the problem.
"""

from __future__ import annotations

import resource
from pathlib import Path

from bingfa.errors import UsageError

__all__ = ["FD_MARGIN", "check_port_range", "ensure_fd_limit", "ephemeral_port_range"]

FD_MARGIN = 64
"""Descriptors a process needs besides its connections (stdio, pipes, the event loop, ...)."""

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ensure_fd_limit(needed: int, *, who: str = "this process") -> int:
    """Make sure the calling process may open ``needed`` file descriptors.

    Raises the soft ``RLIMIT_NOFILE`` up to the hard limit when it is too low (it never lowers
    it). The new limit is inherited by child processes started afterwards.

    Args:
        needed: descriptors the process will hold at once, margin included.
        who: how error messages name the process.

    Returns:
        The soft limit in force afterwards.

    Raises:
        UsageError: ``needed`` exceeds the hard limit; the message says how to raise it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(
            f"{who} needs {needed} file descriptors but the hard limit (RLIMIT_NOFILE) is {hard}. "
            f"Fix: raise it as root (`ulimit -Hn {needed}` in the shell that runs bingfa, or "
            f"'nofile' in /etc/security/limits.conf, or LimitNOFILE= for a systemd service), "
            "or open fewer connections per process (fewer --connections or more --processes)."
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ephemeral_port_range() -> tuple[int, int] | None:
    """The kernel's ephemeral (local) port range, inclusive; None where it cannot be read."""
    try:
        low, high = (int(x) for x in PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def check_port_range(connections: int) -> None:
    """Check that ``connections`` connections to one address fit in the ephemeral port range.

    Raises:
        UsageError: they do not; the message gives the ``sysctl`` that widens the range.
    """
    span = ephemeral_port_range()
    if span is None:
        return
    low, high = span
    available = high - low + 1
    if connections > available:
        raise UsageError(
            f"{connections} connections to one address need {connections} local ports, but the "
            f"ephemeral port range {low}-{high} has only {available}. Fix: widen it as root "
            "(`sysctl -w net.ipv4.ip_local_port_range='1024 65535'`) or open fewer connections."
        )
