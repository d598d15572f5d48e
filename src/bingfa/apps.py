"""The handler API and the built-in apps.

A *handler* takes one request (``bytes``) and returns the reply (``bytes``), or ``None`` for no
reply. It may be a plain function or an ``async def``, and it takes either one argument (the
request) or two (the request and the connection's :class:`Context`)::

    def shout(request: bytes) -> bytes:
        return request.upper()

    async def greet(request: bytes, ctx: bingfa.Context) -> bytes:
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        return b"hello %s #%d" % (request, ctx.state["count"])

What a plain function does matters to the event-loop model (``asyncio``), where a call that
blocks would stall every other connection. Say it with :func:`handler`:

``kind="io"`` (the default for plain functions)
    may block (sleep, file or network IO): the asyncio model runs it in a worker thread.
``kind="cpu"``
    CPU-bound (holds the GIL): the asyncio model runs it in a worker thread; process offload
    is the multi-process issue's ``--offload``.
``kind="fast"``
    returns quickly and never blocks (echo, a dict lookup): called inline on the event loop,
    with no thread hop.

``async def`` handlers always run on the event loop under asyncio. Thread-based models
(thread, threadpool, gevent) call a plain function directly in the connection's own thread or
greenlet and ignore ``kind``; they run an ``async def`` handler on a per-thread event loop.

An :class:`App` may carry both a plain and an ``async`` implementation (the built-in ``sleep``
does); each model picks the one that suits it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from bingfa.errors import UsageError

__all__ = ["BUILTIN_APPS", "App", "Context", "HandlerKind", "as_app", "handler", "load_app"]

HandlerKind = Literal["fast", "io", "cpu"]
_KINDS: tuple[HandlerKind, ...] = ("fast", "io", "cpu")

SyncHandler = Callable[[bytes, "Context"], bytes | None]
AsyncHandler = Callable[[bytes, "Context"], Awaitable[bytes | None]]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class Context:
    """What a handler can see of its connection. One per connection, owned by the server.

    Attributes:
        peer: the client's address as the socket reports it (``(host, port)`` for TCP/IPv4).
        model: the concurrency model serving the connection.
        state: a dict private to this connection, kept across its requests; the handler may
            store anything in it. It is discarded when the connection closes.
    """

    peer: Any
    model: str
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class App:
    """A handler normalised for the servers. Build one with :func:`as_app` or :func:`load_app`.

    Attributes:
        name: for logs and reports.
        sync: plain implementation, always called as ``sync(request, ctx)``; or None.
        async_: coroutine implementation, called as ``await async_(request, ctx)``; or None.
        kind: what ``sync`` does (see the module doc); decides whether the asyncio model calls
            it inline or in a worker thread.
    """

    name: str
    sync: SyncHandler | None = None
    async_: AsyncHandler | None = None
    kind: HandlerKind = "io"

    def __post_init__(self) -> None:
        if self.sync is None and self.async_ is None:
            raise UsageError(f"app {self.name!r} has neither a plain nor an async implementation")
        if self.kind not in _KINDS:
            raise UsageError(f"handler kind must be one of {_KINDS}, got {self.kind!r}")

    def call_sync(self) -> SyncHandler:
        """Return a plain callable for thread-based models.

        An async-only app is run to completion on an event loop private to the calling thread.
        """
        if self.sync is not None:
            return self.sync
        assert self.async_ is not None
        coro_fn = self.async_
        local = threading.local()

        def run(request: bytes, ctx: Context) -> bytes | None:
            loop: asyncio.AbstractEventLoop | None = getattr(local, "loop", None)
            if loop is None:
                loop = local.loop = asyncio.new_event_loop()
            return loop.run_until_complete(coro_fn(request, ctx))

        return run


@overload
def handler(fn: F, *, kind: HandlerKind = "io") -> F: ...


@overload
def handler(fn: None = None, *, kind: HandlerKind = "io") -> Callable[[F], F]: ...


def handler(fn: F | None = None, *, kind: HandlerKind = "io") -> F | Callable[[F], F]:
    """Mark a plain handler with its kind: ``@handler(kind="fast")``. See the module doc.

    Usable bare (``@handler``, same as ``kind="io"``) or with arguments. Returns the function
    itself, with the attribute ``__bingfa_kind__`` set.

    Raises:
        UsageError: unknown kind.
    """
    if kind not in _KINDS:
        raise UsageError(f"handler kind must be one of {_KINDS}, got {kind!r}")
    if fn is not None and not callable(fn):
        raise UsageError(f"handler() takes the kind as a keyword: @handler(kind={fn!r})")

    def mark(f: F) -> F:
        f.__bingfa_kind__ = kind  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` wants: 1 (request) or 2 (request, ctx)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: assume request only
        return 1
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2:
        raise UsageError(
            f"handler {fn!r} requires {len(required)} positional arguments; "
            "it must take (request) or (request, ctx)"
        )
    if len(required) == 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    if positional:
        return 1
    raise UsageError(f"handler {fn!r} must take the request as its first positional argument")


def _is_async(obj: Any) -> bool:
    """Whether calling ``obj`` returns a coroutine: an ``async def`` function or method, or an
    instance whose ``__call__`` is ``async def`` (which ``inspect`` alone does not see)."""
    if inspect.iscoroutinefunction(obj):
        return True
    if isinstance(obj, type):  # calling a class builds an instance, never a coroutine
        return False
    return inspect.iscoroutinefunction(type(obj).__call__)


def as_app(obj: Any, name: str | None = None) -> App:
    """Normalise a handler (plain function, ``async def``, or :class:`App`) into an App.

    Raises:
        UsageError: ``obj`` is not callable, or takes no request argument.
    """
    if isinstance(obj, App):
        return obj
    if not callable(obj):
        raise UsageError(f"a handler must be callable, got {type(obj).__name__}")
    label = name or getattr(obj, "__qualname__", None) or repr(obj)
    two = _arity(obj) == 2
    if _is_async(obj):
        if two:
            return App(label, async_=obj)

        async def one_async(request: bytes, ctx: Context) -> bytes | None:
            result: bytes | None = await obj(request)
            return result

        return App(label, async_=one_async)
    kind: HandlerKind = getattr(obj, "__bingfa_kind__", "io")
    if two:
        return App(label, sync=obj, kind=kind)

    def one_sync(request: bytes, ctx: Context) -> bytes | None:
        result: bytes | None = obj(request)
        return result

    return App(label, sync=one_sync, kind=kind)


# --- built-in apps -------------------------------------------------------------------------


def _echo(request: bytes, ctx: Context) -> bytes:
    return request


def _upper(request: bytes, ctx: Context) -> bytes:
    return request.upper()


def _parse_number(request: bytes, what: str) -> int:
    try:
        value = int(request.strip() or b"0")
    except ValueError:
        raise UsageError(f"{what} expects a decimal integer, got {request[:40]!r}") from None
    if value < 0:
        raise UsageError(f"{what} expects a non-negative integer, got {value}")
    return value


def _sleep_sync(request: bytes, ctx: Context) -> bytes:
    # Under gevent, time.sleep is monkey-patched and yields to the hub.
    time.sleep(_parse_number(request, "sleep") / 1000.0)
    return request


async def _sleep_async(request: bytes, ctx: Context) -> bytes:
    await asyncio.sleep(_parse_number(request, "sleep") / 1000.0)
    return request


def cpu_work(n: int) -> int:
    """The ``cpu`` app's work: a pure-Python loop of ``n`` iterations (holds the GIL)."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1_000_000_007
    return total


