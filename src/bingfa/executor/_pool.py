"""The caller side of a pool of worker processes (models ``process``, ``hybrid`` and ``gevent``).

Design (see docs/executors.md, "How the process pool works"):

* Every worker has **its own pipes** (tasks in, results out) and a lifeline pipe. The caller
  decides which worker gets which job, so it always knows what a worker holds. A *sequential*
  worker (``process``) holds at most one job; a *concurrent* one (``hybrid``, ``gevent``) holds
  up to its capacity in calls.
* Submitting pickles the job in the calling thread and writes it with a **non-blocking** write
  straight to an idle worker's pipe - no queue, no feeder thread. Whatever does not fit is left
  for the IO thread.
* One **IO thread** multiplexes (``selectors``) every worker's result pipe, its process
  sentinel, pending writes and a wake-up pipe; it resolves futures (so done-callbacks run in
  it), enforces per-task timeouts, retires and replaces workers.
* A worker that **dies** is noticed by its sentinel/EOF. Its remaining result frames are read
  first; then only the jobs it held fail with :class:`WorkerDied` (or :class:`TaskTimeout` when
  the pool killed it for overrunning), calls it had not started are given back (a single job is
  re-queued; a batch reports where they start for the map driver to resubmit), and a
  replacement worker is started. Nothing waits on a dead worker, so nothing hangs. What
  happens to each held job is decided by :func:`settle`, a pure function of what the pool
  knows (the job's length, the prefix the worker reported, its slot), tested on its own.
* A frame whose payload does not unpickle in the caller (a result, a partial result, an
  exception) fails only the job it belongs to, whatever the unpickling raised - ``SystemExit``
  from a ``__setstate__`` included. The IO thread never dies of it.
* **Lifetime**: the pool stays registered for interpreter exit (``track``) until its IO thread
  has finished and every worker is gone, so a ``shutdown(wait=False)`` still lets exit wait for
  the pending work (as ``concurrent.futures`` does, gh-83386). ``shutdown(wait=False)`` takes
  no lock, so it can run anywhere: from a ``weakref.finalize`` of the owning ``Executor``
  (possibly triggered by the garbage collector in the middle of the IO thread's own work), a
  done-callback, or the IO thread itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import selectors
import signal
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bingfa.executor import _wire as wire
from bingfa.executor._backend import Backend, track, untrack
from bingfa.executor._errors import (
    ExecutorClosed,
    InitializerFailed,
    TaskTimeout,
    WorkerDied,
)
from bingfa.executor._jobs import Errors, Job, dumps, dumps_fn
from bingfa.executor._worker import SLOT_LOADING, SLOT_REPORTING

__all__ = ["MpWorkerSpec", "ProcessPool", "Settlement", "WorkerHandle", "WorkerSpec", "settle"]

log = logging.getLogger("bingfa.executor")

#: a job is re-queued at most this many times when its worker dies before starting it
MAX_REQUEUES = 3
#: this many workers in a row dying before they are ready breaks the pool
MAX_STARTUP_FAILURES = 3
#: how long graceful shutdown waits for a stopped worker to exit before killing it
STOP_GRACE_S = 5.0

# what a dead worker's unreported calls are known to have gone through (``WorkerDied.reason``)
REASON_HELD = "while it held the task"
REASON_NOT_STARTED = "before the task started"
REASON_LOADING = "while loading the task"
REASON_LOST = "after running the task, before reporting its result"
REASON_RUNNING = "while running the task"


# --- what a dead worker's jobs become -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settlement:
    """The fate of one job whose worker died (see :func:`settle`).

    Attributes:
        requeue: the worker never started the job: queue it again, unchanged.
        requeues: the job's re-queue count from now on (``Job.requeues``).
        errors: the failures to add, by item index - exactly the items from the reported
            prefix on, up to ``not_run_from`` (or the end); empty when ``requeue``.
        not_run_from: the first of the items the worker never started, which the map driver
            runs again (they end the job), or ``None``.
    """

    requeue: bool
    requeues: int
    errors: Mapping[int, BaseException]
    not_run_from: int | None


_NO_ERRORS: Mapping[int, BaseException] = types.MappingProxyType({})


def settle(
    n: int,
    reported: int,
    state: float | None,
    group_end: int,
    *,
    sequential: bool,
    requeues: int,
    kill_timeout: float | None,
    terminated: bool,
    pid: int,
    exitcode: int | None,
    describe: Callable[[int], str],
) -> Settlement:
    """Decide what becomes of a job of ``n`` calls that a dead worker held. Pure: it only
    reads its arguments (``describe`` excepted, which formats a call for the messages).

    Args:
        n: the job's number of calls.
        reported: how many leading calls the worker reported before dying (``P`` frames);
            their outcomes stand and this decides nothing about them.
        state: the worker's slot state, if its slot names this job: ``SLOT_IDLE`` (not
            started), ``SLOT_LOADING``, ``SLOT_REPORTING`` (all calls ran), or the index of the
            first call of the group that was running; ``None`` if the slot names another job
            or the worker has no slot (it never started this job, as far as we know).
        group_end: the slot's end of that group (``0``: unknown, to the end of the job).
        sequential: the worker runs one call at a time and keeps its slot up to date
            (``process``); a concurrent worker (``hybrid``, ``gevent``) runs many at once and
            has no slot, so all its unreported calls fail.
        requeues: how often the job was re-queued before.
        kill_timeout: the job's timeout if the pool killed the worker because the job's
            running call overran it; that call then fails with :class:`TaskTimeout`.
        terminated: the pool is being terminated: nothing is re-queued.
        pid: the dead worker's pid; exitcode: its exit status (``-N`` for signal N) or None.
        describe: ``describe(i)`` is a short repr of call ``i``.

    Returns:
        A :class:`Settlement`: re-queue a job that never started (at most
        :data:`MAX_REQUEUES` times, never when terminating); otherwise fail the calls that
        were running or whose outcome was lost, and report where the never-started calls of a
        batch begin.
    """
    errors: dict[int, BaseException] = {}

    def fail(lo: int, hi: int, reason: str) -> None:
        for i in range(lo, hi):
            errors[i] = WorkerDied(pid, exitcode, describe(i), reason)

    def done(not_run_from: int | None = None) -> Settlement:
        return Settlement(False, requeues, types.MappingProxyType(errors), not_run_from)

    if not sequential:
        fail(reported, n, REASON_HELD)
        return done()
    if state is None or state < SLOT_REPORTING:  # never started (SLOT_IDLE, or another job)
        requeues += 1
        if requeues <= MAX_REQUEUES and not terminated:
            return Settlement(True, requeues, _NO_ERRORS, None)
        fail(reported, n, REASON_NOT_STARTED)
        return done()
    if state == SLOT_LOADING:
        fail(reported, n, REASON_LOADING)
        return done()
    if state == SLOT_REPORTING:  # every call ran; the report was being written
        fail(reported, n, REASON_LOST)
        return done()
    # calls reported..idx-1 finished (their outcomes died with the worker); the group
    # idx..end-1 was running; end.. never started
    idx = max(int(state), reported)
    if idx >= n:  # cannot happen with a consistent slot: nothing was running
        fail(reported, n, REASON_LOST)
        return done()
    end = min(n, group_end) if group_end > 0 else n
    end = max(end, idx + 1)
    fail(reported, idx, REASON_LOST)
    if end - idx == 1:
        if kill_timeout is not None:
            how = f"worker pid {pid} was killed and replaced"
            errors[idx] = TaskTimeout(describe(idx), kill_timeout, pid, how)
        else:
            fail(idx, idx + 1, REASON_RUNNING)
    else:
        fail(idx, end, f"while running a group of {end - idx} small tasks this one was in")
    return done(end if end < n else None)


def _slot_view(slot: Any, job_id: int) -> tuple[float | None, int]:
    """``(state, group_end)`` of a dead worker's slot for :func:`settle`; ``(None, 0)`` when
    the slot does not name ``job_id`` (or there is no slot). The worker is dead, so the slot
    no longer changes: no seqlock read needed."""
    if slot is None or int(slot[0]) != job_id:
        return None, 0
    return float(slot[1]), max(0, int(slot[3]))


class WorkerHandle:
    """The caller's view of one worker process. Owned by the pool's IO thread."""

    __slots__ = (
        "assigned",
        "capacity",
        "dead",
        "held_items",
        "inbuf",
        "jobs",
        "keep",
        "kill_reason",
        "outbuf",
        "partials",
        "pid",
        "pidfd",
        "proc",
        "ready",
        "registered",
        "result_fd",
        "retiring",
        "sentinel",
        "slot",
        "stop_sent",
        "task_fd",
        "wid",
        "write_registered",
    )

    def __init__(
        self,
        wid: int,
        pid: int,
        proc: Any,
        task_fd: int,
        result_fd: int,
        sentinel: int | None,
        slot: Any,
        keep: list[Any],
        capacity: int,
        pidfd: int | None = None,
    ) -> None:
        self.wid = wid
        self.pid = pid
        #: a pidfd for signalling: unlike the pid it can never name a recycled process (a
        #: forkserver child is reaped by the fork server the moment it dies, not by us)
        self.pidfd = pidfd
        self.proc = proc
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.sentinel = sentinel
        self.slot = slot
        self.keep = keep
        self.capacity = capacity
        self.jobs: dict[int, Job] = {}
        #: per job: values and errors of a prefix the worker already reported (``P`` frames)
        self.partials: dict[int, tuple[list[Any], dict[int, Any]]] = {}
        self.held_items = 0
        self.assigned = 0
        self.outbuf = bytearray()
        self.inbuf = wire.FrameBuffer()
        self.ready = False
        self.dead = False
        self.retiring = False
        self.stop_sent = False
        self.registered = False
        self.write_registered = False
        self.kill_reason: tuple[int, float] | None = None

    def kill(self) -> None:
        """SIGKILL the worker (no-op if it is already gone)."""
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int | None:
        """Reap the process and return its exit code (``-N`` for signal N), or ``None``."""
        proc = self.proc
        if proc is None:  # already let go of (close)
            return None
        if hasattr(proc, "join"):  # multiprocessing.Process
            proc.join(timeout)
            code = proc.exitcode
        else:  # subprocess.Popen
            try:
                code = proc.wait(timeout)
            except Exception:
                code = None
        return code if isinstance(code, int) else None

    def close(self) -> None:
        """Close the caller's ends of the worker's pipes (and its pidfd); let go of the process.

        A ``multiprocessing.Process`` is deliberately not ``close()``d. multiprocessing's own
        exit handler takes a snapshot of ``active_children()`` and then ``join()``s each of
        them, and ``join()`` on a closed Process raises ``ValueError: process object is
        closed`` ("Exception ignored in atexit callback") - which happened whenever this IO
        thread closed one in between. A reaped Process has left multiprocessing's children set
        already (``join`` removes it), so dropping our reference frees it, and its ``Popen``'s
        finalizer closes the sentinel; a snapshot still holding it joins it at once.
        """
        self.pidfd = None  # its number may be reused by any file from now on
        for obj in self.keep:
            with contextlib.suppress(Exception):
                if isinstance(obj, int):
                    os.close(obj)
                else:
                    obj.close()
        self.keep = []
        self.proc = None


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), or ``None`` where pidfds do not exist."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


class WorkerSpec(Protocol):
    """How to start one kind of worker process."""

    kind: str
    sequential: bool
    capacity: int
    #: the worker imports the ``__main__`` script, so its top-level functions pickle by name
    main_by_ref: bool

    def start(self, wid: int) -> WorkerHandle:
        """Start a worker; returns once the process exists (not necessarily ready)."""
        ...

    def items_concurrent(self, fn: Callable[..., Any]) -> bool:
        """Whether a worker runs the items of one batch of ``fn`` concurrently."""
        ...

    def slots(self, fn: Callable[..., Any]) -> int:
        """How many calls of ``fn`` one worker runs at once."""
        ...


class MpWorkerSpec:
    """Workers started with a multiprocessing context (``process`` and ``hybrid`` models).

    Args:
        ctx: the multiprocessing context (forkserver by default on Linux).
        kind: model name, used in process names.
        target: the worker main function; called as
            ``target(task_conn, result_conn, lifeline, slot, init_blob, sys_path, *extra)``.
        extra: extra arguments for ``target``.
        init_blob: pickled ``(initializer, initargs)`` or ``None``.
        sequential: one call at a time (a slot is allocated for timeouts and crash attribution).
        capacity: calls a worker runs at once.
    """

    def __init__(
        self,
        ctx: Any,
        kind: str,
        target: Callable[..., None],
        extra: tuple[Any, ...],
        init_blob: bytes | None,
        sequential: bool,
        capacity: int,
    ) -> None:
        self.ctx = ctx
        self.kind = kind
        self.target = target
        self.extra = extra
        self.init_blob = init_blob
        self.sequential = sequential
        self.capacity = capacity
        self.main_by_ref = getattr(ctx, "imports_main", True)  # workers import __main__? _mpctx

    def items_concurrent(self, fn: Callable[..., Any]) -> bool:
        return not self.sequential

    def slots(self, fn: Callable[..., Any]) -> int:
        return self.capacity

    def start(self, wid: int) -> WorkerHandle:
        ctx = self.ctx
        task_r, task_w = ctx.Pipe(duplex=False)
        res_r, res_w = ctx.Pipe(duplex=False)
        life_r, life_w = ctx.Pipe(duplex=False)
        slot = ctx.RawArray("d", 4) if self.sequential else None
        proc = ctx.Process(
            target=self.target,
            args=(task_r, res_w, life_r, slot, self.init_blob, list(sys.path), *self.extra),
            name=f"bingfa-{self.kind}-{wid}",
            daemon=False,  # non-daemonic so tasks may start processes; the lifeline reaps us
        )
        try:
            proc.start()
        finally:
            task_r.close()
            res_w.close()
            life_r.close()
        os.set_blocking(task_w.fileno(), False)
        os.set_blocking(res_r.fileno(), False)
        keep: list[Any] = [task_w, res_r, life_w]
        pidfd = open_pidfd(proc.pid)
        if pidfd is not None:
            keep.append(pidfd)
        return WorkerHandle(
            wid,
            proc.pid,
            proc,
            task_w.fileno(),
            res_r.fileno(),
            proc.sentinel,
            slot,
            keep,
            self.capacity,
            pidfd,
        )


class ProcessPool(Backend):
    """A pool of worker processes behind a :class:`Backend` interface. See the module docstring.

    Args:
        spec: how to start a worker.
        workers: number of worker processes.
        max_tasks_per_worker: retire and replace a worker after it was given this many calls
            (a batch is never split, so a worker may run up to one batch more).
        model: the model name reported in errors and logs.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        max_tasks_per_worker: int | None = None,
        model: str = "process",
    ) -> None:
        self.model = model
        self.chunk_target = 0.01
        self._spec = spec
        self._nworkers = workers
        self._max_tasks = max_tasks_per_worker
        self._lock = threading.Lock()
        self._pending: deque[Job] = deque()
        self._workers: dict[int, WorkerHandle] = {}
        self._next_wid = 0
        self._closing = False
        self._terminated = False
        self._broken: BaseException | None = None
        self._startup_failures = 0
        self._stop_deadline: float | None = None
        self._timed = 0  # held jobs with a timeout (the IO thread polls slots only if > 0)
        #: jobs whose pickling failed at dispatch, under the lock: the IO thread fails their
        #: futures outside it (done-callbacks may submit, which takes the lock)
        self._unpicklable: deque[tuple[Job, BaseException]] = deque()
        self._dirty = True  # housekeeping needed (a worker died/retired, closing, ...)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_pipe, self._wake_r, self._wake_w)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._io = threading.Thread(target=self._io_main, name=f"bingfa-{model}-io", daemon=True)
        try:
            for _ in range(workers):
                self._add_worker()
            track(self)  # before the IO thread can finish (and untrack)
            self._io.start()  # RuntimeError at interpreter shutdown: the workers must go too
        except BaseException:
            untrack(self)
            for w in self._workers.values():
                w.kill()
                w.wait_exit(1.0)
                w.close()
            self._close_fds()
            raise

    # --- public (Backend) ------------------------------------------------------------------

    def parallelism(self, fn: Callable[..., Any]) -> int:
        return self._nworkers * self._spec.slots(fn)

    def lanes(self, fn: Callable[..., Any]) -> int:
        return self._nworkers  # each worker process takes batches

    def batch_items_concurrent(self, fn: Callable[..., Any]) -> bool:
        return self._spec.items_concurrent(fn)

    def submit_job(self, job: Job) -> None:
        self._raise_if_broken()
        if self._closing:
            raise ExecutorClosed("cannot schedule new tasks after shutdown")
        # Pickle now if the job is likely to go to a worker at once; a job that will wait in
        # the queue (an eager map's later batches) is pickled when it is dispatched, so the
        # pool holds the caller's objects, not a pickled copy of every queued argument.
        if job.payload is None and not self._pending and not self._pickle(job):
            return
        job.weight = len(job) if self.batch_items_concurrent(job.fn) else 1
        wake = False
        with self._lock:
            self._raise_if_broken()
            if self._closing:
                raise ExecutorClosed("cannot schedule new tasks after shutdown")
            self._pending.append(job)
            wake = self._dispatch_locked()
        if wake:
            self._wake()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """No new jobs; cancel the queued ones if asked; the IO thread finishes the rest, stops
        the workers and cleans up. With ``wait``, block until it has (except when called from
        the IO thread itself - a done-callback - which cannot wait for itself).

        Safe from any thread and idempotent. Without ``cancel_futures`` it takes no lock: it
        may run from a ``weakref.finalize`` that the garbage collector triggers while this very
        thread holds the pool's lock (a plain ``Lock``, not re-entrant). Setting the two flags
        needs no lock: a ``submit_job`` that read ``_closing`` before it was set queues its job
        as if it had come just before the shutdown, and the IO thread decides that everything
        is done under the lock.
        """
        self._closing = True
        self._dirty = True
        if cancel_futures:
            self._cancel_pending()
        self._wake()
        if wait and threading.current_thread() is not self._io:
            self._io.join()
        # not untrack(self) here: the IO thread does that once everything has stopped, so that
        # interpreter exit still waits for the work left after shutdown(wait=False)

    def _cancel_pending(self) -> None:
        with self._lock:
            cancelled = list(self._pending)
            self._pending.clear()
        for job in cancelled:
            if not job.future.cancel() and not job.future.done():
                # a re-queued job is already running: it cannot be cancelled, only failed
                job.fail_all(lambda i: ExecutorClosed("executor shut down before the task ran"))

    def terminate(self) -> None:
        with self._lock:
            self._closing = True
            self._terminated = True
            pending = list(self._pending)
            self._pending.clear()
            held: list[Job] = []
            for w in self._workers.values():
                held.extend(self._take_all_locked(w))
                w.kill()
        for job in pending:
            if not job.future.cancel():
                job.fail_all(lambda i: ExecutorClosed("the executor was terminated"))
        for job in held:
            job.fail_all(lambda i: ExecutorClosed("the executor was terminated while it ran"))
        self._wake()
        if threading.current_thread() is not self._io:
            self._io.join(2.0)
        # the IO thread untracks the pool when it has cleaned up (see shutdown)

    # --- dispatch (caller threads and IO thread; under the lock) ----------------------------

    def _raise_if_broken(self) -> None:
        broken = self._broken
        if broken is None:
            return
        if isinstance(broken, InitializerFailed):
            err: BaseException = InitializerFailed(str(broken))
            err.__cause__ = broken.__cause__ or broken
        else:
            err = ExecutorClosed(f"the {self.model} pool is broken: {broken}")
            err.__cause__ = broken
        raise err

    def _pick_worker(self, job: Job) -> WorkerHandle | None:
        best: WorkerHandle | None = None
        sequential = self._spec.sequential
        for w in self._workers.values():
            if w.dead or w.retiring or w.stop_sent:
                continue
            if sequential:
                if not w.jobs:
                    return w
                continue
            # map batches: a quarter more than the worker runs at once, so that when a batch
            # finishes the next is already there (the worker's own pool bounds what runs).
            # Not for submit(): a task that is queued here can still be cancelled.
            slots = self._spec.slots(job.fn)
            limit = slots if job.single else slots + max(1, slots // 4)
            fits = w.held_items == 0 or w.held_items + job.weight <= limit
            if fits and (best is None or w.held_items < best.held_items):
                best = w
        return best

    def _dispatch_locked(self) -> bool:
        """Give pending jobs to free workers. Returns True if the IO thread must be woken."""
        wake = False
        pending = self._pending
        while pending:
            job = pending[0]
            w = self._pick_worker(job)
            if w is None:
                break
            pending.popleft()
            if job.requeues == 0 and not job.future.set_running_or_notify_cancel():
                continue  # cancelled while queued (a re-queued job is already running)
            if job.payload is None and not self._pickle(job, fail_now=False):
                wake = True  # the IO thread fails its future
                continue
            assert job.payload is not None
            w.jobs[job.id] = job
            w.held_items += job.weight
            w.assigned += len(job)
            if job.timeout is not None:
                self._timed += 1
                wake = True  # the IO thread must start watching the clock
            if self._max_tasks is not None and w.assigned >= self._max_tasks:
                w.retiring = True
                self._dirty = True
                wake = True
            w.outbuf += wire.frame(wire.JOB.pack(wire.K_JOB, job.id) + job.payload)
            if not self._flush_locked(w):
                wake = True
        return wake

    def _pickle(self, job: Job, fail_now: bool = True) -> bool:
        """Set ``job.payload``; on failure (not picklable even by cloudpickle) fail its future -
        at once, or, under the lock at dispatch (``fail_now=False``), through the IO thread -
        and return False."""
        try:
            job.payload = dumps(
                (
                    dumps_fn(job.fn, self._spec.main_by_ref),
                    job.items,
                    job.star,
                    job.kwargs_list,
                    job.timeout,
                ),
                main_by_ref=self._spec.main_by_ref,
            )
        except Exception as exc:
            if fail_now:
                with contextlib.suppress(Exception):  # InvalidStateError: cancelled meanwhile
                    job.future.set_exception(exc)
            else:
                self._unpicklable.append((job, exc))
            return False
        return True

    def _pop_job_locked(self, w: WorkerHandle, job_id: int) -> Job | None:
        """Remove a job from ``w``'s holdings (its partial outcomes stay in ``w.partials``)."""
        job = w.jobs.pop(job_id, None)
        if job is not None:
            w.held_items -= job.weight
            if job.timeout is not None:
                self._timed -= 1
        return job

    def _take_all_locked(self, w: WorkerHandle) -> list[Job]:
        """Remove and return every job ``w`` holds."""
        jobs = list(w.jobs.values())
        for job in jobs:
            self._pop_job_locked(w, job.id)
        return jobs

    def _flush_locked(self, w: WorkerHandle) -> bool:
        """Write as much of ``w.outbuf`` as the pipe takes now. True if all of it went."""
        buf = w.outbuf
        while buf:
            try:
                n = os.write(w.task_fd, buf)
            except BlockingIOError:
                return False
            except OSError:  # worker gone: its death is handled via sentinel/EOF
                buf.clear()
                return True
            del buf[:n]
        return True

    def _wake(self) -> None:
        # the wake pipe is closed only when the pool object is collected (weakref.finalize),
        # so this never writes to a recycled fd number
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # --- workers ---------------------------------------------------------------------------

    def _add_worker(self) -> WorkerHandle:
        wid = self._next_wid
        self._next_wid += 1
        w = self._spec.start(wid)
        with self._lock:
            self._workers[wid] = w
        log.debug("%s pool: started worker %d (pid %d)", self.model, wid, w.pid)
        return w

    def _register(self) -> None:
        """(IO thread) Bring selector registrations in line with the workers' state."""
        sel = self._sel
        for w in list(self._workers.values()):
            if w.dead:
                continue
            if not w.registered:
                sel.register(w.result_fd, selectors.EVENT_READ, ("r", w))
                if w.sentinel is not None:
                    sel.register(w.sentinel, selectors.EVENT_READ, ("s", w))
                w.registered = True
            want = bool(w.outbuf)
            if want != w.write_registered:
                if want:
                    sel.register(w.task_fd, selectors.EVENT_WRITE, ("w", w))
                else:
                    sel.unregister(w.task_fd)
                w.write_registered = want

    def _unregister(self, w: WorkerHandle) -> None:
        for fd, flag in ((w.result_fd, w.registered), (w.task_fd, w.write_registered)):
            if flag:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(fd)
        if w.registered and w.sentinel is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(w.sentinel)
        w.registered = w.write_registered = False

    # --- the IO thread ---------------------------------------------------------------------

    def _io_main(self) -> None:
        done: list[Callable[[], None]] = []
        try:
            while True:
                self._register()
                timeout = self._select_timeout()
                # resolve futures last, right before blocking: a woken caller then finds the
                # GIL free instead of waiting for this thread to finish its bookkeeping
                if done:
                    self._resolve(done)
                if self._all_stopped():
                    break
                events = self._sel.select(timeout)
                for key, _mask in events:
                    tag, w = key.data
                    if tag == "wake":
                        with contextlib.suppress(BlockingIOError, OSError):
                            while os.read(self._wake_r, 4096):
                                pass
                    elif tag == "r":
                        if not w.dead:
                            self._on_readable(w, done)
                    elif tag == "s":
                        if not w.dead:
                            self._on_death(w, done)
                    elif tag == "w":
                        with self._lock:
                            self._flush_locked(w)
                self._check_deadlines()
                self._housekeeping(done)
        except BaseException:
            log.exception("%s pool: IO thread crashed; failing all tasks", self.model)
            self.terminate()
            self._resolve(done)  # outcomes read before the crash are still good
        finally:
            try:
                self._cleanup()
            finally:
                # only now, with every worker gone: interpreter exit waits for a tracked pool
                untrack(self)

    def _resolve(self, done: list[Callable[[], None]]) -> None:
        """(IO thread) Resolve the futures queued in ``done`` - their done-callbacks run here -
        and forget them. A method of its own so that no local (a loop variable) keeps the
        last finished job, its function, arguments or values alive while the thread waits."""
        for resolve in done:
            try:
                resolve()
            except BaseException:  # a done-callback raising, even SystemExit, must not kill us
                log.exception("%s pool: resolving a future failed", self.model)
        done.clear()

    def _select_timeout(self) -> float | None:
        timeout: float | None = None
        if self._stop_deadline is not None:
            timeout = max(0.0, self._stop_deadline - time.monotonic())
        if not self._spec.sequential:
            return 1.0 if timeout is None else min(timeout, 1.0)
        if not self._timed:
            return timeout
        now = time.monotonic()
        with self._lock:
            held = [(w, job) for w in self._workers.values() for job in w.jobs.values()]
        for w, job in held:
            if job.timeout is None:
                continue
            started = self._started(w, job)
            left = 0.005 if started is None else max(0.0, started + job.timeout - now)
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    @staticmethod
    def _started(w: WorkerHandle, job: Job) -> float | None:
        """(seqlock read of the slot) monotonic start of ``job``'s current call, or None."""
        slot = w.slot
        if slot is None:
            return None
        for _ in range(3):
            j0, i0, start = slot[0], slot[1], slot[2]
            if slot[0] == j0 and slot[1] == i0:
                if int(j0) == job.id and i0 >= 0:
                    return float(start)
                return None
        return None

    def _check_deadlines(self) -> None:
        if not self._spec.sequential or not self._timed:
            return
        now = time.monotonic()
        with self._lock:
            held = [(w, list(w.jobs.values())) for w in self._workers.values()]
        for w, jobs in held:
            if w.dead or w.kill_reason is not None:
                continue
            for job in jobs:
                if job.timeout is None:
                    continue
                started = self._started(w, job)
                if started is not None and now - started > job.timeout:
                    w.kill_reason = (job.id, job.timeout)
                    log.info(
                        "%s pool: task %s ran over its %gs timeout; killing worker pid %d",
                        self.model,
                        job.describe(int(w.slot[1])),
                        job.timeout,
                        w.pid,
                    )
                    w.kill()

    def _on_readable(self, w: WorkerHandle, done: list[Callable[[], None]]) -> None:
        if self._drain(w, done):
            self._on_death(w, done)

    def _drain(self, w: WorkerHandle, done: list[Callable[[], None]]) -> bool:
        """(IO thread) Read what ``w``'s result pipe holds now and handle its complete frames.
        Returns True at end of file (the worker is gone or closed its end).

        Used both when the pipe is readable and when the worker died: a pipe read returns
        everything buffered up to its size, so a short read means the pipe is empty for now -
        and, after the writer died, for good.
        """
        while True:
            try:
                data = os.read(w.result_fd, 1 << 20)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            for body in w.inbuf.feed(data):
                self._on_frame(w, body, done)
            if len(data) < (1 << 20):
                return False

    def _on_frame(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """Dispatch one frame on its kind byte (:data:`_FRAME_HANDLERS`)."""
        handler = _FRAME_HANDLERS.get(body[:1])
        if handler is None:
            log.error(
                "%s pool: worker pid %d sent a frame of unknown kind %r",
                self.model,
                w.pid,
                body[:1],
            )
            w.kill()  # it does not speak our protocol: its jobs fail as WorkerDied
            return
        try:
            handler(self, w, body, done)
        except Exception:  # a malformed frame; unpickling errors are handled by the handlers
            log.exception("%s pool: bad frame from worker pid %d; killing it", self.model, w.pid)
            w.kill()

    def _on_result(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """``R``: a job's outcomes (after those already sent in ``P`` frames)."""
        _, job_id, elapsed, first = wire.RESULT.unpack_from(body)
        raw = memoryview(body)[wire.RESULT.size :]
        with self._lock:
            job = self._pop_job_locked(w, job_id)
            prefix = w.partials.pop(job_id, None)
        if job is None:
            return
        try:
            values, errors = pickle.loads(raw)
        except BaseException as load_err:  # even SystemExit from a __setstate__: this job only
            n = len(job) - first
            values, errors = [None] * n, dict.fromkeys(range(n), load_err)
        if first and prefix is not None:
            values, errors = _join(prefix, first, values, errors)
        done.append(functools.partial(job.resolve, values, errors, None, elapsed))

    def _on_partial(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """``P``: the outcomes of a finished prefix of a long batch (kept until ``R``)."""
        _, job_id, first, count = wire.PARTIAL.unpack_from(body)
        try:
            part_values, part_errors = pickle.loads(memoryview(body)[wire.PARTIAL.size :])
        except BaseException as load_err:  # those ``count`` items fail; the batch goes on
            part_values, part_errors = [None] * count, dict.fromkeys(range(count), load_err)
        with self._lock:
            if job_id in w.jobs:
                pv, pe = w.partials.setdefault(job_id, ([], {}))
                for k, e in (part_errors or {}).items():
                    pe[first + k] = e  # a pipe keeps frames in order: first == len(pv)
                pv.extend(part_values)

    def _on_jobfail(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """``F``: the worker could not load the job (its payload did not unpickle there)."""
        _, job_id = wire.JOBFAIL.unpack_from(body)
        with self._lock:
            job = self._pop_job_locked(w, job_id)
            w.partials.pop(job_id, None)
        if job is None:
            return
        job_exc = self._load_exc(memoryview(body)[wire.JOBFAIL.size :])
        done.append(functools.partial(job.fail_all, _const(job_exc)))

    def _on_ready(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """``Y``: the worker has started (and run the initializer)."""
        w.ready = True
        self._startup_failures = 0

    def _on_initfail(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """``E``: the initializer raised: the pool is broken."""
        init_exc = self._load_exc(memoryview(body)[1:])
        broken = InitializerFailed(f"worker initializer raised {init_exc!r}")
        broken.__cause__ = init_exc
        self._break(broken, done)

    def _on_retire(self, w: WorkerHandle, body: bytes, done: list[Callable[[], None]]) -> None:
        """``X``: the worker takes no more jobs (a hybrid worker abandoned a timed-out thread)."""
        with self._lock:
            w.retiring = True
            self._dirty = True
        log.info("%s pool: worker pid %d retires (abandoned a timed-out thread)", self.model, w.pid)

    @staticmethod
    def _load_exc(raw: memoryview) -> BaseException:
        """The exception of a one-item ``(values, errors)`` payload (``dump_error``); if that
        does not unpickle, what unpickling raised (whatever it is: this runs in the IO thread,
        which must not die of it, and which never receives a real ``KeyboardInterrupt``)."""
        try:
            _, errors = pickle.loads(raw)
            exc = errors[0]
            if isinstance(exc, BaseException):
                return exc
            return RuntimeError(repr(exc))
        except BaseException as exc:
            return exc

    def _break(self, err: BaseException, done: list[Callable[[], None]]) -> None:
        """The pool cannot work (initializer failure, workers die at start-up): fail all."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = err
            self._closing = True
            jobs = list(self._pending)
            self._pending.clear()
            for w in self._workers.values():
                jobs.extend(self._take_all_locked(w))
                w.kill()
        log.error("%s pool is broken: %s", self.model, err)
        for job in jobs:
            done.append(functools.partial(job.fail_all, _const(err)))

    def _on_death(self, w: WorkerHandle, done: list[Callable[[], None]]) -> None:
        """A worker exited (sentinel) or closed its result pipe (EOF). Settle what it held."""
        if w.dead:
            return
        self._drain(w, done)  # whatever it wrote before dying: those results are good
        code = w.wait_exit(0.5)
        if code is None:  # closed its pipe but still alive: make sure it is gone
            w.kill()
            code = w.wait_exit(2.0)
        w.dead = True
        self._unregister(w)
        with self._lock:
            self._workers.pop(w.wid, None)
            self._dirty = True
            jobs = self._take_all_locked(w)
            partials = w.partials
            w.partials = {}
            expected = w.stop_sent or self._terminated
        # decide outside the lock: describing a task calls the arguments' __repr__ (user code)
        requeue = [job for job in jobs if not self._settle(w, job, code, partials, done)]
        if requeue:
            with self._lock:
                if not self._terminated:
                    self._pending.extendleft(reversed(requeue))
                    requeue = []
            for job in requeue:  # terminate() ran meanwhile: it could not see these
                job.fail_all(lambda i: ExecutorClosed("the executor was terminated"))
        w.close()
        if not expected:
            if jobs:
                log.warning(
                    "%s pool: worker pid %d died (exit code %s) holding %d job(s); replacing it",
                    self.model,
                    w.pid,
                    code,
                    len(jobs),
                )
            else:
                log.warning("%s pool: worker pid %d died (exit code %s)", self.model, w.pid, code)
            if not w.ready:
                self._startup_failures += 1
                if self._startup_failures >= MAX_STARTUP_FAILURES:
                    err = WorkerDied(
                        w.pid, code, "<worker start-up>", "during start-up, repeatedly"
                    )
                    self._break(err, done)

    def _settle(
        self,
        w: WorkerHandle,
        job: Job,
        code: int | None,
        partials: dict[int, tuple[list[Any], dict[int, Any]]],
        done: list[Callable[[], None]],
    ) -> bool:
        """Apply :func:`settle` to a job the dead worker ``w`` held: queue its resolution in
        ``done`` and return True, or return False if it is to be re-queued."""
        prefix_values, prefix_errors = partials.get(job.id, ([], {}))
        state, group_end = _slot_view(w.slot, job.id)
        kill = w.kill_reason
        decision = settle(
            len(job),
            len(prefix_values),
            state,
            group_end,
            sequential=self._spec.sequential,
            requeues=job.requeues,
            kill_timeout=kill[1] if kill is not None and kill[0] == job.id else None,
            terminated=self._terminated,
            pid=w.pid,
            exitcode=code,
            describe=job.describe,
        )
        job.requeues = decision.requeues
        if decision.requeue:
            return False
        values = prefix_values + [None] * (len(job) - len(prefix_values))
        errors = {**prefix_errors, **decision.errors}
        done.append(functools.partial(job.resolve, values, errors or None, decision.not_run_from))
        return True

    def _housekeeping(self, done: list[Callable[[], None]]) -> None:
        """(IO thread) Replace lost workers, retire spent ones, dispatch, and stop when closing."""
        while self._unpicklable:
            job, exc = self._unpicklable.popleft()
            done.append(functools.partial(job.fail_all, _const(exc)))
        if self._terminated:
            return
        if not self._dirty and not self._closing:
            if self._pending:
                with self._lock:
                    self._dispatch_locked()
            return
        with self._lock:
            self._dirty = False
            closing = self._closing
            busy = bool(self._pending) or any(w.jobs for w in self._workers.values())
            retire = [w for w in self._workers.values() if w.retiring and not w.jobs]
            for w in retire:
                if not w.stop_sent:
                    w.stop_sent = True
                    w.outbuf += wire.frame(wire.K_STOP)
                    self._flush_locked(w)
            live = sum(
                1 for w in self._workers.values() if not (w.dead or w.retiring or w.stop_sent)
            )
        if self._broken is None and (not closing or busy):
            for _ in range(self._nworkers - live):
                try:
                    self._add_worker()
                except Exception as exc:
                    log.exception("%s pool: could not start a worker", self.model)
                    if not self._workers:
                        self._break(exc, done)
                    break
        with self._lock:
            self._dispatch_locked()
            if (
                self._closing
                and not self._pending
                and not any(w.jobs for w in self._workers.values())
            ):
                for w in self._workers.values():
                    if not w.stop_sent:
                        w.stop_sent = True
                        w.outbuf += wire.frame(wire.K_STOP)
                        self._flush_locked(w)
                if self._stop_deadline is None:
                    self._stop_deadline = time.monotonic() + STOP_GRACE_S
        if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
            for w in list(self._workers.values()):
                w.kill()

    def _all_stopped(self) -> bool:
        if self._terminated:
            return True
        if not self._closing:
            return False
        with self._lock:
            return self._closing and not self._pending and not self._workers

    def _cleanup(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for w in workers:
            if not w.dead:
                w.kill()
        for w in workers:
            w.wait_exit(1.0)
            self._unregister(w)
            w.dead = True
            w.close()
        self._close_fds()

    def _close_fds(self) -> None:
        with contextlib.suppress(Exception):
            self._sel.close()


#: ``handler(pool, worker, frame body, done)`` for each kind of frame a worker sends
_FrameHandler = Callable[[ProcessPool, WorkerHandle, bytes, list[Callable[[], None]]], None]
_FRAME_HANDLERS: dict[bytes, _FrameHandler] = {
    wire.K_RESULT: ProcessPool._on_result,
    wire.K_PARTIAL: ProcessPool._on_partial,
    wire.K_JOBFAIL: ProcessPool._on_jobfail,
    wire.K_READY: ProcessPool._on_ready,
    wire.K_INITFAIL: ProcessPool._on_initfail,
    wire.K_RETIRE: ProcessPool._on_retire,
}


def _join(
    prefix: tuple[list[Any], dict[int, Any]], first: int, values: list[Any], errors: Errors
) -> tuple[list[Any], Errors]:
    """Prepend the first ``first`` reported values/errors to the final frame's."""
    pv, pe = prefix
    out_errors = {k: v for k, v in pe.items() if k < first}
    for k, e in (errors or {}).items():
        out_errors[first + k] = e
    return pv[:first] + values, out_errors or None


def _const(exc: BaseException) -> Callable[[int], BaseException]:
    """``lambda i: exc``, typed."""

    def factory(i: int) -> BaseException:
        return exc

    return factory


def _close_pipe(r: int, w: int) -> None:
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)
