"""A node's cookie is re-read from its file: before each connection attempt and on SIGHUP
(NodeManager.reload_cookies), so a rotated cookie needs no agent restart; a file that cannot
be used keeps the cookie in use (issue 13). Real nodes: tests/e2e/test_cookie_rotation_live.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import NodeConfig
from agent.nodes.link import NodeLink
from agent.nodes.manager import NodeManager
from tests.tools.otp_procs import free_port
from tests.tools.settings import LINK, settings


def cookie_file(tmp_path: Path, name: str, cookie: str) -> Path:
    path = tmp_path / name
    path.write_text(cookie + "\n")
    path.chmod(0o600)
    return path


def link(tmp_path: Path, name: str = "a@localhost", cookie: str = "first-cookie") -> NodeLink:
    file = cookie_file(tmp_path, f"{name}.cookie", cookie)
    return NodeLink(NodeConfig(name, cookie_file=file, cookie=cookie, epmd_port=free_port()),
                    **settings(LINK, connect_timeout=1.0, reconnect_max_delay=1.0))


def test_a_rewritten_cookie_file_is_used_from_then_on(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    node = link(tmp_path)
    assert not node.reload_cookie()  # unchanged
    assert node.config.cookie_file is not None
    node.config.cookie_file.write_text("second-cookie\n")
    with caplog.at_level(logging.INFO, "relctl.agent.nodes.link"):
        assert node.reload_cookie()
    assert node.config.cookie == "second-cookie"
    assert "node a@localhost: its cookie changed (re-read" in caplog.text
    assert "second-cookie" not in caplog.text and "first-cookie" not in caplog.text
    assert not node.reload_cookie()


def test_a_cookie_file_that_cannot_be_used_keeps_the_cookie_in_use(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = link(tmp_path)
    assert node.config.cookie_file is not None
    node.config.cookie_file.write_text("readable-by-all\n")
    node.config.cookie_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, "relctl.agent.nodes.link"):
        assert not node.reload_cookie()
        assert not node.reload_cookie()
    assert node.config.cookie == "first-cookie"
    [warning] = [r.getMessage() for r in caplog.records]  # once, not at every attempt
    assert "cannot re-read its cookie" in warning and "readable by every user" in warning
    assert "keeping the cookie in use" in warning and "readable-by-all" not in warning


def test_a_node_made_in_code_without_a_file_has_nothing_to_re_read() -> None:
    node = NodeLink(NodeConfig("b@localhost", cookie="in-code", epmd_port=free_port()),
                    **settings(LINK))
    assert not node.reload_cookie()
    assert node.config.cookie == "in-code"


def test_sighup_re_reads_every_node_and_names_those_that_changed(tmp_path: Path) -> None:
    a, b = link(tmp_path, "a@localhost"), link(tmp_path, "b@localhost")
    nodes = NodeManager([a, b])
    assert b.config.cookie_file is not None
    b.config.cookie_file.write_text("rotated\n")
    assert nodes.reload_cookies() == ["b@localhost"]
    assert (a.config.cookie, b.config.cookie) == ("first-cookie", "rotated")
    assert nodes.reload_cookies() == []