def _cpu(request: bytes, ctx: Context) -> bytes:
    return str(cpu_work(_parse_number(request, "cpu"))).encode()


BUILTIN_APPS: dict[str, App] = {
    "echo": App("echo", sync=_echo, kind="fast"),
    "upper": App("upper", sync=_upper, kind="fast"),
    "sleep": App("sleep", sync=_sleep_sync, async_=_sleep_async, kind="io"),
    "cpu": App("cpu", sync=_cpu, kind="cpu"),
}
"""Built-in apps by name: ``echo``, ``upper`` (the seeds' example), ``sleep`` (request = ms to
wait, cooperatively under gevent/asyncio; replies with the request), ``cpu`` (request = N, a
pure-Python loop of N iterations; replies with a decimal result)."""


def load_app(spec: str) -> App:
    """Load an app by built-in name (``echo``) or by ``module:attr`` (like uvicorn/gunicorn).

    ``attr`` may be dotted (``pkg.mod:obj.method``) and may name a handler or an :class:`App`.

    Raises:
        UsageError: unknown name, module not importable, attribute missing or not a handler.
    """
    if spec in BUILTIN_APPS:
        return BUILTIN_APPS[spec]
    if ":" not in spec:
        raise UsageError(
            f"unknown app {spec!r}: use a built-in name ({', '.join(BUILTIN_APPS)}) "
            "or 'module:attribute'"
        )
    module_name, _, attr_path = spec.partition(":")
    if not module_name or module_name.startswith(".") or "" in attr_path.split("."):
        raise UsageError(
            f"bad app spec {spec!r}: expected 'module:attribute' with an absolute module name "
            "and a (possibly dotted) attribute, e.g. 'myapp:handle'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r} for app {spec!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    return as_app(obj, name=spec)
