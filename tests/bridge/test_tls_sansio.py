"""The TLS parts that need no socket: inet_tls_dist's 4-byte handshake framing, and how ssl
errors become TlsHandshakeFailed with a cause."""

from __future__ import annotations

import hashlib
import ssl
import struct

import pytest

from bridge import ProtocolError, TlsCause, TlsHandshakeFailed
from bridge.handshake import ClientHandshake
from bridge.session import TICK
from bridge.tls import Packet4Handshake, looks_like_tls, tls_failure

PEER = "counter@localhost"


def framed4(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def challenge(number: int = 12345) -> bytes:
    from bridge.flags import OUR_FLAGS

    raw = PEER.encode()
    return framed4(b"N" + struct.pack(">QIIH", int(OUR_FLAGS), number, 99, len(raw)) + raw)


def handshake() -> Packet4Handshake:
    return Packet4Handshake(ClientHandshake(our_name="relctl_t@localhost", peer_name=PEER,
                                            cookie="monster", creation=7, challenge=424242))


def test_every_handshake_message_has_a_4_byte_length() -> None:
    hs = handshake()
    first = hs.start()
    (size,) = struct.unpack(">I", first[:4])
    assert size == len(first) - 4 and first[4:5] == b"N"
    assert hs.receive_data(framed4(b"sok")) == b""
    reply = hs.receive_data(challenge())
    assert struct.unpack(">I", reply[:4]) == (len(reply) - 4,) and reply[4:5] == b"r"
    assert reply[9:] == hashlib.md5(b"monster12345").digest()
    ack = framed4(b"a" + hashlib.md5(b"monster424242").digest())
    assert hs.receive_data(ack + TICK) == b""  # the connected phase's first bytes come along
    assert hs.result is not None and hs.result.leftover == TICK and hs.result.peer_creation == 99


def test_byte_at_a_time() -> None:
    hs = handshake()
    hs.start()
    stream = framed4(b"sok") + challenge() + framed4(b"a" + hashlib.md5(b"monster424242").digest())
    for i in range(len(stream)):
        assert hs.result is None
        hs.receive_data(stream[i:i + 1])
    assert hs.result is not None and hs.result.leftover == b""
    with pytest.raises(ProtocolError, match="already"):  # the connected phase is not its job
        hs.receive_data(TICK)


def test_a_2_byte_framed_peer_is_refused() -> None:
    with pytest.raises(ProtocolError, match="is that port really an Erlang node"):
        handshake().receive_data(b"\x00\x03sok\x00")


def test_tls_records_are_recognised() -> None:
    assert looks_like_tls(b"\x15\x03\x03\x00\x02\x02\x0a")  # an alert, TLS 1.2
    assert not looks_like_tls(struct.pack(">H", 3) + b"sok")
    assert not looks_like_tls(b"\x15")


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


def alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] alert")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(("exc", "cause", "words"), [
    (verify_error(20, "unable to get local issuer certificate"), TlsCause.NODE_CERT_UNTRUSTED,
     "does not chain to the CA we trust"),
    (verify_error(26, "unsupported certificate purpose"), TlsCause.NODE_CERT_UNTRUSTED,
     "(unsupported certificate purpose); check the node's certificate"),
    (verify_error(10, "certificate has expired"), TlsCause.NODE_CERT_EXPIRED, "renew it"),
    (verify_error(62, "Hostname mismatch"), TlsCause.NODE_CERT_NAME, "not valid for 'localhost'"),
    (alert("SSLV3_ALERT_HANDSHAKE_FAILURE"), TlsCause.CLIENT_CERT_REQUIRED,
     "requires a client certificate"),
    (alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), TlsCause.CLIENT_CERT_REQUIRED,
     "requires a client certificate"),
    (alert("TLSV1_ALERT_UNKNOWN_CA"), TlsCause.CLIENT_CERT_REJECTED,
     "rejected our client certificate (tlsv1 alert unknown ca)"),
    (alert("TLSV1_ALERT_PROTOCOL_VERSION"), TlsCause.NO_COMMON_VERSION, "TLS 1.2"),
    (alert("WRONG_VERSION_NUMBER"), TlsCause.NOT_TLS, "-proto_dist inet_tls"),
    (ConnectionResetError(), TlsCause.NOT_TLS, "(connection reset)"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), TlsCause.NOT_TLS,
     "closed the connection during the TLS handshake"),
    (alert("SOMETHING_NEW"), TlsCause.OTHER, "something new"),
])
def test_ssl_errors_get_a_cause_and_a_remedy(exc: BaseException, cause: TlsCause, words: str) -> None:
    error = tls_failure(exc, node=PEER, port=4242, server_name="localhost")
    assert isinstance(error, TlsHandshakeFailed) and error.cause is cause
    assert str(error).startswith(f"TLS handshake with {PEER} (port 4242) failed: ")
    assert words in str(error)
