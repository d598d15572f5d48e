"""How ``process`` and ``hybrid`` workers are started - one decision, one place.

Two questions, both answered here when an executor is created:

1. **The start method**: forkserver where available, else spawn; never fork (see
   :func:`mp_context`).
2. **Does a worker import the ``__main__`` script?** forkserver and spawn children re-run the
   main script (as ``__mp_main__``) so that its functions and classes unpickle by reference,
   as in the standard library. That is only safe in a script whose top-level code that starts
   work sits under ``if __name__ == "__main__":``. A script *without* that guard (the notes'
   style: ``with Executor("process") as ex: ...`` at the top level) would have every worker
   run it again, and multiprocessing stops such a child with a bootstrapping ``RuntimeError``.

   So when the executor is being created from the top-level code of the ``__main__`` script,
   outside any ``if __name__ == "__main__":`` block (:func:`started_unguarded`), its workers do
   not import the script: :func:`mp_context` returns a context whose processes leave
   ``init_main_from_path``/``init_main_from_name`` out of the data multiprocessing sends a new
   child (nothing else about the child changes), ``__main__`` is not preloaded into the fork
   server, and the context's ``imports_main`` is ``False``, which makes the pool send
   ``__main__`` functions - and arguments that name ``__main__`` classes - by value
   (cloudpickle) instead of by name. Guarded scripts keep the standard behaviour.

:func:`workers_import_main` gives the same answer to code that has no context at hand (the
default of :func:`bingfa.executor._jobs.dumps`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import multiprocessing
import os
import sys
import threading
import tokenize
from collections.abc import Callable, Iterator
from multiprocessing import context as mp_ctx
from typing import Any

from bingfa.errors import UsageError
from bingfa.executor._jobs import set_main_by_ref_default

__all__ = ["mp_context", "started_unguarded", "workers_import_main"]

_WORKER_MODULE = "bingfa.executor._worker"


def mp_context(method: str | Any | None = None, preload: tuple[str, ...] = ()) -> Any:
    """The multiprocessing context for worker processes - of executors, pipelines and the load
    generator alike (``preload`` names the modules their workers run, for the fork server).

    ``None`` means **forkserver** where available (Linux, macOS), else spawn. Forkserver forks
    workers from a small single-threaded server process, so a worker never inherits a copy of a
    caller that was running threads (fork's hazard), yet starts in a few milliseconds instead
    of spawn's tens (docs/executors.md has the measurements). We also ask the server to preload
    the worker module, so a new worker need not import it. ``"fork"`` is refused: the pool
    starts replacement workers from its own IO thread, which is exactly the unsafe case.

    The returned context has an ``imports_main`` attribute, ``False``, when its workers will not
    import the ``__main__`` script (the script has no main guard around this call, see the
    module docstring; or there is no script to import: ``python -m pkg``, ``-c``, a REPL); a
    context without the attribute (the standard one, for a guarded script) imports it.

    Raises:
        UsageError: for ``"fork"`` or an unknown method; or if the script has no main guard and
            this Python's multiprocessing offers no way to keep workers from re-running it.
    """
    if method is None:
        method = (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
    if isinstance(method, str):
        if method == "fork":
            raise UsageError(
                "mp_context='fork' is unsafe here: the pool forks replacement workers while its "
                "own threads run; use 'forkserver' (default) or 'spawn'"
            )
        try:
            ctx = multiprocessing.get_context(method)
        except ValueError as exc:
            raise UsageError(f"unknown multiprocessing start method {method!r}") from exc
    else:
        ctx = method
    start = ctx.get_start_method()
    unguarded = start in _NO_MAIN and _note_unguarded(started_unguarded())
    # no script a child could import (``python - < script.py``: "<stdin>") counts as unguarded:
    # multiprocessing would still try to run it in every child
    nothing_to_import = start in _NO_MAIN and not unguarded and _main_unimportable()
    unguarded = unguarded or nothing_to_import
    if unguarded and not _install_preparation_filter():
        raise UsageError(
            "this script starts worker processes from its top-level code, outside "
            "'if __name__ == \"__main__\":', and this Python's multiprocessing gives no way "
            "to keep the workers from running the script again; put that code under "
            "'if __name__ == \"__main__\":'"
        )
    if start == "forkserver":
        from multiprocessing import forkserver

        server = forkserver._forkserver  # type: ignore[attr-defined]
        mods = list(getattr(server, "_preload_modules", ["__main__"]))
        # An unguarded script must not run in the fork server either (Pythons whose preload of
        # __main__ works - 3.13.8+, 3.14 - would run it there). A server already running keeps
        # its preloads; the children we fork from it are still told not to import the script.
        wanted = [m for m in mods if m != "__main__"] if unguarded else mods
        for module in (_WORKER_MODULE, *preload):
            if module not in wanted:
                wanted.append(module)
        if wanted != mods:
            ctx.set_forkserver_preload(wanted)
    imports_main = start not in _NO_MAIN or (not unguarded and _main_reimported())
    set_main_by_ref_default(imports_main)
    return ctx if imports_main else _NO_MAIN[start]()


def workers_import_main() -> bool:
    """Whether worker processes started now by :func:`mp_context` import the ``__main__``
    script: there is a script multiprocessing would re-import, and no executor of this process
    was started from top-level code outside its main guard (once one was, the script is
    known to be unguarded, and that stays so). Also recorded as the default of
    :func:`bingfa.executor._jobs.dumps`."""
    imports_main = _main_reimported() and not _note_unguarded(started_unguarded())
    set_main_by_ref_default(imports_main)
    return imports_main


# --- is the caller the top-level code of an unguarded __main__ script? --------------------------

#: an executor was created from top-level code outside ``if __name__ == "__main__":``
_unguarded_seen = False


def _note_unguarded(now: bool) -> bool:
    """Remember an unguarded start; return whether the script is known to be unguarded."""
    global _unguarded_seen
    if now:
        _unguarded_seen = True
    return _unguarded_seen


def started_unguarded() -> bool:
    """True if the ``__main__`` script's top-level code is running now, outside every
    ``if __name__ == "__main__":`` block - so a worker that re-ran the script would reach this
    very point again.

    Looks at the main thread's stack for the ``<module>`` frame of the ``__main__`` script and
    checks, with the script's syntax tree, whether the line it is executing lies in the body of
    such an ``if``. ``False`` whenever that cannot be told (no script file, source unreadable,
    the main thread no longer in the script's top-level code): the standard behaviour.
    """
    where = _main_module_line()
    if where is None:
        return False
    path, line = where
    try:
        st = os.stat(path)
    except OSError:
        return False
    guards = _guard_bodies(path, st.st_mtime_ns, st.st_size)
    if guards is None:
        return False
    return not any(first <= line <= last for first, last in guards)


def _main_module_line() -> tuple[str, int] | None:
    """``(script path, line)`` the main thread's ``__main__`` ``<module>`` frame is at."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or main is None:
        return None
    path = os.path.abspath(path)
    main_globals = vars(main)
    main_thread = threading.main_thread()
    if threading.current_thread() is main_thread:
        frame = sys._getframe()
    else:  # an executor created in another thread: the main thread's stack still decides
        frame = sys._current_frames().get(main_thread.ident or -1)  # type: ignore[assignment]
    while frame is not None:
        code = frame.f_code
        if (
            frame.f_globals is main_globals
            and code.co_name == "<module>"
            and os.path.abspath(code.co_filename) == path
        ):
            return (path, frame.f_lineno) if frame.f_lineno is not None else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


@functools.lru_cache(maxsize=8)
def _guard_bodies(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, int], ...] | None:
    """Line ranges of the bodies of ``if __name__ == "__main__":`` statements in ``path``
    (``None`` if it cannot be read or parsed). Cached per file version."""
    try:
        with tokenize.open(path) as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    bodies = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and node.body and _is_main_test(node.test):
            last = node.body[-1]
            bodies.append((node.body[0].lineno, last.end_lineno or last.lineno))
    return tuple(bodies)


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round), possibly ``and``-ed with more."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_test(value) for value in test.values)
    if not (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq | ast.Is)
    ):
        return False
    sides = (test.left, test.comparators[0])
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _main_unimportable() -> bool:
    """The main module names a file that does not exist (``python - < script.py``, an ``exec``
    of generated code), so a child told to import it would fail."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) is not None:
        return False
    path = getattr(main, "__file__", None)
    return path is not None and not os.path.isfile(path)


def _main_reimported() -> bool:
    """Whether a spawn/forkserver child re-imports ``__main__`` at all - the choice
    ``multiprocessing.spawn.get_preparation_data`` and ``prepare`` make: a module run with
    ``-m`` is re-imported by name unless it is a package's ``__main__``; a script by path; a
    REPL or ``-c`` not at all."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return not (name == "__main__" or name.endswith(".__main__"))
    path = getattr(main, "__file__", None)
    # ``python - < script.py`` names its main "<stdin>": there is no file a child could run
    return path is not None and os.path.isfile(path)


