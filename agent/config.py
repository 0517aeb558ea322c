"""The agent's configuration file (TOML), read and checked in one place.

Every mistake is reported before anything starts, with the file, the key and the reason
(`agent.toml: nodes[0].name: ...`). Unknown keys are errors too: a typo must not silently
fall back to a default. Cookies are read here and kept out of every repr.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:7079"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9568"
DEFAULT_STATE_DIR = "/var/lib/relctl"
DEFAULT_EPMD_PORT = 4369


@dataclass(frozen=True)
class Address:
    """A TCP listen address; ``host`` is bare (no brackets for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class NodeConfig:
    name: str
    cookie_file: Path
    cookie: str = field(repr=False)
    epmd_port: int = DEFAULT_EPMD_PORT
    health_probes: tuple[tuple[str, str], ...] = ()  # (module, function): must return ok
    health_soak: float = 0.0        # seconds the probes must keep passing after an install
    install_timeout: float = 300.0  # install_release may run a long code_change


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    listen: Address
    metrics_listen: Address | None  # None: /metrics disabled
    state_dir: Path
    nodes: tuple[NodeConfig, ...]
    refresh_interval: float = 15.0   # seconds between which_releases refreshes of an up node
    rpc_timeout: float = 30.0        # default for read RPCs to a node
    connect_timeout: float = 5.0
    reconnect_max_delay: float = 30.0  # cap of the reconnect backoff
    shutdown_grace: float = 5.0      # how long running gRPC calls may finish on SIGTERM
    operations_grace: float = 120.0  # how long a running upgrade may finish on SIGTERM
    max_upload_bytes: int = 2 * 1024**3


_AGENT_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "listen": str,
    "metrics_listen": str,
    "state_dir": str,
    "refresh_interval": (int, float),
    "rpc_timeout": (int, float),
    "connect_timeout": (int, float),
    "reconnect_max_delay": (int, float),
    "shutdown_grace": (int, float),
    "operations_grace": (int, float),
    "max_upload_bytes": int,
}
_NODE_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "name": str,
    "cookie_file": str,
    "epmd_port": int,
    "health_probes": list,
    "health_soak": (int, float),
    "install_timeout": (int, float),
}
_TYPE_NAMES = {str: "a string", int: "an integer", (int, float): "a number",
               list: "an array"}


