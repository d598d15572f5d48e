"""CPython's ``concurrent.futures`` contract tests, ported, run against every implementation.

The cases follow CPython's own suite (3.11 ``Lib/test/test_concurrent_futures.py`` and the
3.12+ package ``Lib/test/test_concurrent_futures/``: ``test_wait``, ``test_as_completed``,
``executor``, ``test_shutdown``, ``test_init``, ``test_deadlock``), rewritten for pytest. One
suite, parametrised over implementations: bingfa's ``thread``, ``process``, ``hybrid``,
``gevent`` and ``asyncio`` models, and the standard library's ``ThreadPoolExecutor`` and
``ProcessPoolExecutor`` as controls - the controls must pass every test.

What legitimately differs between implementations is written down once, in :class:`Impl`
(see ``IMPLS``); a test never branches on an implementation's name.

Every blocking task waits on a file gate (``cf_tasks.wait_for``) and every wait in the tests
is bounded, so a deadlock shows as a failure, not as a hung run. Every executor a test makes
is shut down at teardown, whatever happened (``Env.close``).

Fixtures: ``env`` gives a test its own executors (``env.make()``), for everything that shuts
down, breaks or inspects an executor's lifetime; ``pool`` lends the tests that leave an
executor as they found it (wait, as_completed, submit, map, references) one running executor
per implementation (``pool.ex``), checked and replaced after each test if it stopped working:
starting a fresh process pool for each of them would cost most of the run. ``remote_env`` is
``env`` for the implementations that run tasks in other processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cf_tasks
import psutil
import pytest
from cf_tasks import (
    Payload,
    capture,
    init_fail,
    init_state,
    init_status,
    make_payload,
    mul,
    sleep_return,
    touch,
    wait_for,
    wait_then_raise,
)
from executor_helpers import MODEL_CONFIG

from bingfa.executor import Executor, ExecutorClosed, InitializerFailed, WorkerDied

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = str(Path(__file__).resolve().parent)

#: bound for every wait on a result: a deadlock fails the test instead of hanging it
RESULT_TIMEOUT = 10.0
#: how long workers may take to go away after shutdown or collection
RELEASE_TIMEOUT = 5.0


# --- the implementations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """One executor implementation, and everything in which it may legitimately differ."""

    id: str
    #: ``factory(**kwargs)`` -> a new executor running 2 tasks at once (kwargs: initializer...)
    factory: Callable[..., cf.Executor] = field(repr=False)
    #: the same construction as Python source, for the interpreter-exit scripts
    script_ctor: str = field(repr=False)
    script_import: str = field(repr=False)
    #: tasks run in other processes (arguments and results are pickled)
    remote: bool
    #: what ``submit``/futures give once the initializer has failed
    init_error: type[BaseException]
    #: where the initializer runs once: in every worker ``"thread"`` or worker ``"process"``
    init_unit: Literal["thread", "process"]
    #: what ``submit`` raises after ``shutdown`` (always a RuntimeError, as the stdlib says)
    closed_error: type[RuntimeError]
    #: ``map(chunksize=n)``: a failing call fails its whole chunk (stdlib ProcessPoolExecutor:
    #: the calls before it in that chunk yield nothing) rather than only itself
    chunk_fails_whole: bool = False
    #: remote only - what the future of a task gets when its worker process dies
    crash_error: type[BaseException] | None = None
    #: the pickle cases (``PICKLE_CASES``) after which the whole pool is broken, and the error
    #: that every later task then gets; bingfa: none - only that task's future fails
    breaks_on: frozenset[str] = frozenset()
    broken_error: type[BaseException] | None = None


def _forkserver() -> Any:
    return multiprocessing.get_context("forkserver")


def _stdlib_thread(**kwargs: Any) -> cf.Executor:
    return cf.ThreadPoolExecutor(max_workers=2, **kwargs)


def _stdlib_process(**kwargs: Any) -> cf.Executor:
    # forkserver, like bingfa: forking this (threaded) test process is what the stdlib warns of
    return cf.ProcessPoolExecutor(max_workers=2, mp_context=_forkserver(), **kwargs)


def _bingfa(model: str) -> Callable[..., cf.Executor]:
    def factory(**kwargs: Any) -> cf.Executor:
        return Executor(model, **{**MODEL_CONFIG[model], **kwargs})  # type: ignore[arg-type]

    return factory


#: what the stdlib ``ProcessPoolExecutor`` breaks on (``BrokenProcessPool`` for this and every
#: later task, CPython's test_deadlock expects exactly that): a worker dies, or unpickling a task
#: (in the worker) or a result (in the caller) raises
STDLIB_PROCESS_BREAKS_ON = frozenset(
    {
        "exit_at_task_unpickle",
        "error_at_task_unpickle",
        "crash_at_task_unpickle",
        "crash_during_call",
        "hard_exit_during_call",
        "crash_at_result_pickle",
        "error_at_result_unpickle",
        "exit_at_result_unpickle",
    }
)


def _bingfa_impl(model: str, *, remote: bool, init_unit: Literal["thread", "process"]) -> Impl:
    return Impl(
        id=model,
        factory=_bingfa(model),
        script_ctor=f"Executor({model!r}, **{MODEL_CONFIG[model]!r})",
        script_import="from bingfa.executor import Executor",
        remote=remote,
        init_error=InitializerFailed,
        init_unit=init_unit,
        closed_error=ExecutorClosed,
        crash_error=WorkerDied if remote else None,
    )


IMPLS: list[Impl] = [
    Impl(
        id="stdlib-thread",
        factory=_stdlib_thread,
        script_ctor="concurrent.futures.ThreadPoolExecutor(max_workers=2)",
        script_import="",
        remote=False,
        init_error=BrokenThreadPool,
        init_unit="thread",
        closed_error=RuntimeError,
    ),
    Impl(
        id="stdlib-process",
        factory=_stdlib_process,
        script_ctor=(
            "concurrent.futures.ProcessPoolExecutor("
            "max_workers=2, mp_context=multiprocessing.get_context('forkserver'))"
        ),
        script_import="",
        remote=True,
        init_error=BrokenProcessPool,
        init_unit="process",
        closed_error=RuntimeError,
        chunk_fails_whole=True,
        crash_error=BrokenProcessPool,
        breaks_on=STDLIB_PROCESS_BREAKS_ON,
        broken_error=BrokenProcessPool,
    ),
    _bingfa_impl("thread", remote=False, init_unit="thread"),
    _bingfa_impl("process", remote=True, init_unit="process"),
    _bingfa_impl("hybrid", remote=True, init_unit="process"),
    _bingfa_impl("gevent", remote=True, init_unit="process"),
    # plain functions run in the asyncio model's thread pool; its initializer runs per thread
    _bingfa_impl("asyncio", remote=False, init_unit="thread"),
]
REMOTE_IMPLS = [impl for impl in IMPLS if impl.remote]


# --- helpers ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def released(ref: weakref.ref[Any], timeout: float = RELEASE_TIMEOUT) -> bool:
    """True once the object behind ``ref`` has been collected (``gc.collect`` while polling)."""

    def gone() -> bool:
        gc.collect()
        return ref() is None

    return wait_until(gone, timeout)


def outcome(fut: cf.Future[Any]) -> BaseException | None:
    """The future's exception (None on success), waiting at most ``RESULT_TIMEOUT``; a future
    that does not finish in time fails the test as a hang."""
    try:
        return fut.exception(timeout=RESULT_TIMEOUT)
    except cf.TimeoutError:
        pytest.fail(f"no outcome within {RESULT_TIMEOUT} s: the executor hangs")


def _is_infrastructure(proc: psutil.Process) -> bool:
    """The multiprocessing fork server and resource tracker: started once per process and kept
    on purpose (the stdlib's too). Forkserver *workers* share the server's command line but are
    the server's children, not ours."""
    try:
        cmd = " ".join(proc.cmdline())
        return proc.ppid() == os.getpid() and (
            "multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd
        )
    except psutil.Error:
        return False


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def new_children(before: set[int]) -> list[psutil.Process]:
    """Descendant processes that were not there ``before`` (fork server etc. excluded)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in before or _is_infrastructure(proc):
            continue
        found.append(proc)
    return found


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:80]}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


def finished_future(result: Any = 42) -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    fut.set_result(result)
    return fut


def failed_future() -> cf.Future[Any]:
    fut: cf.Future[Any] = cf.Future()
    fut.set_exception(OSError("already failed"))
    return fut


def cancelled_future() -> cf.Future[Any]:
    """Cancelled and notified: what ``wait`` and ``as_completed`` count as done."""
    fut: cf.Future[Any] = cf.Future()
    assert fut.cancel()
    assert not fut.set_running_or_notify_cancel()
    return fut


class Gate:
    """A file a gated task (``cf_tasks.wait_for``) waits for; :meth:`open` lets it go on."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def open(self) -> None:
        Path(self.path).touch()


class Env:
    """A test's executors, gates and scratch directory; :meth:`close` cleans all up.

    Args:
        shared: the implementation's shared executor (``pool`` fixture), if any: :attr:`ex`.
        reap: at :meth:`close`, kill the processes started since this env was made that
            outlived their executors (not for a shared pool's test: the pool may start workers
            on demand).
    """

    def __init__(
        self, impl: Impl, tmp_path: Path, shared: SharedPool | None = None, reap: bool = True
    ) -> None:
        self.impl = impl
        self.tmp_path = tmp_path
        self._shared = shared
        self._reap = reap
        self._gates: list[Gate] = []
        self._strong: list[cf.Executor] = []
        self._weak: list[weakref.ref[cf.Executor]] = []
        self._children_before = child_pids()
        cf_tasks.INIT_STATE["status"] = "uninitialized"  # thread impls share this module

    @property
    def ex(self) -> cf.Executor:
        """The implementation's shared executor, already running (``pool`` fixture only)."""
        assert self._shared is not None, "use the pool fixture"
        return self._shared.get()

    def make(self, **kwargs: Any) -> cf.Executor:
        """A new executor of this implementation (2 tasks at once), shut down at teardown."""
        ex = self.impl.factory(**kwargs)
        self._strong.append(ex)
        return ex

    def make_collectable(self, **kwargs: Any) -> cf.Executor:
        """Like :meth:`make`, but only weakly remembered, so the test can drop it."""
        ex = self.impl.factory(**kwargs)
        self._weak.append(weakref.ref(ex))
        return ex

    def gate(self, *, opened: bool = False) -> Gate:
        gate = Gate(self.tmp_path / f"gate-{len(self._gates)}")
        self._gates.append(gate)
        if opened:
            gate.open()
        return gate

    def close(self) -> None:
        for gate in self._gates:
            gate.open()  # let gated tasks finish
        executors = self._strong + [ex for ref in self._weak if (ex := ref()) is not None]
        self._strong.clear()
        for ex in executors:
            if isinstance(ex, Executor):
                ex.terminate()
                continue
            # stdlib: shut down off-thread, so a wedged pool cannot hang the teardown
            closer = threading.Thread(
                target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True
            )
            closer.start()
            closer.join(10)
        del executors
        if not self._reap:
            return
        # last resort, for workers that outlived their executor (e.g. a collected one): kill
        # the processes this test started, and only those
        for proc in new_children(self._children_before):
            with contextlib.suppress(psutil.Error):
                proc.kill()


class SharedPool:
    """One running executor per implementation, for the tests that leave it as they found it
    (they neither shut it down nor break it): starting a fresh process pool for every test
    would cost most of the run. After each such test it is checked, and replaced if broken."""

    def __init__(self, impl: Impl, tmp_path: Path) -> None:
        self.impl = impl
        self._tmp_path = tmp_path
        self._env = Env(impl, tmp_path)
        self._ex: cf.Executor | None = None

    def get(self) -> cf.Executor:
        if self._ex is None:
            self._ex = self._env.make()
        return self._ex

    def check(self) -> None:
        """Replace the executor unless it still answers (a test left it broken or stuck)."""
        if self._ex is None:
            return
        try:
            healthy = self._ex.submit(mul, 1, 1).result(timeout=RESULT_TIMEOUT) == 1
        except BaseException:
            healthy = False
        if not healthy:
            self.close()
            self._env = Env(self.impl, self._tmp_path)

    def close(self) -> None:
        self._ex = None
        self._env.close()


@contextlib.contextmanager
def _env(impl: Impl, tmp_path: Path, **kwargs: Any) -> Iterator[Env]:
    env = Env(impl, tmp_path, **kwargs)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(params=IMPLS, ids=lambda impl: impl.id)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """Every implementation; each test makes its own executors (``env.make()``)."""
    with _env(request.param, tmp_path) as e:
        yield e


@pytest.fixture(scope="module", params=IMPLS, ids=lambda impl: impl.id)
def shared_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedPool]:
    shared = SharedPool(request.param, tmp_path_factory.mktemp(request.param.id))
    shared.get()  # started before any test's snapshot of its processes
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def pool(shared_pool: SharedPool, tmp_path: Path) -> Iterator[Env]:
    """Every implementation; the test uses the implementation's shared executor (``pool.ex``),
    and must leave it idle and working."""
    with _env(shared_pool.impl, tmp_path, shared=shared_pool, reap=False) as e:
        yield e
    shared_pool.check()


