"""Reading secrets (cookies, tokens) from files or systemd credentials, refusing files that
every user of the host can read: such a secret is no longer one.

A systemd credential (``LoadCredential=NAME:/etc/relctl/...`` in the unit) is a file in
``$CREDENTIALS_DIRECTORY``, readable by the service only; configs name it with
``cookie_credential = "NAME"`` or ``credential = "NAME"`` instead of a path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.errors import ConfigError

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


def secret_source(table: Mapping[str, object], *, file_key: str, credential_key: str,
                  base: Path, path: str, prefix: str) -> tuple[Path, str] | None:
    """The file named by ``file_key`` or by ``credential_key`` (exactly one may be given), and
    the key it came from; None when neither is."""
    has_file, has_cred = file_key in table, credential_key in table
    if has_file and has_cred:
        raise ConfigError(path, prefix + credential_key,
                          f"give {file_key} or {credential_key}, not both")
    if has_file:
        return base / Path(str(table[file_key])).expanduser(), prefix + file_key
    if has_cred:
        key = prefix + credential_key
        return credential_path(str(table[credential_key]), path=path, key=key), key
    return None
