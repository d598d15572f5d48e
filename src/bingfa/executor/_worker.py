"""Code that runs inside a ``process``-model worker process (and helpers the other workers share).

A process worker is single-threaded from the task's point of view: it reads one job, runs its
calls one after another, writes the outcomes, and reads the next. Before each call it writes
``(job id, first item, start time, end item)`` into a small shared-memory *slot*; the caller
reads the slot to enforce per-task timeouts (kill the worker) and, if the worker dies, to tell
the call that killed it from the calls it had finished or not yet started.

Calls that take under :data:`GROUP_BELOW_S` are run in growing *groups* between two slot
updates (``values.extend(map(fn, group))``), so tiny tasks cost about what
``multiprocessing.Pool.map`` charges; the price is that a crash inside such a group cannot be
pinned on one call: the whole group (well under a millisecond of work) fails.

Workers ignore SIGINT (the caller owns Ctrl-C and stops them), and a watchdog thread exits the
worker if the caller disappears (its *lifeline* pipe reaches end of file), so a worker never
outlives its caller even while stuck in a long task.

Nothing of a finished task stays referenced in a worker: its function, arguments, values and
errors are locals of :func:`_serve_one`, and the function cache holds functions only weakly.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from bingfa.executor import _wire as wire
from bingfa.executor._errors import ExceptionWithTraceback, RemoteTaskError, wrap_exception
from bingfa.executor._jobs import Errors, run_calls

__all__ = [
    "dump_error",
    "dump_result",
    "load_fn",
    "process_worker",
    "run_initializer",
    "setup_worker",
    "wrap_error",
]

# slot layout: [job id, first item of the running group or a state, monotonic start, end item]
SLOT_IDLE = -3.0
SLOT_LOADING = -1.0
SLOT_REPORTING = -2.0
#: a batch flushes a prefix of its outcomes after this long, so a crash loses little
PARTIAL_FLUSH_S = 0.05
#: calls faster than this are grouped between slot updates (a crash then fails the group)
GROUP_BELOW_S = 0.0002


def setup_worker(sys_path: Sequence[str], lifeline_fd: int | None) -> None:
    """Common start-up: ignore SIGINT, adopt the caller's ``sys.path``, start the watchdog."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for p in reversed(sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    if lifeline_fd is not None:
        threading.Thread(
            target=_watch_lifeline, args=(lifeline_fd,), name="bingfa-lifeline", daemon=True
        ).start()


def _watch_lifeline(fd: int) -> None:
    """Block until the caller's end of the lifeline closes, then exit at once."""
    try:
        while os.read(fd, 64):
            pass
    except OSError:
        pass
    os._exit(70)


#: unpickled functions by blob, held *weakly*: a function importable by name stays cached as
#: long as its module holds it, while a function sent by value (a closure, a callable object)
#: lives only as long as a job that uses it - a worker must not keep a finished task's
#: function (and whatever it refers to) alive until the next task arrives
_fn_cache: weakref.WeakValueDictionary[bytes, Callable[..., Any]] = weakref.WeakValueDictionary()


#: the worker's one namespace for the caller's ``__main__`` code that arrives by value (see
#: :func:`_share_main_globals`), when the worker has no import of the script to use
_MAIN_GLOBALS: dict[str, Any] = {"__name__": "__main__"}


def _main_namespace() -> dict[str, Any]:
    """Where the caller's ``__main__`` globals live in this worker: the worker's own import of
    the script (spawn and forkserver workers of a guarded script have it as ``__mp_main__``),
    or else one namespace of our own."""
    imported = sys.modules.get("__mp_main__")
    if imported is not None and getattr(imported, "__file__", None):
        return imported.__dict__
    return _MAIN_GLOBALS


def _share_main_globals(fn: Any) -> Any:
    """``fn`` bound to the worker's one ``__main__`` namespace, if it is a ``__main__`` function
    that came by value (with a private copy of the globals it uses).

    cloudpickle gives every by-value function its own copy of the globals it names, so an
    initializer's ``global conn; conn = connect()`` - or a module-level cache - would be invisible
    to the tasks that run after it in the same worker. The stdlib's workers import the script,
    so there they all share its module. We do the same by hand: names the namespace lacks are
    taken from the copy, names it has win (the worker's state, as in a worker that imported the
    script), and the functions in the copy are rebound too.
    """
    if not isinstance(fn, types.FunctionType) or fn.__module__ != "__main__":
        return fn
    ns = _main_namespace()
    copy = fn.__globals__
    if copy is ns:
        return fn
    for name, value in list(copy.items()):
        if name in ns:
            continue
        if isinstance(value, types.FunctionType) and value.__globals__ is copy:
            value = _rebind(value, ns)  # a helper it calls, from the same copy: share too
        ns[name] = value
    return _rebind(fn, ns)


