"""Task functions for the executor tests.

They live in an importable module (not in the test files) so that worker processes can import
them by name; the tests directory is on ``sys.path`` and workers adopt the caller's path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: every model, each configured to run exactly 2 calls at once
MODEL_CONFIG: dict[str, dict[str, Any]] = {
    "thread": {"workers": 2},
    "process": {"workers": 2},
    "gevent": {"workers": 2},
    "asyncio": {"workers": 2, "threads": 2},
    "hybrid": {"workers": 1, "threads": 2, "concurrency": 2},
    "dask": {"workers": 2, "cluster_kwargs": {"processes": False}},
}
MODELS = list(MODEL_CONFIG)

#: the ``make_executor`` fixture: ``make_executor(model, **overrides) -> Executor``
ExecutorFactory = Callable[..., Any]

#: per-worker state set by ``remember`` (the initializer tests)
STATE: dict[str, Any] = {}


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


async def asquare(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


def fail(message: str) -> int:
    raise ValueError(message)


async def afail(message: str) -> int:
    await asyncio.sleep(0)
    raise ValueError(message)


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def block(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def ablock(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def getpid() -> int:
    return os.getpid()


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def write_pid_then_sleep(path: str, seconds: float) -> int:
    """Announce this worker's pid in ``path`` (atomically), then sleep."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def die(how: str = "kill", arg: int = 0) -> None:
    """End this worker process: SIGKILL itself, segfault, or exit with a status."""
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segv":
        import ctypes

        ctypes.string_at(0)
    elif how == "exit":
        os._exit(arg)
    time.sleep(10)


def die_at(x: int, bad: int = 0) -> int:
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def slow_die_at(x: int, bad: int) -> int:
    """Like ``die_at``, but each call takes 2 ms: too slow to be grouped with others."""
    time.sleep(0.002)
    return die_at(x, bad)


def log_and_die_at(x: int, bad: int, path: str) -> int:
    """Append ``x`` to ``path`` (one atomic O_APPEND write), then die if ``x == bad``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def remember(key: str, value: Any) -> None:
    STATE[key] = value


def recall(key: str) -> Any:
    return STATE.get(key)


def broken_init() -> None:
    raise RuntimeError("initializer is broken")


def burn(n: int) -> int:
    """CPU-bound: a pure-Python loop."""
    total = 0
    for i in range(n):
        total += i
    return total


def returns_unpicklable() -> Any:
    import threading

    return threading.Lock()


class Unpicklable(Exception):
    """An exception whose constructor pickle cannot call (two required arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def blocker_for(model: str) -> Any:
    """A function that blocks for ``seconds`` and is right for ``model``."""
    return ablock if model == "asyncio" else block


def square_for(model: str) -> Any:
    return asquare if model == "asyncio" else square


def fail_for(model: str) -> Any:
    return afail if model == "asyncio" else fail


def gevent_patched() -> bool:
    """True in a process whose socket module gevent has patched."""
    import sys

    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


async def loop_module() -> str:
    """The module of the running event loop's class (``uvloop`` or ``asyncio...``)."""
    return type(asyncio.get_running_loop()).__module__


# --- pickling faults and reference tracking (test_pool_faults) -------------------------------

#: what a "bomb" raises, by name: non-``Exception``s are the interesting ones
BOMB_KINDS = ("SystemExit", "KeyboardInterrupt", "ValueError")


def _bomb(kind: str) -> BaseException:
    if kind == "SystemExit":
        return SystemExit(3)
    if kind == "KeyboardInterrupt":
        return KeyboardInterrupt()
    return ValueError("bomb")


def _detonate(kind: str, pid: int, here: bool) -> LoadBomb:
    """Reconstructor of :class:`LoadBomb`: raise ``kind`` if unpickled in the chosen process."""
    if (os.getpid() == pid) == here:
        raise _bomb(kind)
    return LoadBomb(kind, pid, here)


class LoadBomb:
    """Pickles fine; *unpickling* it raises ``kind`` in process ``pid`` (``here=True``) or in
    every process but ``pid`` (``here=False``), and rebuilds it elsewhere."""

    def __init__(self, kind: str, pid: int, here: bool = True) -> None:
        self.kind = kind
        self.pid = pid
        self.here = here

    def __reduce__(self) -> Any:
        return _detonate, (self.kind, self.pid, self.here)


class DumpBomb:
    """*Pickling* it (with pickle or cloudpickle) raises ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        raise _bomb(self.kind)


def _detonate_error(kind: str, pid: int) -> LoadBombError:
    if os.getpid() == pid:
        raise _bomb(kind)
    return LoadBombError(kind, pid)


class LoadBombError(Exception):
    """An exception that travels fine until it is unpickled in process ``pid``."""

    def __init__(self, kind: str, pid: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.pid = pid

    def __reduce__(self) -> Any:
        return _detonate_error, (self.kind, self.pid)


class DumpBombError(Exception):
    """An exception whose pickling raises ``kind``."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind

    def __reduce__(self) -> Any:
        raise _bomb(self.kind)


def identity(x: Any) -> Any:
    return x


def return_load_bomb(kind: str, pid: int) -> LoadBomb:
    """A result that explodes when unpickled in process ``pid`` (the caller)."""
    return LoadBomb(kind, pid)


def return_dump_bomb(kind: str) -> DumpBomb:
    """A result that cannot be pickled back: pickling it raises ``kind``."""
    return DumpBomb(kind)


def raise_load_bomb(kind: str, pid: int) -> None:
    raise LoadBombError(kind, pid)


def raise_dump_bomb(kind: str) -> None:
    raise DumpBombError(kind)


def slow_load_bomb_at(x: int, bad: int, pid: int) -> Any:
    """Takes 30 ms (so a long batch flushes ``P`` frames); item ``bad`` returns a result that
    explodes when unpickled in process ``pid``."""
    time.sleep(0.03)
    return LoadBomb("SystemExit", pid) if x == bad else x


def _append_line(path: str, line: str) -> None:
    """One atomic ``O_APPEND`` write (safe from several processes at once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Tracked:
    """Appends ``"<tag> <pid>"`` to the file ``path`` when an instance is freed - in whatever
    process it lives, so a test can see a worker let go of its copy."""

    def __init__(self, path: str, tag: str) -> None:
        self.path = path
        self.tag = tag

    def __del__(self) -> None:
        try:
            _append_line(self.path, f"{self.tag} {os.getpid()}")
        except Exception:
            pass


class TrackedCallable(Tracked):
    """A :class:`Tracked` task function: ``obj(x)`` returns a new ``Tracked(path, "result")``;
    with ``yields`` it first sleeps a moment (a greenlet switch in a gevent worker)."""

    def __init__(self, path: str, tag: str, yields: bool = False) -> None:
        super().__init__(path, tag)
        self.yields = yields

    def __call__(self, x: Any) -> Tracked:
        if self.yields:
            time.sleep(0.001)
        return Tracked(self.path, "result")


def make_tracked(path: str, tag: str) -> Tracked:
    """A result that records when the worker frees it."""
    return Tracked(path, tag)


def freed_in_other_processes(path: str) -> set[str]:
    """The tags of :class:`Tracked` objects freed in processes other than this one."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return set()
    me = str(os.getpid())
    return {tag for tag, pid in (line.split() for line in lines if line) if pid != me}


def return_dump_bomb_at(x: int, bad: int = 1) -> Any:
    """``x``, except that item ``bad`` returns a result whose pickling raises ``SystemExit``."""
    return DumpBomb("SystemExit") if x == bad else x
