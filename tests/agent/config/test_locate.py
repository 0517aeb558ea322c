"""The two steps of reading a config: parsing is pure (the same text gives the same values on
any host, from any directory, for any user), and the load step locates what it names on this
host (paths relative to the config file, ``~``, this host's name) before reading secrets."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import pytest

from agent.config import load_config, locate, parse_config
from agent.errors import ConfigError

NODES = """
[agent]
listen = ["unix:/run/relctl/agent.sock", "127.0.0.1:7079"]
state_dir = "state"
[agent.tls]
cert_file = "tls/agent.crt"
key_file = "~/tls/agent.key"
client_ca_file = "/etc/relctl/ca.crt"
[[tokens]]
name = "bot"
role = "operator"
file = "tokens/bot"
[[nodes]]
name = "a@h"
cookie_file = "~/.erlang.cookie"
[[nodes]]
name = "b@h"
cookie_credential = "b-cookie"
[distribution_tls]
ca_file = "dist/ca.crt"
cert_file = "dist/agent.crt"
key_file = "/abs/agent.key"
"""
DISCOVERY = """
[agent]
state_dir = "~"
[discovery]
cookie_dir = "cookies"
"""


def parse(text: str, path: Path) -> Any:
    return parse_config(tomllib.loads(text), path)


def _looked_up(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("parsing looked up something outside the config text")


def test_parsing_looks_up_no_host_name_home_or_working_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for target, name in ((socket, "gethostname"), (socket, "getfqdn"), (os, "getcwd"),
                         (os.path, "expanduser"), (Path, "home"), (Path, "resolve"),
                         (Path, "expanduser"), (Path, "absolute"), (Path, "cwd")):
        monkeypatch.setattr(target, name, _looked_up)
    cfg = parse(NODES, Path("relative/agent.toml"))
    # Every path as written: locating them is the load step's work.
    assert cfg.state_dir == Path("state") and not cfg.located
    assert cfg.tls is not None and (cfg.tls.cert_file, cfg.tls.key_file) == (
        Path("tls/agent.crt"), Path("~/tls/agent.key"))
    assert cfg.tokens[0].ref is not None and cfg.tokens[0].ref.file == Path("tokens/bot")
    assert cfg.nodes[0].cookie_file == Path("~/.erlang.cookie")
    assert cfg.distribution_tls is not None and cfg.distribution_tls.ca_file == Path("dist/ca.crt")
    found = parse(DISCOVERY, Path("agent.toml"))
    assert found.discovery is not None and found.discovery.host == ""  # this host: when loaded
    assert found.discovery.cookie_dir == Path("cookies") and found.discovery.cookie_file is None


def test_the_load_step_makes_paths_relative_to_the_config_file_and_tilde_the_home(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = locate(parse(NODES, tmp_path / "etc" / "agent.toml"), home=home, host_name="web1")
    etc = tmp_path / "etc"
    assert cfg.located and cfg.state_dir == etc / "state"
    assert cfg.tls is not None
    assert (cfg.tls.cert_file, cfg.tls.key_file, cfg.tls.client_ca_file) == (
        etc / "tls/agent.crt", home / "tls/agent.key", Path("/etc/relctl/ca.crt"))
    assert cfg.tokens[0].ref is not None and cfg.tokens[0].ref.file == etc / "tokens/bot"
    a, b = cfg.nodes
    assert a.cookie_file == home / ".erlang.cookie" and a.cookie_ref is not None
    assert a.cookie_ref.file == home / ".erlang.cookie"
    assert b.cookie_file is None and b.cookie_ref is not None
    assert b.cookie_ref.credential == "b-cookie"  # found in $CREDENTIALS_DIRECTORY when loaded
    dist = cfg.distribution_tls
    assert dist is not None and (dist.ca_file, dist.cert_file, dist.key_file) == (
        etc / "dist/ca.crt", etc / "dist/agent.crt", Path("/abs/agent.key"))
    # Located once: a second pass changes nothing (load_secrets locates what it is given).
    assert locate(cfg, home=tmp_path / "elsewhere", host_name="other") is cfg


def test_a_relative_config_path_is_taken_from_the_directory_the_agent_started_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = locate(parse(NODES, Path("conf/agent.toml")), home=tmp_path, host_name="web1")
    assert cfg.state_dir == tmp_path / "conf" / "state"
    assert cfg.path == Path("conf/agent.toml")  # messages name the file as it was given


def test_discovery_is_located_on_this_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = locate(parse(DISCOVERY, tmp_path / "agent.toml"), home=home, host_name="web1")
    assert cfg.state_dir == home
    d = cfg.discovery
    assert d is not None and d.host == "web1" and d.cookie_dir == tmp_path / "cookies"
    assert d.cookie_ref is None and d.cookie_file == home / ".erlang.cookie"  # as erl's
    named = locate(parse(DISCOVERY + 'host = "db7"\ncookie_file = "c"\n', tmp_path / "agent.toml"),
                   home=home, host_name="web1")
    assert named.discovery is not None and named.discovery.host == "db7"
    assert named.discovery.cookie_file == tmp_path / "c"


def test_a_host_name_that_cannot_be_a_node_names_host_is_refused_with_the_key(
        tmp_path: Path) -> None:
    cfg = parse(DISCOVERY, tmp_path / "agent.toml")
    with pytest.raises(ConfigError) as info:
        locate(cfg, home=tmp_path, host_name="")
    assert info.value.key == "discovery.host" and "set discovery.host" in str(info.value)


def test_without_arguments_the_load_step_takes_this_process_home_and_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(socket, "gethostname", lambda: "web9.example.com")
    (tmp_path / "cookies").mkdir()
    (tmp_path / ".erlang.cookie").write_text("home-cookie\n")
    (tmp_path / ".erlang.cookie").chmod(0o600)
    (tmp_path / "agent.toml").write_text(DISCOVERY)
    cfg = load_config(tmp_path / "agent.toml")
    assert cfg.located and cfg.loaded and cfg.state_dir == tmp_path
    assert cfg.discovery is not None and cfg.discovery.host == "web9"
    assert cfg.discovery.cookie == "home-cookie"
