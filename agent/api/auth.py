"""Who is calling and what they may do: bearer tokens, roles, and the identity of a caller.

No grpc here: the interceptor (agent/api/interceptor.py) hands over the transport facts (peer
address, metadata, peer credentials of a Unix socket, client certificate) and gets back an
:class:`Identity` or an :class:`AuthError` whose message tells the caller what to do.
"""

from __future__ import annotations

import hashlib
import hmac
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.config import OPERATOR, VIEWER, Token
from agent.errors import RequestError

# The RPCs a viewer may call: they read and change nothing. Everything else (including RPCs
# added later and not listed here) needs the operator role.
READ_ONLY_RPCS = frozenset({"Ping", "ListNodes", "GetReleases", "ListOperations",
                            "GetOperation", "Verify"})
# Read, but operator only: the audit trail shows who did what from where.
OPERATOR_READS = frozenset({"ListAudit"})

BEARER = "bearer "


@dataclass(frozen=True)
class Identity:
    """The caller of one RPC, as the audit trail and the journal name it."""

    name: str            # token name, "uid 1000 (alice)", or "anonymous"
    role: str
    peer: str            # the transport's address of the caller
    certificate: str = ""  # the client certificate's subject, when mTLS verified one

    def __str__(self) -> str:
        return self.name


class AuthError(RequestError):
    """A refused call; ``code`` is "unauthenticated" or "permission_denied"."""

    def __init__(self, code: str, message: str, identity: Identity | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.identity = identity


def unix_user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


class Authenticator:
    """Decides who a caller is and whether its role allows the RPC.

    ``insecure_no_auth``: callers without a token are the operator "anonymous" (only ever
    configured on loopback; the config refuses it elsewhere).
    """

    def __init__(self, tokens: Sequence[Token], *, insecure_no_auth: bool = False) -> None:
        self._tokens = tuple((t.digest, t) for t in tokens)
        self._insecure = insecure_no_auth

    def from_token(self, metadata: Iterable[tuple[str, str | bytes]], peer: str,
                   certificate: str = "") -> Identity:
        """The identity of a TCP caller, from its "authorization: Bearer ..." metadata."""
        values = [v for k, v in metadata if k.lower() == "authorization"]
        if not values:
            if self._insecure:
                return Identity("anonymous", OPERATOR, peer, certificate)
            raise AuthError("unauthenticated",
                            "no credentials: this agent needs a bearer token on TCP; pass "
                            "--token-file FILE or set $RELCTL_TOKEN_FILE (or use the agent's "
                            "Unix socket on its host)",
                            Identity("anonymous", "", peer, certificate))
        value = values[0]
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not text.lower().startswith(BEARER):
            raise AuthError("unauthenticated",
                            'the authorization metadata is not "Bearer TOKEN"',
                            Identity("anonymous", "", peer, certificate))
        presented = hashlib.sha256(text[len(BEARER):].strip().encode()).digest()
        found: Token | None = None
        for digest, token in self._tokens:
            # Every token is compared, match or not: the time taken tells nothing.
            if hmac.compare_digest(digest, presented) and found is None:
                found = token
        if found is None:
            raise AuthError("unauthenticated",
                            "unknown token: it matches none of this agent's [[tokens]]; check "
                            "--token-file (a token the agent reads at start: restart the agent "
                            "after changing its tokens)",
                            Identity("unknown token", "", peer, certificate))
        return Identity(found.name, found.role, peer, certificate)

    @staticmethod
    def from_unix_peer(uid: int | None, peer: str) -> Identity:
        """A caller through the agent's Unix socket: the socket's permissions let it in, so it
        is an operator; its uid (from the kernel) names it."""
        if uid is None:
            raise AuthError("unauthenticated",
                            "this connection did not come through the agent's Unix socket "
                            "front; connect to the socket named in agent.listen",
                            Identity("unknown local peer", "", peer))
        return Identity(unix_user(uid), OPERATOR, peer)

    @staticmethod
    def authorize(identity: Identity, rpc: str) -> None:
        """Raise AuthError("permission_denied") when ``identity``'s role does not allow ``rpc``."""
        if identity.role == OPERATOR or (identity.role == VIEWER and rpc in READ_ONLY_RPCS):
            return
        raise AuthError("permission_denied",
                        f"{identity.name} has the role {identity.role or 'none'}; {rpc} needs "
                        f"the role {OPERATOR} (a token with role = \"{OPERATOR}\" in the agent's "
                        "[[tokens]])", identity)


def needs_audit(rpc: str) -> bool:
    """Calls that change something are audited when accepted; refused calls always are."""
    return rpc not in READ_ONLY_RPCS and rpc not in OPERATOR_READS
