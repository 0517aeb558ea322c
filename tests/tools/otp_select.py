"""Which Erlang/OTP the tests' nodes and release builds use: the host's (Debian 12: OTP 25),
or, with ``RELCTL_TEST_OTP=27``, the OTP 27 of the Debian 13 root that ``.ci/otp27-root``
builds, entered through ``.ci/otp27-run`` (the checkout and /tmp are seen at the same paths
inside, so the agent finds a node's release root where the node says it is).

The private epmds of the tests run inside the root too (so the bridge's EPMD client meets
OTP 27's epmd); the probes (`erl_eval`, `erl_rpc`) stay the host's OTP 25, which is also a
check that a 25 node and a 27 node talk.

Where the root cannot be had, ``missing_reason`` says why (``.ci/run`` passes the reason
``.ci/otp27-root`` gave in ``RELCTL_OTP27_UNAVAILABLE``); ``tests/conftest.py`` turns it into a
failure under CI and a skip elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
CI = CHECKOUT / ".ci"
OTP27_ROOT = Path(os.environ.get("RELCTL_OTP27_ROOT", "/var/cache/relctl-ci/otp27-root"))


def wanted() -> str:
    """"27" for the OTP 27 root, "" for the host's OTP."""
    return os.environ.get("RELCTL_TEST_OTP", "").strip()


def in_root() -> bool:
    return wanted() == "27"


def missing_reason() -> str | None:
    """Why the OTP asked for cannot run here, or None."""
    if wanted() not in ("", "27"):
        return f"RELCTL_TEST_OTP={wanted()!r}: only 27 (or unset, the host's OTP) is known"
    if not in_root():
        return None
    unavailable = os.environ.get("RELCTL_OTP27_UNAVAILABLE", "").strip()
    if unavailable:
        return f"RELCTL_TEST_OTP=27: the OTP 27 root could not be built: {unavailable}"
    if not (OTP27_ROOT / ".relctl-ready").is_file():
        return (f"RELCTL_TEST_OTP=27 needs the OTP 27 root at {OTP27_ROOT}: build it with "
                "bash .ci/otp27-root (as root; it runs debootstrap)")
    return None


def run_prefix() -> list[str]:
    """What to put before a command that runs an OTP program of the chosen OTP."""
    return [str(CI / "otp27-run")] if in_root() else []


def erl() -> str:
    return str(CI / "otp27-bin" / "erl") if in_root() else "erl"


def erlc() -> str:
    return str(CI / "otp27-bin" / "erlc") if in_root() else "erlc"


def epmd() -> list[str]:
    """The command (before its arguments) that runs the chosen OTP's epmd."""
    if in_root():
        return [*run_prefix(), "epmd"]
    found = shutil.which("epmd")
    return [found] if found is not None else []


def _shared_dirs() -> list[Path]:
    """The host directories .ci/otp27-run binds at the same path inside the root."""
    dirs = [Path("/tmp"), CHECKOUT]
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir and Path(tmpdir).is_dir():
        dirs.append(Path(tmpdir).resolve())
    return dirs


def host_view(path: Path) -> Path:
    """Where a path of the chosen OTP's file system is seen from the host."""
    if not in_root() or any(path.is_relative_to(d) for d in _shared_dirs()):
        return path
    return OTP27_ROOT / path.relative_to("/")
