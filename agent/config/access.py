"""The access part of the agent's config: where it listens, who may call it, and TLS.

    [agent]
    listen = ["unix:/run/relctl/agent.sock", "10.0.0.5:7079"]   # or one string
    socket_group = "relctl"        # group of the Unix socket (mode socket_mode, 0o660)
    insecure_no_auth = false       # loopback only: TCP calls without a token are allowed

    [agent.tls]                    # required on a non-loopback address
    cert_file = "/etc/relctl/agent.crt"
    key_file = "/etc/relctl/agent.key"
    client_ca_file = "/etc/relctl/clients-ca.crt"   # optional: require client certificates

    [[tokens]]                     # required by every TCP listener
    name = "deploy-bot"
    role = "operator"              # or "viewer"
    file = "/etc/relctl/tokens/deploy-bot"           # or credential = "NAME" (systemd)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

from .values import (
    DEFAULT_SOCKET,
    DEFAULT_SOCKET_MODE,
    ROLES,
    ApiTls,
    SecretRef,
    Token,
    UnixAddress,
)

_TLS_KEYS = {"cert_file", "key_file", "client_ca_file"}
_TOKEN_KEYS = {"name", "role", "file", "credential"}


def parse_unix(text: str, *, path: str, key: str) -> UnixAddress:
    socket_path = Path(text.removeprefix("unix:"))
    if not socket_path.is_absolute():
        raise ConfigError(path, key, f"{text!r}: the socket path must be absolute "
                                     f"(\"unix:{DEFAULT_SOCKET}\")")
    # sun_path holds 108 bytes with its terminating NUL.
    if len(str(socket_path).encode()) > 107:
        raise ConfigError(path, key, f"{text!r}: a Unix socket path has at most 107 bytes")
    return UnixAddress(socket_path)


def socket_group(agent: Mapping[str, Any], *, path: str) -> str | None:
    group = agent.get("socket_group")
    if group is None:
        return None
    if not isinstance(group, str) or not group:
        raise ConfigError(path, "agent.socket_group", "must be a group name")
    return group


def socket_mode(agent: Mapping[str, Any], *, path: str) -> int:
    mode = agent.get("socket_mode", DEFAULT_SOCKET_MODE)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ConfigError(path, "agent.socket_mode", "must be a mode like 0o660 (TOML octal)")
    if mode & 0o007:
        raise ConfigError(path, "agent.socket_mode", f"{mode:04o} lets every user of the host "
                                                     "control the nodes; use 0o660 or 0o600")
    return mode


def parse_tls(table: Any, *, path: str) -> ApiTls:
    """[agent.tls]: the files it names (read when the secrets are loaded)."""
    if not isinstance(table, dict):
        raise ConfigError(path, "agent.tls", "must be a table ([agent.tls])")
    for key in table:
        if key not in _TLS_KEYS:
            raise ConfigError(path, f"agent.tls.{key}",
                              f"unknown key (known keys: {', '.join(sorted(_TLS_KEYS))})")
    for required in ("cert_file", "key_file"):
        if required not in table:
            raise ConfigError(path, f"agent.tls.{required}", "is required")

    def file(key: str) -> Path:
        value = table[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(path, f"agent.tls.{key}", "must be a file path")
        return Path(value)  # as written: made absolute when loaded (locate.py)

    return ApiTls(cert_file=file("cert_file"), key_file=file("key_file"),
                  client_ca_file=file("client_ca_file") if "client_ca_file" in table else None)


def secret_ref(table: Mapping[str, object], *, file_key: str, credential_key: str,
               path: str, prefix: str) -> SecretRef | None:
    """The file named by ``file_key`` or the credential named by ``credential_key`` (exactly
    one may be given); None when neither is."""
    has_file, has_cred = file_key in table, credential_key in table
    if has_file and has_cred:
        raise ConfigError(path, prefix + credential_key,
                          f"give {file_key} or {credential_key}, not both")
    if has_file:
        value = table[file_key]
        if not isinstance(value, str) or not value:
            raise ConfigError(path, prefix + file_key, "must be a file path")
        return SecretRef(prefix + file_key, file=Path(value))  # as written (locate.py)
    if has_cred:
        name = table[credential_key]
        key = prefix + credential_key
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ConfigError(path, key, f"{name!r} is not a credential name (the NAME of "
                                         "LoadCredential=NAME:FILE in the unit)")
        return SecretRef(key, credential=name)
    return None


def parse_tokens(tables: Any, *, path: str) -> tuple[Token, ...]:
    """[[tokens]]: names, roles and where each secret is (read when the secrets are loaded)."""
    if not isinstance(tables, list):
        raise ConfigError(path, "tokens", "must be an array of tables ([[tokens]])")
    tokens: list[Token] = []
    for i, table in enumerate(tables):
        prefix = f"tokens[{i}]."
        if not isinstance(table, dict):
            raise ConfigError(path, f"tokens[{i}]", "must be a table ([[tokens]])")
        for key in table:
            if key not in _TOKEN_KEYS:
                raise ConfigError(path, prefix + key,
                                  f"unknown key (known keys: {', '.join(sorted(_TOKEN_KEYS))})")
        name, role = table.get("name"), table.get("role")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(path, prefix + "name", "is required: the identity in the audit trail")
        if role not in ROLES:
            raise ConfigError(path, prefix + "role",
                              f"{role!r} is not one of " + ", ".join(f'"{r}"' for r in ROLES))
        ref = secret_ref(table, file_key="file", credential_key="credential", path=path,
                         prefix=prefix)
        if ref is None:
            raise ConfigError(path, prefix + "file",
                              "is required (or credential = \"NAME\" for a systemd credential)")
        if any(other.name == name for other in tokens):
            raise ConfigError(path, prefix + "name", f"token {name!r} is configured twice")
        tokens.append(Token(name=name, role=role, source=str(ref), ref=ref))
    return tuple(tokens)


def check_listeners(listen: tuple[Any, ...], *, tokens: tuple[Token, ...], tls: ApiTls | None,
                    insecure_no_auth: bool, path: str) -> None:
    """What each TCP listener needs: tokens (or insecure_no_auth on loopback), and TLS when
    it is not on loopback."""
    for address in listen:
        if isinstance(address, UnixAddress):
            continue
        if not address.is_loopback:
            if insecure_no_auth:
                raise ConfigError(path, "agent.insecure_no_auth",
                                  f"is allowed on loopback addresses only, and {address} is not "
                                  "one: configure [[tokens]] and [agent.tls]")
            if tls is None:
                raise ConfigError(path, "agent.listen",
                                  f"{address} is not a loopback address: it needs TLS "
                                  "([agent.tls] cert_file and key_file), so that tokens and "
                                  "tarballs do not cross the network in clear")
        if not tokens and not insecure_no_auth:
            raise ConfigError(path, "agent.listen",
                              f"{address} is a TCP listener: it needs bearer tokens ([[tokens]] "
                              "with name, role and file); for local use listen on "
                              f"\"unix:{DEFAULT_SOCKET}\" instead (or, for tests on loopback "
                              "only, insecure_no_auth = true)")
