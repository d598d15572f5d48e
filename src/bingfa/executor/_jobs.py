"""The unit of work every backend runs: a :class:`Job` of one or more calls of one function.

``Executor.submit`` makes a *single* job: its future resolves to the call's value (or raises).
The map driver makes *batch* jobs (auto-chunking): the future resolves to a
:class:`BatchResult` - the values in order, the exceptions of the items that failed (one
failing item does not fail its neighbours), and, if a worker died mid-batch, where the items it
never started begin (the driver resubmits those).

Batches are run by :func:`run_calls`, whose happy path is ``values.extend(map(fn, items))`` -
no Python-level work per item - so tiny tasks cost about what ``multiprocessing.Pool.map``
charges.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import linecache
import os
import pickle
import reprlib
import sys
import types
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Args",
    "BatchResult",
    "Errors",
    "Job",
    "Kwargs",
    "dumps",
    "dumps_fn",
    "is_coroutine_fn",
    "next_job_id",
    "run_calls",
    "task_repr",
]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
#: exceptions by item index (``None`` when no item failed)
Errors = dict[int, Any] | None


@dataclass(slots=True)
class BatchResult:
    """What a batch job's future resolves to.

    Attributes:
        values: one per item, in item order (``None`` where the item failed or did not run).
        errors: the exception of each failed item, by index, or ``None`` if none failed.
        not_run_from: index of the first item that never started (its worker died first),
            or ``None``; those items, to the end, should be run again.
        elapsed: seconds the worker spent running the items (0.0 when unknown); the
            auto-chunker sizes the next batches from it.
    """

    values: list[Any]
    errors: Errors = None
    not_run_from: int | None = None
    elapsed: float = 0.0


_ids = itertools.count(1)


def next_job_id() -> int:
    """A process-wide unique, positive job id (thread-safe: ``itertools.count`` is atomic)."""
    return next(_ids)


@dataclass(slots=True, eq=False)
class Job:
    """One function and the arguments of one or more calls of it.

    Attributes:
        fn: the function.
        items: one entry per call: the argument tuple if ``star``, else the single argument.
        star: call ``fn(*item)`` (``True``) or ``fn(item)`` (``False``, what ``map`` over one
            iterable sends: no tuple per item).
        kwargs_list: keyword arguments, one dict per call, or ``None`` for no keywords.
        single: ``True`` for ``submit`` (future resolves to the value); ``False`` for a batch
            (future resolves to a :class:`BatchResult`).
        timeout: per-call timeout in seconds for a *running* call, or ``None``.
        future: the future the job resolves; created pending, set running when dispatched.
        id: unique job id.
        payload: the pickled job for process workers (set lazily by the pool).
        requeues: how often a dead worker gave the job back unstarted.
        weight: capacity the job takes in a worker (its length if its items run
            concurrently there, else 1).
    """

    fn: Callable[..., Any]
    items: list[Any]
    star: bool = True
    kwargs_list: list[Kwargs] | None = None
    single: bool = True
    timeout: float | None = None
    future: Future[Any] = field(default_factory=Future)
    id: int = field(default_factory=next_job_id)
    payload: bytes | None = None
    requeues: int = 0
    weight: int = 1

    def __len__(self) -> int:
        return len(self.items)

    def args(self, i: int) -> Args:
        """The positional arguments of call ``i``."""
        item = self.items[i]
        return item if self.star else (item,)  # type: ignore[no-any-return]

    def kwargs(self, i: int) -> Kwargs:
        """The keyword arguments of call ``i``."""
        return self.kwargs_list[i] if self.kwargs_list is not None else {}

    def call(self, i: int) -> Any:
        """Run call ``i`` here and now."""
        return self.fn(*self.args(i), **self.kwargs(i))

    def describe(self, i: int = 0) -> str:
        """A short ``repr`` of call ``i``, for error messages."""
        return task_repr(self.fn, self.args(i), self.kwargs(i))

    def resolve(
        self,
        values: list[Any],
        errors: Errors = None,
        not_run_from: int | None = None,
        elapsed: float = 0.0,
    ) -> None:
        """Resolve the future. Idempotent: a future already resolved (or cancelled) is left."""
        fut = self.future
        if fut.done():
            return
        try:
            if not self.single:
                fut.set_result(BatchResult(values, errors, not_run_from, elapsed))
            elif errors:
                fut.set_exception(errors[0])
            else:
                fut.set_result(values[0])
        except Exception:  # InvalidStateError: resolved concurrently (terminate vs result)
            pass

    def fail_all(self, exc_factory: Callable[[int], BaseException]) -> None:
        """Fail every item, ``exc_factory(i)`` giving the exception for item ``i``."""
        n = len(self)
        self.resolve([None] * n, {i: exc_factory(i) for i in range(n)})


def run_calls(
    fn: Callable[..., Any],
    items: list[Any],
    star: bool,
    kwargs_list: list[Kwargs] | None,
    values: list[Any],
    errors: Errors,
    start: int,
    stop: int,
    on_error: Callable[[BaseException], Any],
) -> Errors:
    """Run calls ``start..stop-1`` of a job, appending their values to ``values``.

    An exception becomes ``errors[i] = on_error(exc)`` (``errors`` is created on the first)
    and ``values[i] = None``; the remaining calls still run. Without keywords the calls run as
    ``values.extend(map(fn, items))`` - ``list.extend`` keeps what was appended before an
    exception, which tells which item raised. Returns ``errors``.
    """
    offset = len(values) - start
    i = start
    while i < stop:
        try:
            if kwargs_list is not None:
                for k in range(i, stop):
                    values.append(fn(*items[k], **kwargs_list[k]))
            elif star:
                values.extend(itertools.starmap(fn, itertools.islice(items, i, stop)))
            else:
                values.extend(map(fn, itertools.islice(items, i, stop)))
            return errors
        except BaseException as exc:
            k = len(values) - offset
            if errors is None:
                errors = {}
            errors[k] = on_error(exc)
            values.append(None)
            i = k + 1
    return errors


_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 4
_repr.maxtuple = 4
_repr.maxdict = 4


def fn_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of ``fn`` (unwrapping ``functools.partial``), or its ``repr``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return _repr.repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def task_repr(fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> str:
    """A short, truncated ``fn(args, k=v)`` for error messages."""
    parts = [_repr.repr(a) for a in args[:6]]
    if len(args) > 6:
        parts.append("...")
    parts.extend(f"{k}={_repr.repr(v)}" for k, v in list(kwargs.items())[:6])
    return f"{fn_name(fn)}({', '.join(parts)})"


# weak: the cache must not keep a submitted lambda or closure (and what it refers to) alive
_coro_cache: weakref.WeakKeyDictionary[Callable[..., Any], bool] = weakref.WeakKeyDictionary()


def is_coroutine_fn(fn: Callable[..., Any]) -> bool:
    """True if calling ``fn`` returns a coroutine: ``async def``, a partial of one, or an
    object whose ``__call__`` is ``async def``. (Cached for plain functions.)"""
    cacheable = isinstance(fn, types.FunctionType)
    if cacheable:
        known = _coro_cache.get(fn)
        if known is not None:
            return known
    f = fn
    while isinstance(f, functools.partial):
        f = f.func
    result = inspect.iscoroutinefunction(f)
    if not result and not isinstance(f, types.FunctionType | types.MethodType):
        call = getattr(f, "__call__", None)  # noqa: B004 - the attribute, not callable()
        result = call is not None and inspect.iscoroutinefunction(call)
    if cacheable:
        if len(_coro_cache) > 1024:
            _coro_cache.clear()
        _coro_cache[fn] = result
    return result


# --- pickling ---------------------------------------------------------------------------------

_fn_cache: dict[tuple[Callable[..., Any], bool], bytes] = {}
_FN_CACHE_MAX = 256
_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)
_toplevel_cache: dict[Callable[..., Any], bool] = {}


def _main_toplevel(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` is a function defined at the top level of the ``__main__`` script file,
    so a worker that imports the script (forkserver, spawn) can find it by name."""
    known = _toplevel_cache.get(fn)
    if known is not None:
        return known
    ok = False
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    code = getattr(fn, "__code__", None)
    if (
        isinstance(fn, types.FunctionType)
        and path
        and code is not None
        and fn.__qualname__ == fn.__name__
        and getattr(main, fn.__name__, None) is fn
        and os.path.abspath(code.co_filename) == os.path.abspath(path)
    ):
        line = linecache.getline(path, code.co_firstlineno)
        ok = line.startswith(("def ", "async def ", "@"))
    if len(_toplevel_cache) > 1024:
        _toplevel_cache.clear()
    _toplevel_cache[fn] = ok
    return ok


