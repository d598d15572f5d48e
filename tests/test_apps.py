"""Tests of the handler API: Context, App, handler(kind=...), as_app, load_app, built-ins."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import bingfa
from bingfa.apps import BUILTIN_APPS, App, Context, as_app, cpu_work, handler, load_app
from bingfa.errors import UsageError


@pytest.fixture
def ctx() -> Context:
    return Context(peer=("127.0.0.1", 50000), model="test")


def run_app(app: App, request: bytes, ctx: Context) -> bytes | None:
    """Call whichever implementation the app has, as a server would."""
    if app.sync is not None:
        return app.sync(request, ctx)
    assert app.async_ is not None
    return asyncio.run(app.async_(request, ctx))  # type: ignore[arg-type]


# --- Context / App --------------------------------------------------------------------------


def test_context_defaults() -> None:
    a = Context(peer=("h", 1), model="thread")
    b = Context(peer=("h", 2), model="thread")
    assert a.state == {} and b.state == {}
    a.state["n"] = 1
    assert b.state == {}  # one dict per connection


def test_app_needs_an_implementation() -> None:
    with pytest.raises(UsageError, match="neither a plain nor an async implementation"):
        App("empty")


def test_app_bad_kind() -> None:
    with pytest.raises(UsageError, match="kind"):
        App("x", sync=lambda r, c: r, kind="slow")  # type: ignore[arg-type]


def test_app_is_frozen() -> None:
    app = App("x", sync=lambda r, c: r)
    with pytest.raises(dataclasses.FrozenInstanceError):
        app.kind = "fast"  # type: ignore[misc]


def test_app_default_kind_is_io() -> None:
    assert App("x", sync=lambda r, c: r).kind == "io"


# --- as_app ---------------------------------------------------------------------------------


def test_plain_one_arg(ctx: Context) -> None:
    def shout(request: bytes) -> bytes:
        return request.upper()

    app = as_app(shout)
    assert app.async_ is None
    assert app.sync is not None
    assert app.sync(b"abc", ctx) == b"ABC"
    assert app.kind == "io"
    assert app.name.endswith("shout")


def test_plain_two_args_gets_the_context(ctx: Context) -> None:
    def count(request: bytes, c: Context) -> bytes:
        c.state["n"] = c.state.get("n", 0) + 1
        return b"%s #%d via %s" % (request, c.state["n"], c.model.encode())

    app = as_app(count)
    assert app.sync is count  # no wrapper needed
    assert app.sync(b"a", ctx) == b"a #1 via test"
    assert app.sync(b"b", ctx) == b"b #2 via test"
    assert ctx.state == {"n": 2}


def test_async_one_arg(ctx: Context) -> None:
    async def shout(request: bytes) -> bytes:
        await asyncio.sleep(0)
        return request.upper()

    app = as_app(shout)
    assert app.sync is None
    assert app.async_ is not None
    assert asyncio.run(app.async_(b"abc", ctx)) == b"ABC"  # type: ignore[arg-type]


def test_async_two_args(ctx: Context) -> None:
    async def greet(request: bytes, c: Context) -> bytes:
        c.state["count"] = c.state.get("count", 0) + 1
        return b"hello %s #%d" % (request, c.state["count"])

    app = as_app(greet)
    assert app.async_ is greet
    assert app.sync is None
    assert run_app(app, b"bob", ctx) == b"hello bob #1"
    assert run_app(app, b"amy", ctx) == b"hello amy #2"


def test_none_reply(ctx: Context) -> None:
    def silent(request: bytes) -> None:
        return None

    assert run_app(as_app(silent), b"x", ctx) is None


def test_optional_second_argument_means_request_only(ctx: Context) -> None:
    seen: list[Any] = []

    def h(request: bytes, extra: Any = "default") -> bytes:
        seen.append(extra)
        return request

    assert run_app(as_app(h), b"x", ctx) == b"x"
    assert seen == ["default"]


def test_varargs_receives_request_and_context(ctx: Context) -> None:
    def h(*args: Any) -> bytes:
        assert args == (b"x", ctx)
        return b"ok"

    assert run_app(as_app(h), b"x", ctx) == b"ok"


def test_lambda_and_bound_method(ctx: Context) -> None:
    class Greeter:
        def __init__(self, word: bytes) -> None:
            self.word = word

        def one(self, request: bytes) -> bytes:
            return self.word + request

        def two(self, request: bytes, c: Context) -> bytes:
            return self.word + request + c.model.encode()

    g = Greeter(b"hi ")
    assert run_app(as_app(g.one), b"x", ctx) == b"hi x"
    assert run_app(as_app(g.two), b"x", ctx) == b"hi xtest"
    assert run_app(as_app(lambda r: r[::-1]), b"abc", ctx) == b"cba"


def test_callable_instances(ctx: Context) -> None:
    class Sync:
        def __call__(self, request: bytes) -> bytes:
            return b"sync:" + request

    class Async:
        async def __call__(self, request: bytes, c: Context) -> bytes:
            await asyncio.sleep(0)
            return b"async:" + request

    sync_app = as_app(Sync())
    assert sync_app.sync is not None and sync_app.async_ is None
    assert run_app(sync_app, b"x", ctx) == b"sync:x"

    # An instance with ``async def __call__`` is an async handler too.
    async_app = as_app(Async())
    assert async_app.sync is None and async_app.async_ is not None
    assert run_app(async_app, b"x", ctx) == b"async:x"


def test_as_app_passes_apps_through() -> None:
    app = App("mine", sync=lambda r, c: r)
    assert as_app(app) is app


def test_as_app_name() -> None:
    def h(request: bytes) -> bytes:
        return request

    assert as_app(h, name="custom").name == "custom"
    assert "h" in as_app(h).name


@pytest.mark.parametrize("obj", [None, 42, b"echo", "echo"])
def test_as_app_rejects_non_callables(obj: object) -> None:
    with pytest.raises(UsageError, match="must be callable"):
        as_app(obj)


def test_as_app_rejects_no_request_argument() -> None:
    def nothing() -> bytes:
        return b""

    def kw_only(*, request: bytes) -> bytes:
        return request

    for fn in (nothing, kw_only):
        with pytest.raises(UsageError, match="first positional argument"):
            as_app(fn)


def test_as_app_rejects_three_required_arguments() -> None:
    def three(request: bytes, ctx: Context, more: int) -> bytes:
        return request

    with pytest.raises(UsageError, match=r"\(request\) or \(request, ctx\)"):
        as_app(three)


# --- handler(kind=...) ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fast", "io", "cpu"])
def test_handler_kind(kind: Any, ctx: Context) -> None:
    @handler(kind=kind)
    def one(request: bytes) -> bytes:
        return request + b"!"

    @handler(kind=kind)
    def two(request: bytes, c: Context) -> bytes:
        return request + b"?"

    assert one.__bingfa_kind__ == kind  # type: ignore[attr-defined]
    assert one(b"x") == b"x!"  # still the plain function
    for fn, reply in ((one, b"x!"), (two, b"x?")):
        app = as_app(fn)
        assert app.kind == kind
        assert run_app(app, b"x", ctx) == reply


def test_handler_bare_decorator() -> None:
    def h(request: bytes) -> bytes:
        return request

    assert handler(h) is h
    assert h.__bingfa_kind__ == "io"  # type: ignore[attr-defined]
    assert as_app(h).kind == "io"


def test_handler_bad_kind() -> None:
    with pytest.raises(UsageError, match="kind"):
        handler(kind="slow")  # type: ignore[call-overload]

    def h(request: bytes) -> bytes:
        return request

    with pytest.raises(UsageError, match="kind"):
        handler(h, kind="gpu")  # type: ignore[call-overload]


def test_handler_kind_given_positionally_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match=r"handler\(kind='fast'\)"):
        handler("fast")  # type: ignore[call-overload]


def test_undecorated_plain_function_is_io() -> None:
    assert as_app(lambda r: r).kind == "io"


# --- call_sync ------------------------------------------------------------------------------


def test_call_sync_returns_the_plain_implementation() -> None:
    def h(request: bytes, c: Context) -> bytes:
        return request

    app = App("x", sync=h)
    assert app.call_sync() is h


def test_call_sync_of_an_async_only_app(ctx: Context) -> None:
    async def h(request: bytes, c: Context) -> bytes:
        await asyncio.sleep(0.001)
        c.state["seen"] = True
        return request * 2

    call = as_app(h).call_sync()
    assert call(b"ab", ctx) == b"abab"
    assert call(b"c", ctx) == b"cc"
    assert ctx.state == {"seen": True}


def test_call_sync_async_only_from_two_threads() -> None:
    barrier = threading.Barrier(2, timeout=10)

    async def h(request: bytes) -> bytes:
        await asyncio.sleep(0.01)
        if request.endswith(b"-0"):
            # Both threads are inside their coroutine at the same time: each must have its own
            # running loop (a shared loop would refuse to run re-entrantly).
            barrier.wait()
        await asyncio.sleep(0.01)
        return b"%s@%d" % (request, id(asyncio.get_running_loop()))

    app = as_app(h)
    assert app.sync is None
    call = app.call_sync()
    results: dict[str, list[bytes | None]] = {}
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        c = Context(peer=tag, model="thread")
        try:
            results[tag] = [call(b"%s-%d" % (tag.encode(), i), c) for i in range(3)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    assert not any(t.is_alive() for t in threads)

    loops = {}
    for tag, replies in results.items():
        assert [r.split(b"@")[0] for r in replies if r is not None] == [
            b"%s-%d" % (tag.encode(), i) for i in range(3)
        ]
        ids = {r.split(b"@")[1] for r in replies if r is not None}
        assert len(ids) == 1  # one loop per thread, reused across calls
        loops[tag] = ids.pop()
    assert loops["a"] != loops["b"]


# --- built-in apps --------------------------------------------------------------------------


def test_builtin_names() -> None:
    assert set(BUILTIN_APPS) == {"echo", "upper", "sleep", "cpu"}
    for name, app in BUILTIN_APPS.items():
        assert load_app(name) is app
        assert app.name == name


def test_builtin_kinds() -> None:
    assert load_app("echo").kind == "fast"
    assert load_app("upper").kind == "fast"
    assert load_app("sleep").kind == "io"
    assert load_app("cpu").kind == "cpu"
    assert load_app("sleep").sync is not None and load_app("sleep").async_ is not None


def test_echo(ctx: Context) -> None:
    app = load_app("echo")
    for request in (b"", b"hello", bytes(range(256))):
        assert run_app(app, request, ctx) == request


def test_upper(ctx: Context) -> None:
    assert run_app(load_app("upper"), b"Hello, world 1!", ctx) == b"HELLO, WORLD 1!"
    assert run_app(load_app("upper"), b"\xe4\xb8\xa6", ctx) == b"\xe4\xb8\xa6"


def test_sleep_sync_sleeps_the_requested_ms(ctx: Context) -> None:
    app = load_app("sleep")
    assert app.sync is not None
    start = time.monotonic()
    assert app.sync(b"120", ctx) == b"120"  # replies with the request
    elapsed = time.monotonic() - start
    assert 0.115 <= elapsed < 1.0


def test_sleep_async_sleeps_the_requested_ms_without_blocking(ctx: Context) -> None:
    app = load_app("sleep")
    assert app.async_ is not None
    impl = app.async_

    async def two_at_once() -> list[bytes | None]:
        return list(await asyncio.gather(impl(b"150", ctx), impl(b" 150\n", ctx)))

    start = time.monotonic()
    assert asyncio.run(two_at_once()) == [b"150", b" 150\n"]
    elapsed = time.monotonic() - start
    # Two concurrent 150 ms sleeps take ~150 ms, not 300 ms.
    assert 0.145 <= elapsed < 0.29


def test_sleep_zero_and_empty(ctx: Context) -> None:
    app = load_app("sleep")
    assert app.sync is not None
    start = time.monotonic()
    assert app.sync(b"", ctx) == b""
    assert app.sync(b"0", ctx) == b"0"
    assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("name", ["sleep", "cpu"])
@pytest.mark.parametrize("request_", [b"abc", b"1.5", b"-5", b"\xff"])
def test_numeric_apps_reject_bad_requests(name: str, request_: bytes, ctx: Context) -> None:
    with pytest.raises(UsageError, match=name):
        run_app(load_app(name), request_, ctx)


def _sum_of_squares_mod(n: int) -> int:
    # Closed form of sum(i*i for i in range(n)), independent of cpu_work's loop.
    return ((n - 1) * n * (2 * n - 1) // 6) % 1_000_000_007


@pytest.mark.parametrize("n", [0, 1, 2, 10, 1000, 100_000])
def test_cpu_work(n: int) -> None:
    assert cpu_work(n) == _sum_of_squares_mod(n)


def test_cpu_app(ctx: Context) -> None:
    app = load_app("cpu")
    assert run_app(app, b"100000", ctx) == str(_sum_of_squares_mod(100_000)).encode()
    assert run_app(app, b"100000", ctx) == str(cpu_work(100_000)).encode()
    assert run_app(app, b"10", ctx) == b"285"
    assert run_app(app, b"0", ctx) == b"0"
    assert run_app(app, b"", ctx) == b"0"


# --- load_app('module:attr') ----------------------------------------------------------------


APP_MODULE = textwrap.dedent(
    """
    import asyncio
    from bingfa import App, handler

    NOT_CALLABLE = 42

    def shout(request):
        return request.upper()

    async def greet(request, ctx):
        await asyncio.sleep(0)
        return b"hello " + request + b" from " + ctx.model.encode()

    @handler(kind="fast")
    def quick(request):
        return b"quick:" + request

    def zero_args():
        return b""

    class Handlers:
        @staticmethod
        def reverse(request):
            return request[::-1]

    ready_made = App("ready", sync=lambda request, ctx: b"ready:" + request, kind="cpu")
    """
)


@pytest.fixture
def app_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable module (unique name) holding a few handlers."""
    name = f"bingfa_test_handlers_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_plain_handler(app_module: str, ctx: Context) -> None:
    app = load_app(f"{app_module}:shout")
    assert app.name == f"{app_module}:shout"
    assert app.kind == "io"
    assert run_app(app, b"abc", ctx) == b"ABC"


