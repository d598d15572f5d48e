"""A handler for benchmarks/bench_workers.py: ``cpu N`` computes, anything else is echoed.

Declared ``kind="cpu"``, so under ``--offload process`` every request goes to the process pool
and under ``--offload none`` every request runs on the event loop.
"""

from __future__ import annotations

import bingfa
from bingfa.apps import cpu_work


@bingfa.handler(kind="cpu")
def mixed(request: bytes) -> bytes:
    if request.startswith(b"cpu "):
        return str(cpu_work(int(request[4:]))).encode()
    return request
