"""UDP:recvfrom / sendto,一个数据报就是一条消息

UDP: ``recvfrom``/``sendto``, one datagram = one message (seed 001; docs/servers.md "UDP").

UDP has no connection and no byte stream: every ``sendto`` is one datagram and every
``recvfrom`` returns exactly one, so there are no sticky packets — but nothing guarantees a
datagram arrives either. The program starts ``bingfa serve upper --udp`` (asyncio model,
datagrams over 1000 bytes dropped) on a free loopback port with ``ServerProcess``, then:

1. the seeds' raw client: 10 ``sendto`` calls in a row, then ``recvfrom`` 10 times — 10
   separate replies, boundaries intact (compare 15_sticky_packets.py for TCP);
2. ``bingfa.client.UdpClient``: ``request(payload, timeout, retries)`` — resends on timeout;
3. a datagram larger than the server's limit: dropped, so the client times out after its
   retries (and the server's log says why);
4. a port where nobody listens: the OS reports "connection refused" (ICMP port unreachable),
   which ``UdpClient`` raises as ``NetworkError`` after its retries.

Run: ``.venv/bin/python examples/14_udp.py``
"""

from __future__ import annotations

import socket
import time

import bingfa
from bingfa.client import UdpClient
from bingfa.spawn import ServerProcess

LIMIT = 1000


def free_udp_port() -> int:
    """A loopback UDP port with nobody listening (bound, read, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    with ServerProcess("upper", "asyncio", udp=True, max_datagram_size=LIMIT) as server:
        address = (server.host, server.port)
        print(f"bingfa serve upper --udp on {server.host}:{server.port}")

        print("1. raw socket, sendto x10 then recvfrom x10:")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            sent = [f"datagram {i}".encode() for i in range(10)]
            for payload in sent:
                sock.sendto(payload, address)
            replies = []
            try:
                for _ in sent:
                    data, peer = sock.recvfrom(65535)
                    replies.append(data)
            except TimeoutError:
                pass  # UDP may lose datagrams; count what came back
        print(f"  datagrams sent: {len(sent)}, replies received: {len(replies)}")
        print(
            f"  each reply one whole message: {sorted(replies) == sorted(p.upper() for p in sent)}"
        )
        if replies:
            print(f"  first reply {replies[0]!r} from {peer[0]}:{peer[1]}")

        print("2. UdpClient.request with retries:")
        with UdpClient(*address) as client:
            for word in ("hello", "并发", "udp"):
                reply = client.request(word.encode(), timeout=1.0, retries=3)
                print(f"  {word} -> {reply.decode()}")

            print(f"3. a {LIMIT * 2}-byte datagram (server limit {LIMIT}):")
            start = time.perf_counter()
            try:
                client.request(b"x" * (LIMIT * 2), timeout=0.2, retries=1)
            except bingfa.Timeout as exc:
                print(f"  no reply after {time.perf_counter() - start:.1f} s: Timeout: {exc}")
        status = server.stop()
        dropped = [line for line in server.log().splitlines() if "dropp" in line.lower()]
        print(f"  server log: {dropped[0].split(': ', 1)[-1] if dropped else '(no drop line)'}")
        print(f"server stopped, exit status {status}")

    print("4. nobody listening:")
    with UdpClient("127.0.0.1", free_udp_port()) as client:
        try:
            client.request(b"anyone?", timeout=0.2, retries=1)
        except bingfa.NetworkError as exc:
            print(f"  NetworkError: {exc}")
        except bingfa.Timeout as exc:  # some systems filter ICMP: then it is a timeout
            print(f"  Timeout: {exc}")


if __name__ == "__main__":
    main()
