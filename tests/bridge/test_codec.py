"""The term codec without an Erlang node: exact bytes, limits, round trips, hostile input."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import Atom, BitString, DecodeError, EncodeError, Export, ImproperList, Pid, Reference, decode, encode
from bridge.codec import decode_prefix

from .strategies import terms


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, b"\x83a\x01"),
        (-1, b"\x83b\xff\xff\xff\xff"),
        (2**31, b"\x83n\x04\x00\x00\x00\x00\x80"),
        (-(2**40), b"\x83n\x06\x01" + (2**40).to_bytes(6, "little")),
        (Atom("ok"), b"\x83w\x02ok"),
        (True, b"\x83w\x04true"),
        ((), b"\x83h\x00"),
        ([], b"\x83j"),
        ("abc", b"\x83k\x00\x03abc"),
        ("", b"\x83j"),
        ("\u65e5", b"\x83l\x00\x00\x00\x01b\x00\x00\x65\xe5j"),
        (b"\x00\xff", b"\x83m\x00\x00\x00\x02\x00\xff"),
        ([1, 2], b"\x83l\x00\x00\x00\x02a\x01a\x02j"),
        (ImproperList((1,), Atom("t")), b"\x83l\x00\x00\x00\x01a\x01w\x01t"),
        ({Atom("a"): 1}, b"\x83t\x00\x00\x00\x01w\x01aa\x01"),
        (1.5, b"\x83F" + struct.pack(">d", 1.5)),
        (BitString(b"\x80", 1), b"\x83M\x00\x00\x00\x01\x01\x80"),
        (Export(Atom("lists"), Atom("map"), 2), b"\x83qw\x05listsw\x03mapa\x02"),
    ],
)
def test_encoding_is_what_erlang_reads(value: Any, expected: bytes) -> None:
    assert encode(value) == expected
    # Strings are lists in Erlang: "" is [], and text beyond Latin-1 comes back as code points.
    comes_back = {"": [], "\u65e5": [0x65E5]}.get(value, value) if isinstance(value, str) else value
    assert decode(expected) == comes_back


def test_pid_and_reference_use_the_modern_tags() -> None:
    pid = Pid(Atom("n@h"), 1, 2, 3)
    assert encode(pid) == b"\x83Xw\x03n@h" + struct.pack(">III", 1, 2, 3)
    ref = Reference(Atom("n@h"), 7, (1, 2, 3))
    assert encode(ref) == b"\x83Z\x00\x03w\x03n@h" + struct.pack(">IIII", 7, 1, 2, 3)
    assert decode(encode(pid)) == pid and decode(encode(ref)) == ref


def test_atoms_are_not_strings() -> None:
    assert Atom("ok") != "ok" and "ok" != Atom("ok")
    assert Atom("ok") == Atom("ok") and hash(Atom("ok")) == hash(Atom("ok"))
    assert decode(encode({Atom("k"): 1, "k": 2})) == {Atom("k"): 1, "k": 2}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "None has no Erlang equivalent"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (object(), "cannot encode a object"),
        ({1, 2}, "cannot encode a set"),
        (Pid(Atom("n@h"), 2**40, 0, 0), "does not fit"),
        (Reference(Atom("n@h"), 0, ()), "1..5 words"),
    ],
)
def test_values_without_an_erlang_form_are_refused(value: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode(value)


def test_compressed_terms_round_trip_and_are_smaller() -> None:
    value = [b"a" * 1000, "x" * 500]
    packed = encode(value, compressed=True)
    assert packed[1] == 80 and len(packed) < len(encode(value))
    assert decode(packed) == value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x82a\x01", "version byte"),
        (b"\x83", "truncated"),
        (b"\x83a", "truncated"),
        (b"\x83a\x01\x00", "trailing"),
        (b"\x83l\xff\xff\xff\xff", "claims 4294967295 elements"),
        (b"\x83t\x7f\xff\xff\xff", "claims"),
        (b"\x83h\xffa\x01", "claims 255 elements"),
        (b"\x83m\x00\x00\x10\x00abc", "binary needs 4096 bytes"),
        (b"\x83k\x00\x09abc", "string needs 9 bytes"),
        (b"\x83R\x00", "atom cache"),
        (b"\x83\x01", "unknown tag"),
        (b"\x83M\x00\x00\x00\x01\x00\x80", "cannot have 0 bits"),
        (b"\x83M\x00\x00\x00\x01\x09\x80", "cannot have 9 bits"),
        (b"\x83Z\x00\x09w\x01n", "9 words"),
        (b"\x83n\x01\x05\x01", "sign byte"),
        (b"\x83t\x00\x00\x00\x02a\x01a\x01F" + struct.pack(">d", 1.0) + b"a\x02", "equal in Python"),
        (b"\x83t\x00\x00\x00\x01l\x00\x00\x00\x01a\x01ja\x01", "hashable"),
        (b"\x83Xa\x01" + b"\x00" * 12, "node name must be an atom"),
        (b"\x83w\x01\xff", "invalid term"),
    ],
)
def test_malformed_input_raises_decode_error_that_says_why(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def test_nesting_is_bounded() -> None:
    deep = b"\x83" + b"h\x01" * 10_000 + b"j"
    with pytest.raises(DecodeError, match="deeper than 256"):
        decode(deep)
    assert decode(b"\x83" + b"h\x01" * 100 + b"j", max_depth=100) is not None
    with pytest.raises(DecodeError):
        decode(b"\x83" + b"h\x01" * 101 + b"j", max_depth=100)


def test_a_compressed_bomb_is_refused_before_it_inflates() -> None:
    body = b"m" + struct.pack(">I", 200_000_000) + b"\0" * 1000
    bomb = b"\x83P" + struct.pack(">I", 200_000_005) + zlib.compress(body)
    with pytest.raises(DecodeError, match="over the limit"):
        decode(bomb)
    liar = b"\x83P" + struct.pack(">I", 10) + zlib.compress(b"j" * 1_000_000)
    with pytest.raises(DecodeError, match="another size"):
        decode(liar)


def test_decode_prefix_reads_terms_back_to_back() -> None:
    data = encode((Atom("a"), 1)) + encode([2])
    first, pos = decode_prefix(data)
    second, end = decode_prefix(data, pos)
    assert (first, second, end) == ((Atom("a"), 1), [2], len(data))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(terms)
def test_round_trip(value: Any) -> None:
    assert decode(encode(value)) == value
    assert decode(encode(value, compressed=True)) == value


@settings(max_examples=3000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    for candidate in (data, b"\x83" + data, b"\x83P" + data):
        try:
            decode(candidate)
        except DecodeError:
            pass


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(terms, st.data())
def test_corrupted_encodings_raise_only_decode_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            decode(candidate)
        except DecodeError:
            pass
