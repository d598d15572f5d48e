"""Run a bingfa server in a child process: for tests, the demo, benchmarks and ``compare``.

The child is ``python -m bingfa serve ...`` — exactly what a user runs — so every model,
including gevent's patch-first start-up, is exercised as in production.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Any

from bingfa.errors import BingfaError, Timeout

__all__ = ["ServerProcess"]

_LISTENING = re.compile(r"listening on \[?(?P<host>[^\]\s]+?)\]?:(?P<port>\d+) ")


class ServerProcess:
    """A ``bingfa serve`` child process. Use as a context manager; it is always stopped.

    Args:
        app: app spec (``echo``, ``module:attr``).
        model: concurrency model; None leaves it to ``BINGFA_MODEL`` or the default.
        start_timeout: seconds to wait for the "listening" line.
        env: extra environment variables for the child.
        **options: CLI options, ``threads=8`` → ``--threads 8`` (True → a bare flag).

    Attributes:
        host, port, pid: where the child listens, once started.
        log_path: the file receiving the child's stderr (its log); :meth:`log` reads it.
    """

    def __init__(
        self,
        app: str = "echo",
        model: str | None = "thread",
        *,
        start_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        self.args = [sys.executable, "-m", "bingfa", "serve", app]
        if model is not None:
            self.args += ["--model", model]
        self.args += ["--port", str(options.pop("port", 0))]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                self.args.append(flag)
            elif value is not False and value is not None:
                self.args += [flag, str(value)]
        self.model = model or (env or {}).get("BINGFA_MODEL", "thread")
        self.start_timeout = start_timeout
        self.env = {**os.environ, **(env or {})}
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        # Kept open for the child's whole life (stderr to a file: a pipe could fill and block it).
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="bingfa-server-", suffix=".log", delete=False
        )
        self.log_path = self._log.name

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> ServerProcess:
        """Start the child and wait until it listens.

        Raises:
            BingfaError: the child exited, or printed no listening line, within start_timeout.
        """
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._log, text=True, env=self.env
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        line = ""
        # readline blocks, so a watchdog kills a child that hangs before listening.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = _LISTENING.search(line)
            if match:
                self.host, self.port = match["host"], int(match["port"])
                return self
        self.stop()
        raise BingfaError(f"server did not start: {' '.join(self.args)}\n{line}{self.log()}")

    def log(self) -> str:
        """Everything the child logged so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the child and wait; SIGKILL it if it outlives ``timeout``. Idempotent.

        Returns:
            The exit status (negative: killed by that signal).

        Raises:
            Timeout: never — a child that ignores SIGTERM is killed, and its status tells.
        """
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._log.close()
        return proc.returncode

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit by itself. Raises Timeout if it does not."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise Timeout(f"server {self.pid} still running after {timeout}s", timeout) from exc

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass
