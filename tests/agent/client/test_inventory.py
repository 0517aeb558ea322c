"""`relctl --agents-file`: agents from a Prometheus file_sd targets file (JSON or YAML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.client.inventory import inventory_agents, read_yaml_subset
from agent.client.main import main
from agent.client.status import CliError, ExitCode

# The example of Prometheus's file_sd documentation, in both of its forms.
DOC_YAML = """\
- targets:
  - 'web1:9568'
  - "web2:9568"   # the second web host
  labels:
    env: prod
    job: relctl
- targets: [db1:9568, 'db2:9568']
  labels: {env: staging, relctl_agent: "7080"}
# a comment line
- targets:
    - db3:9568
  labels:
    env: staging
    relctl_agent: unix:/run/relctl/agent.sock
"""
GROUPS = [
    {"targets": ["web1:9568", "web2:9568"], "labels": {"env": "prod", "job": "relctl"}},
    {"targets": ["db1:9568", "db2:9568"], "labels": {"env": "staging", "relctl_agent": "7080"}},
    {"targets": ["db3:9568"],
     "labels": {"env": "staging", "relctl_agent": "unix:/run/relctl/agent.sock"}},
]


def test_the_yaml_reader_reads_what_file_sd_files_hold() -> None:
    assert read_yaml_subset(DOC_YAML) == GROUPS
    assert read_yaml_subset("---\n[]\n") == []  # an empty list in flow form
    assert read_yaml_subset('- targets: ["a:1"]\n  labels:\n    "x:y": "#not a comment"\n') == [
        {"targets": ["a:1"], "labels": {"x:y": "#not a comment"}}]


@pytest.mark.parametrize("text, where", [
    ("- targets: &anchor [a]\n", "line 1"),
    ("- targets:\n\t- a\n", "tabs"),
    ("- targets: [[a]]\n", "nested flow"),
    ("- targets: [a\n", "must end on its line"),
    ("key value\n", "expected KEY: VALUE"),
])
def test_what_the_reader_cannot_read_is_refused_by_line(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        read_yaml_subset(text)


@pytest.mark.parametrize("suffix", ["yml", "json"])
def test_agents_in_file_order_with_selectors_and_ports(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"agents.{suffix}"
    path.write_text(DOC_YAML if suffix == "yml" else json.dumps(GROUPS))
    assert inventory_agents(str(path), [], 7079) == [
        "web1:7079", "web2:7079", "db1:7080", "db2:7080", "unix:/run/relctl/agent.sock"]
    assert inventory_agents(str(path), ["env=prod"], 7079) == ["web1:7079", "web2:7079"]
    assert inventory_agents(str(path), ["env=staging", "relctl_agent=7080"], None) == [
        "db1:7080", "db2:7080"]


@pytest.mark.parametrize("selectors, port, message", [
    (["env=prod"], None, "target web1:9568 names its /metrics port, not the agent's: give "
                         "--agent-port PORT, or a relctl_agent label in its group"),
    (["env=nowhere"], 7079, "no targets matching env=nowhere; check the file and --selector"),
    (["env"], 7079, "--selector 'env' is not LABEL=VALUE"),
])
def test_mistakes_are_usage_errors_that_say_what_to_do(
        tmp_path: Path, selectors: list[str], port: int | None, message: str) -> None:
    path = tmp_path / "agents.yml"
    path.write_text(DOC_YAML)
    with pytest.raises(CliError) as info:
        inventory_agents(str(path), selectors, port)
    assert message in str(info.value) and info.value.code == ExitCode.USAGE


def test_a_file_that_is_not_file_sd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text('{"targets": ["a:1"]}')
    with pytest.raises(CliError, match="a file_sd file is a list of groups"):
        inventory_agents(str(path), [], 1)
    path.write_text('[{"targets": "a:1"}]')
    with pytest.raises(CliError, match="group 0 is not"):
        inventory_agents(str(path), [], 1)
    with pytest.raises(CliError, match="No such file"):
        inventory_agents(str(tmp_path / "missing.json"), [], 1)


def test_the_options_go_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agents.yml"
    path.write_text(DOC_YAML)
    assert main(["--agents-file", str(path), "--agent", "x:1", "versions"]) == ExitCode.USAGE
    assert "give --agent or --agents-file, not both" in capsys.readouterr().err
    assert main(["--selector", "env=prod", "versions"]) == ExitCode.USAGE
    assert "--selector and --agent-port go with --agents-file" in capsys.readouterr().err
