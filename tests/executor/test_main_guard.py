"""Scripts with and without ``if __name__ == "__main__":`` run under every process model.

Each case writes a script to ``tmp_path`` and runs it as ``python script.py`` in its own session,
then checks the exit status, the printed results, that stderr holds no traceback, and that no
process of that session (workers, fork server, resource tracker) outlives the script.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from bingfa.errors import UsageError
from bingfa.executor import _jobs, _mpctx

MODELS = ["process", "hybrid", "gevent"]
SCRIPT_TIMEOUT_S = 120


def session_members(sid: int) -> list[int]:
    """Pids of live processes in session ``sid`` (Linux ``/proc``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields after "(comm)": state ppid pgrp session ...; a zombie is not running
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def run_script(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script; assert exit 0, no traceback, nothing left running."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its session id is its pid: finds every descendant later
    )
    try:
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"script hung\nstdout:\n{out}\nstderr:\n{err}")
    if sys.platform == "linux":
        deadline = time.monotonic() + 10
        while (left := session_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            os.killpg(proc.pid, 9)
        assert not left, f"processes left running after the script exited: {left}"
    assert "Traceback" not in err, err
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


SQUARES = "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
@pytest.mark.parametrize("model", MODELS)
def test_script_runs_with_or_without_main_guard(tmp_path: Path, model: str, guarded: bool) -> None:
    body = f"""\
    with Executor("{model}", workers=2) as ex:
        say(list(ex.map(sq, range(10))))
        say(ex.submit(sq, 12).result())
        say(ex.submit(lambda x: x + 1, 1).result())
    """
    if guarded:
        body = 'if __name__ == "__main__":\n' + textwrap.indent(textwrap.dedent(body), "    ")
    source = f"""\
import sys
from bingfa.executor import Executor
def sq(x): return x * x
def say(value):  # one write per line: workers of a guarded script print to this pipe too
    sys.stdout.write(f"{{value}}\\n")
    sys.stdout.flush()
say("top level ran")
{textwrap.dedent(body)}"""
    out = run_script(tmp_path, source).stdout.splitlines()
    assert [line for line in out if line != "top level ran"] == [SQUARES, "144", "2"]
    if not guarded:  # the top level ran here only: not again in a worker or the fork server
        assert out.count("top level ran") == 1


@pytest.mark.parametrize("model", MODELS)
def test_unguarded_script_with_main_dataclass_argument_and_result(
    tmp_path: Path, model: str
) -> None:
    source = f"""\
    from dataclasses import dataclass
    from bingfa.executor import Executor

    @dataclass(frozen=True)
    class Point:
        x: int
        y: int

    def double(p):
        assert type(p).__name__ == "Point"
        return Point(p.x * 2, p.y * 2)

    with Executor("{model}", workers=2) as ex:
        got = list(ex.map(double, [Point(1, 2), Point(3, 4)]))
        one = ex.submit(double, Point(5, 6)).result()
    print(got == [Point(2, 4), Point(6, 8)], all(type(p) is Point for p in got))
    print(one == Point(10, 12), type(one) is Point)
    """
    assert run_script(tmp_path, source).stdout.split() == ["True"] * 4


def test_guarded_script_with_main_dataclass_still_goes_by_reference(tmp_path: Path) -> None:
    source = """\
    from dataclasses import dataclass
    from bingfa.executor import Executor

    @dataclass
    class Point:
        x: int

    def check(p):
        import __main__
        return isinstance(p, __main__.Point)  # the class the worker imported from the script

    if __name__ == "__main__":
        with Executor("process", workers=1) as ex:
            print(ex.submit(check, Point(1)).result())
    """
    assert run_script(tmp_path, source).stdout.split()[-1] == "True"


@pytest.mark.parametrize("model", ["auto", "process"])
def test_unguarded_script_with_executor_map(tmp_path: Path, model: str) -> None:
    source = f"""\
    import bingfa.executor

    def burn(n):
        return sum(i * i for i in range(n))

    print(list(bingfa.executor.map(burn, [10_000] * 8, model="{model}", progress=False)))
    """
    assert run_script(tmp_path, source).stdout.strip() == str([333283335000] * 8)


def test_unguarded_spawn_and_an_unguarded_call_of_main(tmp_path: Path) -> None:
    source = """\
    from bingfa.executor import Executor

    def sq(x):
        return x * x

    def main():
        with Executor("process", workers=2, mp_context="spawn") as ex:
            print(list(ex.map(sq, range(10))))

    main()
    """
    assert run_script(tmp_path, source).stdout.strip() == SQUARES


def test_unguarded_script_creating_the_executor_in_a_thread(tmp_path: Path) -> None:
    source = """\
    import threading
    from bingfa.executor import Executor

    def sq(x):
        return x * x

    def work():
        with Executor("hybrid", workers=1) as ex:
            print(list(ex.map(sq, range(10))))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    """
    assert run_script(tmp_path, source).stdout.strip() == SQUARES


# --- the decision itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "line", "unguarded"),
    [
        ("x = 1\nif __name__ == '__main__':\n    run()\n", 3, False),
        ("x = 1\nif __name__ == '__main__':\n    run()\n", 1, True),
        ("if '__main__' == __name__ and ok:\n    run()\n", 2, False),
        ("if __name__ == '__main__': run()\n", 1, False),
        ("if __name__ == '__main__':\n    pass\nelse:\n    run()\n", 4, True),
        (
            "try:\n    if __name__ == '__main__':\n        run(\n            1)\nfinally:\n    x\n",
            4,
            False,
        ),
        ("if __name__ != '__main__':\n    run()\n", 2, True),
    ],
)
def test_guard_bodies(tmp_path: Path, source: str, line: int, unguarded: bool) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    st = path.stat()
    bodies = _mpctx._guard_bodies(str(path), st.st_mtime_ns, st.st_size)
    assert bodies is not None
    assert (not any(a <= line <= b for a, b in bodies)) is unguarded


