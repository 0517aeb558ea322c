"""The exposition the agent serves, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from agent.config import Address
from agent.daemon.metrics import AgentMetrics
from agent.nodes.link import NodeState
from agent.release.releases import Release
from tests.tools.otp_procs import free_port

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


def test_served_over_http_on_loopback() -> None:
    state = list(STATES[:1])
    m = AgentMetrics(lambda: tuple(state))
    server = m.serve(Address("127.0.0.1", free_port()))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            first = samples(resp.read().decode())
        state[0] = NodeState("a@h", up=False, since=1.0)  # the next scrape sees the new snapshot
        with urllib.request.urlopen(url, timeout=5) as resp:
            second = samples(resp.read().decode())
    finally:
        server.close()
    assert first["beam_node_up"] == [({"node": "a@h"}, 1.0)]
    assert second["beam_node_up"] == [({"node": "a@h"}, 0.0)]
