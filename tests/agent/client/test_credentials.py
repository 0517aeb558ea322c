"""Per-agent credentials and TLS names (issue 23, items 3 and 5), without agents: which token
file each agent gets (inventory label, --token-dir, --token-file), the labels an inventory
gives, and the subjectAltName check relctl's own TLS diagnosis uses. Live: tests/e2e/
test_fleet_views_live.py and tests/agent/api/test_access_live.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.client.channel import names_match, token_file_for
from agent.client.common import Settings
from agent.client.inventory import inventory_targets
from agent.client.status import CliError, ExitCode


def test_each_agent_gets_its_own_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "10.0.0.11:7079").write_text("a" * 32)
    (tokens / "10.0.0.12").write_text("b" * 32)
    settings = Settings(token_dir=str(tokens), token_file="/etc/relctl/fallback",
                        per_agent={"10.0.0.13:7079": {"token_file": "/inv/tokens/c"}})
    assert token_file_for(settings, "10.0.0.11:7079") == str(tokens / "10.0.0.11:7079")
    assert token_file_for(settings, "10.0.0.12:7079") == str(tokens / "10.0.0.12")
    assert token_file_for(settings, "10.0.0.13:7079") == "/inv/tokens/c"  # the label wins
    assert token_file_for(settings, "10.0.0.14:7079") == "/etc/relctl/fallback"


def test_a_token_dir_without_the_agent_and_no_fallback_says_where_to_put_it(
        tmp_path: Path) -> None:
    settings = Settings(token_dir=str(tmp_path))
    with pytest.raises(CliError) as info:
        token_file_for(settings, "10.0.0.11:7079")
    assert info.value.code == ExitCode.USAGE
    assert str(info.value) == (f"no token for agent 10.0.0.11:7079 in --token-dir {tmp_path}: "
                               f"put it in {tmp_path / '10.0.0.11:7079'} or "
                               f"{tmp_path / '10.0.0.11'}")


def test_inventory_labels_name_each_groups_token_and_ca(tmp_path: Path) -> None:
    path = tmp_path / "sd.json"
    path.write_text(json.dumps([
        {"targets": ["10.0.0.11:9568", "10.0.0.12:9568"],
         "labels": {"relctl_token_file": "tokens/web", "relctl_ca": "web-ca.crt"}},
        {"targets": ["10.0.1.21:9568"], "labels": {"env": "db"}}]))
    assert inventory_targets(str(path), [], 7079) == {
        "10.0.0.11:7079": {"token_file": str(tmp_path / "tokens/web"),
                           "ca": str(tmp_path / "web-ca.crt")},
        "10.0.0.12:7079": {"token_file": str(tmp_path / "tokens/web"),
                           "ca": str(tmp_path / "web-ca.crt")},
        "10.0.1.21:7079": {}}


@pytest.mark.parametrize(("host", "names", "match"), [
    ("10.0.0.11", [("IP Address", "10.0.0.11")], True),
    ("10.0.0.11", [("DNS", "10.0.0.11")], False),       # an IP is never matched by a DNS name
    ("web1.internal", [("DNS", "WEB1.internal")], True),
    ("web1.internal", [("DNS", "*.internal")], True),
    ("a.web1.internal", [("DNS", "*.internal")], False),  # a wildcard covers one label
    ("::1", [("IP Address", "0:0:0:0:0:0:0:1")], True),
    ("10.0.0.11", [], False),
])
def test_a_certificate_names_the_address_as_tls_clients_check_it(
        host: str, names: list[tuple[str, str]], match: bool) -> None:
    assert names_match(host, names) is match
