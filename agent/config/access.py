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

import grp
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.api.auth import MIN_TOKEN_LENGTH, ROLES, Token
from agent.errors import ConfigError

from .secrets import read_pem, read_secret, secret_source

DEFAULT_SOCKET = "/run/relctl/agent.sock"
DEFAULT_SOCKET_MODE = 0o660


@dataclass(frozen=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"

    @property
    def is_loopback(self) -> bool:
        return True


@dataclass(frozen=True)
class ApiTls:
    """The gRPC server's certificate, and the CA of client certificates when mTLS is on."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False, default=None)


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


def socket_gid(agent: Mapping[str, Any], *, path: str) -> int | None:
    group = agent.get("socket_group")
    if group is None:
        return None
    if not isinstance(group, str) or not group:
        raise ConfigError(path, "agent.socket_group", "must be a group name")
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(path, "agent.socket_group",
                          f"no group {group!r} on this host (create it: groupadd {group})") from None


def socket_mode(agent: Mapping[str, Any], *, path: str) -> int:
    mode = agent.get("socket_mode", DEFAULT_SOCKET_MODE)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ConfigError(path, "agent.socket_mode", "must be a mode like 0o660 (TOML octal)")
    if mode & 0o007:
        raise ConfigError(path, "agent.socket_mode", f"{mode:04o} lets every user of the host "
                                                     "control the nodes; use 0o660 or 0o600")
    return mode


def parse_tls(table: Any, *, path: str, base: Path) -> ApiTls:
    if not isinstance(table, dict):
        raise ConfigError(path, "agent.tls", "must be a table ([agent.tls])")
    for key in table:
        if key not in _TLS_KEYS:
            raise ConfigError(path, f"agent.tls.{key}",
                              f"unknown key (known keys: {', '.join(sorted(_TLS_KEYS))})")
    for required in ("cert_file", "key_file"):
        if required not in table:
            raise ConfigError(path, f"agent.tls.{required}", "is required")

    def read(key: str, marker: bytes, what: str, private: bool = False) -> tuple[Path, bytes]:
        value = table[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(path, f"agent.tls.{key}", "must be a file path")
        file = base / Path(value).expanduser()
        return file, read_pem(file, marker, what, path=path, key=f"agent.tls.{key}",
                              private=private)

    cert_file, cert = read("cert_file", b"CERTIFICATE-----", "a certificate")
    key_file, key = read("key_file", b"PRIVATE KEY-----", "a private key", private=True)
    ca_file, ca = (read("client_ca_file", b"CERTIFICATE-----", "a CA certificate")
                   if "client_ca_file" in table else (None, None))
    return ApiTls(cert_file=cert_file, key_file=key_file, client_ca_file=ca_file,
                  cert=cert, key=key, client_ca=ca)


def parse_tokens(tables: Any, *, path: str, base: Path) -> tuple[Token, ...]:
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
        source = secret_source(table, file_key="file", credential_key="credential", base=base,
                               path=path, prefix=prefix)
        if source is None:
            raise ConfigError(path, prefix + "file",
                              "is required (or credential = \"NAME\" for a systemd credential)")
        file, key = source
        secret = read_secret(file, "token file", path=path, key=key)
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ConfigError(path, key, f"the token in {file} has {len(secret)} characters; use "
                                         f"at least {MIN_TOKEN_LENGTH} (openssl rand -hex 32 > "
                                         f"{file})")
        for other in tokens:
            if other.name == name:
                raise ConfigError(path, prefix + "name", f"token {name!r} is configured twice")
            if other.secret == secret:
                raise ConfigError(path, key, f"{file} holds the same token as {other.source}: "
                                             "each identity needs its own token")
        tokens.append(Token(name=name, role=role, secret=secret, source=str(file)))
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
