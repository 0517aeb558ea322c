"""Bounds on what a caller may take of the agent: what a request may carry, checked before
anything of it is journaled, audited or logged (a version or a node name is short and plain,
every other string is bounded and free of control characters: a newline in a version once
forged a whole log line), and how many TCP connections a listener and one peer address may
hold, within the process's descriptors (:func:`connection_caps`).

No grpc here: the interceptor hands over the request's fields as a dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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


# --- TCP connections ------------------------------------------------------------------------------

# Anyone who can reach a TCP listener can open connections without a token (and, with TLS,
# without finishing a handshake): 8,300 idle ones once took every descriptor of the agent, and
# the Unix socket and /metrics with them. So each listener holds at most this many, one peer
# address at most MAX_PER_PEER, and the caps fit the descriptors with RESERVED_FDS to spare.
MAX_TCP_CONNECTIONS = 512
MAX_PER_PEER = 32
# For the Unix socket's relays (2 each), /metrics, the journal, the audit trail, the node links,
# uploads and extraction: what must keep working while TCP is flooded.
RESERVED_FDS = 512
# A relayed TCP connection holds 3: the caller's socket, our end and grpc's end of the relay.
FDS_PER_CONNECTION = 3
# A connection must send its first byte within this (the front closes it), and grpc closes one
# that has not finished its TLS handshake and HTTP/2 preface within HANDSHAKE_TIMEOUT.
FIRST_BYTE_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0
# A connection with no call open for this long is closed by grpc (relctl opens its channel
# when it has something to ask, and reconnects by itself).
IDLE_TIMEOUT = 60.0
# Refusals and accept errors are logged at most once per this many seconds (with a count),
# not once per connection: a flood must not become a flood of log lines.
LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class ConnectionCaps:
    """How many TCP connections each listener, and each peer address on it, may hold."""

    per_listener: int
    per_peer: int
    warning: str = ""   # set when the descriptors do not allow the usual caps


def connection_caps(nofile: int, tcp_listeners: int) -> ConnectionCaps:
    """The caps for ``tcp_listeners`` listeners in a process allowed ``nofile`` descriptors:
    MAX_TCP_CONNECTIONS each, fewer when that would eat into RESERVED_FDS."""
    if tcp_listeners < 1:
        return ConnectionCaps(MAX_TCP_CONNECTIONS, MAX_PER_PEER)
    budget = max(0, nofile - RESERVED_FDS) // (FDS_PER_CONNECTION * tcp_listeners)
    per_listener = max(1, min(MAX_TCP_CONNECTIONS, budget))
    warning = ""
    if per_listener < MAX_TCP_CONNECTIONS:
        wanted = RESERVED_FDS + FDS_PER_CONNECTION * MAX_TCP_CONNECTIONS * tcp_listeners
        warning = (f"only {nofile} file descriptors (LimitNOFILE): each TCP listener takes at "
                   f"most {per_listener} connections, not {MAX_TCP_CONNECTIONS}, so that "
                   f"{RESERVED_FDS} stay for the Unix socket, /metrics and the nodes; "
                   f"raise LimitNOFILE to {wanted} or more for the full caps")
    return ConnectionCaps(per_listener, min(MAX_PER_PEER, per_listener), warning)
