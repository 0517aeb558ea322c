"""Discovery without [[nodes]]: which EPMD names become managed nodes, with which cookie, and
how its config is checked. EPMD itself is real in tests/e2e/test_discovery_live.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import DiscoveryConfig, NodeConfig, load_config
from agent.errors import ConfigError
from agent.nodes.discovery import Discovery
from agent.nodes.link import NodeLink
from agent.nodes.manager import NodeManager
from bridge import EpmdUnreachable
from tests.tools.settings import LINK, settings


def manager() -> NodeManager:
    return NodeManager([], lambda node: NodeLink(node, **settings(LINK)))


def discovery(tmp_path: Path, nodes: NodeManager, names: dict[str, int] | Exception, *,
              cookie: str | None = "default-cookie", cookie_dir: Path | None = None,
              exclude: tuple[str, ...] = ("rpc-*", "remsh*")) -> Discovery:
    async def source() -> dict[str, int]:
        if isinstance(names, Exception):
            raise names
        return names
    cfg = DiscoveryConfig(path=tmp_path / "agent.toml", host="web1", epmd_port=4370,
                          cookie_file=tmp_path / "cookie" if cookie else None, cookie=cookie,
                          cookie_dir=cookie_dir, exclude=exclude, interval=60.0)
    return Discovery(cfg, nodes, source)


async def test_new_names_become_nodes_and_helpers_are_left_out(tmp_path: Path) -> None:
    nodes = manager()
    found = discovery(tmp_path, nodes, {"shop": 40001, "rpc-8f2a": 40002, "billing": 40003,
                                        "remsh1234-shop": 40004})
    assert await found.scan() == ["billing@web1", "shop@web1"]
    assert nodes.names == ["billing@web1", "shop@web1"]
    shop = nodes.config("shop@web1")
    assert (shop.cookie, shop.epmd_port, shop.cookie_file) == (
        "default-cookie", 4370, tmp_path / "cookie")
    # A second look adds nothing twice.
    assert await found.scan() == []
    await nodes.stop()


async def test_a_cookie_in_cookie_dir_wins_and_without_one_a_node_is_not_managed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cookies = tmp_path / "cookies"
    cookies.mkdir()
    (cookies / "billing").write_text("billing-cookie\n")
    (cookies / "billing").chmod(0o600)
    nodes = manager()
    found = discovery(tmp_path, nodes, {"billing": 1, "shop": 2}, cookie=None, cookie_dir=cookies)
    with caplog.at_level(logging.INFO, logger="relctl.agent.nodes.discovery"):
        assert await found.scan() == ["billing@web1"]
        await found.scan()
    assert nodes.config("billing@web1").cookie == "billing-cookie"
    assert nodes.config("billing@web1").cookie_file == cookies / "billing"
    skipped = [r.getMessage() for r in caplog.records if "not managing shop@web1" in r.getMessage()]
    assert len(skipped) == 1 and f"{cookies}/shop" in skipped[0]   # said once, with the fix
    await nodes.stop()


async def test_an_unreachable_epmd_is_logged_once_and_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nodes = manager()
    found = discovery(tmp_path, nodes, EpmdUnreachable("epmd not reachable on localhost:4370"))
    with caplog.at_level(logging.WARNING, logger="relctl.agent.nodes.discovery"):
        assert await found.scan() == []
        assert await found.scan() == []
    assert [r.getMessage() for r in caplog.records] == [
        "discovery: epmd not reachable on localhost:4370"]
    assert nodes.names == []


async def test_a_node_added_after_start_is_started(tmp_path: Path) -> None:
    nodes = manager()
    nodes.start()
    link = nodes.add(NodeConfig(name="late@localhost", cookie_file=tmp_path / "c", cookie="c",
                                epmd_port=1))   # nothing listens on port 1: it stays down
    assert link.state.up is False
    await nodes.tried(5.0)
    assert "epmd not reachable" in nodes.get("late@localhost").state.error
    with pytest.raises(ValueError, match="already managed"):
        nodes.add(NodeConfig(name="late@localhost", cookie_file=tmp_path / "c", cookie="c"))
    await nodes.stop()


# --- config -----------------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_without_nodes_the_agent_discovers(tmp_path: Path) -> None:
    (tmp_path / "cookie").write_text("abc\n")
    (tmp_path / "cookie").chmod(0o600)
    (tmp_path / "cookies").mkdir()
    config = load_config(write(tmp_path, """
[discovery]
host = "localhost"
epmd_port = 4400
cookie_file = "cookie"
cookie_dir = "cookies"
exclude = ["tmp-*"]
interval = 5
"""))
    assert config.nodes == () and config.discovery is not None
    d = config.discovery
    assert (d.host, d.epmd_port, d.cookie, d.cookie_dir, d.exclude, d.interval) == (
        "localhost", 4400, "abc", tmp_path / "cookies", ("tmp-*",), 5.0)
    assert "abc" not in repr(config)


def test_discovery_defaults_without_any_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))   # no ~/.erlang.cookie there
    config = load_config(write(tmp_path, "[agent]\n"))
    assert config.discovery is not None
    assert config.discovery.cookie is None and config.discovery.epmd_port == 4369
    assert "rpc-*" in config.discovery.exclude and "@" not in config.discovery.host
    (tmp_path / ".erlang.cookie").write_text("home-cookie\n")
    (tmp_path / ".erlang.cookie").chmod(0o600)
    again = load_config(write(tmp_path, "[agent]\n"))
    assert again.discovery is not None and again.discovery.cookie == "home-cookie"


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[[nodes]]\nname = "a@h"\ncookie_file = "cookie"\n[discovery]\nhost = "h"\n',
     "discovery", "applies only without [[nodes]]"),
    ('[discovery]\nhots = "h"\n', "discovery.hots", "unknown key"),
    ('[discovery]\ncookie_dir = "nowhere"\n', "discovery.cookie_dir", "is not a directory"),
    ('[discovery]\ncookie_file = "missing"\n', "discovery.cookie_file", "does not exist"),
    ('[discovery]\nhost = "a@b"\n', "discovery.host", "is not a host name"),
    ('[discovery]\nepmd_port = 70000\n', "discovery.epmd_port", "is not a TCP port"),
    ('[discovery]\nexclude = [""]\n', "discovery.exclude", "array of name patterns"),
    ('[discovery]\ninterval = 0\n', "discovery.interval", "positive number"),
])
def test_discovery_mistakes_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    (tmp_path / "cookie").write_text("abc\n")
    (tmp_path / "cookie").chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key and reason in str(info.value)