@pytest.fixture(params=REMOTE_IMPLS, ids=lambda impl: impl.id)
def remote_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The implementations that run tasks in other processes (pickling is only theirs)."""
    with _env(request.param, tmp_path) as e:
        yield e


# --- futures ----------------------------------------------------------------------------------


def test_futures_are_stdlib_futures_and_callbacks_run(pool: Env) -> None:
    ex = pool.ex
    fut = ex.submit(mul, 2, 21)
    assert isinstance(fut, cf.Future)
    seen: list[cf.Future[Any]] = []
    called = threading.Event()

    def callback(f: cf.Future[Any]) -> None:
        seen.append(f)
        called.set()

    fut.add_done_callback(callback)
    assert called.wait(RESULT_TIMEOUT), "done-callback never ran"
    assert seen == [fut]
    assert fut.result() == 42
    late: list[cf.Future[Any]] = []
    fut.add_done_callback(late.append)  # on a done future: runs at once, right here
    assert late == [fut]


# --- wait() (CPython test_wait) ---------------------------------------------------------------


def test_wait_duplicate_future_counted_once(pool: Env) -> None:
    # bpo-20369
    ex = pool.ex
    fut = ex.submit(mul, 1, 2)
    done, not_done = cf.wait([fut, fut], timeout=RESULT_TIMEOUT, return_when=cf.ALL_COMPLETED)
    assert done == {fut}
    assert not_done == set()


def test_wait_first_completed(pool: Env) -> None:
    ex = pool.ex
    gate = pool.gate()
    pending: cf.Future[Any] = cf.Future()
    quick = ex.submit(mul, 21, 2)
    blocked = ex.submit(wait_for, gate.path)
    done, not_done = cf.wait(
        [pending, quick, blocked], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_COMPLETED
    )
    assert done == {quick}
    assert not_done == {pending, blocked}
    gate.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_wait_first_completed_some_already_completed(pool: Env) -> None:
    ex = pool.ex
    gate = pool.gate()
    cancelled, finished = cancelled_future(), finished_future()
    blocked = ex.submit(wait_for, gate.path)
    t0 = time.monotonic()
    done, not_done = cf.wait(
        [cancelled, finished, blocked], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_COMPLETED
    )
    assert time.monotonic() - t0 < 5
    assert done == {cancelled, finished}
    assert not_done == {blocked}
    gate.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_wait_first_completed_times_out(pool: Env) -> None:
    ex = pool.ex
    gate = pool.gate()
    blocked = ex.submit(wait_for, gate.path)
    t0 = time.monotonic()
    done, not_done = cf.wait([blocked], timeout=0.1, return_when=cf.FIRST_COMPLETED)
    elapsed = time.monotonic() - t0
    assert done == set()
    assert not_done == {blocked}
    assert 0.09 <= elapsed < 5
    gate.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_wait_first_exception(pool: Env) -> None:
    ex = pool.ex
    gate1, gate2 = pool.gate(), pool.gate()
    first = ex.submit(mul, 2, 21)
    raiser = ex.submit(wait_then_raise, gate1.path)
    blocked = ex.submit(wait_for, gate2.path)

    def open_after_first() -> None:  # the raiser fails only once ``first`` is done
        with contextlib.suppress(BaseException):
            first.result(timeout=RESULT_TIMEOUT)
        gate1.open()

    opener = threading.Thread(target=open_after_first)
    opener.start()
    try:
        done, not_done = cf.wait(
            [first, raiser, blocked], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_EXCEPTION
        )
    finally:
        opener.join(RESULT_TIMEOUT)
    assert done == {first, raiser}
    assert not_done == {blocked}
    assert str(raiser.exception()) == "this is an exception"
    gate2.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_wait_first_exception_some_already_complete(pool: Env) -> None:
    ex = pool.ex
    gate = pool.gate()
    finished, cancelled, pending = finished_future(), cancelled_future(), cf.Future()
    failing = ex.submit(divmod, 21, 0)
    blocked = ex.submit(wait_for, gate.path)
    done, not_done = cf.wait(
        [finished, pending, cancelled, failing, blocked],
        timeout=RESULT_TIMEOUT,
        return_when=cf.FIRST_EXCEPTION,
    )
    assert done == {finished, cancelled, failing}
    assert not_done == {pending, blocked}
    assert isinstance(failing.exception(), ZeroDivisionError)
    gate.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_wait_first_exception_one_already_failed(pool: Env) -> None:
    ex = pool.ex
    gate = pool.gate()
    failed = failed_future()
    blocked = ex.submit(wait_for, gate.path)
    done, not_done = cf.wait(
        [failed, blocked], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_EXCEPTION
    )
    assert done == {failed}
    assert not_done == {blocked}
    gate.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_wait_all_completed(pool: Env) -> None:
    ex = pool.ex
    given = [finished_future(), cancelled_future(), failed_future()]
    failing = ex.submit(divmod, 2, 0)
    working = ex.submit(mul, 2, 21)
    done, not_done = cf.wait(
        [*given, failing, working], timeout=RESULT_TIMEOUT, return_when=cf.ALL_COMPLETED
    )
    assert done == {*given, failing, working}
    assert not_done == set()
    assert working.result() == 42
    assert isinstance(failing.exception(), ZeroDivisionError)


def test_wait_all_completed_times_out(pool: Env) -> None:
    ex = pool.ex
    gate = pool.gate()
    given = [cancelled_future(), failed_future(), finished_future()]
    blocked = ex.submit(wait_for, gate.path)
    t0 = time.monotonic()
    done, not_done = cf.wait([*given, blocked], timeout=0.05, return_when=cf.ALL_COMPLETED)
    elapsed = time.monotonic() - t0
    assert done == set(given)
    assert not_done == {blocked}
    assert 0.04 <= elapsed < 5
    gate.open()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


# --- as_completed() (CPython test_as_completed) -----------------------------------------------


def test_as_completed_yields_every_future(pool: Env) -> None:
    ex = pool.ex
    given = [cancelled_future(), failed_future(), finished_future()]
    submitted = [ex.submit(mul, 2, 21), ex.submit(mul, 7, 6)]
    completed = list(cf.as_completed([*given, *submitted], timeout=RESULT_TIMEOUT))
    assert len(completed) == 5
    assert set(completed) == {*given, *submitted}
    assert [f.result() for f in submitted] == [42, 42]


def test_as_completed_times_out(pool: Env) -> None:
    ex = pool.ex
    already = {cancelled_future(), failed_future(), finished_future()}
    for timeout in (0, 0.1):
        gate = pool.gate()
        blocked = ex.submit(wait_for, gate.path)
        yielded: set[cf.Future[Any]] = set()
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            for f in cf.as_completed(already | {blocked}, timeout=timeout):
                yielded.add(f)
        assert time.monotonic() - t0 < 5
        # everything done was yielded first; the blocked one was not
        assert yielded == already, f"timeout={timeout}"
        gate.open()
        assert blocked.result(timeout=RESULT_TIMEOUT) is True


def test_as_completed_zero_timeout_with_everything_done(pool: Env) -> None:
    ex = pool.ex
    submitted = ex.submit(mul, 3, 4)
    assert submitted.result(timeout=RESULT_TIMEOUT) == 12
    given = [finished_future(), failed_future(), cancelled_future(), submitted]
    assert set(cf.as_completed(given, timeout=0)) == set(given)


def test_as_completed_duplicate_futures_yielded_once(pool: Env) -> None:
    # bpo-20367 (duplicates), bpo-31641 (any iterable)
    ex = pool.ex
    fut = ex.submit(sleep_return, 0.1)
    completed = list(cf.as_completed(itertools.repeat(fut, 3), timeout=RESULT_TIMEOUT))
    assert completed == [fut]
    done = finished_future()
    assert list(cf.as_completed([done, done, fut, fut], timeout=RESULT_TIMEOUT)) in (
        [done, fut],
        [fut, done],
    )


# --- submit() (CPython executor.py) -----------------------------------------------------------


def test_submit(pool: Env) -> None:
    ex = pool.ex
    assert ex.submit(pow, 2, 8).result(timeout=RESULT_TIMEOUT) == 256


def test_submit_keywords(pool: Env) -> None:
    ex = pool.ex
    assert ex.submit(mul, 2, y=8).result(timeout=RESULT_TIMEOUT) == 16
    # ``fn`` is positional-only, so ``fn=`` and ``self=`` are the task's own keywords
    fut = ex.submit(capture, 1, self=2, fn=3)
    assert fut.result(timeout=RESULT_TIMEOUT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ex.submit(arg=1)  # type: ignore[call-arg]


def test_submit_runs_where_the_descriptor_says(pool: Env) -> None:
    ex = pool.ex
    pid = ex.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    assert (pid != os.getpid()) is pool.impl.remote


# --- map() (CPython executor.py) --------------------------------------------------------------


def test_map(pool: Env) -> None:
    ex = pool.ex
    expected = list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10))) == expected
    assert list(ex.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_keeps_input_order(pool: Env) -> None:
    ex = pool.ex
    delays = [0.2, 0.0, 0.1, 0.0]
    assert list(ex.map(sleep_return, delays, timeout=RESULT_TIMEOUT)) == delays


def test_map_chunksize(pool: Env) -> None:
    ex = pool.ex
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (1, 6, 40, 50):
        got = list(ex.map(pow, range(40), range(40), chunksize=chunksize))
        assert got == expected, f"chunksize={chunksize}"


def test_map_multiple_iterables_stop_at_the_shortest(pool: Env) -> None:
    ex = pool.ex
    assert list(ex.map(mul, [1, 2, 3], [10, 20])) == [10, 40]
    assert list(ex.map(mul, itertools.count(), [5, 6, 7])) == [0, 6, 14]
    assert list(ex.map(mul, [], [1, 2])) == []


def test_map_exception(pool: Env) -> None:
    ex = pool.ex
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_exception_at_its_position(pool: Env) -> None:
    ex = pool.ex
    divisors = [i - 10 for i in range(20)]  # zero at index 10
    for chunksize in (1, 4):
        got = []
        it = ex.map(divmod, itertools.repeat(7, 20), divisors, chunksize=chunksize)
        with pytest.raises(ZeroDivisionError):
            for value in it:
                got.append(value)
        # results before the failing call are all yielded - or, where a failure fails its
        # whole chunk (stdlib processes), those before the failing chunk
        first_lost = 10 - 10 % chunksize if pool.impl.chunk_fails_whole else 10
        assert got == [divmod(7, d) for d in divisors[:first_lost]], f"chunksize={chunksize}"


def test_map_plain_for_loop(pool: Env) -> None:
    """The map object is referenced only by the ``for`` loop itself."""
    ex = pool.ex
    got = []
    for value in ex.map(mul, range(20), range(20)):
        got.append(value)
    assert got == [i * i for i in range(20)]


def test_map_list_comprehension(pool: Env) -> None:
    ex = pool.ex
    assert [value for value in ex.map(mul, range(20), range(20))] == [i * i for i in range(20)]
    assert sum(v for v in ex.map(mul, range(5), range(5))) == 30


def test_map_timeout(pool: Env) -> None:
    ex = pool.ex
    assert ex.submit(mul, 1, 1).result(timeout=RESULT_TIMEOUT) == 1  # workers are up
    opened, closed = pool.gate(opened=True), pool.gate()
    got = []
    it = ex.map(wait_for, [opened.path, opened.path, closed.path], timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        for value in it:
            got.append(value)
    assert got == [True, True]
    assert time.monotonic() - t0 < 10


def test_map_timeout_zero(pool: Env) -> None:
    """The stdlib accepts ``timeout=0``: results must be ready at once, or TimeoutError."""
    ex = pool.ex
    assert ex.submit(mul, 1, 1).result(timeout=RESULT_TIMEOUT) == 1
    assert list(ex.map(mul, [], [], timeout=0)) == []
    closed = pool.gate()
    it = ex.map(wait_for, [closed.path], timeout=0)
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        next(it)
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("wait", [True, False])
def test_map_submits_everything_before_shutdown(env: Env, wait: bool) -> None:
    """``map`` submits every call at once (stdlib): shutting down right after ``map`` returned
    still lets the iterator yield every result."""
    ex = env.make()
    it = ex.map(mul, range(30), range(30), timeout=RESULT_TIMEOUT)
    ex.shutdown(wait=wait)
    assert list(it) == [i * i for i in range(30)]


def test_map_dropped_unstarted_still_runs_every_call(env: Env) -> None:
    ex = env.make()
    paths = [str(env.tmp_path / f"touched-{i}") for i in range(12)]
    ex.map(touch, paths)  # dropped at once, never iterated
    gc.collect()
    ex.shutdown(wait=True)
    missing = [p for p in paths if not os.path.exists(p)]
    assert not missing, f"{len(missing)} of {len(paths)} calls never ran"


def test_map_then_shutdown_does_not_hang(env: Env) -> None:
    # bpo-12456: more queued calls than workers, then shutdown
    ex = env.make()
    ex.map(str, [2] * 3)
    closer = threading.Thread(target=ex.shutdown, daemon=True)
    closer.start()
    closer.join(RESULT_TIMEOUT)
    assert not closer.is_alive(), "shutdown() hangs"


# --- shutdown() (CPython test_shutdown) -------------------------------------------------------


def test_submit_after_shutdown_raises_runtime_error(env: Env) -> None:
    ex = env.make()
    ex.shutdown()
    with pytest.raises(RuntimeError) as info:
        ex.submit(pow, 2, 5)
    assert isinstance(info.value, env.impl.closed_error)


def test_submit_after_shutdown_without_wait_raises(env: Env) -> None:
    ex = env.make()
    assert ex.submit(mul, 1, 1).result(timeout=RESULT_TIMEOUT) == 1
    ex.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)


def test_shutdown_wait_finishes_every_task(env: Env) -> None:
    # bpo-12364: more tasks than workers, then shutdown(wait=True)
    ex = env.make()
    futures = [ex.submit(sleep_return, 0.05) for _ in range(8)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures), "shutdown(wait=True) returned with tasks unfinished"
    assert [f.result(timeout=0) for f in futures] == [0.05] * 8


def test_shutdown_without_wait_returns_at_once_and_work_completes(env: Env) -> None:
    before_threads = set(threading.enumerate())
    before_children = child_pids()
    ex = env.make()
    gate = env.gate()
    blocked = [ex.submit(wait_for, gate.path) for _ in range(2)]
    quick = [ex.submit(abs, i) for i in range(-5, 5)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 2, "shutdown(wait=False) waited"
    gate.open()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in blocked] == [True, True]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in quick] == [abs(i) for i in range(-5, 5)]
    assert wait_until(lambda: not new_threads(before_threads), RELEASE_TIMEOUT), (
        f"threads left: {new_threads(before_threads)}"
    )
    assert wait_until(lambda: not new_children(before_children), RELEASE_TIMEOUT), (
        f"processes left: {describe(new_children(before_children))}"
    )


def test_shutdown_cancel_futures(env: Env) -> None:
    ex = env.make()
    futures = [ex.submit(sleep_return, 0.1) for _ in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    # with 2 workers most queued tasks must have been cancelled (CPython asks > 40%)...
    assert len(cancelled) > 8, f"only {len(cancelled)} of 20 cancelled"
    # ...while the ones that had started ran to the end
    assert others, "even running tasks were cancelled"
    for f in others:
        assert f.done()
        assert f.exception(timeout=0) is None
        assert f.result(timeout=0) == 0.1


def test_shutdown_after_cancelled_future_does_not_hang(env: Env) -> None:
    # gh-94440
    ex = env.make()
    ex.submit(int).result(timeout=RESULT_TIMEOUT)
    ex.submit(int).cancel()
    closer = threading.Thread(target=ex.shutdown, kwargs={"wait": True}, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "shutdown(wait=True) hangs after a cancelled future"


def test_shutdown_twice(env: Env) -> None:
    ex = env.make()
    assert ex.submit(mul, 2, 3).result(timeout=RESULT_TIMEOUT) == 6
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False)
    ex.shutdown(cancel_futures=True)
    with pytest.raises(RuntimeError):
        ex.submit(mul, 2, 3)


def test_context_manager(env: Env) -> None:
    ex = env.make()
    with ex as entered:
        assert entered is ex
        assert list(entered.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        futures = [entered.submit(sleep_return, 0.05) for _ in range(4)]
    assert all(f.done() for f in futures), "leaving the block did not wait for the tasks"
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 1)


# --- interpreter exit (CPython test_shutdown, in a real subprocess) ---------------------------


def run_script(env: Env, body: str) -> tuple[int, str, str]:
    """Run a script (with a ``__main__`` guard) that builds this implementation's executor as
    ``ex``; returns ``(returncode, stdout, stderr)``. The whole process group is killed if it
    has not exited within 20 s."""
    impl = env.impl
    source = textwrap.dedent(
        f"""\
        import sys
        sys.path.insert(0, {TESTS_DIR!r})
        import concurrent.futures
        import multiprocessing
        {impl.script_import}
        from cf_tasks import sleep_and_print

        if __name__ == "__main__":
            ex = {impl.script_ctor}
        """
    )
    source += textwrap.indent(textwrap.dedent(body), "    ")
    script = env.tmp_path / "script.py"
    script.write_text(source)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=env.tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the script did not exit within 20 s\nstdout: {out}\nstderr: {err}")
    return proc.returncode, out, err


def test_exit_after_shutdown_without_wait_runs_pending_tasks(env: Env) -> None:
    # gh-83386: shutdown(wait=False), then the interpreter exits with tasks queued and running
    rc, out, err = run_script(
        env,
        """\
        for i in range(4):
            ex.submit(sleep_and_print, 0.2, f"apple{i}")
        ex.shutdown(wait=False)
        """,
    )
    assert rc == 0, err
    assert err == ""
    assert sorted(out.split()) == ["apple0", "apple1", "apple2", "apple3"]


def test_exit_without_shutdown_runs_pending_tasks(env: Env) -> None:
    rc, out, err = run_script(
        env,
        """\
        for i in range(4):
            ex.submit(sleep_and_print, 0.2, f"apple{i}")
        """,
    )
    assert rc == 0, err
    assert err == ""
    assert sorted(out.split()) == ["apple0", "apple1", "apple2", "apple3"]


def test_submit_from_atexit_after_interpreter_shutdown_raises(env: Env) -> None:
    # the executor's own exit hook runs before atexit handlers: submitting there is refused
    rc, out, err = run_script(
        env,
        """\
        import atexit

        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError:
                print("runtime-error")
            else:
                print("accepted")

        atexit.register(run_last)
        print(ex.submit(pow, 2, 5).result(timeout=20))
        """,
    )
    assert rc == 0, err
    assert out.split() == ["32", "runtime-error"], err


# --- initializer (CPython test_init) ----------------------------------------------------------


def test_initializer_runs_in_every_worker_with_initargs(env: Env) -> None:
    record_dir = env.tmp_path / "init"
    record_dir.mkdir()
    ex = env.make(initializer=init_state, initargs=("initialized", str(record_dir)))
    results = [f.result(timeout=RESULT_TIMEOUT) for f in [ex.submit(init_status) for _ in range(6)]]
    assert [status for status, _, _ in results] == ["initialized"] * 6
    records = {p.name: p.read_text() for p in record_dir.iterdir()}
    assert records, "the initializer never ran"
    assert set(records.values()) == {"initialized"}
    init_pids = {int(name.split("-")[0]) for name in records}
    if env.impl.init_unit == "process":
        ran_in = {pid for _, pid, _ in results}
        assert ran_in <= init_pids, "a worker process ran tasks without the initializer"
    else:
        ran_in_threads = {f"{pid}-{tid}" for _, pid, tid in results}
        assert ran_in_threads <= set(records), "a worker thread ran tasks without initializer"
    assert (os.getpid() not in init_pids) is env.impl.remote


def test_failing_initializer_breaks_the_executor(env: Env) -> None:
    ex = env.make(initializer=init_fail)
    error = env.impl.init_error
    try:
        fut = ex.submit(mul, 2, 3)
    except error:
        pass  # already broken
    else:
        exc = outcome(fut)
        assert isinstance(exc, error), f"expected {error.__name__}, got {exc!r}"
    # from some point on, submit itself refuses
    deadline = time.monotonic() + 10
    while True:
        try:
            fut = ex.submit(mul, 2, 3)
        except error:
            break
        exc = outcome(fut)
        assert isinstance(exc, error), f"expected {error.__name__}, got {exc!r}"
        assert time.monotonic() < deadline, "submit() never started raising"
        time.sleep(0.05)


# --- pickling errors on either side, dying workers (CPython test_deadlock) -----------------------


@dataclass(frozen=True)
class PickleCase:
    """``fn(*args)`` goes wrong while (un)pickling or running; ``error`` is what the task's
    future gets when the pool survives it (None: the worker process dies -
    ``Impl.crash_error``)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    error: type[BaseException] | None


