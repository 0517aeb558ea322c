"""The load step's first part: what the config's words mean on this host.

Parsing (parse.py) keeps every path as written and leaves discovery's host empty when the file
names none, so the same text parses to the same values anywhere. Here, before any secret is
read (secrets.py), a relative path becomes relative to the config file's directory (not to
wherever the agent was started), ``~`` becomes the agent user's home, discovery's host
defaults to this host's short name (what ``erl -sname`` uses), and discovery's default cookie
is ``~/.erlang.cookie``, as for erl itself.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

from agent.errors import ConfigError

from .values import (
    DEFAULT_COOKIE_FILE,
    AgentConfig,
    ApiTls,
    DiscoveryConfig,
    DistributionTls,
    NodeConfig,
    SecretRef,
    Token,
    is_host_name,
)


def this_host() -> str:
    """The short name of this host, as ``erl -sname`` puts it in node names."""
    return socket.gethostname().split(".")[0]


def home_dir() -> Path:
    """The agent user's home ($HOME, else the password database), as ``~`` means to erl."""
    return Path(os.path.expanduser("~"))


def locate(cfg: AgentConfig, *, home: Path | None = None,
           host_name: str | None = None) -> AgentConfig:
    """``cfg`` with every path it names absolute and discovery's host filled in; ``home`` and
    ``host_name`` default to this process's (home_dir(), this_host()). Raises ConfigError
    when this host's name cannot be the host of a node name."""
    if cfg.located:
        return cfg
    at = _Paths(cfg.path.resolve().parent, home if home is not None else home_dir())
    return replace(
        cfg, state_dir=at(cfg.state_dir),
        nodes=tuple(_node(n, at) for n in cfg.nodes),
        discovery=(_discovery(cfg.discovery, at, host_name)
                   if cfg.discovery is not None else None),
        tokens=tuple(_token(t, at) for t in cfg.tokens),
        tls=_api_tls(cfg.tls, at) if cfg.tls is not None else None,
        distribution_tls=(_dist_tls(cfg.distribution_tls, at)
                          if cfg.distribution_tls is not None else None),
        located=True)


class _Paths:
    """A path of the config file as the agent uses it: relative to the file's directory,
    ``~`` the home given (``~USER``: that user's, from the password database)."""

    def __init__(self, base: Path, home: Path) -> None:
        self._base = base
        self._home = home

    def __call__(self, path: Path) -> Path:
        if path.parts[:1] == ("~",):
            path = self._home.joinpath(*path.parts[1:])
        elif path.parts[:1] and path.parts[0].startswith("~"):
            path = path.expanduser()
        return self._base / path

    def ref(self, ref: SecretRef | None) -> SecretRef | None:
        if ref is None or ref.file is None:
            return ref
        return replace(ref, file=self(ref.file))

    def optional(self, path: Path | None) -> Path | None:
        return self(path) if path is not None else None


def _node(node: NodeConfig, at: _Paths) -> NodeConfig:
    ref = at.ref(node.cookie_ref)
    return replace(node, cookie_ref=ref, cookie_file=(ref.file if ref is not None
                                                      else at.optional(node.cookie_file)))


def _discovery(cfg: DiscoveryConfig, at: _Paths, host_name: str | None) -> DiscoveryConfig:
    host = cfg.host
    if not host:
        host = host_name if host_name is not None else this_host()
        if not is_host_name(host):
            raise ConfigError(str(cfg.path), "discovery.host",
                              f"this host's name {host!r} cannot be the host of a node name; "
                              "set discovery.host to the host part the nodes use")
    ref = at.ref(cfg.cookie_ref)
    if ref is not None:
        cookie_file = ref.file
    elif cfg.cookie_file is not None:
        cookie_file = at(cfg.cookie_file)
    else:
        # Like erl itself: without a cookie named, the agent user's ~/.erlang.cookie (read if
        # it exists when the secrets are loaded).
        cookie_file = at(Path(DEFAULT_COOKIE_FILE))
    return replace(cfg, host=host, cookie_ref=ref, cookie_file=cookie_file,
                   cookie_dir=at.optional(cfg.cookie_dir))


def _token(token: Token, at: _Paths) -> Token:
    return replace(token, ref=at.ref(token.ref))


def _api_tls(tls: ApiTls, at: _Paths) -> ApiTls:
    return replace(tls, cert_file=at(tls.cert_file), key_file=at(tls.key_file),
                   client_ca_file=at.optional(tls.client_ca_file))


def _dist_tls(tls: DistributionTls, at: _Paths) -> DistributionTls:
    return replace(tls, ca_file=at(tls.ca_file), cert_file=at.optional(tls.cert_file),
                   key_file=at.optional(tls.key_file))
