"""The exposition the agent serves, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import os
import resource
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.config import Address
from agent.daemon.metrics import AgentMetrics
from agent.nodes.link import NodeState
from agent.release.releases import Release
from tests.tools.otp_procs import free_port
from tests.tools.polls import until
from tests.tools.settings import METRICS, settings

STATES = (
    NodeState("a@h", up=True, since=0.0, releases=(
        Release("app", "0.0.2", "current", running=True), Release("app", "0.0.1", "permanent"))),
    NodeState("b@h", up=False, since=0.0, error="down", releases=(Release("app", "1", "permanent"),)),
)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_node_state_and_rpc_histogram() -> None:
    m = AgentMetrics(lambda: STATES)
    m.observe_rpc("release_handler:which_releases", 0.002)
    m.observe_rpc("release_handler:which_releases", 0.2)
    got = samples(m.exposition().decode())
    assert got["beam_node_up"] == [({"node": "a@h"}, 1.0), ({"node": "b@h"}, 0.0)]
    # A down node's releases are not reported as if they were known now.
    assert got["beam_release_info"] == [
        ({"node": "a@h", "release": "app", "version": "0.0.2", "status": "current"}, 1.0),
        ({"node": "a@h", "release": "app", "version": "0.0.1", "status": "permanent"}, 1.0)]
    # The running release, one series per up node.
    assert got["beam_release_current_info"] == [
        ({"node": "a@h", "release": "app", "version": "0.0.2"}, 1.0)]
    assert [labels for labels, _ in got["relctl_agent_info"]] == [{"version": __version__}]
    fn = {"function": "release_handler:which_releases"}
    assert got["relctl_rpc_duration_seconds_count"] == [(fn, 2.0)]
    buckets = {labels["le"]: v for labels, v in got["relctl_rpc_duration_seconds_bucket"]}
    assert (buckets["0.0025"], buckets["0.25"], buckets["+Inf"]) == (1.0, 2.0, 2.0)


def test_operations_are_counted_by_outcome_and_timed() -> None:
    m = AgentMetrics(lambda: ())
    m.observe_operation("a@h", "upgrade", "succeeded", 1.5)
    m.observe_operation("a@h", "upgrade", "rolled_back", 20.0)
    got = samples(m.exposition().decode())
    assert sorted((labels["outcome"], v) for labels, v in got["relctl_operations_total"]) == [
        ("rolled_back", 1.0), ("succeeded", 1.0)]
    assert got["relctl_operation_duration_seconds_count"] == [({"operation": "upgrade"}, 2.0)]
    assert got["relctl_operation_duration_seconds_sum"] == [({"operation": "upgrade"}, 21.5)]


def test_each_agent_has_its_own_registry() -> None:
    one, two = AgentMetrics(lambda: STATES), AgentMetrics(lambda: ())
    one.observe_rpc("erlang:node", 0.001)
    assert "relctl_rpc_duration_seconds_count" not in samples(two.exposition().decode())


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(resp.read().decode())


async def test_served_over_http_on_loopback() -> None:
    state = list(STATES[:1])
    m = AgentMetrics(lambda: tuple(state))
    server = await m.serve(Address("127.0.0.1", free_port()), **settings(METRICS))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        first = samples(await asyncio.to_thread(scrape, url))
        state[0] = NodeState("a@h", up=False, since=1.0)  # the next scrape sees the new snapshot
        second = samples(await asyncio.to_thread(scrape, url))
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(scrape, f"http://127.0.0.1:{server.port}/other")
        assert info.value.code == 404
    finally:
        await server.close()
    assert first["beam_node_up"] == [({"node": "a@h"}, 1.0)]
    assert second["beam_node_up"] == [({"node": "a@h"}, 0.0)]


async def _to_the_end(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (b"" after a reset)."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_idle_connections_are_capped_and_timed_out() -> None:
    """A thousand idle connections neither take the agent's descriptors nor block a scrape."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    idle = min(1000, wanted - 200)  # this process holds both ends of each connection
    m = AgentMetrics(lambda: STATES)
    server = await m.serve(Address("127.0.0.1", free_port()),
                           **settings(METRICS, metrics_max_connections=32,
                                      metrics_idle_timeout=0.5))
    writers: list[asyncio.StreamWriter] = []
    ends: list[asyncio.Future[bytes]] = []  # each connection read to its end: closed by the server
    try:
        before = _open_fds()
        for _ in range(idle):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(writer)
            ends.append(asyncio.ensure_future(_to_the_end(reader)))
        # Every connection taken: held, or answered 503 and closed.
        await until(lambda: sum(e.done() for e in ends) + server.open_connections == idle,
                    what="the server took every connection")
        assert server.open_connections <= 32
        # Our client ends plus at most 32 served ones: the server keeps no more.
        assert _open_fds() - before <= idle + 32 + 8
        assert all(e.result().startswith(b"HTTP/1.1 503 ") or e.result() == b""
                   for e in ends if e.done())
        # Past the idle timeout the held ones are closed.
        await until(lambda: server.open_connections == 0, what="the idle ones are closed")
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{server.port}/metrics")
        assert "beam_node_up" in text
    finally:
        for end in ends:
            end.cancel()
        for writer in writers:
            writer.close()
        await server.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
