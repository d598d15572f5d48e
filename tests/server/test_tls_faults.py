"""TLS faults under the models that shake hands with blocking calls (thread, threadpool, gevent,
and fork, whose children run the same handshake): failed handshakes give their descriptor back,
and silent or trickling clients are shed by ``--handshake-timeout`` and ``--idle-timeout``
instead of holding a socket (or a worker) forever.

Every server is a ``bingfa serve`` child (the ``spawn_server`` fixture stops it, even on failure);
clients are on loopback, few, and bounded in time.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import trustme
from server_helpers import wait_for

from bingfa import Client

BLOCKING_TLS_MODELS = ["thread", "threadpool", "gevent", "fork"]


@dataclass
class Pki:
    ca: str  # the CA that signed the server's certificate
    cert: str  # the server's key and certificate chain
    other_ca: str  # a CA that signed nothing here: a client trusting only it rejects the server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = str(root / "server.pem")
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(cert)
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(root / "other.pem"))
    return Pki(ca=str(root / "ca.pem"), cert=cert, other_ca=str(root / "other.pem"))


@pytest.fixture
def raw_clients() -> Iterator[list[socket.socket]]:
    """A list to put client sockets in; every one is closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def fd_count(server: Any) -> int:
    return int(psutil.Process(server.pid).num_fds())


def open_fds(server: Any) -> list[str]:
    """What the server's descriptors point at (for failure messages)."""
    path = f"/proc/{server.pid}/fd"
    targets = []
    for fd in sorted(os.listdir(path), key=int):
        try:
            targets.append(f"{fd}->{os.readlink(os.path.join(path, fd))}")
        except OSError:
            pass
    return targets


def wait_for_fds(server: Any, baseline: list[str], timeout: float = 3.0) -> None:
    """Wait until the server has no more descriptors open than ``baseline`` lists."""
    try:
        wait_for(lambda: fd_count(server) <= len(baseline), timeout, "descriptors at baseline")
    except AssertionError:
        pytest.fail(f"descriptors {open_fds(server)}, before {baseline}")


def baseline_fds(server: Any, pki: Pki) -> list[str]:
    """The server's descriptors at rest: after one good exchange (so the accept loop runs and
    lazy start-up, such as gevent's hub, is over) and once their number stopped changing."""
    with Client(*server.address, tls=True, cafile=pki.ca, timeout=5) as warm_up:
        assert warm_up.request(b"warm-up") == b"warm-up"
    last = open_fds(server)
    for _ in range(10):
        time.sleep(0.1)
        now = open_fds(server)
        if len(now) == len(last):
            return now
        last = now
    return last


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return None
    except OSError:  # reset: closed too
        return time.monotonic() - start
    assert data == b"", f"the server sent {data!r} to a client that never said hello"
    return time.monotonic() - start


