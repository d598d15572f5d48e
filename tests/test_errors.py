"""Tests of bingfa's error hierarchy: every error says who is at fault."""

from __future__ import annotations

import copy
import errno as errno_mod
import pickle

import pytest

import bingfa
from bingfa import errors
from bingfa.errors import (
    BingfaError,
    ClosedError,
    ConnectionClosed,
    FrameTooLarge,
    MessageTooLarge,
    NetworkError,
    ProtocolError,
    RemoteError,
    Timeout,
    UsageError,
)

# class -> its direct bingfa parent, as drawn in the module docstring.
TREE: dict[type[BingfaError], type[Exception]] = {
    UsageError: BingfaError,
    MessageTooLarge: UsageError,
    RemoteError: BingfaError,
    ProtocolError: RemoteError,
    FrameTooLarge: ProtocolError,
    ConnectionClosed: RemoteError,
    NetworkError: BingfaError,
    ClosedError: BingfaError,
    Timeout: BingfaError,
}

# The three "who is at fault" families, plus the local-state/timing ones.
LOCAL_FAULT = {UsageError, MessageTooLarge}
REMOTE_FAULT = {RemoteError, ProtocolError, FrameTooLarge, ConnectionClosed}
OTHER = {NetworkError, ClosedError, Timeout}


def sample(cls: type[BingfaError]) -> BingfaError:
    """One instance of each class, built with its documented constructor."""
    if cls is MessageTooLarge:
        return MessageTooLarge(10, 5)
    if cls is FrameTooLarge:
        return FrameTooLarge(10, 5, [b"a"])
    if cls is ProtocolError:
        return ProtocolError("bad bytes", [b"x"])
    if cls is NetworkError:
        return NetworkError("connection refused", errno_mod.ECONNREFUSED)
    if cls is Timeout:
        return Timeout("read timed out", 2.5)
    return cls("something")


ALL: list[type[BingfaError]] = [BingfaError, *TREE]


def test_all_exported() -> None:
    assert sorted(errors.__all__) == sorted(c.__name__ for c in ALL)
    for cls in ALL:
        assert getattr(bingfa, cls.__name__) is cls


def test_base_is_an_exception() -> None:
    assert issubclass(BingfaError, Exception)
    assert not issubclass(Exception, BingfaError)


@pytest.mark.parametrize(("cls", "parent"), list(TREE.items()), ids=lambda c: c.__name__)
def test_tree(cls: type[BingfaError], parent: type[Exception]) -> None:
    assert issubclass(cls, parent)
    assert issubclass(cls, BingfaError)


@pytest.mark.parametrize("cls", ALL[1:], ids=lambda c: c.__name__)
def test_exactly_one_family(cls: type[BingfaError]) -> None:
    families = [
        issubclass(cls, UsageError),
        issubclass(cls, RemoteError),
        issubclass(cls, NetworkError),
        issubclass(cls, ClosedError),
        issubclass(cls, Timeout),
    ]
    assert families.count(True) == 1


@pytest.mark.parametrize("cls", sorted(LOCAL_FAULT, key=str), ids=lambda c: c.__name__)
def test_local_fault(cls: type[BingfaError]) -> None:
    exc = sample(cls)
    assert isinstance(exc, UsageError)
    assert isinstance(exc, ValueError)
    assert not isinstance(exc, RemoteError)


@pytest.mark.parametrize("cls", sorted(REMOTE_FAULT, key=str), ids=lambda c: c.__name__)
def test_remote_fault(cls: type[BingfaError]) -> None:
    exc = sample(cls)
    assert isinstance(exc, RemoteError)
    assert not isinstance(exc, UsageError)
    assert not isinstance(exc, ValueError)


@pytest.mark.parametrize("cls", sorted(OTHER, key=str), ids=lambda c: c.__name__)
def test_neither_local_usage_nor_remote(cls: type[BingfaError]) -> None:
    exc = sample(cls)
    assert not isinstance(exc, UsageError | RemoteError)


def test_usage_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="bad option"):
        raise UsageError("bad option")


def test_timeout_is_builtin_timeout_error() -> None:
    exc = Timeout("took too long", 1.5)
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, OSError)  # TimeoutError is an OSError
    assert isinstance(exc, BingfaError)
    with pytest.raises(TimeoutError):
        raise exc
    assert exc.timeout == 1.5
    assert str(exc) == "took too long"


def test_timeout_without_limit() -> None:
    exc = Timeout("no limit given")
    assert exc.timeout is None


def test_only_timeout_is_a_builtin_os_error() -> None:
    for cls in ALL:
        assert issubclass(cls, OSError) == (cls is Timeout), cls


def test_message_too_large_attributes() -> None:
    exc = MessageTooLarge(17, 16)
    assert (exc.size, exc.limit) == (17, 16)
    assert "17" in str(exc) and "max_frame_size=16" in str(exc)


def test_protocol_error_attributes() -> None:
    exc = ProtocolError("line too long", [b"a", b"b"])
    assert exc.reason == "line too long"
    assert str(exc) == "line too long"
    assert exc.decoded == [b"a", b"b"]


def test_protocol_error_decoded_defaults_to_a_fresh_list() -> None:
    a, b = ProtocolError("x"), ProtocolError("y")
    assert a.decoded == [] and b.decoded == []
    a.decoded.append(b"m")
    assert b.decoded == []


def test_frame_too_large_attributes() -> None:
    exc = FrameTooLarge(2**32 - 1, 16 * 1024 * 1024, [b"ok"])
    assert exc.size == 2**32 - 1
    assert exc.limit == 16 * 1024 * 1024
    assert exc.decoded == [b"ok"]
    assert str(2**32 - 1) in str(exc)
    assert exc.reason == str(exc)
    assert FrameTooLarge(5, 4).decoded == []


def test_network_error_attributes_and_chaining() -> None:
    original = ConnectionRefusedError(errno_mod.ECONNREFUSED, "Connection refused")
    with pytest.raises(NetworkError) as info:
        try:
            raise original
        except OSError as exc:
            raise NetworkError(f"cannot connect: {exc}", exc.errno) from exc
    assert info.value.errno == errno_mod.ECONNREFUSED
    assert info.value.__cause__ is original
    assert not isinstance(info.value, OSError)
    assert NetworkError("no errno").errno is None


def test_catch_all_with_bingfa_error() -> None:
    for cls in ALL:
        with pytest.raises(BingfaError):
            raise sample(cls)


ATTRS = ("args", "size", "limit", "decoded", "reason", "errno", "timeout")


def _state(exc: BaseException) -> dict[str, object]:
    return {a: getattr(exc, a) for a in ATTRS if hasattr(exc, a)}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[BingfaError]) -> None:
    # Errors cross process boundaries (process pools, dask): they must survive pickling.
    exc = sample(cls)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert _state(back) == _state(exc)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_copy(cls: type[BingfaError]) -> None:
    exc = sample(cls)
    assert _state(copy.copy(exc)) == _state(exc)
    assert _state(copy.deepcopy(exc)) == _state(exc)
