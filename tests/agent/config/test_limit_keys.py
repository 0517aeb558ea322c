"""[agent] limits: upload_idle_expiry, uploads_max_bytes and the decode budget's caps
(max_term_elements, max_term_bytes): defaults, values, mistakes, and where they go."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.nodes.manager import NodeManager
from bridge import DecodeBudget


def _load(tmp_path: Path, agent: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nmetrics_listen = ""\n{agent}')
    return load_config(path)


def test_upload_bounds_default_to_an_hour_and_8_gib(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert config.upload_idle_expiry == 3600.0
    assert config.uploads_max_bytes == 8 * 1024**3


def test_upload_bounds_are_read(tmp_path: Path) -> None:
    config = _load(tmp_path, "upload_idle_expiry = 90\nuploads_max_bytes = 1000000\n")
    assert config.upload_idle_expiry == 90.0
    assert config.uploads_max_bytes == 1000000


@pytest.mark.parametrize("line", ["upload_idle_expiry = 0\n", "uploads_max_bytes = -1\n",
                                  "max_term_elements = 0\n", "max_term_bytes = -5\n"])
def test_upload_bounds_must_be_positive(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match="must be greater than 0") as info:
        _load(tmp_path, line)
    assert info.value.key == "agent." + line.split(" ")[0]


def test_decode_caps_default_to_the_bridge_budget(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert (config.max_term_elements, config.max_term_bytes) == (
        DecodeBudget().max_elements, DecodeBudget().max_bytes) == (3_000_000, 256 * 1024**2)


def test_decode_caps_reach_each_node_link(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("c")
    cookie.chmod(0o600)
    config = _load(tmp_path, "max_term_elements = 5000\nmax_term_bytes = 70000\n"
                   f'[[nodes]]\nname = "a@localhost"\ncookie_file = "{cookie}"\n')
    link = NodeManager.from_config(config).get("a@localhost")
    budget = link.bridge_node.decode_budget
    assert (budget.max_elements, budget.max_bytes) == (5000, 70000)
    assert budget.elements_setting == "[agent] max_term_elements"


def test_a_decode_cap_must_be_a_whole_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "max_term_bytes = 1.5\n")
    assert info.value.key == "agent.max_term_bytes"
