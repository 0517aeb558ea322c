"""The agent's configuration: TOML parsed into frozen values (pure), then a separate load step
that locates what the file names on this host (absolute paths, this host's name: locate.py)
and reads the secrets and files it names (secrets.py). Everything else in the agent takes
these values; every default is written once, in values.py.

    cfg = load_config("/etc/relctl/agent.toml")   # read_config, then load_secrets (+ locate)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .dist_tls import client_context, hint
from .locate import locate
from .parse import parse_address, parse_config, read_config
from .secrets import load_secrets, read_cookie
from .values import (
    CONTINUE,
    DEFAULT_CONFIG,
    DEFAULT_DISCOVERY_EXCLUDE,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    FAIL,
    OPERATOR,
    POST_INSTALL,
    PRE_INSTALL,
    RESTART_TIMEOUT,
    ROLES,
    VIEWER,
    Address,
    AgentConfig,
    ApiTls,
    DiscoveryConfig,
    DistributionTls,
    Endpoint,
    Hook,
    NodeConfig,
    SecretRef,
    Token,
    UnixAddress,
    default,
)


def load_config(file: str | Path, environ: Mapping[str, str] = os.environ) -> AgentConfig:
    """The config in ``file``, checked, with its secrets loaded; raises ConfigError."""
    return load_secrets(read_config(file), environ)


__all__ = [
    "load_config", "read_config", "parse_config", "parse_address", "locate", "load_secrets",
    "read_cookie", "client_context", "hint",
    "AgentConfig", "NodeConfig", "DiscoveryConfig", "Address", "UnixAddress", "Endpoint",
    "ApiTls", "DistributionTls", "Token", "Hook", "SecretRef",
    "DEFAULT_CONFIG", "DEFAULT_DISCOVERY_EXCLUDE", "DEFAULT_SOCKET", "DEFAULT_STATE_DIR", "RESTART_TIMEOUT",
    "default",
    "VIEWER", "OPERATOR", "ROLES", "FAIL", "CONTINUE", "PRE_INSTALL", "POST_INSTALL",
]
