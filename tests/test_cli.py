"""The ``bingfa`` command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from bingfa._entry import wants_gevent

BINGFA = [sys.executable, "-m", "bingfa"]


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*BINGFA, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_commands_and_env_vars() -> None:
    top = run("--help")
    assert top.returncode == 0
    commands = ("serve", "send", "client", "demo", "bench", "compare", "fetch", "locks", "worker")
    listed = {
        line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert set(commands) <= listed
    serve = run("serve", "--help")
    assert "BINGFA_MODEL" in serve.stdout and "BINGFA_MAX_FRAME_SIZE" in serve.stdout
    assert "module:attribute" in serve.stdout


def test_send_prints_each_reply(spawn_server: Any) -> None:
    server = spawn_server("upper", "asyncio")
    result = run("send", f"{server.host}:{server.port}", "hello", "并发")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HELLO", "并发"]


def test_send_over_line_protocol_from_env(spawn_server: Any) -> None:
    server = spawn_server("upper", "thread", protocol="line")
    result = run("send", f"{server.host}:{server.port}", "hi", env={"BINGFA_PROTOCOL": "line"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "HI\n"


def test_interactive_client_reads_lines_until_quit(spawn_server: Any) -> None:
    server = spawn_server("upper", "gevent")
    result = run("client", f"{server.host}:{server.port}", stdin="one\ntwo\nquit\nthree\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ONE", "TWO"]


def test_send_to_nothing_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run("send", f"127.0.0.1:{port}", "x")
    assert result.returncode == 1
    assert "bingfa: error: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "no_such_module:app", "--port", "0"), "cannot import module"),
        (("serve", "nope", "--port", "0"), "unknown app"),
        (("send", "localhost", "x"), "must be HOST:PORT"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("model", "served_by"), [(None, "gevent"), ("thread", "thread")])
def test_model_from_environment(spawn_server: Any, model: str | None, served_by: str) -> None:
    """BINGFA_MODEL picks the model (gevent: patched first); an explicit --model wins."""
    server = spawn_server("bingfa_testapps:counter", model, env={"BINGFA_MODEL": "gevent"})
    result = run("send", f"{server.host}:{server.port}", "x")
    assert result.stdout.strip() == f"1 {served_by}"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["serve", "echo", "--model", "gevent"], {}, True),
        (["serve", "echo", "--model=gevent"], {}, True),
        (["serve", "echo", "--model", "thread"], {"BINGFA_MODEL": "gevent"}, False),
        (["serve", "echo"], {"BINGFA_MODEL": "gevent"}, True),
        (["send", "h:1", "x"], {"BINGFA_MODEL": "gevent"}, False),
        (["serve", "echo"], {}, False),
    ],
)
def test_gevent_is_detected_before_import(
    argv: list[str], env: dict[str, str], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BINGFA_MODEL", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert wants_gevent(argv) is expected


def test_demo_self_check_passes() -> None:
    result = run("demo", "--clients", "5", "--requests", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    for model in ("thread", "threadpool", "gevent", "asyncio"):
        assert model in result.stdout
    assert "FAILED" not in result.stdout


def test_send_udp(spawn_server: Any) -> None:
    server = spawn_server("upper", "asyncio", udp=True)
    result = run("send", "--udp", f"{server.host}:{server.port}", "dgram", "two")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["DGRAM", "TWO"]


def test_send_tls_with_cafile(spawn_server: Any, tmp_path: Any) -> None:
    import trustme

    ca = trustme.CA()
    cert = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server = spawn_server("upper", "thread", certfile=str(cert))
    address = f"{server.host}:{server.port}"
    ok = run("send", "--tls", "--cafile", str(cafile), address, "secret")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "SECRET\n"
    untrusted = run("send", "--tls", address, "secret")  # the system CAs do not know trustme
    assert untrusted.returncode == 1
    assert "certificate verify failed" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr
