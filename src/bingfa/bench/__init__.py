"""bingfa's load generator (``bingfa bench``) and model comparison (``bingfa compare``).

Python API::

    from bingfa.bench import run_bench

    result = run_bench("127.0.0.1", 8086, connections=100, duration=5)          # closed loop
    result = run_bench("127.0.0.1", 8086, rate=2000, connections=20, duration=5)  # open loop
    print(result.rps, result.latency_ms["p99"], result.errors)
    json_ready = result.to_json()

A script that calls :func:`run_bench` must guard its entry point with
``if __name__ == "__main__":`` — the generator processes are started by ``multiprocessing``,
which re-imports the main module in each of them.

See docs/bench.md for what is measured, how to read it, and the JSON schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bingfa.bench._worker import ERROR_KINDS
    from bingfa.bench.compare import (
        WORKLOADS,
        CompareResult,
        CompareSettings,
        ModelSpec,
        Row,
        parse_models,
        run_compare,
    )
    from bingfa.bench.runner import (
        BenchConfig,
        BenchResult,
        decode_histogram,
        default_processes,
        run_bench,
        run_config,
    )

__all__ = [
    "ERROR_KINDS",
    "WORKLOADS",
    "BenchConfig",
    "BenchResult",
    "CompareResult",
    "CompareSettings",
    "ModelSpec",
    "Row",
    "decode_histogram",
    "default_processes",
    "parse_models",
    "run_bench",
    "run_compare",
    "run_config",
]

_HOME = {
    "ERROR_KINDS": "bingfa.bench._worker",
    **dict.fromkeys(
        (
            "WORKLOADS",
            "CompareResult",
            "CompareSettings",
            "ModelSpec",
            "Row",
            "parse_models",
            "run_compare",
        ),
        "bingfa.bench.compare",
    ),
    **dict.fromkeys(
        (
            "BenchConfig",
            "BenchResult",
            "decode_histogram",
            "default_processes",
            "run_bench",
            "run_config",
        ),
        "bingfa.bench.runner",
    ),
}


def __getattr__(name: str) -> Any:
    """Import the public names lazily: ``bingfa --help`` must not pay for hdrh and psutil."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'bingfa.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
