"""The ``fork`` model's own guarantees (the shared suite in test_models.py covers the rest):
a bounded number of children, prompt reaping, draining on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import time
from typing import Any, TypeVar

import psutil
from server_helpers import frame, live_children, recv_frame, wait_for

from bingfa import Client
from bingfa.spawn import ServerProcess

T = TypeVar("T")


def has_reply(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except TimeoutError:
        return False
    finally:
        sock.settimeout(10)


def children(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.pid).children()


def test_max_children_bounds_live_children_and_backlogs_the_rest(spawn_server: Any) -> None:
    server = spawn_server("bingfa_testapps:pid", "fork", max_children=3)
    socks = [socket.create_connection(server.address, timeout=10) for _ in range(6)]
    try:
        for s in socks:
            s.sendall(frame(b""))
        served = {s: int(recv_frame(s)) for s in socks[:3]}
        assert len(set(served.values())) == 3  # three different processes
        assert set(served.values()) == live_children(server)
        waiting = socks[3:]
        for _ in range(10):  # the other three wait in the backlog: no fourth child appears
            assert len(live_children(server)) <= 3
            time.sleep(0.05)
        assert not any(has_reply(s, 0.1) for s in waiting)
        socks[0].close()  # one child exits: exactly one waiting connection is served
        wait_for(lambda: sum(has_reply(s, 0.05) for s in waiting) == 1, 3.0, "a freed slot")
        assert len(live_children(server)) <= 3
        for s in socks[1:3]:
            s.close()
        assert all(has_reply(s, 3.0) for s in waiting)
        pids = {int(recv_frame(s)) for s in waiting}
        assert not pids & set(served.values())  # new children, not reused ones
        assert len(live_children(server)) <= 3
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: not children(server), 3.0, "every child reaped")


def test_each_connection_gets_a_child_and_children_are_reaped(spawn_server: Any) -> None:
    server = spawn_server("bingfa_testapps:pid", "fork")
    pids = set()
    for _ in range(30):
        with Client(*server.address) as client:
            pids.add(int(client.request(b"")))
            assert int(client.request(b"")) in pids  # the same child for the whole connection
    assert len(pids) == 30
    assert server.pid not in pids
    # Once the connections are closed, nothing is left over: no live child, no zombie.
    wait_for(lambda: not children(server), 2.0, "no children at all (zombies included)")


def test_sigterm_drains_children_then_exits_zero(spawn_server: Any) -> None:
    server = spawn_server("sleep", "fork")
    busy = [Client(*server.address, timeout=10) for _ in range(10)]
    idle = socket.create_connection(server.address, timeout=10)
    try:
        for client in busy:
            client.send(b"500")
        wait_for(lambda: len(live_children(server)) == 11, 5.0, "11 children")
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        assert [client.recv() for client in busy] == [b"500"] * 10
        assert idle.recv(1) == b""  # an idle connection is closed cleanly
        assert server.wait(10) == 0
        assert time.monotonic() - start < 3
    finally:
        for client in busy:
            client.close()
        idle.close()
    assert "stopping: 11 children finishing their requests" in server.log()


def child_serving(server: ServerProcess, sock: socket.socket) -> int:
    """The pid of the child holding the server end of ``sock``."""
    port = sock.getsockname()[1]
    for proc in children(server):
        try:
            if any(c.raddr and c.raddr.port == port for c in proc.net_connections(kind="tcp")):
                return proc.pid
        except psutil.NoSuchProcess:
            pass
    raise AssertionError(f"no child serves local port {port}")


def test_sigterm_to_one_child_finishes_its_request(spawn_server: Any) -> None:
    server = spawn_server("sleep", "fork")
    with (
        socket.create_connection(server.address, timeout=10) as doomed,
        socket.create_connection(server.address, timeout=10) as bystander,
    ):
        doomed.sendall(frame(b"400"))
        bystander.sendall(frame(b"1"))
        assert recv_frame(bystander) == b"1"
        wait_for(lambda: len(live_children(server)) == 2, 5.0, "two children")
        doomed_pid = child_serving(server, doomed)
        psutil.Process(doomed_pid).send_signal(signal.SIGTERM)
        assert recv_frame(doomed) == b"400"  # the request in progress is finished...
        assert doomed.recv(1) == b""  # ...then the child closes and exits
        wait_for(lambda: doomed_pid not in live_children(server), 3.0, "the child to exit")
        bystander.sendall(frame(b"1"))
        assert recv_frame(bystander) == b"1"


def test_children_outliving_graceful_timeout_are_killed(spawn_server: Any) -> None:
    server = spawn_server("sleep", "fork", graceful_timeout=0.5)
    with socket.create_connection(server.address, timeout=10) as stuck:
        stuck.sendall(frame(b"60000"))
        wait_for(lambda: len(live_children(server)) == 1, 5.0, "the child")
        (child,) = live_children(server)
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert time.monotonic() - start < 3
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
        try:
            assert stuck.recv(1) == b""
        except ConnectionResetError:
            pass
    assert re.search(
        rf"graceful_timeout=0.5s passed; killing 1 children: \[{child}\]", server.log()
    )
