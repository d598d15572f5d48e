"""Handlers for the server tests, loaded by the server child as ``bingfa_testapps:NAME``."""

from __future__ import annotations

import asyncio
import os
import time

import bingfa


def fragile(request: bytes) -> bytes:
    """Echo, but raise on ``boom``."""
    if request == b"boom":
        raise RuntimeError("boom requested")
    return request


def counter(request: bytes, ctx: bingfa.Context) -> bytes:
    """Count requests per connection in ``ctx.state``; reply ``<count> <peer port>``."""
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return b"%d %s" % (ctx.state["n"], str(ctx.model).encode())


async def async_upper(request: bytes) -> bytes:
    """An async handler: yields to the loop once, then upper-cases."""
    await asyncio.sleep(0)
    return request.upper()


def blocking(request: bytes) -> bytes:
    """A plain handler that blocks for the requested milliseconds with ``time.sleep``."""
    time.sleep(int(request) / 1000)
    return request


def silent(request: bytes) -> None:
    """No reply at all."""
    return None


def pid(request: bytes) -> bytes:
    """The serving process's pid."""
    return str(os.getpid()).encode()


def big(request: bytes) -> bytes:
    """Reply with int(request) bytes."""
    return b"x" * int(request)


@bingfa.handler(kind="fast")
def fast_upper(request: bytes) -> bytes:
    return request.upper()
