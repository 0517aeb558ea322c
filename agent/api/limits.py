"""Bounds on what a request may carry, checked before anything of it is journaled, audited or
logged: a version or a node name is short and plain, every other string is bounded and free of
control characters (a newline in a version once forged a whole log line).

No grpc here: the interceptor hands over the request's fields as a dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_VERSION = 128
MAX_NODE = 255 * 2 + 1        # alive@host, each part at most 255 bytes as Erlang atoms are
MAX_TEXT = 1024               # any other string field
MAX_SHOWN = 64                # how much of a refused value an error message repeats

# Versions of OTP releases in practice: semver and its relx/mix variants ("1.2.3-rc.1+build.5").
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_NODE = re.compile(r"[A-Za-z0-9_-]+@[A-Za-z0-9_.:-]+")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: str) -> str:
    """``value`` as an error message may repeat it: cut, with control characters escaped."""
    cut = value[:MAX_SHOWN] + ("..." if len(value) > MAX_SHOWN else "")
    return repr(cut)


def field_problem(name: str, value: str) -> str | None:
    """Why a request's string field ``name`` cannot be accepted, or None."""
    if not value:
        return None  # empty means "not given"; the servicer says when one is required
    if name in ("version", "from_version", "to_version"):
        if len(value) > MAX_VERSION or not _VERSION.fullmatch(value):
            return (f"{name} {shown(value)} is not a release version: at most {MAX_VERSION} "
                    "letters, digits and . _ + ~ - (as in \"1.2.3-rc.1+build.5\")")
    elif name == "node":
        if len(value) > MAX_NODE or not _NODE.fullmatch(value):
            return (f"node {shown(value)} is not a node name like \"app@host\" (letters, digits, "
                    f"_ and - before the @; at most {MAX_NODE} characters)")
    elif name == "upload_id":
        if not _UPLOAD_ID.fullmatch(value):
            return f"upload_id {shown(value)} is not one this agent gave out"
    elif name == "sha256":
        if not _SHA256.fullmatch(value):
            return f"sha256 {shown(value)} is not 64 hexadecimal digits"
    elif len(value) > MAX_TEXT or _CONTROL.search(value):
        return (f"{name} {shown(value)} is too long or holds control characters (at most "
                f"{MAX_TEXT} printable characters)")
    return None


def request_problem(fields: Mapping[str, Any]) -> str | None:
    """The first problem with a request's fields (nested messages included), or None."""
    for name, value in fields.items():
        if isinstance(value, str):
            problem = field_problem(name, value)
        elif isinstance(value, Mapping):
            problem = request_problem(value)
        elif isinstance(value, list):
            problem = next((p for v in value if isinstance(v, str)
                            and (p := field_problem(name, v)) is not None), None)
        else:
            problem = None
        if problem is not None:
            return problem
    return None


def bounded(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with each string cut to what an audit record may keep."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str) and len(value) > MAX_TEXT:
            out[name] = value[:MAX_TEXT] + "..."
        elif isinstance(value, Mapping):
            out[name] = bounded(value)
        else:
            out[name] = value
    return out
