"""Distribution over TLS (``-proto_dist inet_tls``): what differs from plain TCP.

OTP's inet_tls_dist runs the same handshake inside TLS, but with a 4-byte length before each
handshake message from the start (plain TCP uses 2 bytes until the handshake ends), and EPMD
stays plain TCP. :class:`Packet4Handshake` adapts the sans-IO handshake to that framing, so the
handshake itself stays one state machine.

TLS failures are turned into :class:`TlsHandshakeFailed` with a ``cause`` (a
:class:`TlsCause`) a caller can map to its own settings, and a message that names what the
peer or the certificate check said and what to do. An OTP node:

* accepts TLS 1.2 only unless its ``ssl_dist_optfile`` sets ``versions``;
* as a client checks the server certificate against the host part of the node name (sent as
  SNI) when it verifies peers, so node certificates name their host in subjectAltName;
* with ``verify_peer`` and ``fail_if_no_peer_cert`` requires a client certificate that chains
  to its ``cacertfile``; it then checks no name in it (unless its verify_fun is
  ``inet_tls_dist:verify_client/3``, which matches the client's IP address).
"""

from __future__ import annotations

import enum
import ssl
import struct
from dataclasses import replace

from .errors import BridgeError, HandshakeFailed, ProtocolError
from .handshake import MAX_HANDSHAKE_MESSAGE, ClientHandshake, HandshakeResult

__all__ = ["TlsCause", "TlsHandshakeFailed", "Packet4Handshake", "looks_like_tls", "tls_failure",
           "no_tls_answer", "requires_tls"]


class TlsCause(enum.StrEnum):
    NODE_CERT_UNTRUSTED = "node_cert_untrusted"   # does not chain to the CA we trust
    NODE_CERT_EXPIRED = "node_cert_expired"       # or not valid yet
    NODE_CERT_NAME = "node_cert_name"             # not valid for the name we checked
    CLIENT_CERT_REQUIRED = "client_cert_required"  # the node wants one and we sent none
    CLIENT_CERT_REJECTED = "client_cert_rejected"  # the node does not trust ours
    NO_COMMON_VERSION = "no_common_version"
    NOT_TLS = "not_tls"                           # the node speaks plain distribution
    REQUIRES_TLS = "requires_tls"                 # we spoke plain, the node speaks TLS
    OTHER = "other"


class TlsHandshakeFailed(HandshakeFailed):
    """The TLS layer under the distribution failed; ``cause`` says which way."""

    def __init__(self, message: str, *, cause: TlsCause) -> None:
        self.cause = cause
        super().__init__(message)


# OpenSSL's X509_V_ERR_* codes that matter here (verify_code of SSLCertVerificationError).
_EXPIRED_CODES = {9, 10}           # not yet valid, expired
_CHAIN_CODES = {2, 18, 19, 20, 21}  # no issuer we trust: self-signed, unknown local issuer...
_NAME_CODES = {62, 64}             # hostname mismatch, IP address mismatch
# Alerts the node sends when it turns our certificate down (OTP: "Unknown CA", "Bad
# Certificate"...), by OpenSSL's reason name.
_REJECTED_ALERTS = {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                    "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                    "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                    "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR"}
_VERSION_REASONS = {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                    "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_INSUFFICIENT_SECURITY"}
_NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNEXPECTED_EOF_WHILE_READING",
                    "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}
_NOT_TLS_HINT = "is it started with TLS distribution (-proto_dist inet_tls)? If not, connect without TLS"


