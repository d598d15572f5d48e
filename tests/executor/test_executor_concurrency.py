"""The models really run tasks concurrently, and gevent patches only its own workers."""

from __future__ import annotations

import sys
import time

import pytest
from executor_helpers import ExecutorFactory, ablock, block, gevent_patched, loop_module

pytestmark = pytest.mark.timeout(60)


def test_gevent_patches_its_workers_not_the_caller(make_executor: ExecutorFactory) -> None:
    ex = make_executor("gevent", workers=20)
    assert ex.submit(gevent_patched).result(timeout=30) is True
    assert not gevent_patched()  # the caller was left alone
    ex.submit(block, 0.01).result(timeout=30)  # worker is up: time only the work
    t0 = time.monotonic()
    assert list(ex.map(block, [0.2] * 20)) == [0.2] * 20  # plain time.sleep, 20 at once
    assert time.monotonic() - t0 < 1.5  # one after another would take 4 s


def test_asyncio_runs_coroutines_concurrently_on_uvloop(make_executor: ExecutorFactory) -> None:
    ex = make_executor("asyncio", workers=50)
    if "uvloop" in sys.modules or _has_uvloop():
        assert "uvloop" in ex.submit(loop_module).result(timeout=30)
    t0 = time.monotonic()
    assert list(ex.map(ablock, [0.2] * 50)) == [0.2] * 50
    assert time.monotonic() - t0 < 1.5  # one after another would take 10 s


def test_asyncio_runs_plain_functions_in_threads(make_executor: ExecutorFactory) -> None:
    ex = make_executor("asyncio", workers=2, threads=4)
    t0 = time.monotonic()
    assert [f.result(timeout=30) for f in [ex.submit(block, 0.3) for _ in range(4)]] == [0.3] * 4
    assert time.monotonic() - t0 < 1.0  # 4 threads at once, not blocking the loop


def test_hybrid_overlaps_coroutines_in_each_process(make_executor: ExecutorFactory) -> None:
    ex = make_executor("hybrid", workers=2, threads=2, concurrency=20)
    ex.submit(block, 0.01).result(timeout=30)
    t0 = time.monotonic()
    assert list(ex.map(ablock, [0.2] * 40)) == [0.2] * 40
    assert time.monotonic() - t0 < 1.5  # 2 processes × 20 coroutines


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