def _rebind(fn: types.FunctionType, ns: dict[str, Any]) -> types.FunctionType:
    new = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__dict__.update(fn.__dict__)
    return new


def load_fn(blob: bytes) -> Callable[..., Any]:
    """Unpickle a function blob made by ``_jobs.dumps_fn``; cached (weakly) per blob."""
    fn = _fn_cache.get(blob)
    if fn is None:
        fn = _share_main_globals(pickle.loads(blob))
        try:
            _fn_cache[blob] = fn
        except TypeError:  # not weakly referenceable (e.g. a slotted callable): not cached
            pass
    return fn


def load_job(body: bytes) -> tuple[Callable[..., Any], Any, Any, Any, Any]:
    """Decode a JOB frame (``body`` includes its header): ``(fn, items, star, kwargs_list,
    timeout)``. Raises whatever unpickling the job or its function raises (the caller reports
    it as that job's failure)."""
    fn_blob, items, star, kwargs_list, timeout = pickle.loads(memoryview(body)[wire.JOB.size :])
    return load_fn(fn_blob), items, star, kwargs_list, timeout


def wrap_error(exc: BaseException, where: str = "") -> Any:
    """:func:`~bingfa.executor._errors.wrap_exception` that never raises.

    ``wrap_exception`` checks that ``exc`` survives a pickle round trip; an exception whose
    ``__reduce__`` or reconstructor raises ``SystemExit`` (or any other non-``Exception``) would
    escape that check and end the worker. Such an exception travels as a
    :class:`RemoteTaskError` with its type name, message and traceback instead.
    """
    try:
        return wrap_exception(exc, where)
    except BaseException:  # whatever it raises, the task fails, not the worker
        pass
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except BaseException:
        message = "<str() failed>"
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        tb = f"{name}: {message}\n"
    header = f"Traceback in worker{(' ' + where) if where else ''}:\n"
    return ExceptionWithTraceback(RemoteTaskError(name, message), header + tb)


def _pickling_error(value: Any) -> BaseException | None:
    """Why ``value`` cannot be pickled (with pickle, nor with cloudpickle), or ``None``.

    An ``Exception`` becomes a ``PicklingError`` naming it; anything else (``SystemExit``
    raised by a ``__reduce__``, say) is returned as itself, so the item fails with it - what
    ``concurrent.futures`` reports in that case."""
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return None
    except Exception:
        pass
    except BaseException as exc:  # cloudpickle would only raise it again
        return exc
    try:
        cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return None  # dump_result's final dumps falls back to cloudpickle too
    except Exception as exc:
        err = pickle.PicklingError(f"the task's result could not be pickled: {exc!r}")
        err.__cause__ = exc
        return err
    except BaseException as exc:
        return exc


