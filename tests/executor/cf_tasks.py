"""Task functions and helper objects for ``test_cf_contract.py``.

They live in an importable module so that worker processes (stdlib ``ProcessPoolExecutor`` and
bingfa's ``process``, ``hybrid`` and ``gevent`` models) can import them by name: the tests
directory is on ``sys.path`` (``conftest.py``) and workers adopt the caller's path.

Blocking tasks wait on a *gate*, a file that the test creates when the task may go on; a file
works the same way in threads, greenlets and other processes.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: how long a gated task waits at most before giving up (a test that forgets a gate must not
#: keep a worker forever)
GATE_LIMIT_S = 20.0

#: set by the initializer ``init_state`` in each worker
INIT_STATE: dict[str, Any] = {"status": "uninitialized"}


# --- plain tasks ------------------------------------------------------------------------------


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def ignore(*args: Any, **kwargs: Any) -> None:
    """Accept anything, return nothing (the argument-release test)."""
    return None


def sleep_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def sleep_and_print(seconds: float, message: str) -> None:
    """Sleep, then print ``message`` to stdout (the interpreter-exit scripts read it)."""
    time.sleep(seconds)
    os.write(1, f"{message}\n".encode())  # one write: lines from parallel tasks never mix


def touch(path: str) -> str:
    """Create ``path``: a side effect the test can see from any process."""
    Path(path).write_text("ran")
    return path


def wait_for(gate: str, limit: float = GATE_LIMIT_S) -> bool:
    """Block until the file ``gate`` exists (True) or ``limit`` seconds passed (False)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_then_raise(gate: str) -> None:
    wait_for(gate)
    raise Exception("this is an exception")


class Payload:
    """A plain object that can be pickled and weakly referenced."""

    def __init__(self, tag: int = 0) -> None:
        self.tag = tag

    def method(self) -> int:
        return self.tag


def make_payload(tag: int = 0) -> Payload:
    return Payload(tag)


# --- initializers -----------------------------------------------------------------------------


def init_state(status: str, record_dir: str) -> None:
    """Initializer: remember ``status`` and record where it ran (``pid-tid`` file)."""
    INIT_STATE["status"] = status
    name = f"{os.getpid()}-{threading.get_ident()}"
    Path(record_dir, name).write_text(status)


def init_status() -> tuple[str, int, int]:
    """What the initializer left here, and where this task runs: ``(status, pid, tid)``."""
    time.sleep(0.05)  # keep the workers busy so that more than one gets a task
    return str(INIT_STATE["status"]), os.getpid(), threading.get_ident()


def init_fail() -> None:
    time.sleep(0.1)  # let some tasks be submitted first
    raise ValueError("error in initializer")


# --- objects that break pickling (after CPython's test_deadlock.py) ---------------------------


def crash() -> None:
    """Segfault this process."""
    import faulthandler

    faulthandler.disable()
    faulthandler._sigsegv()


def exit_now() -> None:
    sys.exit(1)


def raise_unpickling_error() -> None:
    raise pickle.UnpicklingError("cannot unpickle this object")


def raise_error(cls: type[BaseException]) -> None:
    raise cls()


def return_instance(cls: type[Any]) -> Any:
    return cls()


class CrashAtPickle:
    """Segfaults the process that pickles it."""

    def __reduce__(self) -> Any:
        crash()


class CrashAtUnpickle:
    """Segfaults the process that unpickles it."""

    def __reduce__(self) -> Any:
        return crash, ()


class ExitAtPickle:
    """Raises ``SystemExit`` in the process that pickles it."""

    def __reduce__(self) -> Any:
        exit_now()


class ExitAtUnpickle:
    """Raises ``SystemExit`` in the process that unpickles it."""

    def __reduce__(self) -> Any:
        return exit_now, ()


class ErrorAtPickle:
    """Raises ``PicklingError`` in the process that pickles it."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("cannot pickle this object")


class ErrorAtUnpickle:
    """Raises ``UnpicklingError`` in the process that unpickles it."""

    def __reduce__(self) -> Any:
        return raise_unpickling_error, ()