def test_pytest_itself_is_not_an_unguarded_script() -> None:
    assert not _mpctx.started_unguarded()


def test_without_a_way_to_strip_main_it_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_mpctx, "_unguarded_seen", False)
    monkeypatch.setattr(_jobs, "_main_by_ref_default", None)
    monkeypatch.setattr(_mpctx, "started_unguarded", lambda: True)
    monkeypatch.setattr(_mpctx, "_install_preparation_filter", lambda: False)
    with pytest.raises(UsageError, match=r"put that code under 'if __name__ == \"__main__\":'"):
        _mpctx.mp_context()


def test_unguarded_context_strips_main_only_for_its_own_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multiprocessing import spawn

    monkeypatch.setattr(_mpctx, "_unguarded_seen", False)
    monkeypatch.setattr(_jobs, "_main_by_ref_default", None)
    monkeypatch.setattr(_mpctx, "started_unguarded", lambda: True)
    monkeypatch.setattr(spawn, "get_preparation_data", spawn.get_preparation_data)
    monkeypatch.setattr(_mpctx, "_filter", None)
    ctx = _mpctx.mp_context("spawn")
    assert ctx.imports_main is False
    assert ctx.get_start_method() == "spawn"
    assert _jobs._main_by_ref_default is False  # and dumps() follows
    # For a script, multiprocessing asks every child to run it again...
    script = types.ModuleType("__main__")
    script.__file__ = str(tmp_path / "script.py")
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert "init_main_from_path" in spawn.get_preparation_data("other")
    # ...except for a process launched by our context.
    with _mpctx._without_main():
        data = spawn.get_preparation_data("ours")
    assert "init_main_from_path" not in data and "init_main_from_name" not in data
    assert data["name"] == "ours"


def test_dumps_sends_main_objects_by_value_only_to_workers_without_main(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", script)
    thing = type("MainThing", (), {"__module__": "__main__", "__qualname__": "MainThing"})
    script.MainThing = thing  # type: ignore[attr-defined]
    by_ref = _jobs.dumps(([thing()],), main_by_ref=True)
    assert by_ref == pickle.dumps(([thing()],), protocol=pickle.HIGHEST_PROTOCOL)
    by_value = _jobs.dumps(([thing()],), main_by_ref=False)
    del script.MainThing  # as in a worker that did not import the script
    [[copy]] = pickle.loads(by_value)
    assert type(copy).__name__ == "MainThing"
    with pytest.raises(AttributeError):
        pickle.loads(by_ref)


def test_a_nested_function_blob_naming_main_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def fn() -> None:
        pass

    fn.__module__ = "__main__"
    fn.__qualname__ = fn.__name__ = "fn_in_main"
    script = types.ModuleType("__main__")
    script.fn_in_main = fn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", script)
    blob = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"__main__" in blob
    payload = (blob, [(1,)], False, None, None)
    expected = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    assert _jobs.dumps(payload, main_by_ref=False) == expected
