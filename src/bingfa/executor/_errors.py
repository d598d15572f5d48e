"""Errors the executors raise, and how a worker's exception travels back to the caller.

::

    BingfaError
    ├── WorkerDied            a worker process exited holding the task (segfault, kill -9, OOM)
    ├── InitializerFailed     the per-worker ``initializer`` raised; the executor is broken
    ├── RemoteTaskError       the task raised an exception that could not be sent back as itself
    ├── RemoteTraceback       not raised: the ``__cause__`` of a re-raised worker exception
    ├── ClosedError
    │   └── ExecutorClosed    submit after shutdown (also a RuntimeError, like concurrent.futures)
    └── Timeout
        └── TaskTimeout       a *running* task overran its per-task timeout and was stopped

An exception raised by a task in another process is re-raised in the caller as the *same*
exception type, with ``__cause__`` set to a :class:`RemoteTraceback` whose ``str()`` is the
traceback formatted in the worker - the scheme ``concurrent.futures`` uses, so the worker's
frames show up in the caller's traceback print-out.
"""

from __future__ import annotations

import linecache
import pickle
import signal
import traceback
from typing import Any

from bingfa.errors import BingfaError, ClosedError, Timeout

__all__ = [
    "ExecutorClosed",
    "InitializerFailed",
    "RemoteTaskError",
    "RemoteTraceback",
    "TaskTimeout",
    "WorkerDied",
]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RemoteTraceback(BingfaError):
    """The traceback of an exception raised in a worker, as text.

    Never raised by itself: it is the ``__cause__`` of the re-raised exception, so printing the
    caller's traceback prints the worker's one too. ``str()`` is the formatted remote traceback.

    Attributes:
        tb: the traceback text as ``traceback.format_exception`` produced it in the worker.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class WorkerDied(BingfaError):
    """The worker process running (or holding) this task exited before reporting its result.

    Only the tasks that worker held fail; the pool starts a replacement and carries on.

    Attributes:
        pid: the dead worker's process id.
        exitcode: its exit status (negative ``-N`` when killed by signal ``N``), or ``None``.
        signal: the signal number that killed it, or ``None`` if it exited by itself.
        task: a short ``repr`` of the task (function and arguments).
        reason: what the pool knows about the task's fate, e.g. ``"while running the task"``.
    """

    def __init__(
        self, pid: int, exitcode: int | None, task: str, reason: str = "while running the task"
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.signal: int | None = -exitcode if exitcode is not None and exitcode < 0 else None
        self.task = task
        self.reason = reason
        if self.signal is not None:
            how = f"was killed by {_signal_name(self.signal)}"
        elif exitcode is None:
            how = "died"
        else:
            how = f"exited with status {exitcode}"
        super().__init__(f"worker pid {pid} {how} {reason}: {task}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, self.exitcode, self.task, self.reason))


class TaskTimeout(Timeout):
    """A task ran longer than its per-task timeout and was stopped.

    What "stopped" means depends on the model (see docs/executors.md): the process model kills
    and replaces the worker; asyncio cancels the coroutine; gevent kills the greenlet; the
    thread model cannot stop a thread, so the future fails on time and the thread is abandoned.

    Attributes:
        timeout: the limit in seconds.
        task: a short ``repr`` of the task.
        pid: the worker process that was killed, or ``None`` when no process was killed.
    """

    def __init__(self, task: str, timeout: float, pid: int | None = None, how: str = "") -> None:
        tail = f"; {how}" if how else ""
        super().__init__(f"task ran longer than its timeout of {timeout:g}s{tail}: {task}", timeout)
        self.task = task
        self.pid = pid
        self.how = how

    def __reduce__(self) -> tuple[Any, ...]:
        assert self.timeout is not None
        return (type(self), (self.task, self.timeout, self.pid, self.how))


class InitializerFailed(BingfaError):
    """A worker's ``initializer`` raised. The executor is broken: pending and later tasks fail.

    The initializer's own exception is the ``__cause__`` (with its :class:`RemoteTraceback`).
    """


class ExecutorClosed(ClosedError, RuntimeError):
    """The executor was shut down: no new tasks; or it was terminated while this task ran.

    Also a ``RuntimeError``, which is what ``concurrent.futures`` raises on submit after
    shutdown.
    """


class RemoteTaskError(BingfaError):
    """A task raised an exception that could not be pickled back to the caller as itself.

    Attributes:
        type_name: the qualified name of the original exception type.
        message: ``str()`` of the original exception.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message))