# --- workers that do not import __main__ ------------------------------------------------------

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
_launching = threading.local()
_filter_lock = threading.Lock()
_filter: Callable[..., dict[str, Any]] | None = None


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """While a process of ours is launched in this thread, its preparation data omits
    ``__main__`` (see :func:`_install_preparation_filter`)."""
    previous = getattr(_launching, "active", False)
    _launching.active = True
    try:
        yield
    finally:
        _launching.active = previous


def _install_preparation_filter() -> bool:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` (once) so that, for processes
    launched inside :func:`_without_main` only, it leaves out the keys that make the child
    import the main script. Every other caller - other pools, other threads - gets the data
    unchanged. Returns ``False`` if this multiprocessing has no such function.

    Both spawn and forkserver launches (``popen_spawn_posix``, ``popen_forkserver``) and the
    fork server's own start (``forkserver.ensure_running``) take the data from this function,
    looked up on the module at call time.
    """
    global _filter
    from multiprocessing import spawn

    with _filter_lock:
        current = getattr(spawn, "get_preparation_data", None)
        if current is None:
            return False
        if current is _filter:
            return True
        original: Callable[..., dict[str, Any]] = current

        @functools.wraps(original)
        def get_preparation_data(*args: Any, **kwargs: Any) -> dict[str, Any]:
            data = original(*args, **kwargs)
            if getattr(_launching, "active", False):
                for key in _MAIN_KEYS:
                    data.pop(key, None)
            return data

        spawn.get_preparation_data = get_preparation_data
        _filter = get_preparation_data
        return True


class _NoMainSpawnProcess(mp_ctx.SpawnProcess):
    """A spawn process that does not import the ``__main__`` script."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _without_main():
            return mp_ctx.SpawnProcess._Popen(process_obj)


class _NoMainSpawnContext(mp_ctx.SpawnContext):
    """The spawn context, but its processes do not import ``__main__``."""

    Process = _NoMainSpawnProcess
    imports_main = False


#: start methods whose children import ``__main__``, and the contexts whose children do not
_NO_MAIN: dict[str, type[mp_ctx.BaseContext]] = {"spawn": _NoMainSpawnContext}

if sys.platform != "win32":

    class _NoMainForkServerProcess(mp_ctx.ForkServerProcess):
        """A forkserver process that does not import the ``__main__`` script."""

        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            with _without_main():
                return mp_ctx.ForkServerProcess._Popen(process_obj)

    class _NoMainForkServerContext(mp_ctx.ForkServerContext):
        """The forkserver context, but its processes do not import ``__main__``."""

        Process = _NoMainForkServerProcess
        imports_main = False

    _NO_MAIN["forkserver"] = _NoMainForkServerContext
