"""A throwaway ``redis-server`` for tests and benchmarks (loopback only, nothing persisted).

::

    with RedisServer() as server:          # needs the redis-server binary on PATH
        Pipeline(items, backend=server.url(15)) ...
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO

from bingfa.errors import BingfaError, UsageError

__all__ = ["RedisServer", "free_port", "redis_answers"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may still take it;
    :class:`RedisServer` retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING at ``url`` within ``timeout`` seconds (False also
    when redis-py is not installed)."""
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` child process on a free port of 127.0.0.1, without persistence.

    The object owns the process: :meth:`stop` (or leaving the ``with`` block) terminates it.

    Args:
        binary: the server executable (looked up on ``PATH``).

    Raises:
        UsageError: (at :meth:`start`) the binary is not found.
        BingfaError: it did not answer within ``timeout`` seconds after five tries.
    """

    def __init__(self, binary: str = "redis-server") -> None:
        self.binary = binary
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        path = shutil.which(self.binary)
        if path is None:
            raise UsageError(f"{self.binary!r} not found on PATH (apt-get install redis-server)")
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            with tempfile.TemporaryFile() as log:
                last = self._try_start(path, log, timeout)
            if self._proc is not None:
                return self
        raise BingfaError(f"redis-server did not start: {last}")

    def _try_start(self, path: str, log: IO[bytes], timeout: float) -> str:
        """One attempt on ``self.port``: sets ``_proc`` on success, else returns the output."""
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--daemonize", "no", "--loglevel", "warning"]
        proc = subprocess.Popen(
            [path, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if redis_answers(self.url(), 0.2):
                self._proc = proc
                return ""
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        log.seek(0)
        return log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """Terminate the server (kill after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()
