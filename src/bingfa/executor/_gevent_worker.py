"""Code that runs inside a ``gevent``-model worker process, *after* it monkey-patched itself.

The process is started by :mod:`bingfa.executor._gevent` as
``python -c "<BOOT>" TASK_FD RESULT_FD LIFELINE_FD``, where ``BOOT`` calls
``gevent.monkey.patch_all()`` as the very first statement - before ``threading``, ``socket``,
``ssl`` or any bingfa or user module is imported - and only then imports this module. So every
blocking stdlib call a task makes (``time.sleep``, sockets, ``urllib``, ``subprocess``) yields
to the gevent hub, and up to ``concurrency`` tasks run as greenlets at once.

The pipes to the caller are read and written with gevent's cooperative ``nb_read``/``nb_write``.

A finished job leaves nothing behind: each job is started by :func:`_start_job` (its locals die
on return), a greenlet drops its arguments when it finishes, and what the worker remembers
about a function (:func:`_has_yielded`) it remembers weakly.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.os
import gevent.pool
import greenlet  # type: ignore[import-untyped]

from bingfa.executor import _wire as wire
from bingfa.executor._errors import TaskTimeout
from bingfa.executor._jobs import Errors, run_calls, task_repr
from bingfa.executor._worker import dump_error, dump_result, load_job, run_initializer, wrap_error

__all__ = ["main"]


class _Reader:
    """Cooperative frame reader on a non-blocking fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = wire.FrameBuffer()
        self.frames: list[bytes] = []

    def next(self) -> bytes | None:
        while not self.frames:
            try:
                data = gevent.os.nb_read(self.fd, 1 << 18)
            except OSError:
                return None
            if not data:
                return None
            self.frames.extend(self.buf.feed(data))
        return self.frames.pop(0)


class _Writer:
    """Collects result frames and writes them cooperatively, coalescing bursts."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: list[bytes] = []
        self.writing = False
        self.event = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)

    def put(self, body: bytes) -> None:
        self.queue.append(wire.frame(body))
        self.event.set()

    def _run(self) -> None:
        while True:
            self.event.wait()
            self.event.clear()
            data = b"".join(self.queue)
            self.queue.clear()
            view = memoryview(data)
            self.writing = True
            try:
                while view:
                    n = gevent.os.nb_write(self.fd, view)
                    view = view[n:]
            except OSError:
                os._exit(71)  # the caller is gone
            del data, view  # do not hold the last results while waiting for the next ones
            self.writing = False

    def drain(self) -> None:
        while self.queue or self.writing:
            gevent.sleep(0.001)


def _watch_lifeline(fd: int) -> None:
    try:
        while gevent.os.nb_read(fd, 64):
            pass
    except OSError:
        pass
    os._exit(70)


#: greenlet switches so far (counted by a greenlet trace function)
_switches = [0]
#: the functions a call of which has yielded to the hub (their calls get greenlets); weak, so
#: that a function sent by value is not kept alive by what we remember about it
_yields: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _has_yielded(fn: Callable[..., Any]) -> bool:
    """Whether a call of ``fn`` has yielded to the hub (``False`` for a function that cannot be
    weakly referenced: its calls start inline, and the first one that yields moves the rest of
    its batch to greenlets - correct, only a little less concurrent)."""
    try:
        return _yields.get(fn, False)
    except TypeError:
        return False


def _mark_yielded(fn: Callable[..., Any]) -> None:
    with contextlib.suppress(TypeError):
        _yields[fn] = True


def _count_switch(event: str, args: Any) -> None:
    _switches[0] += 1


class _Job:
    """One job inside the worker: runs its calls, greenlet per call only when they yield."""

    __slots__ = ("errors", "fn", "items", "kwargs_list", "star", "timeout", "values", "where")

    def __init__(
        self, fn: Any, items: list[Any], star: bool, kwargs_list: Any, timeout: Any, where: str
    ) -> None:
        self.fn = fn
        self.items = items
        self.star = star
        self.kwargs_list = kwargs_list
        self.timeout = timeout
        self.where = where
        self.values: list[Any] = []
        self.errors: Errors = None

    def _error(self, exc: BaseException) -> Any:
        return wrap_error(exc, self.where)

    def one(self, i: int) -> None:
        """Run call ``i`` (``values`` must already hold ``len(items)`` slots)."""
        fn = self.fn
        item = self.items[i]
        args = item if self.star else (item,)
        kwargs = self.kwargs_list[i] if self.kwargs_list else {}
        try:
            if self.timeout is None:
                self.values[i] = fn(*args, **kwargs)
                return
            timer = gevent.Timeout(self.timeout)
            timer.start()
            try:
                self.values[i] = fn(*args, **kwargs)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                how = "the greenlet was killed"
                err = TaskTimeout(task_repr(fn, args, kwargs), self.timeout, None, how)
                self._set_error(i, err)
            finally:
                timer.close()
        except BaseException as exc:
            self._set_error(i, exc)

    def _set_error(self, i: int, exc: BaseException) -> None:
        if self.errors is None:
            self.errors = {}
        self.errors[i] = self._error(exc)

    def run(self, pool: Any) -> None:
        """Run every call. Calls of a function that has never yielded run right here, in
        growing groups at C speed; once one yields (it waits on IO), the rest - and every
        later call of that function - get a greenlet each from ``pool``."""
        n = len(self.items)
        fn = self.fn
        i = 0
        if n > 1 and self.timeout is None and not _has_yielded(fn):
            group = 1
            while i < n:
                before = _switches[0]
                end = min(n, i + group)
                self.errors = run_calls(
                    fn, self.items, self.star, self.kwargs_list, self.values, self.errors,
                    i, end, self._error,
                )  # fmt: skip
                i = end
                if _switches[0] != before:
                    _mark_yielded(fn)
                    break
                group = min(group * 2, 1024)
        if i < n:
            self.values.extend([None] * (n - i))
            if n - i == 1:
                self.one(i)
            else:
                gevent.joinall([pool.spawn(self.one, k) for k in range(i, n)])


def main(task_fd: int, result_fd: int, lifeline_fd: int) -> None:
    """Serve jobs until told to stop (or the caller disappears)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    greenlet.settrace(_count_switch)
    for fd in (task_fd, result_fd, lifeline_fd):
        os.set_blocking(fd, False)
    gevent.spawn(_watch_lifeline, lifeline_fd)
    reader = _Reader(task_fd)
    writer = _Writer(result_fd)
    pid = os.getpid()
    where = f"pid {pid} (gevent)"
    body = reader.next()
    if body is None or body[:1] != wire.K_INIT:
        os._exit(72)
    init = pickle.loads(body[1:])
    for p in reversed(init["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        run_initializer(init["init_blob"])
    except BaseException as exc:
        writer.put(wire.K_INITFAIL + dump_error(exc, where))
        writer.drain()
        os._exit(1)
    pool = gevent.pool.Pool(init["concurrency"])
    writer.put(wire.READY.pack(wire.K_READY, pid))

    def run_job(job_id: int, job: _Job) -> None:
        t0 = time.perf_counter()
        if len(job.items) == 1:
            job.values.append(None)
            job.one(0)
        else:
            job.run(pool)
        head = wire.RESULT.pack(wire.K_RESULT, job_id, time.perf_counter() - t0, 0)
        writer.put(head + dump_result(job.values, job.errors))

    jobs = gevent.pool.Group()
    while True:
        body = reader.next()
        if body is None or body[:1] == wire.K_STOP:
            break
        _start_job(body, where, writer, pool, jobs, run_job)
        del body  # the pickled arguments must not outlive their job while we wait
    pool.join()
    jobs.join()
    writer.drain()
    os._exit(0)


def _start_job(
    body: bytes,
    where: str,
    writer: _Writer,
    pool: Any,
    jobs: Any,
    run_job: Callable[[int, _Job], None],
) -> None:
    """Load the job in ``body`` and start it in a greenlet (a single call in ``pool``, a batch
    in ``jobs``); a job that does not unpickle - ``SystemExit`` from a ``__setstate__``
    included - fails by itself. A function of its own so that its locals (function, arguments)
    are gone when it returns, not kept until the next job arrives."""
    _, job_id = wire.JOB.unpack_from(body)
    try:
        fn, items, star, kwargs_list, timeout = load_job(body)
    except BaseException as exc:
        writer.put(wire.JOBFAIL.pack(wire.K_JOBFAIL, job_id) + dump_error(exc, where))
        return
    job = _Job(fn, items, star, kwargs_list, timeout, where)
    if len(items) == 1:
        pool.spawn(run_job, job_id, job)
    else:
        jobs.spawn(run_job, job_id, job)
