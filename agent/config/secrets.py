"""Loading what a parsed config names: secrets (cookies, tokens) from files or systemd
credentials, refusing files that every user of the host can read (such a secret is no longer
one), PEM files, the socket's group, and a trial TLS context for [distribution_tls].

This is the load step after parsing (agent/config/parse.py), which touches nothing but the
config file; it starts by locating the config's paths on this host (locate.py).
`relctl-agent --check-config` runs both steps, and nothing else.

A systemd credential (``LoadCredential=NAME:/etc/relctl/...`` in the unit) is a file in
``$CREDENTIALS_DIRECTORY``, readable by the service only; configs name it with
``cookie_credential = "NAME"`` or ``credential = "NAME"`` instead of a path.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from agent.errors import ConfigError

from .dist_tls import client_context
from .locate import locate
from .values import (
    MIN_TOKEN_LENGTH,
    AgentConfig,
    ApiTls,
    DiscoveryConfig,
    DistributionTls,
    NodeConfig,
    SecretRef,
    Token,
)

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def credential_path(name: str, *, path: str, key: str,
                    environ: Mapping[str, str] = os.environ) -> Path:
    """The file of systemd credential ``name``."""
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(path, key, f"{name!r} is not a credential name (the NAME of "
                                     "LoadCredential=NAME:FILE in the unit)")
    directory = environ.get(CREDENTIALS_ENV)
    if not directory:
        raise ConfigError(path, key, f"credential {name!r} needs ${CREDENTIALS_ENV}, which is "
                                     "not set: start the agent with systemd and "
                                     f"LoadCredential={name}:FILE, or name the file instead")
    file = Path(directory) / name
    if not file.exists():
        raise ConfigError(path, key, f"credential {name!r} is not in ${CREDENTIALS_ENV} "
                                     f"({directory}); add LoadCredential={name}:FILE to the unit")
    return file


def check_private(file: Path, what: str, *, path: str, key: str) -> None:
    """Refuse ``file`` when others (not owner, not group) may read it."""
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(path, key, f"{what} {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(path, key, f"cannot read {what} {file}: {exc.strerror or exc}") from None
    if mode & stat.S_IROTH:
        raise ConfigError(path, key, f"{what} {file} is readable by every user of this host "
                                     f"(mode {stat.S_IMODE(mode):04o}); make it private: "
                                     f"chmod o-rwx {file}")


def read_pem(file: Path, marker: bytes, what: str, *, path: str, key: str,
             private: bool = False) -> bytes:
    """The bytes of a PEM file holding ``marker`` (e.g. b"PRIVATE KEY-----"); ``private``
    files (keys) must not be readable by others."""
    if private:
        check_private(file, "key file", path=path, key=key)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, key, f"{file} does not exist") from None
    except PermissionError:
        raise ConfigError(path, key, f"{file} is not readable by this user") from None
    except OSError as exc:
        raise ConfigError(path, key, f"cannot read {file}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ConfigError(path, key, f"{file} is not a PEM file with {what}")
    return data


def read_secret(file: Path, what: str, *, path: str, key: str) -> str:
    """The one word in ``file`` (a cookie or a token), after the privacy check."""
    check_private(file, what, path=path, key=key)
    try:
        text = file.read_text("utf-8")
    except PermissionError:
        raise ConfigError(path, key, f"{what} {file} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, key, f"cannot read {what} {file}: {exc}") from None
    secret = text.strip()
    if not secret:
        raise ConfigError(path, key, f"{what} {file} is empty")
    if any(ch.isspace() for ch in secret):
        raise ConfigError(path, key, f"{what} {file} holds more than one word")
    return secret


def resolve(ref: SecretRef, *, path: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The file that holds the secret ``ref`` names."""
    if ref.file is not None:
        return ref.file
    assert ref.credential is not None
    return credential_path(ref.credential, path=path, key=ref.key, environ=environ)


def read_cookie(cookie_file: Path, *, path: str, key: str) -> str:
    return read_secret(cookie_file, "cookie file", path=path, key=key)


def load_secrets(cfg: AgentConfig, environ: Mapping[str, str] = os.environ, *,
                 unit_credentials: list[SecretRef] | None = None) -> AgentConfig:
    """``cfg`` located on this host (locate.py: absolute paths, the host name), with every
    secret it names read and every file it names checked; raises ConfigError naming the file,
    the key and the reason.

    ``unit_credentials``: for a check outside the unit (`--check-config` by an operator):
    when $CREDENTIALS_DIRECTORY is not set, a secret given as a systemd credential exists only
    inside the unit, so it is not read but appended to this list (the secret stays empty)."""
    if cfg.loaded:
        return cfg
    cfg = locate(cfg)
    where = str(cfg.path)
    deferred = unit_credentials if not environ.get(CREDENTIALS_ENV) else None
    tokens = _tokens(cfg.tokens, path=where, environ=environ, deferred=deferred)
    nodes = tuple(_node(n, path=where, environ=environ, deferred=deferred) for n in cfg.nodes)
    discovery = (_discovery(cfg.discovery, path=where, environ=environ, deferred=deferred)
                 if cfg.discovery is not None else None)
    return replace(cfg, tokens=tokens, nodes=nodes, discovery=discovery,
                   tls=_api_tls(cfg.tls, path=where) if cfg.tls is not None else None,
                   socket_gid=_gid(cfg.socket_group, path=where),
                   distribution_tls=(_dist_tls(cfg.distribution_tls)
                                     if cfg.distribution_tls is not None else None),
                   loaded=True)


