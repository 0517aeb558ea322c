"""Distribution over TLS against real nodes: the counter release started with
``-proto_dist inet_tls`` and mutual TLS (verify_peer, fail_if_no_peer_cert), certificates from
a test CA made with openssl. The bridge connects and calls; each way TLS can fail is reported
as what it is, and fast; a real relctl-agent with [distribution_tls] shows the node's releases.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge import Atom, CookieRejected, Node, TlsCause, TlsHandshakeFailed
from tests.conftest import current_test_failed
from tests.tools import otp_select
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.needs import needs_tool, unavailable
from tests.tools.otp_procs import EpmdProc, NodeProc, pid_exists, start_epmd, start_node
from tests.tools.pki import CertPair, TestCA
from tests.tools.release_fixture import ReleaseBuild, make_target_copy

pytestmark = [pytest.mark.otp, needs_tool("openssl")]

TLS_APPS = ("asn1", "crypto", "public_key", "ssl")  # what inet_tls_dist loads


@dataclass(frozen=True)
class TlsCluster:
    epmd: EpmdProc
    cookie: str
    ca: TestCA
    other_ca: TestCA        # unrelated: neither side trusts it
    client: CertPair        # the agent's certificate, signed by ca
    tls_node: NodeProc      # counter, -proto_dist inet_tls, mutual TLS
    tls13_node: NodeProc    # the same with TLS 1.3 only
    plain_node: NodeProc    # counter, plain distribution


def _ssl_code_path(build: ReleaseBuild) -> list[str]:
    """-pa for the OTP applications TLS distribution needs: the counter release has only
    kernel, stdlib and sasl."""
    args = []
    lib = build.otp.root_dir / "lib"
    for app in TLS_APPS:
        found = sorted(otp_select.host_view(lib).glob(f"{app}-*/ebin"))
        if not found:
            unavailable(f"the OTP at {build.otp.root_dir} has no {app} application")
        args += ["-pa", str(lib / found[-1].parent.name / "ebin")]  # as the node sees it
    return args


def _dist_optfile(path: Path, ca: TestCA, server: CertPair, versions: str = "") -> Path:
    """The node's -ssl_dist_optfile: its certificate for both directions, peers must present
    one signed by our CA."""
    common = (f'{{certfile, "{server.cert}"}}, {{keyfile, "{server.key}"}}, '
              f'{{cacertfile, "{ca.cert}"}}, {{verify, verify_peer}}'
              + (f", {{versions, [{versions}]}}" if versions else ""))
    path.write_text(f"[{{server, [{common}, {{fail_if_no_peer_cert, true}}]}},\n"
                    f" {{client, [{common}]}}].\n")
    return path


def _start_counter(build: ReleaseBuild, base: Path, name: str, epmd: EpmdProc, cookie: str,
                   tls_args: list[str]) -> NodeProc:
    target = make_target_copy(build, base / f"{name}-target")
    rel = target / "releases" / build.base_vsn
    # The release's own start script boots in embedded mode, where the ssl modules (not in
    # the release) cannot load. Its boot script in interactive mode, through bin/erl, can.
    args = ["-boot", str(rel / "start"), "-config", str(rel / "sys"), "-noshell", "-noinput",
            *tls_args]
    return start_node(target, f"{name}@localhost", cookie=cookie, epmd_port=epmd.port,
                      extra_args=args, workdir=base / f"{name}-node", start_script="bin/erl",
                      timeout=30)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, release_build: ReleaseBuild,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    base = tmp_path_factory.mktemp("tls-dist")
    ca = TestCA.create(base / "ca", name="relctl dist CA")
    other_ca = TestCA.create(base / "other-ca", name="unrelated CA")
    server = ca.issue("node", dns=["localhost"], ips=["127.0.0.1"])
    client = ca.issue("agent", server=False)
    optfile = _dist_optfile(base / "ssl_dist.conf", ca, server)
    optfile13 = _dist_optfile(base / "ssl_dist13.conf", ca, server, "'tlsv1.3'")
    epmd = start_epmd(log_dir=base / "epmd")
    nodes: list[NodeProc] = []
    cookie = "tls-dist-test-cookie"
    try:
        nodes.append(_start_counter(release_build, base, "tls_counter", epmd, cookie,
                                    ["-proto_dist", "inet_tls", "-ssl_dist_optfile", str(optfile),
                                     *_ssl_code_path(release_build)]))
        nodes.append(_start_counter(release_build, base, "tls13_counter", epmd, cookie,
                                    ["-proto_dist", "inet_tls", "-ssl_dist_optfile", str(optfile13),
                                     *_ssl_code_path(release_build)]))
        nodes.append(_start_counter(release_build, base, "plain_counter", epmd, cookie, []))
        yield TlsCluster(epmd, cookie, ca, other_ca, client, *nodes)
    finally:
        for node in nodes:
            node.stop()
            if current_test_failed(request):
                print(f"===== log of {node.name} (pid {node.pid}) =====\n{node.log_text()}")
        epmd.stop()
    assert not [p.pid for p in [*nodes, epmd] if pid_exists(p.pid)], "a process survived stop()"


def context(ca: TestCA, client: CertPair | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def bridge(cluster: TlsCluster, tls: ssl.SSLContext | None, server_name: str | None = None) -> Node:
    return Node(cookie=cluster.cookie, epmd_port=cluster.epmd.port, tls=tls,
                tls_server_name=server_name)


async def fails(node: Node, target: NodeProc, timeout: float = 5.0) -> tuple[TlsHandshakeFailed, float]:
    started = time.monotonic()
    with pytest.raises(TlsHandshakeFailed) as caught:
        await node.connect(target.name, timeout=timeout)
    return caught.value, time.monotonic() - started


async def test_rpc_over_mutual_tls(cluster: TlsCluster) -> None:
    node = bridge(cluster, context(cluster.ca, cluster.client))
    async with node.connect(cluster.tls_node.name, timeout=5.0) as conn:
        assert conn.tls_version == "TLSv1.2"  # what OTP nodes speak unless told otherwise
        assert await conn.call("init", "get_argument", [Atom("proto_dist")]) == (
            Atom("ok"), [["inet_tls"]])
        assert Atom(node.name) in await conn.call("erlang", "nodes", [Atom("hidden")])
        releases = await conn.call("release_handler", "which_releases", [], timeout=30.0)
        assert [(n, v, s) for n, v, _libs, s in releases] == [("counter", "0.0.1", Atom("permanent"))]
        assert await conn.call("counter", "incr", []) == 1
        big = b"x" * 300_000  # larger than a TLS record: framing survives record boundaries
        assert await conn.call("erlang", "byte_size", [big]) == len(big)
    assert conn.is_closed


async def test_wrong_cookie_over_tls_is_still_a_cookie_error(cluster: TlsCluster) -> None:
    node = Node(cookie="not-the-cookie", epmd_port=cluster.epmd.port,
                tls=context(cluster.ca, cluster.client))
    with pytest.raises(CookieRejected, match=f"cookie rejected by {cluster.tls_node.name}"):
        await node.connect(cluster.tls_node.name, timeout=5.0)


async def test_node_certificate_from_another_ca(cluster: TlsCluster) -> None:
    error, took = await fails(bridge(cluster, context(cluster.other_ca, cluster.client)),
                              cluster.tls_node)
    assert error.cause is TlsCause.NODE_CERT_UNTRUSTED and took < 2.0
    assert str(error).startswith(f"TLS handshake with {cluster.tls_node.name} (port ")
    assert "certificate verify failed" in str(error) and "CA" in str(error)


async def test_node_certificate_for_another_name(cluster: TlsCluster) -> None:
    error, _ = await fails(bridge(cluster, context(cluster.ca, cluster.client), "db.example"),
                           cluster.tls_node)
    assert error.cause is TlsCause.NODE_CERT_NAME and "not valid for 'db.example'" in str(error)
    # The names in the certificate are accepted when given instead of the node's host.
    node = bridge(cluster, context(cluster.ca, cluster.client), "127.0.0.1")
    async with node.connect(cluster.tls_node.name, timeout=5.0) as conn:
        assert await conn.call("erlang", "node", []) == Atom(cluster.tls_node.name)


async def test_no_client_certificate_while_the_node_requires_one(cluster: TlsCluster) -> None:
    error, took = await fails(bridge(cluster, context(cluster.ca, None)), cluster.tls_node)
    assert error.cause is TlsCause.CLIENT_CERT_REQUIRED and took < 2.0
    assert "requires a client certificate" in str(error)


async def test_tls13_node_judges_our_certificate_after_the_tls_handshake(cluster: TlsCluster) -> None:
    # With TLS 1.3 our side of the TLS handshake ends first; the node's verdict on our
    # certificate arrives as an alert while the distribution handshake starts.
    node = bridge(cluster, context(cluster.ca, cluster.client))
    async with node.connect(cluster.tls13_node.name, timeout=5.0) as conn:
        assert conn.tls_version == "TLSv1.3"
        assert await conn.call("erlang", "node", []) == Atom(cluster.tls13_node.name)
    error, took = await fails(bridge(cluster, context(cluster.ca, None)), cluster.tls13_node)
    assert error.cause is TlsCause.CLIENT_CERT_REQUIRED and took < 2.0
    assert "certificate required" in str(error)


async def test_client_certificate_from_another_ca(cluster: TlsCluster) -> None:
    stranger = cluster.other_ca.issue("stranger", server=False)
    error, _ = await fails(bridge(cluster, context(cluster.ca, stranger)), cluster.tls_node)
    assert error.cause is TlsCause.CLIENT_CERT_REJECTED and "unknown ca" in str(error)


async def test_tls_to_a_plain_node_ends_at_the_deadline_with_the_cause(cluster: TlsCluster) -> None:
    # A plain node takes our ClientHello for the start of a long message and waits in silence.
    error, took = await fails(bridge(cluster, context(cluster.ca, cluster.client)),
                              cluster.plain_node, timeout=1.0)
    assert error.cause is TlsCause.NOT_TLS and 1.0 <= took < 1.5
    assert "got no answer within 1 s" in str(error) and "-proto_dist inet_tls" in str(error)


async def test_plain_to_a_tls_node_is_told_to_use_tls(cluster: TlsCluster) -> None:
    error, took = await fails(bridge(cluster, None), cluster.tls_node)
    assert error.cause is TlsCause.REQUIRES_TLS and took < 2.0
    assert f"{cluster.tls_node.name} answered in TLS" in str(error)


def test_agent_shows_the_releases_of_a_tls_node(cluster: TlsCluster, agents: list[AgentProc],
                                                tmp_path: Path) -> None:
    """A real relctl-agent with [distribution_tls]: the TLS node is up with its releases; the
    plain node it also manages is down, with the cause and the config key to look at."""
    agent = start_agent(tmp_path / "agent", [
        NodeEntry(cluster.tls_node.name, cluster.cookie, cluster.epmd.port),
        NodeEntry(cluster.plain_node.name, cluster.cookie, cluster.epmd.port)],
        extra_agent={"connect_timeout": 1.0},
        tables={"distribution_tls": {"ca_file": str(cluster.ca.cert),
                                     "cert_file": str(cluster.client.cert),
                                     "key_file": str(cluster.client.key)}})
    agents.append(agent)
    result = relctl("versions", "-o", "json", agents=[agent.address])
    nodes = {n["node"]: n for n in result.json()["nodes"]}
    assert nodes[cluster.tls_node.name] == {
        "agent": agent.address, "node": cluster.tls_node.name, "up": True,
        "releases": [{"name": "counter", "version": "0.0.1", "status": "permanent"}]}
    assert nodes[cluster.plain_node.name]["up"] is False
    assert result.returncode == 3  # a node is down
    ping = relctl("ping", "-o", "json", agents=[agent.address])
    errors = {n["node"]: n["error"] for n in ping.json()["agents"][0]["nodes"]}
    assert errors[cluster.tls_node.name] == ""
    assert "got no answer" in errors[cluster.plain_node.name]
    assert "[distribution_tls] in the agent's config applies to every node" in errors[
        cluster.plain_node.name]
