"""The bridge's errors, split by who is at fault: our caller, the peer, or the network.

Each message names what went wrong and, where there is one, what to do about it. Each also
derives from the built-in exception a caller would expect (ValueError, LookupError, OSError,
TimeoutError), so code that knows nothing of the bridge still catches what it means to.
"""

from __future__ import annotations

from typing import Any

from .erlfmt import format_term

__all__ = [
    "BridgeError",
    "UsageError",
    "EncodeError",
    "NodeNotFound",
    "PeerError",
    "ProtocolError",
    "DecodeError",
    "TermTooLarge",
    "HandshakeFailed",
    "CookieRejected",
    "BadRpc",
    "NetworkError",
    "EpmdUnreachable",
    "ConnectionLost",
    "BridgeTimeout",
]


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


# --- the caller is at fault -------------------------------------------------------------


class UsageError(BridgeError, ValueError):
    """The caller asked for something impossible (a malformed node name, a bad cookie...)."""


class EncodeError(UsageError, TypeError):
    """A Python value has no Erlang equivalent (None, NaN, an object of an unknown type...)."""


class NodeNotFound(UsageError, LookupError):
    """epmd on the node's host does not know the node's name: the caller named a node that is
    not there (a wrong name, or a node that is not running)."""


# --- the peer is at fault, or refused -----------------------------------------------------


class PeerError(BridgeError):
    """The remote side refused us, misbehaved, or failed what we asked of it."""


class ProtocolError(PeerError):
    """The peer sent bytes that break the distribution protocol."""


class DecodeError(ProtocolError, ValueError):
    """Bytes that are not a valid external term (or exceed the codec's limits)."""


class TermTooLarge(DecodeError):
    """A message would decode to more than its decode budget (``codec.DecodeBudget``) allows.
    Only the call it answers fails; the connection stays up."""


class HandshakeFailed(PeerError):
    """The peer ended the distribution handshake (not allowed, name in use, flags missing)."""


class CookieRejected(HandshakeFailed):
    """The cookies differ: the peer rejected our digest, or its digest did not match ours."""


class BadRpc(PeerError):
    """The remote call failed on the node: ``{badrpc, Reason}``. ``reason`` is the decoded term."""

    def __init__(self, reason: Any, *, mfa: str = "", node: str = "") -> None:
        self.reason = reason
        self.mfa = mfa
        self.node = node
        where = f"{mfa} on {node}" if mfa and node else (mfa or node or "rpc")
        super().__init__(f"{where} failed: {format_term(reason)}")


# --- the network is at fault ------------------------------------------------------------


class NetworkError(BridgeError, OSError):
    """We could not reach the peer, or lost it."""


class EpmdUnreachable(NetworkError):
    """Nothing answers on the epmd port of the node's host."""


class ConnectionLost(NetworkError):
    """The distribution connection went away; every pending call fails with this."""


class BridgeTimeout(NetworkError, TimeoutError):
    """A deadline passed: connecting, or waiting for a call's reply."""