PICKLE_CASES: dict[str, PickleCase] = {
    # the task's arguments: pickled in the caller, unpickled in the worker
    "error_at_task_pickle": PickleCase(id, (cf_tasks.ErrorAtPickle(),), pickle.PicklingError),
    "exit_at_task_unpickle": PickleCase(id, (cf_tasks.ExitAtUnpickle(),), SystemExit),
    "error_at_task_unpickle": PickleCase(id, (cf_tasks.ErrorAtUnpickle(),), pickle.UnpicklingError),
    "crash_at_task_unpickle": PickleCase(id, (cf_tasks.CrashAtUnpickle(),), None),
    # the call itself
    "crash_during_call": PickleCase(cf_tasks.crash, (), None),
    "hard_exit_during_call": PickleCase(os._exit, (99,), None),
    "exit_during_call": PickleCase(cf_tasks.exit_now, (), SystemExit),
    "error_during_call": PickleCase(cf_tasks.raise_error, (RuntimeError,), RuntimeError),
    # the result: pickled in the worker, unpickled in the caller
    "crash_at_result_pickle": PickleCase(cf_tasks.return_instance, (cf_tasks.CrashAtPickle,), None),
    "exit_at_result_pickle": PickleCase(
        cf_tasks.return_instance, (cf_tasks.ExitAtPickle,), SystemExit
    ),
    "error_at_result_pickle": PickleCase(
        cf_tasks.return_instance, (cf_tasks.ErrorAtPickle,), pickle.PicklingError
    ),
    "error_at_result_unpickle": PickleCase(
        cf_tasks.return_instance, (cf_tasks.ErrorAtUnpickle,), pickle.UnpicklingError
    ),
    "exit_at_result_unpickle": PickleCase(
        cf_tasks.return_instance, (cf_tasks.ExitAtUnpickle,), SystemExit
    ),
}


