"""The test PKI: what openssl and Python's ssl make of the certificates it issues."""

from __future__ import annotations

import asyncio
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from tests.tools.needs import needs_tool
from tests.tools.pki import CertPair, TestCA

pytestmark = needs_tool("openssl")


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


def test_issued_certificate_chains_to_its_ca_only(ca: TestCA, tmp_path: Path) -> None:
    pair = ca.issue("node", dns=["localhost", "node.example"], ips=["127.0.0.1"], client=False)
    assert pair.ca == ca.cert and pair.cert.parent == ca.directory
    assert openssl("verify", "-CAfile", str(ca.cert), str(pair.cert)).returncode == 0
    other = TestCA.create(tmp_path / "other", name="unrelated CA")
    wrong = openssl("verify", "-CAfile", str(other.cert), str(pair.cert))
    assert wrong.returncode != 0 and "unable to get local issuer certificate" in wrong.stdout + wrong.stderr

    text = openssl("x509", "-in", str(pair.cert), "-noout", "-subject", "-ext",
                   "subjectAltName,extendedKeyUsage").stdout
    assert "CN = node" in text
    assert "DNS:localhost, DNS:node.example, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text and "Client Authentication" not in text


def test_key_files_are_private(ca: TestCA) -> None:
    pair = ca.issue("private", cn="Private Agent", server=False)
    for key in (ca.key, pair.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert "CN = Private Agent" in openssl("x509", "-in", str(pair.cert), "-noout", "-subject").stdout


def test_expired_certificate_is_rejected_as_expired(ca: TestCA) -> None:
    pair = ca.issue("old", dns=["localhost"], expired=True)
    result = openssl("verify", "-CAfile", str(ca.cert), str(pair.cert))
    assert result.returncode != 0 and "certificate has expired" in result.stdout + result.stderr


def test_bad_requests_are_refused(ca: TestCA) -> None:
    with pytest.raises(ValueError, match="server=True, client=True"):
        ca.issue("nousage", server=False, client=False)
    with pytest.raises(ValueError, match="names the files"):
        ca.issue("../escape")
    with pytest.raises(ValueError, match="common name"):
        ca.issue("slashy", cn="a/b")


async def _mutual_tls(server: CertPair, client: CertPair | None, trusted_ca: Path) -> bytes:
    """One echo over mutual TLS on loopback, with Python's (strict) verification both ways."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(server.ca))
    server_ctx.load_cert_chain(server.cert, server.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
    if client is not None:
        client_ctx.load_cert_chain(client.cert, client.key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"), 5)
        writer.write(b"ping")
        data = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        return data
    finally:
        srv.close()


async def test_python_ssl_accepts_the_certificates_both_ways(ca: TestCA, tmp_path: Path) -> None:
    server = ca.issue("tls-server", dns=["localhost"], ips=["127.0.0.1"], client=False)
    client = ca.issue("tls-client", server=False)
    assert await _mutual_tls(server, client, ca.cert) == b"ping"
    other = TestCA.create(tmp_path / "other", name="unrelated CA")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await _mutual_tls(server, client, other.cert)
    wrong_name = ca.issue("wrong-name", dns=["elsewhere.example"], client=False)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await _mutual_tls(wrong_name, client, ca.cert)
