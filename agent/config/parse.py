"""The agent's configuration file (TOML), parsed and checked in one place.

Every mistake is reported before anything starts, with the file, the key and the reason
(`agent.toml: nodes[0].name: ...`). Unknown keys are errors too: a typo must not silently
fall back to a default. Parsing is pure: it reads the config file and nothing else (no
secrets, no sockets, no SSL, no host name, no home directory, no working directory). Paths
are kept as written; the load step makes them absolute and fills in this host's name
(agent/config/locate.py), then reads the secrets the file names (agent/config/secrets.py).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from bridge import Atom

from .access import (
    check_listeners,
    parse_tls,
    parse_tokens,
    parse_unix,
    secret_ref,
    socket_group,
    socket_mode,
)
from .dist_tls import parse_distribution_tls
from .values import (
    DEFAULT_EPMD_PORT,
    DEFAULT_LISTEN,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_STATE_DIR,
    FAIL,
    ON_FAILURE,
    WHEN,
    Address,
    AgentConfig,
    DiscoveryConfig,
    Endpoint,
    Hook,
    NodeConfig,
    default,
    is_host_name,
)

_AGENT_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "listen": (str, list),
    "socket_group": str,
    "socket_mode": int,
    "insecure_no_auth": bool,
    "tls": dict,
    "metrics_listen": str,
    "state_dir": str,
    "refresh_interval": (int, float),
    "rpc_timeout": (int, float),
    "connect_timeout": (int, float),
    "reconnect_max_delay": (int, float),
    "shutdown_grace": (int, float),
    "operations_grace": (int, float),
    "max_upload_bytes": int,
    "uploads_max_bytes": int,
    "upload_idle_expiry": (int, float),
    "metrics_max_connections": int,
    "max_term_elements": int,
    "max_term_bytes": int,
    "metrics_idle_timeout": (int, float),
}
_NODE_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "name": str,
    "cookie_file": str,
    "cookie_credential": str,
    "epmd_port": int,
    "health_probes": list,
    "health_soak": (int, float),
    "install_timeout": (int, float),
    "hooks": list,
}
_HOOK_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "name": str,
    "when": str,
    "call": str,
    "args": list,
    "timeout": (int, float),
    "on_failure": str,
}
_DISCOVERY_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "host": str,
    "epmd_port": int,
    "cookie_file": str,
    "cookie_credential": str,
    "cookie_dir": str,
    "exclude": list,
    "interval": (int, float),
}
_TYPE_NAMES = {str: "a string", int: "an integer", (int, float): "a number",
               list: "an array", bool: "true or false", dict: "a table",
               (str, list): "a string or an array of strings"}


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
        if (isinstance(value, bool) != (expected is bool)) or not isinstance(value, expected):
            raise ConfigError(path, prefix + key,
                              f"must be {_TYPE_NAMES[expected]}, not {type(value).__name__}")


def _positive(table: Mapping[str, Any], key: str, *, path: str) -> float:
    value = float(table.get(key, default(AgentConfig, key)))
    if value <= 0:
        raise ConfigError(path, f"agent.{key}", f"must be greater than 0, not {value:g}")
    return value


# A hook's name is part of its step name ("post_install:NAME"): keep it short and plain.
_HOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# An atom written bare in "module:function": no quotes (they would become part of the name)
# and nothing that reads as call syntax.
_CALL_ATOM = re.compile(r"[^\s:()/,'\"]{1,255}")
_ARG_KINDS = ('a string (passed as a binary), an integer, a float, true/false, '
              '{atom = "name"} or {charlist = "text"}')


def _hook_arg(value: Any, *, path: str, key: str) -> Any:
    """A TOML value as the Erlang term the hook receives."""
    if isinstance(value, bool | int):
        return value  # true/false travel as the atoms
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(path, key, f"{value} has no Erlang form (Erlang floats are finite)")
        return value
    if isinstance(value, str):
        return value.encode("utf-8")  # Elixir strings and modern Erlang APIs take binaries
    if isinstance(value, dict) and len(value) == 1:
        [(kind, text)] = value.items()
        if kind == "atom" and isinstance(text, str):
            if len(text) > 255:
                raise ConfigError(path, key, "an atom has at most 255 characters")
            return Atom(text)
        if kind == "charlist" and isinstance(text, str):
            return text  # the bridge sends a str as an Erlang string (a list of characters)
    raise ConfigError(path, key, f"{value!r} is not a hook argument: use {_ARG_KINDS}")


def _hook(table: Any, key: str, *, path: str) -> Hook:
    if not isinstance(table, dict):
        raise ConfigError(path, key, "must be a table ([[nodes.hooks]])")
    _check_keys(table, _HOOK_KEYS, path=path, prefix=key + ".")
    for required in ("name", "when", "call"):
        if required not in table:
            raise ConfigError(path, f"{key}.{required}", "is required")
    name: str = table["name"]
    if not _HOOK_NAME.fullmatch(name):
        raise ConfigError(path, f"{key}.name", f"{name!r} is not a hook name: 1 to 64 letters, "
                                               "digits, '-', '_' or '.' (it names the step)")
    when: str = table["when"]
    if when not in WHEN:
        raise ConfigError(path, f"{key}.when", f"{when!r} is not one of "
                                               + ", ".join(f'"{w}"' for w in WHEN))
    call: str = table["call"]
    module, colon, function = call.partition(":")
    if not (colon and _CALL_ATOM.fullmatch(module) and _CALL_ATOM.fullmatch(function)):
        raise ConfigError(path, f"{key}.call", f"{call!r} is not \"module:function\" (arguments "
                                               "go in args = [...]; an Elixir module keeps its "
                                               "prefix: \"Elixir.MyApp.Hooks:clear_cache\")")
    timeout = float(table.get("timeout", default(Hook, "timeout")))
    if not (0 < timeout < math.inf):
        raise ConfigError(path, f"{key}.timeout", "must be a positive number of seconds")
    on_failure: str = table.get("on_failure", FAIL)
    if on_failure not in ON_FAILURE:
        raise ConfigError(path, f"{key}.on_failure", f"{on_failure!r} is not one of "
                                                     + ", ".join(f'"{o}"' for o in ON_FAILURE))
    args = tuple(_hook_arg(value, path=path, key=f"{key}.args[{i}]")
                 for i, value in enumerate(table.get("args", [])))
    return Hook(name=name, when=when, module=module, function=function, args=args,
                timeout=timeout, on_failure=on_failure)


def _hooks(tables: list[Any], prefix: str, *, path: str) -> tuple[Hook, ...]:
    hooks: list[Hook] = []
    for i, table in enumerate(tables):
        hook = _hook(table, f"{prefix}hooks[{i}]", path=path)
        if any(h.step == hook.step for h in hooks):
            # Steps are told apart by name in the journal.
            raise ConfigError(path, f"{prefix}hooks[{i}].name",
                              f"a {hook.when} hook named {hook.name!r} is configured twice")
        hooks.append(hook)
    return tuple(hooks)


def _node(table: Any, index: int, *, path: str) -> NodeConfig:
    prefix = f"nodes[{index}]."
    if not isinstance(table, dict):
        raise ConfigError(path, f"nodes[{index}]", "must be a table ([[nodes]])")
    _check_keys(table, _NODE_KEYS, path=path, prefix=prefix)
    if "name" not in table:
        raise ConfigError(path, prefix + "name", "is required")
    name: str = table["name"]
    alive, at, host = name.partition("@")
    if not (alive and at and host) or "@" in host:
        raise ConfigError(path, prefix + "name", f"{name!r} is not a node name like \"app@host\"")
    epmd_port: int = table.get("epmd_port", DEFAULT_EPMD_PORT)
    if not 0 < epmd_port < 65536:
        raise ConfigError(path, prefix + "epmd_port", f"{epmd_port} is outside 1-65535")
    ref = secret_ref(table, file_key="cookie_file", credential_key="cookie_credential",
                     path=path, prefix=prefix)
    if ref is None:
        raise ConfigError(path, prefix + "cookie_file", "is required (or cookie_credential = "
                                                        "\"NAME\" for a systemd credential)")
    probes = []
    for i, probe in enumerate(table.get("health_probes", [])):
        module, colon, function = str(probe).partition(":")
        function = function.removesuffix("/0").removesuffix("()")
        if not (isinstance(probe, str) and colon and module and function):
            raise ConfigError(path, f"{prefix}health_probes[{i}]",
                              f"{probe!r} is not \"module:function\" (a function of no "
                              "arguments that returns ok)")
        probes.append((module, function))
    soak = float(table.get("health_soak", default(NodeConfig, "health_soak")))
    install_timeout = float(table.get("install_timeout", default(NodeConfig, "install_timeout")))
    if soak < 0 or install_timeout <= 0:
        key = "health_soak" if soak < 0 else "install_timeout"
        raise ConfigError(path, prefix + key, "must be a positive number of seconds")
    return NodeConfig(name=name, cookie_file=ref.file, cookie_ref=ref, epmd_port=epmd_port,
                      health_probes=tuple(probes), health_soak=soak,
                      install_timeout=install_timeout,
                      hooks=_hooks(table.get("hooks", []), prefix, path=path))


def read_config(file: str | Path) -> AgentConfig:
    """Read and check the agent's config file, and nothing else; raises ConfigError naming
    file, key and reason. The secrets it names are loaded by secrets.load_secrets."""
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
    unknown = sorted(set(raw) - {"agent", "nodes", "discovery", "tokens", "distribution_tls"})
    if unknown:
        raise ConfigError(where, unknown[0],
                          "unknown table (known: [agent], [[nodes]], [discovery], [[tokens]], "
                          "[distribution_tls])")
    agent = raw.get("agent", {})
    if not isinstance(agent, dict):
        raise ConfigError(where, "agent", "must be a table ([agent])")
    _check_keys(agent, _AGENT_KEYS, path=where, prefix="agent.")
    listen = _listen(agent.get("listen", DEFAULT_LISTEN), path=where)
    tokens = parse_tokens(raw.get("tokens", []), path=where)
    tls = parse_tls(agent["tls"], path=where) if "tls" in agent else None
    insecure_no_auth = bool(agent.get("insecure_no_auth", default(AgentConfig, "insecure_no_auth")))
    check_listeners(listen, tokens=tokens, tls=tls, insecure_no_auth=insecure_no_auth,
                    path=where)
    metrics_text = agent.get("metrics_listen", DEFAULT_METRICS_LISTEN)
    metrics = (parse_address(metrics_text, path=where, key="agent.metrics_listen")
               if metrics_text else None)
    state_dir = Path(agent.get("state_dir", DEFAULT_STATE_DIR))  # as written (locate.py)

    nodes_raw = raw.get("nodes", [])
    if not isinstance(nodes_raw, list):
        raise ConfigError(where, "nodes", "must be an array of tables ([[nodes]])")
    nodes = tuple(_node(t, i, path=where) for i, t in enumerate(nodes_raw))
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise ConfigError(where, f"nodes[{i}].name", f"{node.name} is configured twice")
        seen.add(node.name)
    if nodes and "discovery" in raw:
        raise ConfigError(where, "discovery", "applies only without [[nodes]]: list the nodes, "
                                              "or remove [[nodes]] to discover them through EPMD")
    discovery = None if nodes else _discovery(raw.get("discovery", {}), path=where)

    return AgentConfig(
        path=path,
        listen=listen,
        metrics_listen=metrics,
        state_dir=state_dir,
        nodes=nodes,
        refresh_interval=_positive(agent, "refresh_interval", path=where),
        rpc_timeout=_positive(agent, "rpc_timeout", path=where),
        connect_timeout=_positive(agent, "connect_timeout", path=where),
        reconnect_max_delay=_positive(agent, "reconnect_max_delay", path=where),
        shutdown_grace=_positive(agent, "shutdown_grace", path=where),
        operations_grace=_positive(agent, "operations_grace", path=where),
        max_upload_bytes=int(_positive(agent, "max_upload_bytes", path=where)),
        uploads_max_bytes=int(_positive(agent, "uploads_max_bytes", path=where)),
        upload_idle_expiry=_positive(agent, "upload_idle_expiry", path=where),
        metrics_max_connections=int(_positive(agent, "metrics_max_connections", path=where)),
        max_term_elements=int(_positive(agent, "max_term_elements", path=where)),
        max_term_bytes=int(_positive(agent, "max_term_bytes", path=where)),
        metrics_idle_timeout=_positive(agent, "metrics_idle_timeout", path=where),
        discovery=discovery,
        tokens=tokens,
        tls=tls,
        insecure_no_auth=insecure_no_auth,
        socket_mode=socket_mode(agent, path=where),
        socket_group=socket_group(agent, path=where),
        distribution_tls=(parse_distribution_tls(raw["distribution_tls"], path=where)
                          if "distribution_tls" in raw else None),
    )


def _listen(value: str | list[Any], *, path: str) -> tuple[Endpoint, ...]:
    items = [value] if isinstance(value, str) else value
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(path, "agent.listen", "must be an address or an array of addresses "
                                                "(\"unix:PATH\" or \"HOST:PORT\")")
    found: list[Endpoint] = []
    for i, text in enumerate(items):
        key = "agent.listen" if isinstance(value, str) else f"agent.listen[{i}]"
        address: Endpoint = (parse_unix(text, path=path, key=key) if text.startswith("unix:")
                             else parse_address(text, path=path, key=key))
        if address in found:
            raise ConfigError(path, key, f"{address} is listed twice")
        found.append(address)
    return tuple(found)


def _discovery(table: Any, *, path: str) -> DiscoveryConfig:
    if not isinstance(table, dict):
        raise ConfigError(path, "discovery", "must be a table ([discovery])")
    _check_keys(table, _DISCOVERY_KEYS, path=path, prefix="discovery.")
    host: str = table.get("host", "")  # "": this host's name, looked up when loaded
    if host and not is_host_name(host):
        raise ConfigError(path, "discovery.host", f"{host!r} is not a host name")
    epmd_port = table.get("epmd_port", DEFAULT_EPMD_PORT)
    if not 0 < epmd_port < 65536:
        raise ConfigError(path, "discovery.epmd_port", f"{epmd_port} is not a TCP port")
    cookie_dir = Path(table["cookie_dir"]) if "cookie_dir" in table else None  # as written
    ref = secret_ref(table, file_key="cookie_file", credential_key="cookie_credential",
                     path=path, prefix="discovery.")
    exclude = table.get("exclude", list(default(DiscoveryConfig, "exclude")))
    if not all(isinstance(p, str) and p for p in exclude):
        raise ConfigError(path, "discovery.exclude", "must be an array of name patterns "
                                                     '(e.g. ["rpc-*", "remsh*"])')
    interval = float(table.get("interval", default(DiscoveryConfig, "interval")))
    if interval <= 0:
        raise ConfigError(path, "discovery.interval", "must be a positive number of seconds")
    return DiscoveryConfig(path=Path(path), host=host, epmd_port=epmd_port,
                           cookie_file=ref.file if ref else None, cookie_ref=ref,
                           cookie_dir=cookie_dir,
                           exclude=tuple(exclude), interval=interval)