@pytest.mark.parametrize("case", list(PICKLE_CASES))
def test_deadlock_cases(remote_env: Env, case: str) -> None:
    """The failing task's future fails with an error - never a hang. Where the stdlib breaks
    its whole pool (``Impl.breaks_on``) every later task fails too; otherwise the executor
    keeps working."""
    impl = remote_env.impl
    spec = PICKLE_CASES[case]
    ex = remote_env.make()
    assert ex.submit(mul, 1, 1).result(timeout=RESULT_TIMEOUT) == 1  # workers are up
    exc = outcome(ex.submit(spec.fn, *spec.args))
    if case in impl.breaks_on:
        expected = impl.broken_error
    else:
        expected = spec.error if spec.error is not None else impl.crash_error
    assert expected is not None
    assert isinstance(exc, expected), f"expected {expected.__name__}, got {exc!r}"
    if case in impl.breaks_on:
        try:
            later = ex.submit(mul, 6, 7)
        except expected:
            return
        later_exc = outcome(later)
        assert isinstance(later_exc, expected), f"the pool should be broken: {later_exc!r}"
    else:
        assert ex.submit(mul, 6, 7).result(timeout=RESULT_TIMEOUT) == 42
        assert list(ex.map(mul, range(5), range(5), timeout=RESULT_TIMEOUT)) == [
            0,
            1,
            4,
            9,
            16,
        ]


