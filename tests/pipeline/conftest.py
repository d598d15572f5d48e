"""Fixtures for the pipeline tests: backends, a Redis server, ``bingfa worker`` subprocesses.

Redis: the tests use ``BINGFA_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``). If no
server answers there, a throwaway ``redis-server`` is started on a free loopback port for the
session (the binary must be on PATH) and stopped at the end. Only when there is no server
and no binary are the Redis tests skipped (and when redis-py is not installed). A URL set
explicitly in the environment that does not answer is an error, not a skip.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from bingfa.pipeline.testing import RedisServer, redis_answers

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # pipeline_helpers, for us and for worker processes

REDIS_ENV = "BINGFA_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
BACKENDS = ["memory", "process", "redis"]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL that answers (see the module docstring)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("redis-py is not installed (pip install 'bingfa[redis]')")
    url = os.environ.get(REDIS_ENV, DEFAULT_REDIS_URL)
    if redis_answers(url):
        yield url
        return
    if os.environ.get(REDIS_ENV):
        pytest.fail(f"{REDIS_ENV}={url} does not answer PING")
    if shutil.which("redis-server") is None:
        pytest.skip(
            f"no Redis server at {url} and no redis-server binary on PATH "
            "(apt-get install redis-server, or set BINGFA_TEST_REDIS_URL)"
        )
    with RedisServer() as server:
        yield server.url(15)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: ``memory``, ``process``, and a Redis URL."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return str(request.param)


WorkerFactory = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn_worker(tmp_path: pathlib.Path) -> Iterator[WorkerFactory]:
    """``spawn_worker(stage_ref, redis_url, pipeline, *args, env=...)``: a ``bingfa worker``
    subprocess (``python -m bingfa.pipeline``) logging to a file; every one is stopped at
    teardown (SIGTERM, then SIGKILL after 10 s)."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(
        stage_ref: str,
        redis_url: str,
        pipeline: str,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        log = open(tmp_path / f"worker-{len(procs)}.log", "w+")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bingfa.pipeline",
                stage_ref,
                "--redis",
                redis_url,
                "--pipeline",
                pipeline,
                *args,
            ],
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.log.close()  # type: ignore[attr-defined]