def test_load_async_handler(app_module: str, ctx: Context) -> None:
    app = load_app(f"{app_module}:greet")
    assert app.sync is None
    assert run_app(app, b"bob", ctx) == b"hello bob from test"


def test_load_keeps_the_kind(app_module: str, ctx: Context) -> None:
    app = load_app(f"{app_module}:quick")
    assert app.kind == "fast"
    assert run_app(app, b"x", ctx) == b"quick:x"


def test_load_dotted_attribute(app_module: str, ctx: Context) -> None:
    assert run_app(load_app(f"{app_module}:Handlers.reverse"), b"abc", ctx) == b"cba"


def test_load_an_app_object(app_module: str, ctx: Context) -> None:
    app = load_app(f"{app_module}:ready_made")
    assert app is sys.modules[app_module].ready_made
    assert app.kind == "cpu"
    assert run_app(app, b"x", ctx) == b"ready:x"


def test_load_from_an_installed_module() -> None:
    app = load_app("bingfa.apps:cpu_work")
    assert app.name == "bingfa.apps:cpu_work"


def test_unknown_builtin_name() -> None:
    with pytest.raises(UsageError) as info:
        load_app("ech0")
    msg = str(info.value)
    assert "'ech0'" in msg
    for name in ("echo", "upper", "sleep", "cpu", "module:attribute"):
        assert name in msg


