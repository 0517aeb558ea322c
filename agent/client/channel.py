"""How `relctl` reaches an agent: its Unix socket as is, TCP with a bearer token, and TLS
(with a client certificate for mTLS) when a CA is given. The token never leaves this host in
clear: without TLS it is sent to loopback addresses only. :func:`transport_hint` says what to
do about an agent that could not be reached.

Loaded only when a command opens a channel or explains a failed one (see
:func:`agent.client.common.connect`).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc

from .status import CliError, ExitCode


class Credentials(Protocol):
    """What a channel needs of the settings (:class:`agent.client.common.Settings` has it)."""

    @property
    def token_file(self) -> str: ...
    @property
    def ca(self) -> str: ...
    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def host_timeout(self) -> float: ...
    @property
    def token_dir(self) -> str: ...
    @property
    def per_agent(self) -> dict[str, dict[str, str]]: ...


# The agent accepts a ping this often (agent.api.service.KEEPALIVE_SERVER_OPTIONS allows one
# every 0.5 s); more often would get the connection closed as abusive.
MIN_PING_INTERVAL = 1.0


def keepalive_options(host_timeout: float) -> list[tuple[str, int]]:
    """Channel options under which a call to an agent that went silent (a cut link, a stopped
    host) fails within about ``host_timeout`` seconds, instead of waiting on a TCP connection
    that nothing will ever close: an HTTP/2 ping every third of it while a call is open, and
    the connection given up when a ping is not answered in the rest. An agent that is merely
    slow (a long soak, a big code_change) answers pings, so it is never taken for silent."""
    interval = max(MIN_PING_INTERVAL, host_timeout / 3)
    wait = max(MIN_PING_INTERVAL, host_timeout - interval)
    return [("grpc.keepalive_time_ms", int(interval * 1000)),
            ("grpc.keepalive_timeout_ms", int(wait * 1000)),
            # grpc 1.6x waits for a ping's answer this long (default 1 minute), whatever
            # keepalive_timeout says: measured, a stopped agent was noticed only with this.
            ("grpc.http2.ping_timeout_ms", int(wait * 1000)),
            # Only while calls are open: an idle channel has nothing to lose.
            ("grpc.keepalive_permit_without_calls", 0),
            # grpc stops pinging after 2 pings without data by default: a quiet step of an
            # operation (the health soak) sends no data for minutes.
            ("grpc.http2.max_pings_without_data", 0)]


def _error(message: str) -> CliError:
    return CliError(message, ExitCode.USAGE)


def _read(path: str, what: str, option: str) -> bytes:
    from pathlib import Path  # token and TLS files: TCP agents only (the socket needs none)

    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise _error(f"cannot read the {what} {path} ({option}): {exc.strerror or exc}") from None


def read_token(path: str) -> str:
    """The one bearer token in the file at ``path``."""
    token = _read(path, "token file", "--token-file / $RELCTL_TOKEN_FILE").decode(
        "utf-8", "replace").strip()
    if not token or any(ch.isspace() for ch in token):
        raise _error(f"the token file {path} must hold one token (one word)")
    return token


def _host(agent: str) -> str:
    host = agent.rpartition(":")[0] or agent
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(agent: str) -> bool:
    """Whether the host of ``agent`` (HOST:PORT) is this machine's loopback."""
    host = _host(agent)
    if host == "localhost":
        return True
    import ipaddress  # only for TCP agents: the Unix socket, the usual case, needs none

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Details(namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                       "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor,
                   grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor,
                   grpc.StreamStreamClientInterceptor):
    """Adds "authorization: Bearer TOKEN" to every call of a plaintext (loopback) channel;
    grpc's own token credentials insist on TLS."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> _Details:
        metadata = [*(details.metadata or ()), self._header]
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                               requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any,
                                requests: Any) -> Any:
        return continuation(self._details(details), requests)


# agent -> (CA, client certificate, key) its TLS channel was opened with: what a failed
# handshake is diagnosed with (diagnose_tls).
_TLS_MATERIAL: dict[str, tuple[str, str, str]] = {}


def token_file_for(settings: Credentials, agent: str) -> str:
    """The token file for ``agent``: its inventory group's label, else the file named by its
    address in --token-dir (HOST:PORT, else HOST), else --token-file; "" for none."""
    own = settings.per_agent.get(agent, {}).get("token_file", "")
    if own:
        return own
    if settings.token_dir:
        from pathlib import Path

        directory = Path(settings.token_dir).expanduser()
        host = _host(agent)
        for name in (agent, host):
            if (directory / name).is_file():
                return str(directory / name)
        if not settings.token_file:
            raise _error(f"no token for agent {agent} in --token-dir {settings.token_dir}: put "
                         f"it in {directory / agent} or {directory / host}")
    return settings.token_file


def open_channel(settings: Credentials, agent: str) -> grpc.Channel:
    """The channel to ``agent`` (HOST:PORT or unix:PATH) with the credentials given, and the
    keepalive that bounds how long a silent agent can keep a call waiting
    (:func:`keepalive_options`)."""
    options = keepalive_options(settings.host_timeout)
    if agent.startswith("unix:"):
        return grpc.insecure_channel(agent, options)  # the socket's permissions decide
    if bool(settings.cert) != bool(settings.key):
        raise _error("--cert and --key go together (the client certificate and its key)")
    token_file = token_file_for(settings, agent)
    token = read_token(token_file) if token_file else ""
    ca = settings.per_agent.get(agent, {}).get("ca", "") or settings.ca
    if ca or settings.cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "CA certificate", "--ca") if ca else None,
            private_key=_read(settings.key, "client key", "--key") if settings.key else None,
            certificate_chain=(_read(settings.cert, "client certificate", "--cert")
                               if settings.cert else None))
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token))
        _TLS_MATERIAL[agent] = (ca, settings.cert, settings.key)
        return grpc.secure_channel(agent, credentials, options)
    if token and not is_loopback(agent):
        raise _error(f"refusing to send the token to {agent} unencrypted: pass --ca FILE (the CA "
                     "of the agent's certificate) to talk TLS")
    plain = grpc.insecure_channel(agent, options)
    return grpc.intercept_channel(plain, _BearerToken(token)) if token else plain


# (what grpc's details say, what to do, which agents: "unix", "tcp" (TLS advice) or "any")
_HINTS: Sequence[tuple[str, str, str]] = (
    ("permission denied", "you may not use this socket: add your user to the agent's socket "
                          "group (agent.socket_group; e.g. usermod -aG relctl $USER), or ask "
                          "from an account that is in it", "any"),
    ("no such file", "no agent socket there: is relctl-agent running on this host? "
                     "(systemctl status relctl-agent; choose another agent with --agent)", "any"),
    ("connection refused", "nothing listens on this socket: relctl-agent is not running, or it "
                           "stopped and left the socket behind (systemctl status relctl-agent)",
     "unix"),
    ("certificate", "the TLS handshake failed: check --ca (the CA that signed the agent's "
                    "certificate) and, if the agent verifies clients, --cert and --key", "tcp"),
    ("handshake", "the TLS handshake failed: check --ca (the CA that signed the agent's "
                  "certificate) and, if the agent verifies clients, --cert and --key", "tcp"),
    ("hostname verification", "the agent's certificate does not name the address relctl "
                              "dialed: dial a name the certificate holds, or reissue it with "
                              "this address in subjectAltName", "tcp"),
    ("socket closed", "the agent closed the connection: if it serves TLS on this address, pass "
                      "--ca FILE; if it verifies clients, --cert and --key too", "tcp"),
    # A handshake the agent refuses ends in a reset as often as in a close: the connection
    # goes through the agent's TCP front, which may close before reading all the client sent.
    ("connection reset", "the agent reset the connection: if it serves TLS on this address, "
                         "pass --ca FILE; if it verifies clients, --cert and --key too", "tcp"),
)


_TLS_WORDS = ("hostname verification", "certificate", "handshake", "issuer", "ssl",
              "peer name", "socket closed", "connection reset")


def _subject(cert: dict[str, Any]) -> str:
    """"CN=relctl test CA, O=..." of a certificate as ssl's getpeercert()/get_ca_certs() give
    it."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C"}
    return ", ".join(f"{short.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)


def names_match(host: str, names: Sequence[tuple[str, str]]) -> bool:
    """Whether ``host`` is one of a certificate's subjectAltNames (a DNS wildcard covers one
    label), as TLS clients check it."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for kind, value in names:
        if ip is not None and kind == "IP Address":
            with_ip = value.strip()
            try:
                if ipaddress.ip_address(with_ip) == ip:
                    return True
            except ValueError:
                continue
        elif ip is None and kind == "DNS":
            pattern, name = value.lower(), host.lower()
            if pattern == name or (pattern.startswith("*.") and "." in name
                                   and name.split(".", 1)[1] == pattern[2:]):
                return True
    return False


def diagnose_tls(agent: str, ca: str, cert: str, key: str, timeout: float = 3.0) -> str | None:
    """What is wrong with an agent's TLS, found by a handshake of our own: the certificate is
    not signed by the CA given (which one was used), or it does not name the address dialed
    (which names it holds). None when this finds nothing to say."""
    import socket
    import ssl
    from pathlib import Path

    host = _host(agent)
    port = agent.rpartition(":")[2]
    try:
        context = ssl.create_default_context(cafile=str(Path(ca).expanduser()) if ca else None)
        context.check_hostname = False  # checked below, to say which names it has
        if cert and key:
            context.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    except (OSError, ssl.SSLError):
        return None  # the files themselves: open_channel has said what is wrong with them
    authorities = "; ".join(_subject(c) for c in context.get_ca_certs()) or "none"
    against = (f"the CA in --ca {ca} ({authorities})" if ca
               else "this host's default CAs (no --ca given)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, \
                context.wrap_socket(raw) as tls:
            peer = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return (f"the agent's certificate is not trusted: {exc.verify_message}, checked against "
                f"{against}; pass the CA that signed the agent's certificate with --ca")
    except (OSError, ssl.SSLError, ValueError):
        return None
    # typeshed types the entries loosely; they are (kind, value) pairs of str.
    names = [(str(entry[0]), str(entry[1])) for entry in peer.get("subjectAltName", ())]
    if names_match(host, names):
        return None
    held = ", ".join(f"{'IP' if k == 'IP Address' else k}:{v}" for k, v in names) or "none"
    return (f"the agent's certificate (signed by {against}, which is right) does not name "
            f"{host}, the address relctl dialed; its names: {held}. Dial the agent by one of "
            f"those names, or reissue its certificate with {host} in subjectAltName")


def transport_hint(agent: str, details: str) -> str:
    """What to do about an agent that could not be reached, judging by grpc's details. A Unix
    socket is never TLS: no TLS advice for it. A failed TLS handshake is diagnosed by one of
    our own (:func:`diagnose_tls`), so that the hint names the mismatch."""
    lowered = details.lower()
    kind = "unix" if agent.startswith("unix:") else "tcp"
    material = _TLS_MATERIAL.get(agent)
    if kind == "tcp" and material is not None and any(w in lowered for w in _TLS_WORDS):
        found = diagnose_tls(agent, *material)
        if found is not None:
            return found
    for needle, hint, scope in _HINTS:
        if needle in lowered and scope in ("any", kind):
            return hint
    if kind == "unix":
        return ("is relctl-agent running on this host? (systemctl status relctl-agent; choose "
                "another agent with --agent)")
    return "is relctl-agent running there? (choose the agent with --agent or $RELCTL_AGENT)"
