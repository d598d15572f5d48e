"""``bingfa fetch``: the seed notes' thread-pool crawler, on the executor.

Pages are fetched concurrently and each is saved to disk by a *done-callback* of its future
(the pattern from the notes: ``future.add_done_callback(save)``). A URL that fails is reported
in the summary; it never stops the others. No dependencies beyond the standard library:

``thread``
    ``urllib.request`` in a thread pool.
``gevent``
    the same ``urllib`` code in greenlets - in a gevent worker process that monkey-patched
    itself, or right here if this process is already patched (``bingfa --model gevent``
    patches before anything else).
``asyncio``
    a minimal HTTP/1.1 ``GET`` over asyncio streams (Content-Length, chunked, or
    read-to-close bodies; redirects followed; https via the default SSL context).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from bingfa.errors import NetworkError, RemoteError, UsageError
from bingfa.executor._core import Executor
from bingfa.executor._progress import make_progress

__all__ = [
    "FETCH_MODELS",
    "FetchFailure",
    "FetchReport",
    "Page",
    "SavedPage",
    "fetch_async",
    "fetch_command",
    "fetch_sync",
    "fetch_urls",
    "read_url_file",
]

FetchModel = Literal["thread", "gevent", "asyncio"]
FETCH_MODELS: tuple[FetchModel, ...] = ("thread", "gevent", "asyncio")
USER_AGENT = "bingfa-fetch/0.1"
MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class Page:
    """A fetched page (what the fetch functions return)."""

    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class SavedPage:
    """A page saved to ``path``."""

    url: str
    path: Path
    status: int
    size: int


@dataclass(frozen=True, slots=True)
class FetchFailure:
    """A URL that could not be fetched or saved; ``error`` is a one-line description."""

    url: str
    error: str


@dataclass(slots=True)
class FetchReport:
    """The outcome of :func:`fetch_urls`, in input order."""

    saved: list[SavedPage] = field(default_factory=list)
    failed: list[FetchFailure] = field(default_factory=list)
    elapsed: float = 0.0
    model: str = ""
    workers: int = 0

    @property
    def ok(self) -> bool:
        """True if every URL was fetched and saved."""
        return not self.failed

    def summary(self) -> str:
        """Human-readable summary: totals, then one line per failure."""
        total = len(self.saved) + len(self.failed)
        size = sum(p.size for p in self.saved)
        lines = [
            f"fetched {len(self.saved)}/{total} pages ({size:,} bytes) in {self.elapsed:.2f}s "
            f"[model={self.model}, workers={self.workers}]"
        ]
        lines += [f"FAILED {f.url}: {f.error}" for f in self.failed]
        return "\n".join(lines)


def _check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {url!r}")
    return parts


def fetch_sync(url: str, timeout: float = 30.0) -> Page:
    """GET ``url`` with ``urllib`` (redirects followed).

    Raises:
        UsageError: not an http(s) URL.
        RemoteError: the server answered with status >= 400.
        NetworkError: connection failures and timeouts (``__cause__`` is the OSError).
    """
    _check_url(url)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            return Page(url, resp.geturl(), resp.status, resp.headers.get("Content-Type", ""), body)
    except urllib.error.HTTPError as exc:
        raise RemoteError(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(
            f"{type(reason).__name__}: {reason}", getattr(reason, "errno", None)
        ) from exc


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            line = await reader.readline()
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


async def fetch_async(url: str, timeout: float = 30.0) -> Page:
    """GET ``url`` with a minimal HTTP/1.1 client on asyncio streams (redirects followed).

    Raises:
        UsageError: not an http(s) URL.
        RemoteError: status >= 400, or a reply that is not HTTP.
        NetworkError: connection failures and timeouts.
    """
    current = url
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_REDIRECTS + 1):
                parts = _check_url(current)
                https = parts.scheme == "https"
                port = parts.port or (443 if https else 80)
                host = parts.hostname or ""
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ssl.create_default_context() if https else None
                )
                try:
                    path = parts.path or "/"
                    if parts.query:
                        path += "?" + parts.query
                    host_header = host if parts.port is None else f"{host}:{parts.port}"
                    request = (
                        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                        f"User-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n"
                        "Connection: close\r\n\r\n"
                    )
                    writer.write(request.encode("latin-1"))
                    await writer.drain()
                    status_line = await reader.readline()
                    fields = status_line.decode("latin-1").split(None, 2)
                    if (
                        len(fields) < 2
                        or not fields[0].startswith("HTTP/")
                        or not fields[1].isdigit()
                    ):
                        raise RemoteError(f"not an HTTP reply: {status_line[:80]!r}")
                    status = int(fields[1])
                    headers: dict[str, str] = {}
                    while True:
                        line = await reader.readline()
                        if line in (b"\r\n", b"\n", b""):
                            break
                        name, _, value = line.decode("latin-1").partition(":")
                        headers[name.strip().lower()] = value.strip()
                    if status in (301, 302, 303, 307, 308) and "location" in headers:
                        current = urllib.parse.urljoin(current, headers["location"])
                        continue
                    body = await _read_body(reader, headers)
                finally:
                    writer.close()
                if status >= 400:
                    reason = fields[2].strip() if len(fields) > 2 else ""
                    raise RemoteError(f"HTTP {status} {reason}".rstrip())
                return Page(url, current, status, headers.get("content-type", ""), body)
            raise RemoteError(f"more than {MAX_REDIRECTS} redirects")
    except TimeoutError as exc:
        raise NetworkError(f"timed out after {timeout:g}s") from exc
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise NetworkError(f"{type(exc).__name__}: {exc}", getattr(exc, "errno", None)) from exc


def page_filename(index: int, url: str) -> str:
    """A safe, unique file name for the ``index``-th URL: ``0007-host_path.html``."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    if not path or path.endswith("/"):
        path += "index.html"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.netloc}{path}").strip("_")
    if parts.query:
        slug += "_" + hashlib.sha1(parts.query.encode()).hexdigest()[:8]
    return f"{index:04d}-{slug[:100]}"


