"""[distribution_tls] in the agent's config: what it accepts, and that each mistake names the
file, the key and the reason before the agent starts."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from agent.config import NodeConfig, client_context, hint, load_config
from agent.errors import ConfigError
from agent.nodes.manager import NodeManager
from bridge import TlsCause
from tests.tools.needs import needs_tool
from tests.tools.pki import CertPair, TestCA

pytestmark = needs_tool("openssl")

BASE = """
[agent]
state_dir = "state"

[[nodes]]
name = "counter@localhost"
cookie_file = "counter.cookie"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, CertPair]:
    ca = TestCA.create(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("agent", server=False)


def write(tmp_path: Path, pki: tuple[TestCA, CertPair], table: str) -> Path:
    """agent.toml with ``table`` as its [distribution_tls], and copies of the PKI files beside it
    (ca.crt, agent.crt, agent.key; private-cert.pem: a certificate in a private file) so that
    tests can spoil them."""
    ca, pair = pki
    for source, name in ((ca.cert, "ca.crt"), (pair.cert, "agent.crt"), (pair.key, "agent.key"),
                         (ca.cert, "private-cert.pem")):
        shutil.copy(source, tmp_path / name)
    (tmp_path / "agent.key").chmod(0o600)
    (tmp_path / "private-cert.pem").chmod(0o600)
    (tmp_path / "counter.cookie").write_text("s3cret\n")
    (tmp_path / "counter.cookie").chmod(0o600)
    path = tmp_path / "agent.toml"
    path.write_text(BASE + "\n[distribution_tls]\n" + table)
    return path


FULL = 'ca_file = "ca.crt"\ncert_file = "agent.crt"\nkey_file = "agent.key"\n'


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def test_full_table(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    config = load_config(write(tmp_path, pki, FULL))
    tls = config.distribution_tls
    assert tls is not None
    # Relative to the config file, like every path in it.
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        tmp_path / "ca.crt", tmp_path / "agent.crt", tmp_path / "agent.key")
    assert tls.verify_hostname and tls.server_name is None
    ctx = client_context(tls)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "relctl test CA"),),)]


def test_without_the_table_there_is_no_tls(tmp_path: Path) -> None:
    (tmp_path / "counter.cookie").write_text("s3cret\n")
    (tmp_path / "counter.cookie").chmod(0o600)
    (tmp_path / "agent.toml").write_text(BASE)
    assert load_config(tmp_path / "agent.toml").distribution_tls is None


def test_ca_only_and_no_name_check(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    tls = load_config(write(tmp_path, pki, 'ca_file = "ca.crt"\nverify_hostname = false\n')
                      ).distribution_tls
    assert tls is not None and tls.cert_file is None and tls.key_file is None
    ctx = client_context(tls)
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED  # the chain still counts


def test_server_name(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    tls = load_config(write(tmp_path, pki, FULL + 'server_name = "node.example"\n')).distribution_tls
    assert tls is not None and tls.server_name == "node.example"


@pytest.mark.parametrize(("table", "key", "reason"), [
    ('cert_file = "agent.crt"\nkey_file = "agent.key"\n', "distribution_tls.ca_file", "is required"),
    ('ca_file = "ca.crt"\ncert_file = "agent.crt"\n', "distribution_tls.key_file",
     "is required with cert_file"),
    ('ca_file = "ca.crt"\nkey_file = "agent.key"\n', "distribution_tls.cert_file",
     "is required with key_file"),
    (FULL + "cafile = 1\n", "distribution_tls.cafile", "unknown key (known keys: ca_file, "),
    (FULL + 'verify_hostname = "yes"\n', "distribution_tls.verify_hostname",
     "must be true or false, not str"),
    (FULL + "server_name = 4\n", "distribution_tls.server_name", "must be a string, not int"),
    (FULL + 'server_name = "a b"\n', "distribution_tls.server_name", "is not a host name"),
    (FULL + 'server_name = "x"\nverify_hostname = false\n', "distribution_tls.server_name",
     "remove one of them"),
    ('ca_file = "nosuch.crt"\n', "distribution_tls.ca_file", "nosuch.crt does not exist"),
    ('ca_file = "agent.key"\n', "distribution_tls.ca_file", "is not a PEM file with a CA certificate"),
    ('ca_file = "ca.crt"\ncert_file = "agent.key"\nkey_file = "agent.key"\n',
     "distribution_tls.cert_file", "is not a PEM file with a certificate"),
    ('ca_file = "ca.crt"\ncert_file = "agent.crt"\nkey_file = "private-cert.pem"\n',
     "distribution_tls.key_file", "is not a PEM file with a private key"),
])
def test_mistakes_name_file_key_and_reason(tmp_path: Path, pki: tuple[TestCA, CertPair], table: str,
                                           key: str, reason: str) -> None:
    path = write(tmp_path, pki, table)
    error = config_error(path)
    assert (error.path, error.key) == (str(path), key)
    assert reason in error.reason


def test_table_must_be_a_table(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    path = write(tmp_path, pki, "")
    path.write_text(BASE.replace("[agent]", 'distribution_tls = "on"\n[agent]'))
    error = config_error(path)
    assert error.key == "distribution_tls" and "must be a table" in error.reason


def test_key_readable_by_every_user_is_refused(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    path = write(tmp_path, pki, FULL)
    (tmp_path / "agent.key").chmod(0o644)
    error = config_error(path)
    assert error.key == "distribution_tls.key_file"
    assert "readable by every user" in error.reason and "chmod o-rwx" in error.reason


def test_key_of_another_certificate_is_refused(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    other = pki[0].issue("other-agent", server=False)
    path = write(tmp_path, pki, FULL)
    shutil.copy(other.key, tmp_path / "agent.key")
    error = config_error(path)
    assert error.key == "distribution_tls.key_file" and "is not the key of" in error.reason


def test_encrypted_key_is_refused_without_a_prompt(tmp_path: Path, pki: tuple[TestCA, CertPair]) -> None:
    path = write(tmp_path, pki, FULL)
    encrypted = subprocess.run(["openssl", "pkey", "-in", str(pki[1].key), "-aes256", "-passout",
                                "pass:secret"], capture_output=True, check=True, timeout=30).stdout
    (tmp_path / "agent.key").write_bytes(encrypted)
    error = config_error(path)  # a prompt on the terminal would hang here instead
    assert error.key == "distribution_tls.key_file" and "is encrypted" in error.reason


def test_every_link_gets_the_context_discovered_ones_too(tmp_path: Path,
                                                         pki: tuple[TestCA, CertPair]) -> None:
    config = load_config(write(tmp_path, pki, FULL + 'server_name = "node.example"\n'))
    manager = NodeManager.from_config(config)
    found = manager.add(NodeConfig(name="found@localhost", cookie_file=tmp_path / "counter.cookie",
                                   cookie="s3cret"))
    links = [manager.get("counter@localhost"), found]
    contexts = {id(link.bridge_node.tls) for link in links}
    assert len(contexts) == 1 and links[0].bridge_node.tls is not None
    assert all(link.bridge_node.tls_server_name == "node.example" for link in links)


def test_every_tls_cause_has_its_own_hint() -> None:
    hints = {cause: hint(cause) for cause in TlsCause if cause is not TlsCause.OTHER}
    assert len(set(hints.values())) == len(hints)
    assert "distribution_tls.ca_file" in hints[TlsCause.NODE_CERT_UNTRUSTED]
    assert "cert_file and key_file" in hints[TlsCause.CLIENT_CERT_REQUIRED]
