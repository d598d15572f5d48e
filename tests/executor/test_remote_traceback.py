"""A task pickled by value that fails in a worker shows its real file and source lines.

cloudpickle 3.1 sets ``co_filename = "<dynamic-code>"`` on the code it pickles by value, which
left worker tracebacks with ``File "<dynamic-code>", line 4`` and no source. The executor now
ships such code with its file name (``_jobs._dumps_by_value``), and the traceback formatter of
every worker (``_errors.format_traceback``) points frames of code that still lost it - pickled
by plain cloudpickle elsewhere - back at the file. Both are no-ops for code that has its name.
"""

from __future__ import annotations

import pickle
import traceback
import types
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
from executor_helpers import ExecutorFactory

from bingfa.executor import RemoteTraceback
from bingfa.executor import _errors as errors_mod
from bingfa.executor._errors import format_traceback, portable_exception, wrap_exception
from bingfa.executor._jobs import dumps, dumps_fn

HERE = __file__
MODELS = ["process", "hybrid", "gevent"]


def make_closure(divisor: int) -> Callable[[int], int]:
    def divide(x: int) -> int:
        return x // divisor  # closure line: fails for divisor 0

    return divide


def make_nested() -> Callable[[int], int]:
    def outer(x: int) -> int:
        def inner() -> int:
            return [1][x]  # nested line: fails for x != 0

        return inner()

    return outer


CASES: dict[str, tuple[Callable[[], Callable[[int], int]], str]] = {
    "lambda": (lambda: lambda x: 1 // (x - x), "lambda: lambda x: 1 // (x - x)"),
    "closure": (lambda: make_closure(0), "return x // divisor  # closure line"),
    "nested": (make_nested, "return [1][x]  # nested line"),
}


def remote_tb(exc: BaseException) -> str:
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback), f"no remote traceback on {exc!r}"
    return str(cause)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("model", MODELS)
def test_by_value_task_traceback_has_file_and_source_line(
    model: str, case: str, make_executor: ExecutorFactory
) -> None:
    make, line = CASES[case]
    ex = make_executor(model, workers=1)
    with pytest.raises((ZeroDivisionError, IndexError)) as info:
        ex.submit(make(), 3).result(timeout=60)
    tb = remote_tb(info.value)
    assert "<dynamic-code>" not in tb
    assert f'File "{HERE}"' in tb
    assert line in tb


@pytest.mark.parametrize("model", MODELS)
def test_by_value_map_traceback_has_file_and_source_line(
    model: str, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(model, workers=1)
    with pytest.raises(ZeroDivisionError) as info:
        list(ex.map(make_closure(0), range(5)))
    tb = remote_tb(info.value)
    assert f'File "{HERE}"' in tb
    assert "return x // divisor  # closure line" in tb


def test_exception_class_defined_in_a_function_comes_back_as_itself(
    make_executor: ExecutorFactory,
) -> None:
    class LocalError(Exception):
        pass

    def fail(x: int) -> None:
        raise LocalError(f"local {x}")

    ex = make_executor("process", workers=1)
    with pytest.raises(LocalError, match="local 7") as info:
        ex.submit(fail, 7).result(timeout=60)
    assert 'raise LocalError(f"local {x}")' in remote_tb(info.value)


# --- the pickles keep co_filename -------------------------------------------------------------


def code_objects(code: types.CodeType) -> list[types.CodeType]:
    found = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(code_objects(const))
    return found


def test_dumps_fn_by_value_keeps_every_code_objects_filename() -> None:
    fn = make_nested()
    loaded = pickle.loads(dumps_fn(fn))
    assert loaded is not fn
    originals = code_objects(fn.__code__)
    copies = code_objects(loaded.__code__)
    assert len(copies) == len(originals) == 2
    for orig, copy in zip(originals, copies, strict=True):
        assert copy.co_filename == orig.co_filename == HERE
        assert copy.co_firstlineno == orig.co_firstlineno
        assert list(copy.co_positions()) == list(orig.co_positions())
    assert loaded(0) == 1


def test_dumps_fallback_keeps_filenames_of_functions_inside() -> None:
    divide = make_closure(2)
    [loaded] = pickle.loads(dumps([divide]))
    assert loaded.__code__.co_filename == HERE
    assert loaded(9) == 4


def test_already_real_filename_is_left_alone() -> None:
    """What older cloudpickle releases did (keep ``co_filename``): nothing to fix."""
    fn = make_closure(0)
    blob = dumps_fn(fn)
    assert pickle.loads(blob).__code__.co_filename == fn.__code__.co_filename
    # A by-reference function is not touched at all.
    assert pickle.loads(dumps_fn(make_closure)) is make_closure


# --- the formatter ----------------------------------------------------------------------------


def raised(fn: Callable[..., Any], *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_format_traceback_is_the_standard_one_for_real_files() -> None:
    exc = raised(make_closure(0), 1)
    assert format_traceback(exc) == "".join(traceback.format_exception(exc))


def test_format_traceback_restores_plain_cloudpickle_code() -> None:
    """Code cloudpickled elsewhere (the pipeline, Redis, user code) still lost its name."""
    fn = cloudpickle.loads(cloudpickle.dumps(make_nested()))
    exc = raised(fn, 1)
    text = format_traceback(exc)
    assert "<dynamic-code>" not in text
    assert f'File "{HERE}"' in text
    assert "return [1][x]  # nested line" in text


def test_format_traceback_follows_cause_context_and_groups() -> None:
    def chained(x: int) -> None:
        try:
            x // 0  # context line
        except ZeroDivisionError as exc:
            raise ExceptionGroup("group", [ValueError("v")]) from exc

    fn = cloudpickle.loads(cloudpickle.dumps(chained))
    text = format_traceback(raised(fn, 1))
    assert "<dynamic-code>" not in text
    assert "x // 0  # context line" in text
    assert 'raise ExceptionGroup("group", [ValueError("v")]) from exc' in text


def test_format_traceback_is_a_no_op_if_cloudpickle_keeps_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulate a cloudpickle that keeps ``co_filename``: the probe finds no stand-in."""
    monkeypatch.setattr(errors_mod, "_placeholder", None)
    code = make_closure(0).__code__.replace(co_filename="<dynamic-code>")
    fake = types.FunctionType(code, globals(), "divide", None, (types.CellType(0),))
    exc = raised(fake, 1)
    assert format_traceback(exc) == "".join(traceback.format_exception(exc))


def test_the_placeholder_is_probed_from_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors_mod, "_placeholder", "")
    probed = errors_mod._cloudpickle_placeholder()
    name = cloudpickle.loads(cloudpickle.dumps(lambda: 0)).__code__.co_filename
    assert probed == (None if name == HERE else name)


def test_wrap_and_portable_exception_share_one_format() -> None:
    exc = raised(make_closure(0), 1)
    expected = "".join(traceback.format_exception(exc))
    wrapped = pickle.loads(pickle.dumps(wrap_exception(exc, "pid 1")))
    assert isinstance(wrapped, ZeroDivisionError)
    assert wrapped.__cause__.tb == "Traceback in worker pid 1:\n" + expected  # type: ignore[union-attr]
    exc = raised(make_closure(0), 1)
    portable = pickle.loads(pickle.dumps(portable_exception(exc, "stage 's'")))
    assert portable.__cause__.tb == "Traceback in stage 's':\n" + expected
