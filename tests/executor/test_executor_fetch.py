"""``bingfa fetch`` against a local ``http.server`` on 127.0.0.1 (no other network)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bingfa.executor.fetch import (
    FETCH_MODELS,
    fetch_command,
    fetch_urls,
    page_filename,
    read_url_file,
)

pytestmark = pytest.mark.timeout(60)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/page/"):
            self._send(200, f"page {path[6:]}".encode(), {"Content-Type": "text/plain"})
        elif path == "/slow":
            time.sleep(0.3)
            self._send(200, b"slow")
        elif path == "/redirect":
            self._send(302, b"", {"Location": "/page/target"})
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/error":
            self._send(500, b"boom")
        else:
            self._send(404, b"no such page")


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops SYNs when 20 clients connect at once
    daemon_threads = True


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/x"


@pytest.mark.parametrize("model", FETCH_MODELS)
def test_fetch_saves_pages_and_reports_failures(
    model: str, base_url: str, refused_url: str, tmp_path: Path
) -> None:
    good = [f"{base_url}/page/{i}" for i in range(12)]
    special = [f"{base_url}/redirect", f"{base_url}/chunked"]
    bad = [f"{base_url}/missing", f"{base_url}/error", refused_url, "ftp://example.invalid/x"]
    urls = good[:6] + bad[:2] + special + good[6:] + bad[2:]
    report = fetch_urls(urls, model, 5, tmp_path, progress=False, timeout=10)  # type: ignore[arg-type]
    assert not report.ok
    assert [s.url for s in report.saved] == good[:6] + special + good[6:]
    assert [f.url for f in report.failed] == bad
    errors = {f.url: f.error for f in report.failed}
    assert "404" in errors[bad[0]] and "500" in errors[bad[1]]
    assert "refused" in errors[bad[2]].lower()
    assert "http(s)" in errors[bad[3]]
    for i, url in enumerate(urls):  # saved by the done-callbacks, named by input position
        path = tmp_path / page_filename(i, url)
        assert path.exists() == (url not in bad)
    assert (tmp_path / page_filename(0, good[0])).read_bytes() == b"page 0"
    assert (tmp_path / page_filename(8, special[0])).read_bytes() == b"page target"
    assert (tmp_path / page_filename(9, special[1])).read_bytes() == b"hello chunked world"
    assert "fetched 14/18 pages" in report.summary()
    assert f"FAILED {bad[0]}" in report.summary()


@pytest.mark.parametrize("model", FETCH_MODELS)
def test_fetch_is_concurrent(model: str, base_url: str, tmp_path: Path) -> None:
    urls = [f"{base_url}/slow"] * 10
    t0 = time.monotonic()
    report = fetch_urls(urls, model, 10, tmp_path, progress=False)  # type: ignore[arg-type]
    took = time.monotonic() - t0
    assert report.ok and len(report.saved) == 10
    assert took < 2.0  # one at a time would take 3 s


def test_cli_exit_status_and_from_file(base_url: str, tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(f"# pages\n{base_url}/page/a\n\n{base_url}/page/b\n")
    assert read_url_file(str(listing)) == [f"{base_url}/page/a", f"{base_url}/page/b"]
    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(
        fetch_command,
        [f"{base_url}/page/c", "--from", str(listing), "--out", str(out), "--workers", "3"],
    )
    assert ok.exit_code == 0, ok.output
    assert "fetched 3/3 pages" in ok.output
    assert sorted(p.name for p in out.iterdir()) == [
        page_filename(0, f"{base_url}/page/c"),
        page_filename(1, f"{base_url}/page/a"),
        page_filename(2, f"{base_url}/page/b"),
    ]
    bad = runner.invoke(
        fetch_command,
        [f"{base_url}/page/d", f"{base_url}/missing", "--out", str(out), "--model", "asyncio"],
    )
    assert bad.exit_code == 1
    assert "fetched 1/2 pages" in bad.output and "FAILED" in bad.output
    empty = runner.invoke(fetch_command, ["--out", str(out)])
    assert empty.exit_code == 2 and "no URLs" in empty.output


def test_gevent_in_an_already_patched_process_runs_in_process(
    base_url: str, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        from bingfa.executor import Executor
        from bingfa.executor.fetch import fetch_urls
        ex = Executor("gevent", 4)
        print(type(ex._backend).__name__)
        ex.shutdown()
        report = fetch_urls([{base_url + "/page/1"!r}, {base_url + "/slow"!r}], "gevent", 4,
                            {str(tmp_path)!r}, False)
        print(report.summary())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "GeventLocalBackend"
    assert "fetched 2/2 pages" in proc.stdout
