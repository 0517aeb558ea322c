"""Prometheus metrics of one agent; the only module that knows prometheus_client.

Node state (`beam_node_up`, `beam_release_info`) is mirrored by a custom collector that reads
the agent's snapshot at scrape time, so a scrape never sees a half-updated node and nothing
lives in module globals. RPC timings are a histogram in the agent's own registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.config import Address
from agent.nodes import NodeState

from .metrics_http import MetricsHttp

log = logging.getLogger("relctl.agent.daemon.metrics")

# RPCs range from sub-millisecond reads to relup scripts that migrate big states.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
               1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

OPERATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                     600.0, 1800.0)

Snapshot = Callable[[], Sequence[NodeState]]


class NodeStateCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        # Describing by collecting would call into the agent at registration; names suffice.
        yield GaugeMetricFamily("beam_node_up", "Whether the agent is connected to the node")
        yield GaugeMetricFamily("beam_release_info", "Releases known to release_handler")
        yield GaugeMetricFamily("beam_release_current_info", "The release the node runs")

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("beam_node_up", "Whether the agent is connected to the node "
                               "(1) or not (0)", labels=["node"])
        info = GaugeMetricFamily("beam_release_info", "Releases known to release_handler on "
                                 "the node, with their status (always 1)",
                                 labels=["node", "release", "version", "status"])
        # One series per node: version drift across a fleet is then one PromQL query.
        current = GaugeMetricFamily("beam_release_current_info", "The release the node runs "
                                    "(always 1): the installed one, permanent or not",
                                    labels=["node", "release", "version"])
        for state in self._snapshot():
            up.add_metric([state.name], 1.0 if state.up else 0.0)
            if state.up:
                for rel in state.releases:
                    info.add_metric([state.name, rel.name, rel.version, rel.status], 1.0)
                for rel in state.releases:
                    if rel.running:  # see agent.release.releases.mark_running
                        current.add_metric([state.name, rel.name, rel.version], 1.0)
        yield up
        yield info
        yield current


class AgentMetrics:
    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry()
        self._rpc = Histogram(
            "relctl_rpc_duration_seconds",
            "Duration of RPCs from the agent to its nodes, by module:function",
            ["function"], buckets=RPC_BUCKETS, registry=self.registry)
        self._ops = Counter(
            "relctl_operations", "Operations the agent ran on its nodes, by outcome",
            ["node", "operation", "outcome"], registry=self.registry)
        self._op_seconds = Histogram(
            "relctl_operation_duration_seconds", "Duration of operations (upgrade, downgrade, ...)",
            ["operation"], buckets=OPERATION_BUCKETS, registry=self.registry)
        Gauge("relctl_agent_info", "The relctl-agent serving these metrics (always 1)",
              ["version"], registry=self.registry).labels(__version__).set(1)
        self.registry.register(NodeStateCollector(snapshot))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe_rpc(self, function: str, seconds: float) -> None:
        self._rpc.labels(function).observe(seconds)

    def observe_operation(self, node: str, operation: str, outcome: str, seconds: float) -> None:
        self._ops.labels(node, operation, outcome).inc()
        self._op_seconds.labels(operation).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, address: Address, *, metrics_max_connections: int,
                    metrics_idle_timeout: float) -> MetricsHttp:
        """Start serving /metrics on the running loop; raises OSError when the address cannot
        be bound."""
        server = MetricsHttp(self.exposition, metrics_max_connections=metrics_max_connections,
                             metrics_idle_timeout=metrics_idle_timeout)
        await server.start(address.host, address.port)
        log.info("metrics on http://%s/metrics", address)
        return server
