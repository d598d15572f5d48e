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


_coro_cache: dict[Callable[..., Any], bool] = {}


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
    (the worker imports the main script, as forkserver and spawn workers do) - functions
    defined at the top level of the ``__main__`` script. Otherwise by value with cloudpickle
    (not cached: a closure's cells or globals may change between calls): lambdas, closures,
    nested functions, ``__main__`` functions of an interactive session.

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
        else:
            if cacheable:
                if len(_fn_cache) >= _FN_CACHE_MAX:
                    with contextlib.suppress(Exception):
                        _fn_cache.pop(next(iter(_fn_cache)), None)
                _fn_cache[key] = blob
            return blob
    import cloudpickle  # imported on first need: it is slow to import

    by_value: bytes = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    return by_value


def dumps(obj: Any) -> bytes:
    """``pickle.dumps``, falling back to cloudpickle for lambdas or closures inside ``obj``."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        blob: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return blob