# --- references are released (CPython test_no_stale_references, test_free_reference) ---------


def test_callable_is_released_after_the_task(pool: Env) -> None:
    # bpo-16284
    ex = pool.ex
    obj = Payload(5)
    ref = weakref.ref(obj)
    fut = ex.submit(obj.method)
    assert fut.result(timeout=RESULT_TIMEOUT) == 5
    del obj
    assert released(ref), "the executor still refers to the submitted callable"


def test_arguments_are_released_after_the_task(pool: Env) -> None:
    ex = pool.ex
    arg, kwarg = Payload(1), Payload(2)
    refs = [weakref.ref(arg), weakref.ref(kwarg)]
    fut = ex.submit(cf_tasks.ignore, arg, key=kwarg)
    assert fut.result(timeout=RESULT_TIMEOUT) is None
    del arg, kwarg
    assert all(released(r) for r in refs), "the executor still refers to the task's arguments"


def test_result_is_released_with_its_future(pool: Env) -> None:
    ex = pool.ex
    fut = ex.submit(make_payload, 3)
    result = fut.result(timeout=RESULT_TIMEOUT)
    assert result.tag == 3
    ref = weakref.ref(result)
    del result, fut
    assert released(ref), "the executor still refers to a result whose future is gone"


def test_map_does_not_keep_yielded_results(pool: Env) -> None:
    # bpo-14406: the result iterator must not hold on to what it yielded
    ex = pool.ex
    count = 0
    it = ex.map(make_payload, range(10), timeout=RESULT_TIMEOUT)
    for obj in it:
        count += 1
        ref = weakref.ref(obj)
        del obj
        assert released(ref, 1.0), f"result {count - 1} is still referenced after it was yielded"
    assert count == 10


