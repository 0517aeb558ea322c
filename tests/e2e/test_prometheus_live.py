"""A real Prometheus scrapes a real agent managing real nodes (issue 17): the metrics, the
example alert rules (promtool's unit tests, then each rule evaluated live) and every query of
the example Grafana dashboard."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.needs import unavailable
from tests.tools.prometheus_proc import PrometheusProc, prometheus_missing_reason, start_prometheus
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "prometheus" / "relctl-rules.yml"
RULE_TESTS = ROOT / "examples" / "prometheus" / "relctl-rules.test.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "relctl-dashboard.json"
COUNTER, OTHER = "counter@localhost", "other@localhost"


def need_prometheus() -> None:
    reason = prometheus_missing_reason()
    if reason is not None:
        unavailable(reason)  # .ci/setup installs it: under CI a missing one is a failure


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    need_prometheus()
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                              cwd=RULES.parent)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[list[PrometheusProc]]:
    started: list[PrometheusProc] = []
    yield started
    for server in started:
        server.stop()


def labels(result: list[dict[str, Any]], *keys: str) -> list[tuple[str, ...]]:
    return sorted(tuple(r["metric"].get(k, "") for k in keys) for r in result)


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    assert board["__inputs"][0]["type"] == "datasource"  # importable, datasource as an input
    return [t["expr"].replace("$__rate_interval", "1m")
            for panel in board["panels"] for t in panel["targets"]]


def test_prometheus_scrapes_the_agent_and_the_rules_and_dashboard_work(
        node_factory: NodeFactory, agents: list[AgentProc], prometheus: list[PrometheusProc],
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    need_prometheus()
    counter, other = node_factory(COUNTER), node_factory(OTHER)
    agent = start_agent(tmp_path / "agent", [
        NodeEntry(n.name, n.cookie, n.epmd_port) for n in (counter, other)],
        extra_agent={"refresh_interval": 1, "reconnect_max_delay": 1})
    agents.append(agent)
    server = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{agent.metrics_port}"],
                              rule_files=[RULES])
    prometheus.append(server)

    found = server.wait_for('beam_release_info{status="permanent"}', lambda r: len(r) == 2)
    assert labels(found, "node", "release", "version") == [
        (COUNTER, "counter", "0.0.1"), (OTHER, "counter", "0.0.1")]
    assert labels(server.wait_for("relctl_agent_info", bool), "job") == [("relctl",)]

    # A hot upgrade left not permanent: the series follow, and so do the rules.
    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                "--node", COUNTER, "--no-permanent", agents=[agent.address])
    assert up.returncode == 0, up.stdout + up.stderr
    current = server.wait_for("beam_release_current_info",
                              lambda r: (COUNTER, "0.0.2") in labels(r, "node", "version"))
    assert labels(current, "node", "version") == [(COUNTER, "0.0.2"), (OTHER, "0.0.1")]
    ops = server.wait_for('relctl_operations_total{operation="upgrade"}', bool)
    assert [(r["metric"]["node"], r["metric"]["outcome"], r["value"][1]) for r in ops] == [
        (COUNTER, "succeeded", "1")]

    # Every rule evaluates on the live server without error; each says what it should now.
    rules = {r["name"]: r for g in server.wait_for_rules() for r in g["rules"]}
    assert set(rules) == {"BeamNodeDown", "BeamReleaseVersionDrift", "BeamReleaseNotPermanent",
                          "RelctlOperationFailed", "RelctlOperationRefused", "RelctlAgentDown"}
    assert all(r["health"] == "ok" for r in rules.values()), rules

    def nodes_of(rule: str) -> list[tuple[str, ...]]:
        return labels(server.query(rules[rule]["query"]), "node")

    assert nodes_of("BeamReleaseNotPermanent") == [(COUNTER,)]
    drift = server.query(rules["BeamReleaseVersionDrift"]["query"])
    assert labels(drift, "release") == [("counter",)] and drift[0]["value"][1] == "2"
    for quiet in ("BeamNodeDown", "RelctlOperationFailed", "RelctlOperationRefused",
                  "RelctlAgentDown"):
        assert nodes_of(quiet) == [], quiet

    other.stop()
    server.wait_for("beam_node_up == 0", lambda r: labels(r, "node") == [(OTHER,)])
    assert nodes_of("BeamNodeDown") == [(OTHER,)]

    # Every query of the dashboard parses and has data.
    queries = dashboard_queries()
    assert len(queries) >= 9
    for expr in queries:
        assert server.wait_for(expr, bool, timeout=20), expr