def test_module_not_importable() -> None:
    spec = f"no_such_module_{uuid.uuid4().hex}:handle"
    with pytest.raises(UsageError, match="cannot import module") as info:
        load_app(spec)
    assert spec in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_module_with_a_broken_import(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"bingfa_test_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("import this_dependency_is_missing_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="this_dependency_is_missing_xyz"):
        load_app(f"{name}:h")
    sys.modules.pop(name, None)


def test_missing_attribute(app_module: str) -> None:
    with pytest.raises(UsageError, match="has no attribute 'nope'"):
        load_app(f"{app_module}:nope")
    with pytest.raises(UsageError, match=r"has no attribute 'Handlers\.nope'"):
        load_app(f"{app_module}:Handlers.nope")


def test_attribute_not_a_handler(app_module: str) -> None:
    with pytest.raises(UsageError, match="must be callable, got int"):
        load_app(f"{app_module}:NOT_CALLABLE")
    with pytest.raises(UsageError, match="first positional argument"):
        load_app(f"{app_module}:zero_args")


@pytest.mark.parametrize(
    "spec", [":handle", "mod:", "mod:a..b", "mod:.a", "mod:a.", ".relative:handle", ":"]
)
def test_malformed_specs(spec: str) -> None:
    with pytest.raises(UsageError, match="bad app spec") as info:
        load_app(spec)
    assert repr(spec) in str(info.value)
    assert "module:attribute" in str(info.value)


def test_public_reexports() -> None:
    assert bingfa.load_app is load_app
    assert bingfa.as_app is as_app
    assert bingfa.handler is handler
    assert bingfa.App is App
    assert bingfa.Context is Context