def read_url_file(path: str) -> list[str]:
    """URLs from a file (``-`` for stdin): one per line; blank lines and ``#`` comments skipped."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def fetch_urls(
    urls: Sequence[str],
    model: FetchModel = "thread",
    workers: int = 16,
    out_dir: str | Path = "pages",
    progress: bool = True,
    timeout: float = 30.0,
) -> FetchReport:
    """Fetch ``urls`` concurrently and save each page in ``out_dir`` from a done-callback.

    Args:
        urls: the URLs (http or https).
        model: ``thread``, ``gevent`` or ``asyncio``.
        workers: concurrent fetches.
        out_dir: directory for the pages (created); files are named by :func:`page_filename`.
        progress: progress bar on stderr (when it is a terminal).
        timeout: seconds per request.

    Returns:
        A :class:`FetchReport` in input order. Per-URL failures (bad URL, network, HTTP
        status >= 400, disk) are recorded there and never stop the other URLs.

    Raises:
        UsageError: unknown model or bad ``workers``.
    """
    if model not in FETCH_MODELS:
        raise UsageError(f"fetch model must be one of {', '.join(FETCH_MODELS)}, not {model!r}")
    if workers < 1:
        raise UsageError("workers must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[SavedPage | FetchFailure | None] = [None] * len(urls)
    lock = threading.Lock()
    remaining = len(urls)
    all_done = threading.Event()
    if not urls:
        all_done.set()
    bar = make_progress(progress, f"fetch [{model}]", len(urls))
    t0 = time.perf_counter()

    def settle(i: int, outcome: SavedPage | FetchFailure) -> None:
        nonlocal remaining
        results[i] = outcome
        bar.advance(1)
        with lock:
            remaining -= 1
            if remaining == 0:
                all_done.set()

    def save(i: int, url: str, fut: Future[Page]) -> None:
        """The done-callback: write the page to disk (or record why there is none)."""
        try:
            page = fut.result()
            path = out / page_filename(i, url)
            path.write_bytes(page.body)
            settle(i, SavedPage(url, path, page.status, len(page.body)))
        except BaseException as exc:
            settle(i, FetchFailure(url, f"{type(exc).__name__}: {exc}"))

    fn: Any = fetch_async if model == "asyncio" else fetch_sync
    try:
        with Executor(model, workers) as ex:
            for i, url in enumerate(urls):
                try:
                    fut = ex.submit(fn, url, timeout)
                except Exception as exc:
                    settle(i, FetchFailure(url, f"{type(exc).__name__}: {exc}"))
                    continue
                fut.add_done_callback(functools.partial(save, i, url))
            all_done.wait()
    finally:
        bar.close()
    report = FetchReport(elapsed=time.perf_counter() - t0, model=model, workers=workers)
    for r in results:
        if isinstance(r, SavedPage):
            report.saved.append(r)
        elif isinstance(r, FetchFailure):
            report.failed.append(r)
    return report


@click.command("fetch")
@click.argument("urls", nargs=-1)
@click.option(
    "--from",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Read more URLs from FILE, one per line ('-' for stdin).",
)
@click.option(
    "--model",
    type=click.Choice(list(FETCH_MODELS)),
    default="thread",
    show_default=True,
    help="Concurrency model.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Concurrent fetches.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="pages",
    show_default=True,
    help="Directory to save pages in.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Progress bar (only on a terminal).",
)
def fetch_command(
    urls: Iterable[str],
    from_file: str | None,
    model: FetchModel,
    workers: int,
    out_dir: str,
    timeout: float,
    progress: bool,
) -> None:
    """Fetch URLs concurrently and save each page under --out.

    Failed URLs are listed in the summary; the exit status is 1 if any failed.
    """
    all_urls = list(urls)
    if from_file is not None:
        try:
            all_urls += read_url_file(from_file)
        except OSError as exc:
            raise click.UsageError(f"cannot read --from {from_file}: {exc}") from exc
    if not all_urls:
        raise click.UsageError("no URLs given (pass URL arguments or --from FILE)")
    report = fetch_urls(all_urls, model, workers, out_dir, progress, timeout)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)
