"""Stage functions for the pipeline tests, importable by worker processes and ``bingfa worker``
subprocesses (the conftest puts this directory on ``sys.path``; subprocesses get PYTHONPATH)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from typing import Any

from bingfa.pipeline import Stage


def square(x: int) -> int:
    return x * x


def plus_one(x: int) -> int:
    return x + 1


def times_ten(x: int) -> int:
    """``x * 10``; with ``BINGFA_TEST_HANG_ITEM=<x>``, writes ``BINGFA_TEST_MARKER`` and hangs on
    that item (the kill -9 test kills the worker there)."""
    if os.environ.get("BINGFA_TEST_HANG_ITEM") == str(x):
        pathlib.Path(os.environ["BINGFA_TEST_MARKER"]).write_text(str(os.getpid()))
        time.sleep(120)
    return x * 10


def is_even(x: int) -> bool:
    return x % 2 == 0


def fail_on_multiples_of_five(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"{x} is a multiple of five")
    return x


def sleep_a_bit(x: Any) -> Any:
    time.sleep(0.005)
    return x


def sleep_50ms(x: Any) -> Any:
    time.sleep(0.05)
    return x


def sleep_two_seconds(x: Any) -> Any:
    time.sleep(2.0)
    return x


def die(x: Any) -> Any:
    """Kill the current process without any cleanup, as a segfault would."""
    os._exit(13)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def make_unpicklable(x: Any) -> Any:
    return Unpicklable()


tens = Stage(times_ten, name="tens")
evens = Stage(is_even, kind="filter", name="evens")


# --- test utilities (not stage functions) -------------------------------------------------------


def is_redis(backend: str) -> bool:
    return backend.startswith("redis")


def worker_log(proc: subprocess.Popen[str]) -> str:
    """Everything a ``spawn_worker`` subprocess has written so far."""
    log = proc.log  # type: ignore[attr-defined]
    log.flush()
    log.seek(0)
    text: str = log.read()
    return text


def delete_pipeline_keys(client: object, name: str) -> None:
    """Delete every key of pipeline ``name``."""
    keys = list(client.scan_iter(match=f"bingfa:{{{name}}}:*"))  # type: ignore[attr-defined]
    if keys:
        client.delete(*keys)  # type: ignore[attr-defined]
