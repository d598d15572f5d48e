"""Server memory per open connection, plain TCP vs TLS, per model.

Run: ``.venv/bin/python benchmarks/tls_memory.py [--connections N]``

For each model a ``bingfa serve echo`` child is started (with a throwaway trustme certificate
for TLS), N clients connect and complete one request each and stay open, and the server's RSS
(with its children, for fork) is read before and after. Prints KiB per connection and the TLS
÷ plain ratio measured in the same run. The loops' own TLS transports buffer 256 KiB per
connection; bingfa's asyncio model does TLS with ``ssl.MemoryBIO`` in its protocol instead
(see docs/servers.md), on either loop: both are shown.
"""

from __future__ import annotations

import argparse
import os
import ssl
import tempfile
import time

import psutil
import trustme

from bingfa import Client
from bingfa.spawn import ServerProcess

VARIANTS: list[tuple[str, str, dict[str, object]]] = [
    ("thread", "thread", {}),
    ("threadpool", "threadpool", {"threads": 0}),  # 0 → replaced by N below
    ("gevent", "gevent", {}),
    ("asyncio (uvloop)", "asyncio", {"loop": "uvloop"}),
    ("asyncio --loop asyncio", "asyncio", {"loop": "asyncio"}),
]


def rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


def measure(
    model: str, options: dict[str, object], n: int, tls: ssl.SSLContext | None, certfile: str | None
) -> float:
    opts = dict(options)
    if opts.get("threads") == 0:
        opts["threads"] = n + 8
    if certfile:
        opts["certfile"] = certfile
    with ServerProcess("echo", model, **opts) as server:
        with Client(*server.address, tls=tls) as warm:
            warm.request(b"warm")
        time.sleep(0.3)
        before = rss(server.pid)
        clients = []
        try:
            for i in range(n):
                c = Client(*server.address, tls=tls, timeout=30)
                c.request(b"%d" % i)
                clients.append(c)
            time.sleep(0.5)
            after = rss(server.pid)
        finally:
            for c in clients:
                c.close()
    return (after - before) / n / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        certfile = os.path.join(tmp, "server.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(certfile)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        print(f"server RSS per open connection, {args.connections} connections")
        print(f"{'model':40} {'plain KiB':>10} {'TLS KiB':>10} {'TLS/plain':>10}")
        for label, model, options in VARIANTS:
            plain = measure(model, options, args.connections, None, None)
            secure = measure(model, options, args.connections, context, certfile)
            ratio = secure / plain if plain > 0 else float("nan")
            print(f"{label:40} {plain:10.1f} {secure:10.1f} {ratio:10.2f}")


if __name__ == "__main__":
    main()
