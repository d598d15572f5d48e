"""TLS under every TCP model, with throwaway certificates made by trustme."""

from __future__ import annotations

import pathlib
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from bingfa import Client, ConnectionClosed, NetworkError
from bingfa.server import MODELS

pytestmark = pytest.mark.parametrize("model", [pytest.param(m, id=m) for m in MODELS])


@dataclass
class Pki:
    ca: str
    cert: str
    other_ca: str
    client_cert: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@bingfa.test")
    other = trustme.CA()

    def write(name: str, blob: Any) -> str:
        path = pathlib.Path(root, name)
        blob.write_to_path(str(path))
        return str(path)

    cert = str(root / "server.pem")
    server.private_key_and_cert_chain_pem.write_to_path(cert)
    client_cert = str(root / "client.pem")
    client.private_key_and_cert_chain_pem.write_to_path(client_cert)
    return Pki(
        ca=write("ca.pem", ca.cert_pem),
        cert=cert,
        other_ca=write("other.pem", other.cert_pem),
        client_cert=client_cert,
    )


def wait_for_log(server: Any, text: str) -> None:
    deadline = time.monotonic() + 5
    while text not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.05)


def test_tls_echo(spawn_server: Any, model: str, pki: Pki) -> None:
    server = spawn_server("upper", model, certfile=pki.cert)
    with Client(*server.address, tls=True, cafile=pki.ca) as client:
        for i in range(20):
            assert client.request(b"secret %d" % i) == b"SECRET %d" % i
        assert client.request(b"z" * 200_000) == b"Z" * 200_000


def test_client_rejects_wrong_ca(spawn_server: Any, model: str, pki: Pki) -> None:
    server = spawn_server("echo", model, certfile=pki.cert)
    with pytest.raises(NetworkError, match="certificate verify failed") as info:
        Client(*server.address, tls=True, cafile=pki.other_ca)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    with Client(*server.address, tls=True, cafile=pki.ca) as good:
        assert good.request(b"ok") == b"ok"


def test_plaintext_client_on_tls_port(spawn_server: Any, model: str, pki: Pki) -> None:
    server = spawn_server("echo", model, certfile=pki.cert)
    with socket.create_connection(server.address, timeout=5) as raw:
        raw.sendall(struct.pack("!I", 5) + b"hello")
        data = b""
        try:
            while chunk := raw.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        assert b"hello" not in data
    with pytest.raises((ConnectionClosed, NetworkError)):
        with Client(*server.address, timeout=5) as plain:
            plain.request(b"plain")
    with Client(*server.address, tls=True, cafile=pki.ca) as good:
        assert good.request(b"unaffected") == b"unaffected"
    wait_for_log(server, "TLS handshake with")


def test_mutual_tls(spawn_server: Any, model: str, pki: Pki) -> None:
    server = spawn_server("echo", model, certfile=pki.cert, ca_certs=pki.ca)
    with Client(*server.address, tls=True, cafile=pki.ca, certfile=pki.client_cert) as ok:
        assert ok.request(b"with cert") == b"with cert"
    # Without a client certificate: TLS 1.3 reports the refusal after the handshake, at the
    # first read, so the failure may surface at connect or at the first request.
    with pytest.raises((NetworkError, ConnectionClosed)):
        with Client(*server.address, tls=True, cafile=pki.ca, timeout=5) as anon:
            anon.request(b"no cert")
    with Client(*server.address, tls=True, cafile=pki.ca, certfile=pki.client_cert) as again:
        assert again.request(b"still fine") == b"still fine"
