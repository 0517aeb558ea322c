"""EPMD requests and replies (sans-IO): bytes out, parsed values in.

EPMD answers each request on its own TCP connection and closes it, so a reply is parsed once
the whole of it has been read.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .errors import ProtocolError

__all__ = ["NodeAddress", "port_please2_request", "parse_port_please2_reply", "names_request", "parse_names_reply"]

DEFAULT_PORT = 4369
PORT_PLEASE2_REQ = 122
PORT2_RESP = 119
NAMES_REQ = 110
NODE_TYPE_HIDDEN = 72
NODE_TYPE_NORMAL = 77


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """What EPMD says about one registered node."""

    name: str
    port: int
    node_type: int
    protocol: int
    highest_version: int
    lowest_version: int
    extra: bytes = b""

    @property
    def hidden(self) -> bool:
        return self.node_type == NODE_TYPE_HIDDEN


def _request(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def port_please2_request(alive: str) -> bytes:
    """Ask for the distribution port of ``alive`` (the part of the node name before '@')."""
    return _request(bytes((PORT_PLEASE2_REQ,)) + alive.encode("utf-8"))


def parse_port_please2_reply(data: bytes) -> NodeAddress | None:
    """The node's address, or None when EPMD does not know the name."""
    if len(data) < 2 or data[0] != PORT2_RESP:
        raise ProtocolError(f"not a PORT2_RESP from epmd: {data[:16]!r}")
    if data[1] != 0:
        return None
    try:
        port, node_type, protocol, high, low, nlen = struct.unpack_from(">HBBHHH", data, 2)
        pos = 12
        name = data[pos:pos + nlen]
        pos += nlen
        if len(name) != nlen:
            raise ProtocolError("epmd reply truncated in the node name")
        extra = b""
        if len(data) >= pos + 2:
            (elen,) = struct.unpack_from(">H", data, pos)
            extra = data[pos + 2:pos + 2 + elen]
    except struct.error:
        raise ProtocolError(f"epmd reply truncated: {len(data)} bytes") from None
    return NodeAddress(name.decode("utf-8", "replace"), port, node_type, protocol, high, low, extra)


def names_request() -> bytes:
    return _request(bytes((NAMES_REQ,)))


_NAME_LINE = re.compile(r"^name (\S+) at port (\d{1,5})$")  # a TCP port has 5 digits at most


def parse_names_reply(data: bytes) -> dict[str, int]:
    """Map of the alive names registered with EPMD to their distribution ports."""
    if len(data) < 4:
        raise ProtocolError(f"epmd NAMES reply truncated: {len(data)} bytes")
    names: dict[str, int] = {}
    for line in data[4:].decode("utf-8", "replace").splitlines():
        match = _NAME_LINE.match(line.strip())
        if match and 0 < int(match.group(2)) <= 0xFFFF:
            names[match.group(1)] = int(match.group(2))
    return names