# --- workers are released (no thread or process left behind) ----------------------------------


def _exercise(ex: cf.Executor) -> None:
    """Make every worker start: a few overlapping tasks and a map."""
    futures = [ex.submit(sleep_return, 0.05) for _ in range(4)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [0.05] * 4
    assert list(ex.map(mul, range(20), range(20), timeout=RESULT_TIMEOUT))[-1] == 361


def test_shutdown_leaves_no_thread_behind(env: Env) -> None:
    before = set(threading.enumerate())
    ex = env.make()
    _exercise(ex)
    ex.shutdown(wait=True)
    assert wait_until(lambda: not new_threads(before), RELEASE_TIMEOUT), (
        f"threads left after shutdown(): {new_threads(before)}"
    )


def test_shutdown_leaves_no_process_behind(env: Env) -> None:
    before = child_pids()
    ex = env.make()
    _exercise(ex)
    ex.shutdown(wait=True)
    assert wait_until(lambda: not new_children(before), RELEASE_TIMEOUT), (
        f"processes left after shutdown(): {describe(new_children(before))}"
    )


def test_collected_executor_releases_its_workers(env: Env) -> None:
    """An executor dropped without ``shutdown()`` lets its threads and processes go (the
    stdlib's do, within a moment)."""
    before_threads = set(threading.enumerate())
    before_children = child_pids()
    ex = env.make_collectable()
    _exercise(ex)
    ref = weakref.ref(ex)
    del ex
    assert released(ref), "the executor is never collected: something keeps it alive"
    assert wait_until(lambda: not new_threads(before_threads), RELEASE_TIMEOUT), (
        f"threads left by a collected executor: {new_threads(before_threads)}"
    )
    assert wait_until(lambda: not new_children(before_children), RELEASE_TIMEOUT), (
        f"processes left by a collected executor: {describe(new_children(before_children))}"
    )