def dumps_fn(fn: Callable[..., Any], main_by_ref: bool = False) -> bytes:
    """Pickle ``fn`` for a worker process.

    By reference (plain pickle; cached per function, since a reference does not change) when a
    worker can import it: any function of an importable module, and - if ``main_by_ref``
    (the worker imports the main script, as forkserver and spawn workers of a script with an
    ``if __name__ == "__main__":`` guard do) - functions defined at the top level of the
    ``__main__`` script. Otherwise by value (not cached: a closure's cells or globals may
    change between calls): lambdas, closures, nested functions, ``__main__`` functions, and,
    unless ``main_by_ref``, anything whose plain pickle would name ``__main__`` (a
    ``functools.partial`` holding a ``__main__`` object), which such a worker could not find.

    By value keeps each code object's ``co_filename`` (see :func:`_dumps_by_value`), so a
    traceback formatted in the worker shows the real file and source lines.

    Raises:
        pickle.PicklingError (or TypeError etc.) if not even cloudpickle can pickle ``fn``.
    """
    cacheable = isinstance(fn, _CACHEABLE)
    key = (fn, main_by_ref)
    if cacheable:
        blob = _fn_cache.get(key)
        if blob is not None:
            return blob
    in_main = getattr(fn, "__module__", None) == "__main__"
    if not in_main or (main_by_ref and _main_toplevel(fn)):
        try:
            blob = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            blob = None
        if blob is not None and (main_by_ref or _MAIN not in blob):
            if cacheable:
                if len(_fn_cache) >= _FN_CACHE_MAX:
                    with contextlib.suppress(Exception):
                        _fn_cache.pop(next(iter(_fn_cache)), None)
                _fn_cache[key] = blob
            return blob
    return _dumps_by_value(fn)