def parse_address(text: str, *, path: str, key: str) -> Address:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(path, key, f"{text!r} is not HOST:PORT (for example \"127.0.0.1:7079\")")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(path, key, f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(path, key, f"{text!r}: port {port} is outside 1-65535")
    return Address(host, port)


def _check_keys(table: Mapping[str, Any], allowed: Mapping[str, type | tuple[type, ...]],
                *, path: str, prefix: str) -> None:
    for key, value in table.items():
        expected = allowed.get(key)
        if expected is None:
            known = ", ".join(sorted(allowed))
            raise ConfigError(path, prefix + key, f"unknown key (known keys: {known})")
        # bool is an int in Python; a TOML true is never a number or a port here.
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(path, prefix + key,
                              f"must be {_TYPE_NAMES[expected]}, not {type(value).__name__}")


def _positive(table: Mapping[str, Any], key: str, default: float, *, path: str) -> float:
    value = float(table.get(key, default))
    if value <= 0:
        raise ConfigError(path, f"agent.{key}", f"must be greater than 0, not {value:g}")
    return value


def _read_cookie(cookie_file: Path, *, path: str, key: str) -> str:
    try:
        text = cookie_file.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, key, f"cookie file {cookie_file} does not exist") from None
    except PermissionError:
        raise ConfigError(path, key, f"cookie file {cookie_file} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, key, f"cannot read cookie file {cookie_file}: {exc}") from None
    cookie = text.strip()
    if not cookie:
        raise ConfigError(path, key, f"cookie file {cookie_file} is empty")
    if any(ch.isspace() for ch in cookie):
        raise ConfigError(path, key, f"cookie file {cookie_file} holds more than one word")
    return cookie


def _node(table: Any, index: int, *, path: str, base: Path) -> NodeConfig:
    prefix = f"nodes[{index}]."
    if not isinstance(table, dict):
        raise ConfigError(path, f"nodes[{index}]", "must be a table ([[nodes]])")
    _check_keys(table, _NODE_KEYS, path=path, prefix=prefix)
    for required in ("name", "cookie_file"):
        if required not in table:
            raise ConfigError(path, prefix + required, "is required")
    name: str = table["name"]
    alive, at, host = name.partition("@")
    if not (alive and at and host) or "@" in host:
        raise ConfigError(path, prefix + "name", f"{name!r} is not a node name like \"app@host\"")
    epmd_port: int = table.get("epmd_port", DEFAULT_EPMD_PORT)
    if not 0 < epmd_port < 65536:
        raise ConfigError(path, prefix + "epmd_port", f"{epmd_port} is outside 1-65535")
    cookie_file = base / Path(table["cookie_file"]).expanduser()
    cookie = _read_cookie(cookie_file, path=path, key=prefix + "cookie_file")
    probes = []
    for i, probe in enumerate(table.get("health_probes", [])):
        module, colon, function = str(probe).partition(":")
        function = function.removesuffix("/0").removesuffix("()")
        if not (isinstance(probe, str) and colon and module and function):
            raise ConfigError(path, f"{prefix}health_probes[{i}]",
                              f"{probe!r} is not \"module:function\" (a function of no "
                              "arguments that returns ok)")
        probes.append((module, function))
    soak = float(table.get("health_soak", 0.0))
    install_timeout = float(table.get("install_timeout", 300.0))
    if soak < 0 or install_timeout <= 0:
        key = "health_soak" if soak < 0 else "install_timeout"
        raise ConfigError(path, prefix + key, "must be a positive number of seconds")
    return NodeConfig(name=name, cookie_file=cookie_file, cookie=cookie, epmd_port=epmd_port,
                      health_probes=tuple(probes), health_soak=soak,
                      install_timeout=install_timeout)


def load_config(file: str | Path) -> AgentConfig:
    """Read and check the agent's config; raises ConfigError naming file, key and reason."""
    path = Path(file)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(where, "", "file not found; pass --config PATH") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, "", f"not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(where, "", f"cannot read: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], path: Path) -> AgentConfig:
    where = str(path)
    unknown = sorted(set(raw) - {"agent", "nodes"})
    if unknown:
        raise ConfigError(where, unknown[0], "unknown table (known: [agent], [[nodes]])")
    agent = raw.get("agent", {})
    if not isinstance(agent, dict):
        raise ConfigError(where, "agent", "must be a table ([agent])")
    _check_keys(agent, _AGENT_KEYS, path=where, prefix="agent.")
    # Relative paths in the file are relative to the file, not to wherever the agent started.
    base = path.resolve().parent

    listen = parse_address(agent.get("listen", DEFAULT_LISTEN), path=where, key="agent.listen")
    metrics_text = agent.get("metrics_listen", DEFAULT_METRICS_LISTEN)
    metrics = (parse_address(metrics_text, path=where, key="agent.metrics_listen")
               if metrics_text else None)
    state_dir = base / Path(agent.get("state_dir", DEFAULT_STATE_DIR)).expanduser()

    nodes_raw = raw.get("nodes", [])
    if not isinstance(nodes_raw, list):
        raise ConfigError(where, "nodes", "must be an array of tables ([[nodes]])")
    nodes = tuple(_node(t, i, path=where, base=base) for i, t in enumerate(nodes_raw))
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise ConfigError(where, f"nodes[{i}].name", f"{node.name} is configured twice")
        seen.add(node.name)

    return AgentConfig(
        path=path,
        listen=listen,
        metrics_listen=metrics,
        state_dir=state_dir,
        nodes=nodes,
        refresh_interval=_positive(agent, "refresh_interval", 15.0, path=where),
        rpc_timeout=_positive(agent, "rpc_timeout", 30.0, path=where),
        connect_timeout=_positive(agent, "connect_timeout", 5.0, path=where),
        reconnect_max_delay=_positive(agent, "reconnect_max_delay", 30.0, path=where),
        shutdown_grace=_positive(agent, "shutdown_grace", 5.0, path=where),
        operations_grace=_positive(agent, "operations_grace", 120.0, path=where),
        max_upload_bytes=int(_positive(agent, "max_upload_bytes", 2 * 1024**3, path=where)),
    )
