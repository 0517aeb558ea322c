"""A hidden Erlang node in asyncio Python: EPMD, the distribution handshake, RPC through rex,
and the External Term Format. Standard library only.

    node = Node(cookie="...", epmd_port=4369)
    async with node.connect("counter@localhost", timeout=5.0) as conn:
        releases = await conn.call("release_handler", "which_releases", [], timeout=30.0)

Nodes started with ``-proto_dist inet_tls`` take ``Node(..., tls=ssl_context)``.
"""

from .codec import DecodeBudget, decode, encode
from .erlfmt import format_term
from .epmd import NodeAddress
from .errors import (
    BadRpc,
    BridgeError,
    BridgeTimeout,
    ConnectionLost,
    CookieRejected,
    DecodeError,
    TermTooLarge,
    EncodeError,
    EpmdUnreachable,
    HandshakeFailed,
    NetworkError,
    NodeNotFound,
    PeerError,
    ProtocolError,
    UsageError,
)
from .node import Connection, Node, split_node_name
from .terms import Atom, BitString, Export, Fun, ImproperList, Pid, Port, Reference
from .tls import TlsCause, TlsHandshakeFailed

__all__ = [
    "Node",
    "Connection",
    "NodeAddress",
    "split_node_name",
    "encode",
    "decode",
    "DecodeBudget",
    "format_term",
    "Atom",
    "Pid",
    "Reference",
    "Port",
    "ImproperList",
    "BitString",
    "Export",
    "Fun",
    "BridgeError",
    "UsageError",
    "EncodeError",
    "PeerError",
    "ProtocolError",
    "DecodeError",
    "TermTooLarge",
    "HandshakeFailed",
    "CookieRejected",
    "TlsHandshakeFailed",
    "TlsCause",
    "NodeNotFound",
    "BadRpc",
    "NetworkError",
    "EpmdUnreachable",
    "ConnectionLost",
    "BridgeTimeout",
]
