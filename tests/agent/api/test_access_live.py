"""Authentication, TLS and the audit trail of a real agent process, through the real `relctl`
client over real sockets (a Unix socket, loopback TCP, TLS and mTLS with a generated CA).

The agent manages one node that is not running: what is checked here is who gets in, what
they may do, and what the audit trail says; upgrades through the socket are in tests/e2e.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import free_port
from tests.tools.pki import CertPair, TestCA

VIEWER_TOKEN = "viewer-" + "5" * 24


def _me() -> str:
    uid = os.getuid()
    return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"


@pytest.fixture
def viewer_token(tmp_path: Path) -> Path:
    path = tmp_path / "viewer.token"
    path.write_text(VIEWER_TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def agent(tmp_path: Path, viewer_token: Path) -> Iterator[AgentProc]:
    socket = tmp_path / "agent.sock"
    grpc_port = free_port()
    proc = start_agent(
        tmp_path / "agent", [NodeEntry("ghost@localhost", "cookie", free_port())], metrics=False,
        extra_agent={"listen": [f"unix:{socket}", f"127.0.0.1:{grpc_port}"],
                     "socket_mode": 0o660},
        tokens=[{"name": "dashboard", "role": "viewer", "file": str(viewer_token)}])
    try:
        yield proc
    finally:
        proc.stop()


def audit_lines(agent: AgentProc) -> list[dict[str, object]]:
    path = agent.config.parent / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_unix_socket_is_group_only_and_names_the_caller_by_uid(agent: AgentProc,
                                                                   tmp_path: Path) -> None:
    socket = tmp_path / "agent.sock"
    mode = socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    local = f"unix:{socket}"
    # No token on the socket: its permissions are the access control.
    result = relctl("nodes", "-o", "json", agents=[local], env={"RELCTL_TOKEN_FILE": ""})
    assert result.returncode == 3, result.stderr  # the node is down; the call itself got in
    assert result.json()["nodes"][0]["node"] == "ghost@localhost"
    removed = relctl("remove", "0.0.9", agents=[local], env={"RELCTL_TOKEN_FILE": ""})
    assert removed.returncode == 3 and "ghost@localhost" in removed.stderr
    [record] = audit_lines(agent)
    assert record["identity"] == _me()
    assert str(record["peer"]).startswith(f"unix:{socket} (pid ")
    assert (record["rpc"], record["node"], record["result"]) == ("Remove", "", "UNAVAILABLE")
    assert record["arguments"] == {"version": "0.0.9"}


def test_tcp_needs_a_token_and_a_role_and_every_refusal_is_audited(
        agent: AgentProc, viewer_token: Path) -> None:
    tcp = [agent.address]
    missing = relctl("nodes", agents=tcp, env={"RELCTL_TOKEN_FILE": ""})
    assert missing.returncode == 8
    assert "no credentials: this agent needs a bearer token on TCP; pass --token-file" in \
        missing.stderr
    wrong = agent.config.parent / "wrong.token"
    wrong.write_text("not-the-right-token-at-all\n")
    refused = relctl("--token-file", str(wrong), "nodes", agents=tcp)
    assert refused.returncode == 8 and "unknown token" in refused.stderr

    viewer = {"RELCTL_TOKEN_FILE": str(viewer_token)}
    listed = relctl("nodes", "-o", "json", agents=tcp, env=viewer)
    assert listed.returncode == 3 and listed.json()["nodes"][0]["node"] == "ghost@localhost"
    denied = relctl("remove", "0.0.9", agents=tcp, env=viewer)
    assert denied.returncode == 8
    assert "dashboard has the role viewer; Remove needs the role operator" in denied.stderr
    assert relctl("audit", agents=tcp, env=viewer).returncode == 8  # the trail is operator's

    allowed = relctl("remove", "0.0.9", agents=tcp)  # the session's operator token
    assert allowed.returncode == 3

    trail = relctl("audit", "-o", "json", agents=tcp)
    assert trail.returncode == 0, trail.stderr
    records = trail.json()["records"]
    # Newest first: the operator's remove, then the refusals in reverse order. Reads that got
    # in (nodes) are not audited.
    assert [(r["identity"], r["rpc"], r["result"]) for r in records] == [
        ("test-operator", "Remove", "UNAVAILABLE"),
        ("dashboard", "ListAudit", "PERMISSION_DENIED"),
        ("dashboard", "Remove", "PERMISSION_DENIED"),
        ("unknown token", "ListNodes", "UNAUTHENTICATED"),
        ("anonymous", "ListNodes", "UNAUTHENTICATED"),
    ]
    assert all(str(r["peer"]).startswith("ipv4:127.0.0.1:") for r in records)
    # A refused call is recorded with what it asked for, as an accepted one is.
    assert records[2]["arguments"] == {"version": "0.0.9"} == records[0]["arguments"]
    text = relctl("audit", agents=tcp)
    assert "PERMISSION_DENIED" in text.stdout and "dashboard" in text.stdout
    # No secret reaches the trail.
    raw = (agent.config.parent / "state" / "audit.jsonl").read_text()
    assert VIEWER_TOKEN not in raw and "not-the-right-token" not in raw


def test_a_token_is_never_sent_in_clear_off_loopback(viewer_token: Path) -> None:
    result = relctl("--token-file", str(viewer_token), "nodes", agents=["192.0.2.1:7079"])
    assert result.returncode == 2
    assert "refusing to send the token to 192.0.2.1:7079 unencrypted: pass --ca FILE" in \
        result.stderr


@pytest.fixture
def pki(tmp_path: Path) -> tuple[TestCA, CertPair, CertPair]:
    ca = TestCA.create(tmp_path / "ca")
    server = ca.issue("agent", dns=["localhost"], ips=["127.0.0.1"], client=False)
    client = ca.issue("operator-laptop", cn="alice", server=False)
    return ca, server, client


def test_tls_and_client_certificates(tmp_path: Path,
                                     pki: tuple[TestCA, CertPair, CertPair]) -> None:
    ca, server, client = pki
    port = free_port()
    agent = start_agent(
        tmp_path / "agent", [NodeEntry("ghost@localhost", "cookie", free_port())], metrics=False,
        extra_agent={"listen": f"127.0.0.1:{port}",
                     "tls": {"cert_file": str(server.cert), "key_file": str(server.key),
                             "client_ca_file": str(ca.cert)}})
    try:
        tcp = [f"127.0.0.1:{port}"]
        tls = ["--ca", str(ca.cert)]
        mtls = [*tls, "--cert", str(client.cert), "--key", str(client.key)]
        ok = relctl(*mtls, "remove", "0.0.9", agents=tcp)
        assert ok.returncode == 3 and "ghost@localhost" in ok.stderr  # in; the node is down
        [record] = audit_lines(agent)
        assert record["identity"] == "test-operator" and "alice" in str(record["certificate"])

        plain = relctl("nodes", agents=tcp)
        assert plain.returncode == 3 and "pass --ca FILE" in plain.stderr
        no_cert = relctl(*tls, "nodes", agents=tcp)
        assert no_cert.returncode == 3 and "--cert and --key" in no_cert.stderr
        other = TestCA.create(tmp_path / "other", name="unrelated CA")
        wrong_ca = relctl("--ca", str(other.cert), "--cert", str(client.cert), "--key",
                          str(client.key), "nodes", agents=tcp)
        assert wrong_ca.returncode == 3, wrong_ca.stderr
        # Names the mismatch (issue 23): the CA it was checked against, and what to pass.
        assert ("the agent's certificate is not trusted: unable to get local issuer "
                f"certificate, checked against the CA in --ca {other.cert} (CN=unrelated CA); "
                "pass the CA that signed the agent's certificate with --ca") in wrong_ca.stderr
        # A certificate that does not name the address dialed: its names, not "is it running?"
        by_name = relctl(*mtls, "nodes", agents=[f"localhost:{port}"])
        # "localhost" is one of its names: the agent answers (about its node, which is down).
        assert "node ghost@localhost is down" in by_name.stderr, by_name.stderr
        elsewhere = ca.issue("elsewhere", dns=["agent.example"], client=False)
        other_agent = start_agent(
            tmp_path / "agent2", [NodeEntry("ghost@localhost", "cookie", free_port())],
            metrics=False, extra_agent={"listen": f"127.0.0.1:{(port2 := free_port())}",
                                        "tls": {"cert_file": str(elsewhere.cert),
                                                "key_file": str(elsewhere.key)}})
        try:
            misnamed = relctl(*tls, "nodes", agents=[f"127.0.0.1:{port2}"])
        finally:
            other_agent.stop()
        assert misnamed.returncode == 3, misnamed.stderr
        assert "is relctl-agent running" not in misnamed.stderr
        assert (f"the agent's certificate (signed by the CA in --ca {ca.cert} (CN=relctl test "
                "CA), which is right) does not name 127.0.0.1, the address relctl dialed; its "
                "names: DNS:agent.example. Dial the agent by one of those names, or reissue its "
                "certificate with 127.0.0.1 in subjectAltName") in misnamed.stderr
        half = relctl(*tls, "--cert", str(client.cert), "nodes", agents=tcp)
        assert half.returncode == 2 and "--cert and --key go together" in half.stderr
    finally:
        agent.stop()


def test_insecure_no_auth_is_loud(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "agent", [NodeEntry("ghost@localhost", "cookie", free_port())],
                        metrics=False, extra_agent={"insecure_no_auth": True})
    try:
        assert "insecure_no_auth = true: calls to" in agent.log_text()
        assert relctl("nodes", agents=[agent.address], env={"RELCTL_TOKEN_FILE": ""}
                      ).returncode == 3
    finally:
        agent.stop()
