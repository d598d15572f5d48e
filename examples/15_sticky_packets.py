"""TCP 粘包现象与解决:4 字节长度头(struct / bingfa.FrameCodec)

Sticky packets (粘包) shown, and fixed with a length header (seed 001; docs/protocol.md).

TCP carries a stream of bytes, not messages. A server that treats "one ``recv(1024)``" as
"one message" — the seeds' servers all do — works while the client is slow and the server is
fast, and breaks when the reader falls behind: several sends come out of one ``recv`` (粘包),
and a message longer than 1024 bytes comes out of several (半包).

The demo makes the reader fall behind on purpose (it reads only after the client has sent
everything — what a busy server does under load), so the result is the same on every run:

1. naive: a raw-socket server counts each ``recv(1024)`` as a message: 10 sends arrive as 1
   "message", and one 3000-byte send as 3;
2. fixed by hand: every message is ``struct.pack("!I", len(payload)) + payload``; the server
   feeds whatever ``recv`` returns to ``bingfa.FrameCodec`` and gets exactly the 10 (and the 1)
   messages back, however the bytes were cut;
3. fixed end to end: a real ``bingfa serve echo`` (frame protocol) gets the same 10 messages
   pipelined in a single write and answers each one.

Run: ``.venv/bin/python examples/15_sticky_packets.py``
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import bingfa
from bingfa.spawn import ServerProcess

MESSAGES = [f"hello {i}".encode() for i in range(10)]
BIG = b"x" * 3000

Server = Callable[[socket.socket, threading.Event, list[int]], None]


def naive_server_count(listener: socket.socket, ready: threading.Event, out: list[int]) -> None:
    """Accept one client; wait until it has sent everything; count recv(1024) calls."""
    conn, _ = listener.accept()
    with conn:
        ready.wait(10)  # the "busy server": data piles up in the socket buffer meanwhile
        chunks = 0
        while True:
            data = conn.recv(1024)  # the seeds' way: one recv = one message?
            if not data:
                break
            chunks += 1
        out.append(chunks)


def framed_server_count(listener: socket.socket, ready: threading.Event, out: list[int]) -> None:
    """Same busy server, but it decodes frames: 4-byte length, then the payload."""
    conn, _ = listener.accept()
    codec = bingfa.FrameCodec()
    with conn:
        ready.wait(10)
        messages: list[bytes] = []
        while True:
            data = conn.recv(1024)
            if not data:
                break
            messages.extend(codec.feed(data))  # whole messages only; partial ones are buffered
        out.append(len(messages))


def run(server: Server, payloads: list[bytes], frame: bool) -> int:
    """Start ``server`` on a loopback listener, send ``payloads``, return its count."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ready = threading.Event()
        out: list[int] = []
        thread = threading.Thread(target=server, args=(listener, ready, out))
        thread.start()
        with socket.create_connection(listener.getsockname()) as client:
            for payload in payloads:  # one send() per message, as in the seeds
                client.sendall(struct.pack("!I", len(payload)) + payload if frame else payload)
            client.shutdown(socket.SHUT_WR)  # "no more data": the server's recv returns b""
            ready.set()
            thread.join(10)
        return out[0]


def main() -> None:
    print("1. naive server, one recv(1024) = one message:")
    got = run(naive_server_count, MESSAGES, frame=False)
    print(f"  messages received: {got} (sent {len(MESSAGES)})  <- 粘包: sends stuck together")
    got = run(naive_server_count, [BIG], frame=False)
    print(f"  messages received: {got} (sent 1 of {len(BIG)} bytes)  <- 半包: one message cut up")

    print("2. length header (struct '!I') + bingfa.FrameCodec on the server:")
    got = run(framed_server_count, MESSAGES, frame=True)
    print(f"  messages received: {got} (sent {len(MESSAGES)})")
    got = run(framed_server_count, [BIG], frame=True)
    print(f"  messages received: {got} (sent 1 of {len(BIG)} bytes)")

    print("3. bingfa serve echo (frame protocol), 10 requests pipelined in one write:")
    with ServerProcess("echo", "thread") as server:
        with bingfa.Client(server.host, server.port, timeout=10) as client:
            replies = client.request_many(MESSAGES)
    intact = replies == MESSAGES
    print(f"  replies: {len(replies)} (sent {len(MESSAGES)}), each intact: {intact}")
    print(f"  first reply: {replies[0]!r}, last reply: {replies[-1]!r}")


if __name__ == "__main__":
    main()