def dumps(obj: Any, main_by_ref: bool | None = None) -> bytes:
    """``pickle.dumps``, falling back to pickling by value (cloudpickle) for lambdas or closures
    inside ``obj`` - and for objects whose classes or functions live in ``__main__`` when the
    worker does not import the main script.

    Args:
        obj: what to pickle; a pickle nested in it as ``bytes`` (a :func:`dumps_fn` blob) is
            opaque here.
        main_by_ref: whether the receiving worker imports the ``__main__`` script, so that a
            ``__main__`` dataclass pickled by reference resolves there (``MpWorkerSpec`` and
            friends know: pass their ``main_by_ref``). ``None``: as decided for this process's
            multiprocessing workers (:func:`bingfa.executor._mpctx.workers_import_main`).
    """
    try:
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return _dumps_by_value(obj)
    if main_by_ref is None:
        main_by_ref = _main_by_ref_default
        if main_by_ref is None:  # nothing decided it yet (a gevent pool, an initializer): once
            from bingfa.executor._mpctx import workers_import_main

            main_by_ref = workers_import_main()
    # The hot path - workers import __main__ - costs nothing more; otherwise one scan.
    if not main_by_ref and _mentions_main(blob, obj):
        return _dumps_by_value(obj)
    return blob


#: the default ``main_by_ref`` of :func:`dumps`; ``None`` until decided (see below)
_main_by_ref_default: bool | None = None


def set_main_by_ref_default(value: bool) -> None:
    """Record whether this process's multiprocessing workers import the ``__main__`` script
    (:mod:`bingfa.executor._mpctx` decides, when it makes a context). ``False`` stays: once a
    script is known to run workers that do not import it, by value is the safe way for every
    pool (it works for a worker that did import the script too)."""
    global _main_by_ref_default
    if _main_by_ref_default is not False:
        _main_by_ref_default = value


_MAIN = b"__main__"


def _mentions_main(blob: bytes, obj: Any) -> bool:
    """Whether the pickle ``blob`` of ``obj`` may refer to ``__main__``, not counting pickles
    nested in it as ``bytes`` (a by-reference ``dumps_fn`` blob names ``__main__`` but is
    unpickled by its own rules). May err towards ``True`` (a string ``"__main__"`` in the
    data), which only costs the slower by-value pickle."""
    n = blob.count(_MAIN)
    if n and type(obj) is tuple:
        seen: set[int] = set()
        for part in obj:
            if type(part) is bytes and id(part) not in seen:
                seen.add(id(part))  # pickle writes a repeated object once, then a reference
                n -= part.count(_MAIN)
    return n > 0


_by_value_pickler: type | None = None


def _dumps_by_value(obj: Any) -> bytes:
    """cloudpickle ``obj`` (protocol 5), except that code objects travel as ``marshal`` data.

    cloudpickle 3.1 replaces ``co_filename`` of every code object it pickles with
    ``"<dynamic-code>"`` (for deterministic payloads), so a traceback in the worker would name no
    file and show no source line. ``marshal`` - the format of ``.pyc`` files, and exactly as
    version-specific as the bytecode cloudpickle ships anyway - keeps the whole code object,
    nested ones included, whatever cloudpickle does with file names. A code object that
    ``marshal`` refuses (a hand-made one with odd constants) goes cloudpickle's way.
    """
    import io

    global _by_value_pickler
    if _by_value_pickler is None:
        import marshal

        import cloudpickle  # imported on first need: it is slow to import

        class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, value: Any) -> Any:
                if type(value) is types.CodeType:
                    try:
                        return marshal.loads, (marshal.dumps(value),)
                    except ValueError:
                        pass
                return super().reducer_override(value)

        _by_value_pickler = _Pickler
    buf = io.BytesIO()
    _by_value_pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()