# --- carrying an exception and its traceback across a pickle boundary -------------------------
#
# The one implementation behind ``wrap_exception`` (executor workers) and ``portable_exception``
# (pipeline workers, Redis consumers): the traceback is formatted where the frames exist, and the
# exception travels as itself with that text re-attached as its ``__cause__``.


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class ExceptionWithTraceback:
    """Pickles as the exception itself, with a :class:`RemoteTraceback` cause attached on load."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exc, (self.exc, self.tb))


#: cloudpickle's stand-in for ``co_filename`` of the code it pickles by value (3.1 uses
#: ``"<dynamic-code>"``); ``""`` while not yet probed, ``None`` if it keeps the real name
_placeholder: str | None = ""


def _cloudpickle_placeholder() -> str | None:
    """The ``co_filename`` cloudpickle gives code it pickled by value, or ``None`` if it keeps
    the real one. Probed once, by a round trip, so it follows whatever cloudpickle does."""
    global _placeholder
    if _placeholder == "":
        try:
            import cloudpickle

            def probe() -> None:  # nested, so cloudpickle must pickle it by value
                pass

            name = cloudpickle.loads(cloudpickle.dumps(probe)).__code__.co_filename
            _placeholder = None if name == probe.__code__.co_filename else name
        except Exception:
            _placeholder = None
    return _placeholder


def _restore_filenames(te: traceback.TracebackException, exc: BaseException) -> None:
    """Point frames of cloudpickled code (``File "<dynamic-code>"``) back at their source file.

    Code that reached this process pickled by value (a lambda, closure or ``__main__`` function
    sent by a path that did not keep ``co_filename``, e.g. plain ``cloudpickle.dumps``) has lost
    its file name, so the traceback would show no source lines. cloudpickle does ship the
    function's module ``__file__`` in its globals; a frame of such code gets that file back.
    ``te`` must have been built with ``lookup_lines=False`` (lines are read when formatted).
    """
    placeholder: str | None = ""
    queue: list[tuple[traceback.TracebackException, BaseException]] = [(te, exc)]
    seen: set[int] = set()
    while queue:
        t, e = queue.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        # te.stack lists e's traceback frames in order (a prefix of them, under a limit)
        frames = [frame for frame, _ in traceback.walk_tb(e.__traceback__)]
        for summary, frame in zip(t.stack, frames, strict=False):
            if not summary.filename.startswith("<"):
                continue  # the common case: a real file, nothing to do
            if placeholder == "":
                placeholder = _cloudpickle_placeholder()
            if placeholder is None or summary.filename != placeholder:
                continue
            real = frame.f_globals.get("__file__")
            if isinstance(real, str) and real:
                summary.filename = real
                linecache.checkcache(real)
        for sub_t, sub_e in (
            (t.__cause__, e.__cause__),
            (t.__context__, e.__context__),
        ):
            if sub_t is not None and sub_e is not None:
                queue.append((sub_t, sub_e))
        if t.exceptions and isinstance(e, BaseExceptionGroup):
            queue.extend(zip(t.exceptions, e.exceptions, strict=False))


def format_traceback(exc: BaseException) -> str:
    """``"".join(traceback.format_exception(exc))``, but frames of code that was pickled by
    value and lost its file name show their real file and source line (see
    :func:`_restore_filenames`). Identical to the standard formatting otherwise."""
    te = traceback.TracebackException(
        type(exc), exc, exc.__traceback__, lookup_lines=False, compact=True
    )
    _restore_filenames(te, exc)
    return "".join(te.format())


def _survives_pickling(exc: BaseException) -> bool:
    """Whether ``exc`` comes back from a pickle round trip - plain pickle, or cloudpickle, which
    every transport of ours falls back to (an exception class defined in ``__main__`` or in a
    function travels by value that way)."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
        return True
    except Exception:
        pass
    try:
        import cloudpickle

        cloudpickle.loads(cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
        return True
    except Exception:
        return False


def portable_exception(exc: BaseException, where: str) -> Any:
    """Prepare ``exc`` (raised here, in a worker) for a trip through pickle to another process
    or machine.

    The traceback is formatted here, where the frames exist, headed ``Traceback in {where}:``;
    after unpickling, the exception has a :class:`RemoteTraceback` ``__cause__`` holding it.
    An exception that does not survive pickling (unpicklable attributes, an ``__init__`` that
    pickle cannot call) is replaced by a :class:`RemoteTaskError` with its type name and
    message. Mutates ``exc`` (drops its frames, cause and context): call it last.

    Returns:
        an :class:`ExceptionWithTraceback`, which pickles as the exception; typed ``Any``
        because callers store it where the exception goes (``ItemError.exception``, the
        ``errors`` of a batch).
    """
    tb = f"Traceback in {where}:\n" + format_traceback(exc)
    if not _survives_pickling(exc):
        try:
            message = str(exc)
        except Exception:
            message = "<str() failed>"
        exc = RemoteTaskError(f"{type(exc).__module__}.{type(exc).__qualname__}", message)
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return ExceptionWithTraceback(exc, tb)


def wrap_exception(exc: BaseException, where: str = "") -> ExceptionWithTraceback:
    """:func:`portable_exception` for an executor worker: headed ``Traceback in worker:``, or
    ``Traceback in worker {where}:``."""
    carried: ExceptionWithTraceback = portable_exception(
        exc, f"worker {where}" if where else "worker"
    )
    return carried