def client_hello() -> bytes:
    """The bytes of a genuine TLS ClientHello, as a client's first flight."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 100
    return hello


@pytest.mark.parametrize("model", BLOCKING_TLS_MODELS)
def test_failed_handshakes_give_back_their_descriptors(
    spawn_server: Any, model: str, pki: Pki
) -> None:
    """40 failed handshakes of three kinds — reset mid-handshake, plaintext garbage, a client
    that rejects the server's certificate — leave the server's descriptor count at baseline."""
    server = spawn_server("echo", model, certfile=pki.cert)
    baseline = baseline_fds(server, pki)
    rejecting = ssl.create_default_context(cafile=pki.other_ca)
    for i in range(40):
        with socket.create_connection(server.address, timeout=5) as s:
            if i % 3 == 0:  # vanish with a reset: the server's handshake read fails with ECONNRESET
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif i % 3 == 1:  # plaintext on the TLS port
                s.sendall(struct.pack("!I", 5) + b"hello")
                try:
                    s.recv(4096)
                except OSError:
                    pass
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    rejecting.wrap_socket(s, server_hostname="127.0.0.1")
    wait_for(
        lambda: server.log().count("TLS handshake with") >= 40, 10, "40 failed handshakes logged"
    )
    wait_for_fds(server, baseline)
    with Client(*server.address, tls=True, cafile=pki.ca, timeout=5) as good:
        assert good.request(b"unaffected") == b"unaffected"


@pytest.mark.parametrize("model", BLOCKING_TLS_MODELS)
def test_silent_client_is_closed_by_the_handshake_timeout(
    spawn_server: Any, model: str, pki: Pki, raw_clients: list[socket.socket]
) -> None:
    """Clients that connect and never say hello are closed once ``--handshake-timeout``
    passes, and their descriptors are given back."""
    server = spawn_server("echo", model, certfile=pki.cert, handshake_timeout=0.5)
    baseline = baseline_fds(server, pki)
    raw_clients += [socket.create_connection(server.address, timeout=5) for _ in range(3)]
    for s in raw_clients:
        waited = closed_within(s, 4)
        assert waited is not None, f"{model}: a client that sent nothing is still open after 4s"
        assert waited < 3
    assert "handshake" in server.log()
    wait_for_fds(server, baseline)


def test_handshake_timeout_from_the_environment(
    spawn_server: Any, pki: Pki, raw_clients: list[socket.socket]
) -> None:
    """``BINGFA_HANDSHAKE_TIMEOUT`` sets ``--handshake-timeout``, as for every option."""
    server = spawn_server(
        "echo", "thread", env={"BINGFA_HANDSHAKE_TIMEOUT": "0.5"}, certfile=pki.cert
    )
    raw_clients.append(socket.create_connection(server.address, timeout=5))
    waited = closed_within(raw_clients[0], 4)
    assert waited is not None and waited < 3, f"silent client open after {waited}s"


@pytest.mark.parametrize("model", BLOCKING_TLS_MODELS)
def test_idle_timeout_also_bounds_the_handshake(
    spawn_server: Any, model: str, pki: Pki, raw_clients: list[socket.socket]
) -> None:
    """The idle clock runs from accept, handshake included: a client that never says hello is
    closed after ``idle_timeout`` like a plaintext one, even under a longer handshake timeout;
    one that shakes hands and then sends nothing is closed by the same clock."""
    server = spawn_server("echo", model, certfile=pki.cert, idle_timeout=0.6)
    raw_clients.append(socket.create_connection(server.address, timeout=5))
    waited = closed_within(raw_clients[0], 5)
    assert waited is not None and waited < 3, f"{model}: silent client open after {waited}s"
    context = ssl.create_default_context(cafile=pki.ca)
    tls = context.wrap_socket(
        socket.create_connection(server.address, timeout=5), server_hostname="127.0.0.1"
    )
    raw_clients.append(tls)
    waited = closed_within(tls, 5)
    assert waited is not None and waited < 3, f"{model}: TLS client open after {waited}s"
    with Client(*server.address, tls=True, cafile=pki.ca, timeout=5) as good:
        assert good.request(b"still served") == b"still served"


@pytest.mark.parametrize("model", BLOCKING_TLS_MODELS)
def test_trickled_client_hello_is_bounded_by_the_handshake_timeout(
    spawn_server: Any, model: str, pki: Pki, raw_clients: list[socket.socket]
) -> None:
    """A client that trickles its ClientHello a byte at a time cannot stretch the handshake:
    the timeout is a deadline for the whole handshake, not for each read."""
    server = spawn_server("echo", model, certfile=pki.cert, handshake_timeout=1.0)
    hello = client_hello()
    s = socket.create_connection(server.address, timeout=5)
    raw_clients.append(s)
    start = time.monotonic()
    closed_after: float | None = None
    for byte in hello[: len(hello) - 1]:  # never the whole hello
        if time.monotonic() - start > 5:
            break
        try:
            s.sendall(bytes([byte]))
        except OSError:  # reset or broken pipe: the server has closed it
            closed_after = time.monotonic() - start
            break
        readable, _, _ = select.select([s], [], [], 0.1)
        if readable:  # the server sends nothing before the whole hello: this is its close
            closed_after = time.monotonic() - start
            break
    assert closed_after is not None, f"{model}: trickling client still open after 5s"
    assert closed_after < 3.5
    assert "handshake" in server.log()


def test_silent_clients_do_not_starve_the_thread_pool(
    spawn_server: Any, pki: Pki, raw_clients: list[socket.socket]
) -> None:
    """Two workers, six clients that never say hello: each holds a worker at most
    ``handshake_timeout`` from its accept, so a good client queued behind them all is answered
    after about one timeout, not one per pair of silent clients (three here)."""
    timeout = 1.5
    server = spawn_server(
        "echo", "threadpool", certfile=pki.cert, threads=2, handshake_timeout=timeout
    )
    raw_clients += [socket.create_connection(server.address, timeout=5) for _ in range(6)]
    time.sleep(0.2)  # all six accepted and queued before the good client
    start = time.monotonic()
    with Client(*server.address, tls=True, cafile=pki.ca, timeout=10) as good:
        assert good.request(b"hello") == b"hello"
    waited = time.monotonic() - start
    assert waited < 2 * timeout, f"a good client waited {waited:.1f}s behind silent ones"


@pytest.mark.parametrize("model", BLOCKING_TLS_MODELS)
def test_shutdown_does_not_wait_for_a_silent_handshake(
    spawn_server: Any, model: str, pki: Pki, raw_clients: list[socket.socket]
) -> None:
    """SIGTERM closes a connection whose client has not said hello yet, as an idle one: the
    server exits at once (0), not after the 10 s handshake timeout, and says no more than DEBUG
    about the handshake it ended."""
    server = spawn_server("echo", model, certfile=pki.cert)
    raw_clients.append(socket.create_connection(server.address, timeout=5))
    time.sleep(0.3)  # accepted and in its handshake
    start = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - start < 3, f"{model}: shutdown waited for the handshake"
    assert "TLS handshake with" not in server.log()
