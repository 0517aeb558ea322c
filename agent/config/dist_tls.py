"""``[distribution_tls]``: how the agent reaches nodes started with ``-proto_dist inet_tls``.

    [distribution_tls]
    ca_file = "/etc/relctl/dist-ca.crt"      # required: the CA the node certificates chain to
    cert_file = "/etc/relctl/agent-dist.crt"  # the agent's client certificate and its key:
    key_file = "/etc/relctl/agent-dist.key"   #   needed when nodes verify peers (they should)
    verify_hostname = true                    # the default; see below
    server_name = "node.example.com"          # optional: the name to check instead

Like a node's ``-ssl_dist_optfile``, the table applies to every node the agent manages; EPMD
stays plain TCP. Parsing checks the table; the files are read when the secrets are loaded
(agent/config/secrets.py), so a wrong path or a key every user can read stops the agent at
start with the file, the key and the reason.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from bridge import TlsCause

from .values import DistributionTls

TABLE = "distribution_tls"
_KEYS: Mapping[str, type] = {"ca_file": str, "cert_file": str, "key_file": str,
                             "verify_hostname": bool, "server_name": str}


def client_context(tls: DistributionTls) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` only, with our certificate when configured.

    Raises ConfigError naming the key whose file cannot be used."""
    where = str(tls.path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2   # OTP nodes speak 1.2 unless told more
    ctx.check_hostname = tls.verify_hostname
    try:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(where, f"{TABLE}.ca_file",
                          f"cannot use {tls.ca_file} as the CA: {_said(exc)}") from None
    if tls.cert_file is not None and tls.key_file is not None:
        asked: list[bool] = []

        def no_password() -> bytes:
            # Without this OpenSSL would prompt on the terminal, and a daemon would hang.
            asked.append(True)
            return b""

        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=no_password)
        except (ssl.SSLError, OSError) as exc:
            if asked:
                raise ConfigError(where, f"{TABLE}.key_file",
                                  f"{tls.key_file} is encrypted; the agent needs an "
                                  "unencrypted key (readable by the agent's user only)") from None
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise ConfigError(where, f"{TABLE}.key_file",
                                  f"{tls.key_file} is not the key of {tls.cert_file}") from None
            raise ConfigError(where, f"{TABLE}.cert_file",
                              f"cannot use {tls.cert_file} with {tls.key_file}: "
                              f"{_said(exc)}") from None
    return ctx


def _said(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _file(table: Mapping[str, Any], key: str, *, path: str) -> Path:
    value = table[key]
    if not value:
        raise ConfigError(path, f"{TABLE}.{key}", "must be a file path")
    return Path(value)  # as written: made absolute when loaded (locate.py)


def parse_distribution_tls(table: Any, *, path: str) -> DistributionTls:
    """Check ``[distribution_tls]``; the files it names are read by the load step."""
    if not isinstance(table, dict):
        raise ConfigError(path, TABLE, f"must be a table ([{TABLE}])")
    for key, value in table.items():
        expected = _KEYS.get(key)
        if expected is None:
            raise ConfigError(path, f"{TABLE}.{key}",
                              f"unknown key (known keys: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, expected):
            kind = "true or false" if expected is bool else "a string"
            raise ConfigError(path, f"{TABLE}.{key}", f"must be {kind}, not {type(value).__name__}")
    if "ca_file" not in table:
        raise ConfigError(path, f"{TABLE}.ca_file", "is required: the CA that signed the nodes' "
                                                    "certificates (their ssl_dist_optfile certfile)")
    has_cert, has_key = "cert_file" in table, "key_file" in table
    if has_cert != has_key:
        missing = "key_file" if has_cert else "cert_file"
        raise ConfigError(path, f"{TABLE}.{missing}",
                          "is required with " + ("cert_file" if has_cert else "key_file") +
                          ": the agent's client certificate and its key go together")
    ca_file = _file(table, "ca_file", path=path)
    cert_file = _file(table, "cert_file", path=path) if has_cert else None
    key_file = _file(table, "key_file", path=path) if has_key else None
    verify_hostname: bool = table.get("verify_hostname", True)
    server_name: str | None = table.get("server_name")
    if server_name is not None:
        if not server_name or "@" in server_name or any(ch.isspace() for ch in server_name):
            raise ConfigError(path, f"{TABLE}.server_name", f"{server_name!r} is not a host name")
        if not verify_hostname:
            raise ConfigError(path, f"{TABLE}.server_name", "is the name to check, and "
                                                            "verify_hostname = false turns the "
                                                            "check off: remove one of them")
    return DistributionTls(path=Path(path), ca_file=ca_file, cert_file=cert_file,
                           key_file=key_file, verify_hostname=verify_hostname,
                           server_name=server_name)


_HINTS: Mapping[TlsCause, str] = {
    TlsCause.NODE_CERT_UNTRUSTED: f"check {TABLE}.ca_file in the agent's config",
    TlsCause.NODE_CERT_EXPIRED: "renew the node's certificate (certfile in its ssl_dist_optfile)",
    TlsCause.NODE_CERT_NAME: f"set {TABLE}.server_name to a name in the node's certificate, or "
                             f"{TABLE}.verify_hostname = false",
    TlsCause.CLIENT_CERT_REQUIRED: f"set {TABLE}.cert_file and key_file in the agent's config",
    TlsCause.CLIENT_CERT_REJECTED: f"check {TABLE}.cert_file in the agent's config",
    TlsCause.NO_COMMON_VERSION: "the agent speaks TLS 1.2 and 1.3: check versions in the node's "
                                "ssl_dist_optfile",
    TlsCause.NOT_TLS: f"[{TABLE}] in the agent's config applies to every node it manages: start "
                      "this node with TLS distribution too, or remove the table",
    TlsCause.REQUIRES_TLS: f"add [{TABLE}] (ca_file, cert_file, key_file) to the agent's config",
}


def hint(cause: TlsCause) -> str:
    """What to change in the agent's config (or on the node) for a TLS failure of ``cause``."""
    return _HINTS.get(cause, f"check [{TABLE}] in the agent's config")
