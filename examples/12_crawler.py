"""线程池爬虫:并发抓取网页,回调函数保存文件

The thread-pool crawler: fetch pages concurrently, save each one from a done-callback
(seed 001 "线程池爬取网页", seed 003 gevent ``urlopen``; docs/executors.md).

The seed fetched baidu.com, cnblogs.com and taobao.com with ``requests``: a test that needs the
internet. This example starts its own web server on 127.0.0.1 (``http.server`` in a thread,
every page answering after ``DELAY`` seconds, like a slow site) and crawls ``PAGES`` pages plus
one URL that does not exist:

1. one after another with ``urllib``: about ``PAGES x DELAY``;
2. the seed's pattern, by hand: ``ThreadPoolExecutor.submit(get_page, url)
   .add_done_callback(save)`` — the callback writes each page to disk as soon as it arrives;
3. ``bingfa.executor.fetch.fetch_urls`` (the code behind ``bingfa fetch``), the same pattern
   with threads and with asyncio; the missing page is reported, the others are unaffected.

Every file is written to a temporary directory that is removed at the end; the server is shut
down.

Run: ``.venv/bin/python examples/12_crawler.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypedDict

from bingfa.executor.fetch import fetch_urls

QUICK = os.environ.get("BINGFA_EXAMPLE_QUICK") == "1" or "--quick" in sys.argv[1:]
PAGES = 20
DELAY = 0.05 if QUICK else 0.2
WORKERS = 10


class SlowSite(BaseHTTPRequestHandler):
    """``/page/N`` answers a small HTML page after DELAY seconds; anything else is a 404."""

    def do_GET(self) -> None:
        time.sleep(DELAY)
        if not self.path.startswith("/page/"):
            self.send_error(404, "no such page")
            return
        body = f"<html><body><h1>第 {self.path.rsplit('/', 1)[-1]} 页</h1></body></html>"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the example's output readable


class Site(ThreadingHTTPServer):
    # The listen() backlog (the seeds' "半连接池", listen(5)). http.server's default is 5: when
    # ten clients connect at once and the accept loop is a little slow, the kernel drops the
    # extra SYNs and those clients retry only after a one-second timeout.
    request_queue_size = 128


class FetchedPage(TypedDict):
    name: str
    text: bytes


def get_page(url: str) -> FetchedPage:
    """The seed's get_page, with urllib instead of requests."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return {"name": url.rsplit("/", 1)[-1] + ".html", "text": resp.read()}


def main() -> None:
    site = Site(("127.0.0.1", 0), SlowSite)
    server_thread = threading.Thread(target=site.serve_forever, name="http-server")
    server_thread.start()
    base = f"http://127.0.0.1:{site.server_address[1]}"
    urls = [f"{base}/page/{i}" for i in range(PAGES)]
    print(f"local site {base}: {PAGES} pages, each answered after {DELAY} s")
    try:
        with tempfile.TemporaryDirectory(prefix="bingfa-crawl-") as tmp:
            start = time.perf_counter()
            for url in urls:
                get_page(url)
            sequential = time.perf_counter() - start
            print(f"1. one by one: {PAGES} pages in {sequential:.2f} s")

            saved_by_hand = Path(tmp, "by-hand")
            saved_by_hand.mkdir()

            def save(future: Future[FetchedPage]) -> None:
                page = future.result()
                (saved_by_hand / page["name"]).write_bytes(page["text"])

            start = time.perf_counter()
            with ThreadPoolExecutor(WORKERS) as pool:
                for url in urls:
                    pool.submit(get_page, url).add_done_callback(save)
            by_hand = time.perf_counter() - start
            files = len(list(saved_by_hand.iterdir()))
            print(
                f"2. ThreadPoolExecutor({WORKERS}) + add_done_callback(save): "
                f"{files} files saved in {by_hand:.2f} s ({sequential / by_hand:.1f}x faster)"
            )

            print("3. bingfa fetch (fetch_urls), plus one missing page:")
            for model in ("thread", "asyncio"):
                out = Path(tmp, model)
                report = fetch_urls(
                    [*urls, f"{base}/missing"], model, WORKERS, out, progress=False, timeout=10
                )
                for line in report.summary().splitlines():
                    print(f"  {line}")
                print(f"  files on disk: {len(list(out.iterdir()))}")
    finally:
        site.shutdown()
        site.server_close()
        server_thread.join()
    print("local site stopped; temporary files removed")


if __name__ == "__main__":
    main()
