"""An agent on TCP + TLS + token under a flood of connections that never make a call (issue 23,
item 7): more connection attempts than the agent has descriptors, silent ones and ones that
finish a TLS handshake and then say nothing, from 60 addresses. Meanwhile `relctl versions`
over the Unix socket and over TCP with a token, an upgrade over TCP, a downgrade over the Unix
socket and /metrics must all work, the agent must keep descriptors to spare, and its log must
not fill with one line per refused connection.

Every 127/8 address is this host's loopback on Linux: the flood comes from 127.0.0.2 onward,
the operator from 127.0.0.1, as an operator's laptop and a scanner would be different hosts.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api.limits import MAX_PER_PEER, MAX_TCP_CONNECTIONS
from tests.tools.agent_proc import AgentProc, NodeEntry, eventually, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval, free_port
from tests.tools.pki import TestCA
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

AGENT_NOFILE = 1200   # the agent's descriptors during the flood: fewer than the attempts
SOURCES = 60          # flood addresses: 127.0.0.2 ...
PER_SOURCE = 40       # attempts per address (the agent admits MAX_PER_PEER of them)
TLS_IDLE = 40         # connections that finish a TLS handshake, then send nothing


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _releases(node: NodeProc) -> str:
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


@pytest.fixture
def flood_sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = SOURCES * PER_SOURCE + TLS_IDLE + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"the test needs {needed} descriptors; this process may open {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield held
    for sock in held:
        sock.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _silent_flood(port: int, held: list[socket.socket]) -> None:
    for i in range(SOURCES):
        for _ in range(PER_SOURCE):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + i}", 0))
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            held.append(sock)


def _accept_queue(port: int) -> int:
    """Connections waiting in the kernel for the agent to accept them on ``port`` (the
    rx_queue of the listening socket in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return int(queues.split(":")[1], 16)
    return 0


def _tls_idle(port: int, ca: Path) -> list[ssl.SSLSocket]:
    """Connections that finish a TLS handshake with the agent and then send nothing."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    done: list[ssl.SSLSocket] = []
    for i in range(TLS_IDLE):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30,
                                       source_address=(f"127.0.1.{2 + i}", 0))
        done.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
    return done


def _closed(sock: ssl.SSLSocket) -> bool:
    """Whether the agent closed ``sock`` (what it sent before, its HTTP/2 SETTINGS, is read
    and dropped)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(4096):
            pass
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
    return True


def test_a_connection_flood_starves_neither_the_unix_socket_nor_tcp_nor_metrics(
        tmp_path: Path, agents: list[AgentProc], counter_node: NodeProc,
        release_build: ReleaseBuild, flood_sockets: list[socket.socket]) -> None:
    ca = TestCA.create(tmp_path / "ca")
    cert = ca.issue("agent", ips=["127.0.0.1"], client=False)
    port = free_port()
    socket_path = tmp_path / "agent.sock"
    agent = start_agent(
        tmp_path / "agent", [NodeEntry(counter_node.name, counter_node.cookie,
                                       counter_node.epmd_port)],
        extra_agent={"listen": [f"unix:{socket_path}", f"127.0.0.1:{port}"],
                     "tls": {"cert_file": str(cert.cert), "key_file": str(cert.key)}})
    agents.append(agent)
    resource.prlimit(agent.pid, resource.RLIMIT_NOFILE, (AGENT_NOFILE, AGENT_NOFILE))
    tcp = ["--ca", str(ca.cert)]

    started = time.monotonic()
    _silent_flood(port, flood_sockets)
    # The agent works through what the kernel queued for it (refusing most): a busy machine
    # may take a few seconds, and a full queue would drop the next handshakes' SYNs.
    eventually(lambda: _accept_queue(port) == 0, timeout=30, what="the flood accepted")
    tls = _tls_idle(port, ca.cert)
    flood_sockets.extend(tls)
    flooded = time.monotonic() - started
    fds_flooded = _open_fds(agent.pid)

    local = relctl("versions", agents=[f"unix:{socket_path}"])
    assert local.returncode == 0, local.stdout + local.stderr
    remote = relctl(*tcp, "versions", agents=[f"127.0.0.1:{port}"])
    assert remote.returncode == 0, remote.stdout + remote.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics",
                                timeout=5) as reply:
        assert reply.status == 200 and b"beam_node_up" in reply.read()

    up = relctl(*tcp, "upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                agents=[f"127.0.0.1:{port}"], timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert _releases(counter_node).startswith('[{"0.0.2",permanent}')
    down = relctl("downgrade", "0.0.1", agents=[f"unix:{socket_path}"], timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert '{"0.0.1",permanent}' in _releases(counter_node)

    # The TLS connections that never sent a request are closed by the handshake deadline.
    eventually(lambda: all(_closed(s) for s in tls), timeout=30,
               what="idle TLS connections closed by the agent")
    fds_peak = max(fds_flooded, _open_fds(agent.pid))
    print(f"{SOURCES * PER_SOURCE + TLS_IDLE} connection attempts in {flooded:.1f} s; agent "
          f"descriptors: {fds_flooded} right after, peak seen {fds_peak} of {AGENT_NOFILE}")
    assert fds_peak < AGENT_NOFILE - 300  # the reserve held: room for the socket and /metrics
    log = agent.log_text()
    assert "Too many open files" not in log
    refusals = [line for line in log.splitlines() if "refused connections" in line
                or "closed the oldest" in line]
    assert refusals, "the refusals were not logged at all"
    assert len(refusals) <= 5, refusals  # once per interval, with counts: not once each
    assert MAX_PER_PEER < PER_SOURCE and SOURCES * MAX_PER_PEER > MAX_TCP_CONNECTIONS