def _defer(ref: SecretRef | None, deferred: list[SecretRef] | None) -> bool:
    """Whether ``ref`` is a credential left to the unit (see load_secrets); then it is noted."""
    if ref is None or ref.credential is None or deferred is None:
        return False
    deferred.append(ref)
    return True


def _node(node: NodeConfig, *, path: str, environ: Mapping[str, str],
          deferred: list[SecretRef] | None = None) -> NodeConfig:
    if node.cookie_ref is None:
        return node  # made in code with its cookie (discovery, tests)
    if _defer(node.cookie_ref, deferred):
        return node
    file = resolve(node.cookie_ref, path=path, environ=environ)
    return replace(node, cookie_file=file,
                   cookie=read_cookie(file, path=path, key=node.cookie_ref.key))


def _discovery(cfg: DiscoveryConfig, *, path: str, environ: Mapping[str, str],
               deferred: list[SecretRef] | None = None) -> DiscoveryConfig:
    if cfg.cookie_dir is not None and not cfg.cookie_dir.is_dir():
        raise ConfigError(path, "discovery.cookie_dir", f"{cfg.cookie_dir} is not a directory")
    if _defer(cfg.cookie_ref, deferred):
        return cfg
    # Without a cookie named, cookie_file is ~/.erlang.cookie (locate.py), as for erl itself.
    # When that is missing too, only cookie_dir's nodes are managed (the agent says so at
    # start).
    if cfg.cookie_ref is not None:
        file: Path | None = resolve(cfg.cookie_ref, path=path, environ=environ)
        key = cfg.cookie_ref.key
    else:
        file, key = cfg.cookie_file, "discovery.cookie_file"
        if file is not None and not file.exists():
            file = None
    cookie = read_cookie(file, path=path, key=key) if file is not None else None
    return replace(cfg, cookie_file=file, cookie=cookie)


def _tokens(tokens: tuple[Token, ...], *, path: str, environ: Mapping[str, str],
            deferred: list[SecretRef] | None = None) -> tuple[Token, ...]:
    loaded: list[Token] = []
    for token in tokens:
        if token.ref is None:
            loaded.append(token)  # made in code with its secret
            continue
        if _defer(token.ref, deferred):
            loaded.append(token)  # secret left empty: only a check outside the unit gets here
            continue
        file, key = resolve(token.ref, path=path, environ=environ), token.ref.key
        secret = read_secret(file, "token file", path=path, key=key)
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ConfigError(path, key, f"the token in {file} has {len(secret)} characters; use "
                                         f"at least {MIN_TOKEN_LENGTH} (openssl rand -hex 32 > "
                                         f"{file})")
        for other in loaded:
            if other.secret == secret:
                raise ConfigError(path, key, f"{file} holds the same token as {other.source}: "
                                             "each identity needs its own token")
        loaded.append(replace(token, secret=secret, source=str(file)))
    return tuple(loaded)


def _api_tls(tls: ApiTls, *, path: str) -> ApiTls:
    ca = (read_pem(tls.client_ca_file, b"CERTIFICATE-----", "a CA certificate", path=path,
                   key="agent.tls.client_ca_file")
          if tls.client_ca_file is not None else None)
    return replace(tls,
                   cert=read_pem(tls.cert_file, b"CERTIFICATE-----", "a certificate", path=path,
                                 key="agent.tls.cert_file"),
                   key=read_pem(tls.key_file, b"PRIVATE KEY-----", "a private key", path=path,
                                key="agent.tls.key_file", private=True),
                   client_ca=ca)


def _gid(group: str | None, *, path: str) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(path, "agent.socket_group",
                          f"no group {group!r} on this host (create it: groupadd {group})") from None


def _dist_tls(tls: DistributionTls) -> DistributionTls:
    where = str(tls.path)
    read_pem(tls.ca_file, b"CERTIFICATE-----", "a CA certificate", path=where,
             key="distribution_tls.ca_file")
    if tls.cert_file is not None and tls.key_file is not None:
        read_pem(tls.cert_file, b"CERTIFICATE-----", "a certificate", path=where,
                 key="distribution_tls.cert_file")
        read_pem(tls.key_file, b"PRIVATE KEY-----", "a private key", path=where,
                 key="distribution_tls.key_file", private=True)
    client_context(tls)  # the files load together: found now, not at the first connection
    return tls