def tls_failure(exc: BaseException, *, node: str, port: int, server_name: str) -> TlsHandshakeFailed:
    """The error for ``exc``, raised while TLS was being set up with ``node`` (at ``port``)."""
    where = f"TLS handshake with {node} (port {port}) failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        said = exc.verify_message or exc.reason or str(exc)
        if code in _NAME_CODES:
            return TlsHandshakeFailed(
                f"{where}: the node's certificate is not valid for {server_name!r}; its "
                "subjectAltName must name the host of the node name (OTP nodes check the same), "
                "or check another name, or turn the name check off", cause=TlsCause.NODE_CERT_NAME)
        if code in _EXPIRED_CODES:
            return TlsHandshakeFailed(f"{where}: the node's certificate is out of date ({said}); "
                                      "renew it", cause=TlsCause.NODE_CERT_EXPIRED)
        if code in _CHAIN_CODES:
            return TlsHandshakeFailed(
                f"{where}: certificate verify failed ({said}): the node's certificate does not "
                "chain to the CA we trust; use the CA file of the CA that signed it",
                cause=TlsCause.NODE_CERT_UNTRUSTED)
        return TlsHandshakeFailed(f"{where}: certificate verify failed ({said}); check the node's "
                                  "certificate and the CA file we trust",
                                  cause=TlsCause.NODE_CERT_UNTRUSTED)
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        reason = exc.reason or ""
        said = reason.lower().replace("_", " ") if reason else str(exc)
        if reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            # A node that requires a client certificate answers a missing one with these.
            return TlsHandshakeFailed(
                f"{where}: the node refused the handshake ({said}): it requires a client "
                "certificate (signed by a CA in its cacertfile); give ours with its key",
                cause=TlsCause.CLIENT_CERT_REQUIRED)
        if reason in _REJECTED_ALERTS:
            return TlsHandshakeFailed(
                f"{where}: the node rejected our client certificate ({said}); it must be signed "
                "by a CA in the node's cacertfile and be valid now", cause=TlsCause.CLIENT_CERT_REJECTED)
        if reason in _VERSION_REASONS:
            return TlsHandshakeFailed(
                f"{where}: no TLS version or cipher in common ({said}); OTP nodes speak TLS 1.2 "
                "unless their ssl_dist_optfile sets versions", cause=TlsCause.NO_COMMON_VERSION)
        if reason in _NOT_TLS_REASONS:
            return TlsHandshakeFailed(f"{where}: the node does not answer in TLS ({said}); "
                                      f"{_NOT_TLS_HINT}", cause=TlsCause.NOT_TLS)
        return TlsHandshakeFailed(f"{where}: {said}", cause=TlsCause.OTHER)
    # A node without TLS reads our ClientHello as the start of a long handshake message and
    # closes when its setup timer (net_setuptime, 7 s) runs out.
    said = str(exc) or ("connection reset" if isinstance(exc, ConnectionResetError)
                        else type(exc).__name__)
    return TlsHandshakeFailed(f"{where}: the node closed the connection during the TLS handshake "
                              f"({said}); {_NOT_TLS_HINT}", cause=TlsCause.NOT_TLS)


def no_tls_answer(node: str, port: int, timeout: float) -> TlsHandshakeFailed:
    return TlsHandshakeFailed(f"TLS handshake with {node} (port {port}) got no answer within "
                              f"{timeout:g} s; {_NOT_TLS_HINT}", cause=TlsCause.NOT_TLS)


def looks_like_tls(data: bytes) -> bool:
    """Whether a plain handshake's first bytes from the peer are a TLS record instead.

    A TLS node answers our plain name message with an alert (0x15) record, version 3.x. As a
    2-byte handshake length that would be over 5000, more than any handshake message."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


def requires_tls(node: str) -> TlsHandshakeFailed:
    return TlsHandshakeFailed(
        f"{node} answered in TLS: it uses TLS distribution (-proto_dist inet_tls); connect with "
        "TLS (the CA of its certificate and, usually, a client certificate)",
        cause=TlsCause.REQUIRES_TLS)


def _reframe_out(framed2: bytes) -> bytes:
    """2-byte-length messages (as the handshake writes them) with 4-byte lengths instead."""
    out = bytearray()
    view = memoryview(framed2)
    while view:
        (size,) = struct.unpack_from(">H", view)
        out += struct.pack(">I", size)
        out += view[2:2 + size]
        view = view[2 + size:]
    return bytes(out)


class Packet4Handshake:
    """A :class:`ClientHandshake` whose messages travel with 4-byte lengths (inet_tls_dist)."""

    def __init__(self, inner: ClientHandshake) -> None:
        self._inner = inner
        self.peer_name = inner.peer_name
        self._buffer = bytearray()
        self.result: HandshakeResult | None = None

    def start(self) -> bytes:
        return _reframe_out(self._inner.start())

    def receive_data(self, data: bytes) -> bytes:
        if self.result is not None:
            raise ProtocolError("handshake is already connected")
        self._buffer += data
        buffer = self._buffer
        out = bytearray()
        while self._inner.result is None and len(buffer) >= 4:
            (size,) = struct.unpack_from(">I", buffer)
            if size > MAX_HANDSHAKE_MESSAGE:
                raise ProtocolError(f"{self._inner.peer_name} sent a {size}-byte handshake "
                                    "message; is that port really an Erlang node?")
            if len(buffer) < 4 + size:
                break
            message = bytes(buffer[4:4 + size])
            del buffer[:4 + size]
            out += self._inner.receive_data(struct.pack(">H", size) + message)
        result = self._inner.result
        if result is not None and self.result is None:
            # What followed the ack in our buffer belongs to the connected phase.
            self.result = replace(result, leftover=result.leftover + bytes(buffer))
            buffer.clear()
        return _reframe_out(bytes(out))

    def connection_closed(self, exc: Exception | None = None) -> BridgeError:
        return self._inner.connection_closed(exc)