def dump_result(values: list[Any], errors: Errors) -> bytes:
    """Pickle ``(values, errors)`` for the caller; a value that will not pickle becomes that
    item's error. Never raises - not even when a value's ``__reduce__`` raises ``SystemExit``
    or ``KeyboardInterrupt``, which must fail that item, not end the worker. Items are tried
    one by one (pickle, then cloudpickle) only if the whole list fails."""
    try:
        return pickle.dumps((values, errors), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # find the culprits below
        pass
    values = list(values)
    errors = dict(errors or {})
    for i, value in enumerate(values):
        err = _pickling_error(value)
        if err is not None:
            errors[i] = wrap_error(err)
            values[i] = None
    try:
        return pickle.dumps((values, errors or None), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        pass
    try:
        blob: bytes = cloudpickle.dumps((values, errors or None), protocol=pickle.HIGHEST_PROTOCOL)
        return blob
    except BaseException as exc:  # a value changed while it was pickled
        failure = pickle.PicklingError(f"the task's results could not be pickled: {exc!r}")
    wrapped = wrap_error(failure)
    n = len(values)
    return pickle.dumps(([None] * n, dict.fromkeys(range(n), wrapped)), pickle.HIGHEST_PROTOCOL)


def dump_error(exc: BaseException, where: str = "") -> bytes:
    """Pickle one exception (with its traceback) as a one-item ``(values, errors)``."""
    return dump_result([None], {0: wrap_error(exc, where)})


def _subset(errors: Errors, lo: int, hi: int) -> Errors:
    if not errors:
        return None
    sub = {k: v for k, v in errors.items() if lo <= k < hi}
    return sub or None


def run_initializer(init_blob: bytes | None) -> None:
    """Run the pickled ``(dumps_fn(initializer), initargs)``, if any."""
    if init_blob is None:
        return
    fn_blob, initargs = pickle.loads(init_blob)
    load_fn(fn_blob)(*initargs)


def process_worker(
    task_conn: Any,
    result_conn: Any,
    lifeline: Any,
    slot: Any,
    init_blob: bytes | None,
    sys_path: list[str],
) -> None:
    """Main function of a ``process``-model worker (the target of a multiprocessing Process).

    Args:
        task_conn: read end of the task pipe (a multiprocessing Connection; its fd is used).
        result_conn: write end of the result pipe.
        lifeline: read end of the lifeline pipe; EOF means the caller is gone.
        slot: a shared ``RawArray('d', 4)``; see the module docstring.
        init_blob: pickled ``(initializer, initargs)`` or ``None``.
        sys_path: the caller's ``sys.path``, so functions pickled by reference import here.
    """
    tfd = task_conn.fileno()
    rfd = result_conn.fileno()
    setup_worker(sys_path, lifeline.fileno())
    pid = os.getpid()
    where = f"pid {pid}"
    try:
        run_initializer(init_blob)
    except BaseException as exc:
        wire.write_frame(rfd, wire.K_INITFAIL + dump_error(exc, where))
        return
    wire.write_frame(rfd, wire.READY.pack(wire.K_READY, pid))
    slot[1] = SLOT_IDLE
    on_error = functools.partial(wrap_error, where=where)
    reader = wire.BufferedFrameReader(tfd)
    while _serve_one(reader, rfd, slot, where, on_error):
        pass


def _serve_one(
    reader: wire.BufferedFrameReader,
    rfd: int,
    slot: Any,
    where: str,
    on_error: Callable[[BaseException], Any],
) -> bool:
    """Read one job, run it and report it. ``False`` when told to stop or the caller is gone.

    A function of its own so that the job's function, arguments, values and errors are all
    locals that die when it returns: an idle worker holds nothing of its last task.
    """
    try:
        body = reader.next()
    except OSError:
        return False
    if body is None or body[:1] == wire.K_STOP:
        return False
    _, job_id = wire.JOB.unpack_from(body)
    slot[0] = float(job_id)
    slot[1] = SLOT_LOADING
    try:
        fn, items, star, kwargs_list, _timeout = load_job(body)
    except BaseException as exc:  # SystemExit from a __setstate__ included: fail this job only
        wire.write_frame(rfd, wire.JOBFAIL.pack(wire.K_JOBFAIL, job_id) + dump_error(exc, where))
        slot[1] = SLOT_IDLE
        return True
    del body
    perf = time.perf_counter
    mono = time.monotonic
    n = len(items)
    if n == 1 and kwargs_list is None:  # a single call (submit): the short way
        slot[3] = 1.0
        slot[2] = mono()
        slot[1] = 0.0
        t0 = perf()
        try:
            single = [fn(*items[0]) if star else fn(items[0])]
            single_errors: Errors = None
        except BaseException as exc:
            single, single_errors = [None], {0: on_error(exc)}
        elapsed = perf() - t0
        slot[1] = SLOT_REPORTING
        head = wire.RESULT.pack(wire.K_RESULT, job_id, elapsed, 0)
        wire.write_frame(rfd, head + dump_result(single, single_errors))
        slot[1] = SLOT_IDLE
        slot[0] = 0.0
        return True
    values: list[Any] = []
    errors: Errors = None
    flushed = 0
    group = 1  # calls run between two slot updates; grows while calls are tiny
    t0 = last = perf()
    j = 0
    while j < n:
        end = min(n, j + group)
        slot[3] = float(end)
        slot[2] = mono()
        slot[1] = float(j)
        ts = perf()
        errors = run_calls(fn, items, star, kwargs_list, values, errors, j, end, on_error)
        now = perf()
        if now - ts < GROUP_BELOW_S:
            group = min(group * 2, 4096)
        elif group > 1:
            group //= 2
        j = end
        if j < n and now - last > PARTIAL_FLUSH_S:
            head = wire.PARTIAL.pack(wire.K_PARTIAL, job_id, flushed, j - flushed)
            part = dump_result(values[flushed:j], _subset(errors, flushed, j))
            wire.write_frame(rfd, head + part)
            flushed = j
            last = now
    elapsed = perf() - t0
    slot[1] = SLOT_REPORTING
    head = wire.RESULT.pack(wire.K_RESULT, job_id, elapsed, flushed)
    wire.write_frame(rfd, head + dump_result(values[flushed:], _subset(errors, flushed, n)))
    slot[1] = SLOT_IDLE
    slot[0] = 0.0
    return True
