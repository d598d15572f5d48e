"""Fixtures for the executor tests: every executor a test makes is shut down afterwards.

Constants and types live in ``executor_helpers`` (a uniquely named module): ``conftest`` is
not importable by name reliably when several test directories have one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # executor_helpers, for us and for workers

from executor_helpers import MODEL_CONFIG, ExecutorFactory

from bingfa.executor import Executor


@pytest.fixture
def make_executor() -> Iterator[ExecutorFactory]:
    """``make_executor(model, **overrides)``: a small executor, terminated at teardown (a no-op
    if the test already shut it down), so a failing test never leaks workers."""
    made: list[Executor] = []

    def make(model: str, **overrides: Any) -> Executor:
        if model == "dask":
            pytest.importorskip("distributed")
        kwargs = {**MODEL_CONFIG[model], **overrides}
        ex = Executor(model, **kwargs)  # type: ignore[arg-type]
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.terminate()
