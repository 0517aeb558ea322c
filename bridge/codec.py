"""External Term Format: Erlang terms <-> bytes. Sans-IO; no state between calls.

Mapping (see ``bridge.terms`` for the small types):

==========================  =====================================================
Erlang                      Python
==========================  =====================================================
integer                     int
float                       float (NaN and infinities cannot be encoded)
atom ``true``/``false``     bool
other atoms                 Atom
tuple                       tuple
proper list                 list (``[]`` for NIL)
improper list               ImproperList
string (``STRING_EXT``)     str when decoding; a ``str`` always encodes as a charlist
binary                      bytes (bytearray and memoryview encode as binaries too)
bitstring                   BitString
map                         dict
pid, reference, port        Pid, Reference, Port
``fun M:F/A``               Export
other funs                  Fun (opaque, re-encoded byte for byte)
==========================  =====================================================

Decoding bytes from the network raises nothing but ``DecodeError``: counts are checked against
the bytes that remain before anything is allocated, nesting depth is bounded, a compressed
term may not inflate past ``max_size``, and a map whose keys crowd one Python hash (which would
make building the dict quadratic) is refused.

Every decode also has a ``DecodeBudget``: how many elements (the items of every tuple, list and
map) and how many bytes (of binaries, strings, big integers and inflated compressed terms) one
message may produce, relative to its size on the wire, with a floor and an absolute cap. Small
terms on the wire can make big Python objects (``lists:duplicate(30000000, [])`` is 30 MB of
bytes and over 2 GB of lists; a compressed term of 8 KB inflates to millions of them): a term
over its budget raises ``TermTooLarge`` (a ``DecodeError``) as soon as the budget runs out,
before the memory is spent.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import DecodeError, EncodeError, TermTooLarge
from .terms import MAX_ATOM_CHARACTERS, Atom, BitString, Export, Fun, ImproperList, Pid, Port, Reference

__all__ = ["encode", "decode", "decode_prefix", "decode_body", "encode_term_into", "DecodeBudget",
           "DEFAULT_BUDGET", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_SIZE"]

VERSION = 131

# Tags (erts/emulator/beam/external.h).
NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
COMPRESSED = 80
ATOM_CACHE_REF = 82
NEW_PID_EXT = 88
NEW_PORT_EXT = 89
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
REFERENCE_EXT = 101
PORT_EXT = 102
PID_EXT = 103
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
NEW_FUN_EXT = 112
EXPORT_EXT = 113
NEW_REFERENCE_EXT = 114
SMALL_ATOM_EXT = 115
MAP_EXT = 116
FUN_EXT = 117
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119
V4_PORT_EXT = 120
LOCAL_EXT = 121

DEFAULT_MAX_DEPTH = 256  # two Python frames a level; stays well inside the recursion limit
DEFAULT_MAX_SIZE = 64 * 1024 * 1024  # bytes a compressed term may inflate to
# Python's int hash is not randomised: a peer can send map keys that all share one hash and
# make building the dict quadratic. Legitimate maps have next to no full-hash collisions.
_HASH_CHECK_FROM = 32  # keys; smaller maps cost at most 32 probes a key
_MAX_SHARED_HASH = 8

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_PID_TAIL = struct.Struct(">III")  # id, serial, creation
_PORT_TAIL = struct.Struct(">II")  # id, creation



@dataclass(frozen=True)
class DecodeBudget:
    """How much one message may decode to. ``elements`` counts the items of every tuple, list
    and map (a map's keys and values); ``bytes`` counts the bytes of binaries, strings, big
    integers and bitstrings, and what compressed terms inflate to.

    For a message of ``wire`` bytes the limits are ``per_wire_byte * wire``, at least the
    floor (``min_*``) and at most the cap (``max_*``). An uncompressed term cannot exceed one
    element and one byte per wire byte, so for it only the caps matter; the ratio is what bounds
    a compressed term. The defaults let through real replies (tens of MB of state) and refuse
    ``lists:duplicate(30000000, [])`` before it costs more than about 250 MB (an element costs
    about 80 bytes of Python objects at worst). ``elements_setting`` and ``bytes_setting`` name
    the settings the caps come from, for the error ("[agent] max_term_elements").
    """

    max_elements: int = 3_000_000
    max_bytes: int = 256 * 1024 * 1024
    min_elements: int = 1_000_000
    min_bytes: int = 16 * 1024 * 1024
    elements_per_wire_byte: int = 1
    bytes_per_wire_byte: int = 64
    elements_setting: str = ""
    bytes_setting: str = ""
    # Up to this wire size the floors apply: most messages are small, and decoding one should
    # not pay for the arithmetic.
    _floor_wire: int = field(init=False, repr=False, compare=False)
    _floor_limits: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        floor_wire = min(self.min_elements // max(self.elements_per_wire_byte, 1),
                         self.min_bytes // max(self.bytes_per_wire_byte, 1))
        object.__setattr__(self, "_floor_wire", floor_wire)
        object.__setattr__(self, "_floor_limits", self._compute(floor_wire))

    def limits(self, wire: int) -> tuple[int, int]:
        """The (elements, bytes) a message of ``wire`` bytes may decode to."""
        if wire <= self._floor_wire:
            return self._floor_limits
        return self._compute(wire)

    def _compute(self, wire: int) -> tuple[int, int]:
        elements = min(self.max_elements, max(self.min_elements, wire * self.elements_per_wire_byte))
        size = min(self.max_bytes, max(self.min_bytes, wire * self.bytes_per_wire_byte))
        return elements, size


DEFAULT_BUDGET = DecodeBudget()

_TRUE = Atom("true")
_FALSE = Atom("false")
_ATOM_TAGS = frozenset((ATOM_UTF8_EXT, SMALL_ATOM_UTF8_EXT, ATOM_EXT, SMALL_ATOM_EXT))


# ======================================================================================
# Decoding
# ======================================================================================


def decode(data: bytes | bytearray | memoryview, *, max_depth: int = DEFAULT_MAX_DEPTH,
           max_size: int = DEFAULT_MAX_SIZE, budget: DecodeBudget = DEFAULT_BUDGET) -> Any:
    """Decode one whole external term (``term_to_binary`` output, starting with 131)."""
    buf = bytes(data)
    term, end = decode_prefix(buf, 0, max_depth=max_depth, max_size=max_size, budget=budget)
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} trailing bytes after the term")
    return term


def decode_prefix(data: bytes, pos: int = 0, *, max_depth: int = DEFAULT_MAX_DEPTH,
                  max_size: int = DEFAULT_MAX_SIZE, budget: DecodeBudget = DEFAULT_BUDGET) -> tuple[Any, int]:
    """Decode the versioned term that starts at ``pos``; return it and the position after it.

    Distribution messages carry two terms back to back (control, then payload). The budget's
    limits are those of a message of ``len(data)`` bytes: pass the message, not a larger buffer."""
    try:
        if data[pos] != VERSION:
            raise DecodeError(f"expected version byte 131 at offset {pos}, got {data[pos]}")
        decoder = _Decoder(data, max_depth, budget)
        if data[pos + 1] == COMPRESSED:
            return _decode_compressed(decoder, pos + 2, max_size)
        return decoder.term(pos + 1, 0)
    except DecodeError:
        raise
    except _FAULTS as exc:
        raise _as_decode_error(exc) from None


def decode_body(data: bytes, pos: int, *, max_depth: int = DEFAULT_MAX_DEPTH,
                budget: DecodeBudget = DEFAULT_BUDGET) -> tuple[Any, int]:
    """Decode the (unversioned) term that starts at ``pos``: a piece of a larger term."""
    try:
        return _Decoder(data, max_depth, budget).term(pos, 1)
    except DecodeError:
        raise
    except _FAULTS as exc:
        raise _as_decode_error(exc) from None


# What hostile bytes can make Python raise while decoding. A try statement rather than a
# context manager around each decode: that costs a generator per reply.
_FAULTS = (IndexError, struct.error, RecursionError, ValueError, OverflowError, UnicodeDecodeError, TypeError,
           MemoryError)


def _as_decode_error(exc: BaseException) -> DecodeError:
    """Whatever hostile bytes make Python raise while decoding leaves as a DecodeError."""
    if isinstance(exc, IndexError | struct.error):
        return DecodeError("term is truncated")
    if isinstance(exc, RecursionError):
        return DecodeError("term is nested too deeply for this interpreter")
    return DecodeError(f"invalid term: {exc}")


def _decode_compressed(decoder: _Decoder, pos: int, max_size: int) -> tuple[Any, int]:
    data = decoder.data
    (size,) = _U32.unpack_from(data, pos)
    if size > max_size:
        raise DecodeError(f"compressed term inflates to {size} bytes, over the limit of {max_size}")
    decoder.spend_bytes(size, "inflated")
    inflater = zlib.decompressobj()
    try:
        # max_length bounds the work even when the declared size lies.
        raw = inflater.decompress(data[pos + 4:], size + 1)
    except zlib.error as exc:
        raise DecodeError(f"compressed term does not inflate: {exc}") from None
    if len(raw) != size or not inflater.eof:
        raise DecodeError(f"compressed term declares {size} bytes but inflates to another size")
    end = len(data) - len(inflater.unused_data)
    decoder.data = raw  # the rest of the budget goes on with the inflated bytes
    term, used = decoder.term(0, 0)
    if used != size:
        raise DecodeError(f"{size - used} trailing bytes inside the compressed term")
    return term, end


class _Decoder:
    """One decode pass over a buffer. Recursive descent; ``depth`` counts open containers."""

    __slots__ = ("data", "max_depth", "budget", "wire", "elements_left", "bytes_left")

    def __init__(self, data: bytes, max_depth: int, budget: DecodeBudget) -> None:
        self.data = data
        self.max_depth = max_depth
        self.budget = budget
        self.wire = len(data)
        self.elements_left, self.bytes_left = budget.limits(self.wire)

    def spend_elements(self, count: int) -> None:
        left = self.elements_left - count
        if left < 0:
            self._over("elements", self.budget.limits(self.wire)[0])
        self.elements_left = left

    def spend_bytes(self, count: int, what: str = "") -> None:
        left = self.bytes_left - count
        if left < 0:
            self._over(f"{what} bytes".lstrip(), self.budget.limits(self.wire)[1])
        self.bytes_left = left

    def _over(self, what: str, limit: int) -> None:
        budget = self.budget
        if what == "elements":
            cap, setting = budget.max_elements, budget.elements_setting
        else:
            cap, setting = budget.max_bytes, budget.bytes_setting
        hint = f"; the cap is {setting}" if setting else ""
        raise TermTooLarge(f"it decodes to more than {limit} {what}, over the decode budget of a "
                           f"{self.wire}-byte message (at most {cap} {what.split()[-1]}{hint})")

    def _need(self, pos: int, count: int, what: str) -> None:
        if pos + count > len(self.data):
            raise DecodeError(f"{what} needs {count} bytes at offset {pos}, only {len(self.data) - pos} remain")

    def term(self, pos: int, depth: int) -> tuple[Any, int]:  # noqa: C901 - one dispatch, by design
        data = self.data
        tag = data[pos]
        pos += 1
        # Ordered roughly by how often each tag appears in RPC traffic.
        if tag == SMALL_INTEGER_EXT:
            return data[pos], pos + 1
        if tag == SMALL_ATOM_UTF8_EXT:
            n = data[pos]
            return self._atom(pos + 1, n, "utf-8")
        if tag == SMALL_TUPLE_EXT:
            return self._tuple(pos + 1, data[pos], depth)
        if tag == NIL_EXT:
            return [], pos
        if tag == LIST_EXT:
            return self._list(pos, depth)
        if tag == STRING_EXT:
            (n,) = _U16.unpack_from(data, pos)
            pos += 2
            self._need(pos, n, "string")
            left = self.bytes_left - n  # spend_bytes, inlined: strings are everywhere
            if left < 0:
                self.spend_bytes(n)
            self.bytes_left = left
            return data[pos:pos + n].decode("latin-1"), pos + n
        if tag == BINARY_EXT:
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            self._need(pos, n, "binary")
            left = self.bytes_left - n
            if left < 0:
                self.spend_bytes(n)
            self.bytes_left = left
            return data[pos:pos + n], pos + n
        if tag == INTEGER_EXT:
            return _I32.unpack_from(data, pos)[0], pos + 4
        if tag == NEWER_REFERENCE_EXT:
            return self._reference(pos, words_are_32_bit=True)
        if tag == NEW_PID_EXT:
            node, pos = self._node_atom(pos)
            pid_id, serial, creation = _PID_TAIL.unpack_from(data, pos)
            return Pid(node, pid_id, serial, creation), pos + 12
        if tag == MAP_EXT:
            return self._map(pos, depth)
        if tag == NEW_FLOAT_EXT:
            value = _F64.unpack_from(data, pos)[0]
            if not math.isfinite(value):  # Erlang never sends these, and we could not send them back
                raise DecodeError("float is not finite")
            return value, pos + 8
        if tag == ATOM_UTF8_EXT:
            (n,) = _U16.unpack_from(data, pos)
            return self._atom(pos + 2, n, "utf-8")
        if tag == SMALL_BIG_EXT:
            return self._big(pos + 1, data[pos])
        if tag == LARGE_BIG_EXT:
            (n,) = _U32.unpack_from(data, pos)
            return self._big(pos + 4, n)
        if tag == LARGE_TUPLE_EXT:
            (n,) = _U32.unpack_from(data, pos)
            return self._tuple(pos + 4, n, depth)
        if tag == BIT_BINARY_EXT:
            return self._bit_binary(pos)
        if tag == ATOM_EXT:
            (n,) = _U16.unpack_from(data, pos)
            return self._atom(pos + 2, n, "latin-1")
        if tag == SMALL_ATOM_EXT:
            return self._atom(pos + 1, data[pos], "latin-1")
        if tag == NEW_REFERENCE_EXT:
            return self._reference(pos, words_are_32_bit=False)
        if tag == PID_EXT:
            node, pos = self._node_atom(pos)
            pid_id, serial = struct.unpack_from(">II", data, pos)
            return Pid(node, pid_id, serial, data[pos + 8]), pos + 9
        if tag == V4_PORT_EXT:
            node, pos = self._node_atom(pos)
            port_id, creation = struct.unpack_from(">QI", data, pos)
            return Port(node, port_id, creation), pos + 12
        if tag == NEW_PORT_EXT:
            node, pos = self._node_atom(pos)
            port_id, creation = _PORT_TAIL.unpack_from(data, pos)
            return Port(node, port_id, creation), pos + 8
        if tag == PORT_EXT:
            node, pos = self._node_atom(pos)
            (port_id,) = _U32.unpack_from(data, pos)
            return Port(node, port_id, data[pos + 4]), pos + 5
        if tag == REFERENCE_EXT:
            node, pos = self._node_atom(pos)
            (ref_id,) = _U32.unpack_from(data, pos)
            return Reference(node, data[pos + 4], (ref_id,)), pos + 5
        if tag == EXPORT_EXT:
            module, pos = self._atom_term(pos, "export module")
            function, pos = self._atom_term(pos, "export function")
            # Erlang writes the arity as SMALL_INTEGER_EXT; reading any term there would let a
            # peer hide a huge structure in it.
            if data[pos] != SMALL_INTEGER_EXT:
                raise DecodeError(f"export arity must be a small integer, got tag {data[pos]}")
            return Export(module, function, data[pos + 1]), pos + 2
        if tag == NEW_FUN_EXT:
            return self._new_fun(pos)
        if tag == FLOAT_EXT:
            self._need(pos, 31, "old float")
            value = float(data[pos:pos + 31].split(b"\0", 1)[0].decode("ascii"))
            if not math.isfinite(value):
                raise DecodeError("old-style float is not finite")
            return value, pos + 31
        if tag == ATOM_CACHE_REF:
            raise DecodeError("atom cache reference, but no atom cache was negotiated")
        if tag == FUN_EXT:
            raise DecodeError("FUN_EXT (funs from releases before R10) is not supported")
        if tag == LOCAL_EXT:
            raise DecodeError("LOCAL_EXT can only be decoded by the node that encoded it")
        if tag == VERSION:
            raise DecodeError(f"nested version byte at offset {pos - 1}")
        raise DecodeError(f"unknown tag {tag} at offset {pos - 1}")

    def _enter(self, depth: int) -> int:
        depth += 1
        if depth > self.max_depth:
            raise DecodeError(f"term nests deeper than {self.max_depth} levels")
        return depth

    def _count(self, pos: int, count: int, bytes_each: int, what: str) -> None:
        # Refuse a count the remaining bytes cannot hold, before allocating for it.
        if count * bytes_each > len(self.data) - pos:
            raise DecodeError(f"{what} claims {count} elements, more than the {len(self.data) - pos} bytes left")

    def _tuple(self, pos: int, arity: int, depth: int) -> tuple[tuple[Any, ...], int]:
        self._count(pos, arity, 1, "tuple")
        left = self.elements_left - arity  # spend_elements, inlined
        if left < 0:
            self.spend_elements(arity)
        self.elements_left = left
        depth = self._enter(depth)
        items: list[Any] = []
        append = items.append
        term = self.term
        for _ in range(arity):
            item, pos = term(pos, depth)
            append(item)
        return tuple(items), pos

    def _list(self, pos: int, depth: int) -> tuple[Any, int]:
        (n,) = _U32.unpack_from(self.data, pos)
        pos += 4
        self._count(pos, n, 1, "list")
        left = self.elements_left - n  # spend_elements, inlined
        if left < 0:
            self.spend_elements(n)
        self.elements_left = left
        depth = self._enter(depth)
        items: list[Any] = []
        append = items.append
        term = self.term
        for _ in range(n):
            item, pos = term(pos, depth)
            append(item)
        if self.data[pos] == NIL_EXT:
            return items, pos + 1
        tail, pos = term(pos, depth)
        if not items:
            raise DecodeError("LIST_EXT with no elements and a non-nil tail")
        if isinstance(tail, list):
            # Another encoder may split a list oddly; [a | [b]] is just [a, b].
            return items + tail, pos
        if isinstance(tail, str):
            return items + [ord(c) for c in tail], pos
        return ImproperList(tuple(items), tail), pos

    def _map(self, pos: int, depth: int) -> tuple[dict[Any, Any], int]:
        (n,) = _U32.unpack_from(self.data, pos)
        pos += 4
        self._count(pos, n, 2, "map")
        self.spend_elements(2 * n)
        depth = self._enter(depth)
        pairs: list[tuple[Any, Any]] = []
        append = pairs.append
        term = self.term
        for _ in range(n):
            key, pos = term(pos, depth)
            value, pos = term(pos, depth)
            append((key, value))
        try:
            if n > _HASH_CHECK_FROM and max(Counter(hash(k) for k, _ in pairs).values()) > _MAX_SHARED_HASH:
                raise DecodeError(f"map of {n} keys of which many share one Python hash; refused as hash flooding")
            result = dict(pairs)
        except TypeError:
            # No repr of the key here: it may be huge, or an int repr() refuses.
            raise DecodeError("a map key has no hashable Python form (it holds a list or a map)") from None
        if len(result) != n:
            raise DecodeError("map has keys that are distinct in Erlang but equal in Python (e.g. 1 and 1.0)")
        return result, pos

    def _atom(self, pos: int, n: int, encoding: str) -> tuple[Any, int]:
        self._need(pos, n, "atom")
        name = self.data[pos:pos + n].decode(encoding)
        if name == "true":
            return True, pos + n
        if name == "false":
            return False, pos + n
        if len(name) > MAX_ATOM_CHARACTERS:
            raise DecodeError(f"atom of {len(name)} characters (Erlang allows {MAX_ATOM_CHARACTERS})")
        return Atom(name), pos + n

    def _atom_term(self, pos: int, what: str) -> tuple[Atom, int]:
        # Only an atom's own tags: decoding any term and checking it afterwards let a peer put
        # nested containers (or funs, each copying the buffer) where a name belongs.
        tag = self.data[pos]
        if tag not in _ATOM_TAGS:
            raise DecodeError(f"{what} must be an atom, got tag {tag}")
        value, pos = self.term(pos, 0)
        if value is True or value is False:
            return (_TRUE if value else _FALSE), pos
        return value, pos

    def _node_atom(self, pos: int) -> tuple[Atom, int]:
        return self._atom_term(pos, "node name")

    def _reference(self, pos: int, *, words_are_32_bit: bool) -> tuple[Reference, int]:
        (n,) = _U16.unpack_from(self.data, pos)
        if not 1 <= n <= 5:
            raise DecodeError(f"reference with {n} words (1..5 allowed)")
        node, pos = self._node_atom(pos + 2)
        if words_are_32_bit:
            (creation,) = _U32.unpack_from(self.data, pos)
            pos += 4
        else:
            creation = self.data[pos]
            pos += 1
        self._need(pos, 4 * n, "reference words")
        ids = struct.unpack_from(f">{n}I", self.data, pos)
        return Reference(node, creation, ids), pos + 4 * n

    def _big(self, pos: int, n: int) -> tuple[int, int]:
        sign = self.data[pos]
        pos += 1
        self._need(pos, n, "big integer")
        self.spend_bytes(n)
        value = int.from_bytes(self.data[pos:pos + n], "little")
        if sign > 1:
            raise DecodeError(f"big integer sign byte is {sign}")
        return (-value if sign else value), pos + n

    def _bit_binary(self, pos: int) -> tuple[Any, int]:
        (n,) = _U32.unpack_from(self.data, pos)
        bits = self.data[pos + 4]
        pos += 5
        # As erts checks: an empty bitstring has 0 bits, a non-empty one 1..8 in its last byte.
        if (n == 0) != (bits == 0) or bits > 8:
            raise DecodeError(f"bitstring of {n} bytes cannot have {bits} bits in its last byte")
        self._need(pos, n, "bitstring")
        self.spend_bytes(n)
        chunk = self.data[pos:pos + n]
        if bits in (0, 8):
            return chunk, pos + n
        # Unused low bits are zero in Erlang; normalise so equal bitstrings compare equal.
        mask = (0xFF << (8 - bits)) & 0xFF
        chunk = chunk[:-1] + bytes((chunk[-1] & mask,))
        return BitString(chunk, bits), pos + n

    def _new_fun(self, pos: int) -> tuple[Fun, int]:
        (size,) = _U32.unpack_from(self.data, pos)
        # Size counts itself; the fixed part (arity, uniq, index, numfree) takes 25 more bytes.
        if size < 29:
            raise DecodeError(f"NEW_FUN_EXT of {size} bytes is too short")
        self._need(pos, size, "fun")
        end = pos + size
        arity = self.data[pos + 4]
        # An atom is at most 64 KiB, so reading it in place is cheap even when the size lies;
        # a copy of the buffer per fun made a list of funs quadratic.
        module, after = self._atom_term(pos + 29, "fun module")
        if after > end:
            raise DecodeError("the fun's module runs past the fun's size")
        return Fun(module, arity, self.data[pos:end]), end


# ======================================================================================
# Encoding
# ======================================================================================


def encode(term: Any, *, compressed: bool = False) -> bytes:
    """Encode a Python value as an external term (what ``binary_to_term`` reads)."""
    out = bytearray((VERSION,))
    encode_term_into(term, out)
    if compressed:
        body = bytes(out[1:])
        packed = zlib.compress(body)
        if len(packed) + 4 < len(body):
            return bytes((VERSION, COMPRESSED)) + _U32.pack(len(body)) + packed
    return bytes(out)


def encode_term_into(term: Any, out: bytearray) -> None:
    """Append the encoding of ``term`` (without the version byte) to ``out``."""
    encoder = _ENCODERS.get(type(term))
    if encoder is not None:
        encoder(term, out)
        return
    _encode_by_isinstance(term, out)


def _encode_by_isinstance(term: Any, out: bytearray) -> None:
    # Subclasses (IntEnum, str subclasses, NamedTuple...) land here; check bool before int.
    if isinstance(term, bool):
        _encode_bool(term, out)
    elif isinstance(term, int):
        _encode_int(int(term), out)
    elif isinstance(term, float):
        _encode_float(float(term), out)
    elif isinstance(term, str):
        _encode_str(str(term), out)
    elif isinstance(term, tuple):
        _encode_tuple(term, out)
    elif isinstance(term, list):
        _encode_list(term, out)
    elif isinstance(term, dict):
        _encode_map(term, out)
    elif isinstance(term, (bytes, bytearray, memoryview)):
        _encode_binary(term, out)
    elif term is None:
        raise EncodeError("None has no Erlang equivalent; use Atom('undefined') or Atom('nil')")
    else:
        raise EncodeError(f"cannot encode a {type(term).__name__} as an Erlang term: {term!r:.80}")


def _encode_int(value: int, out: bytearray) -> None:
    if 0 <= value <= 255:
        out.append(SMALL_INTEGER_EXT)
        out.append(value)
    elif -0x8000_0000 <= value <= 0x7FFF_FFFF:
        out.append(INTEGER_EXT)
        out += _I32.pack(value)
    else:
        magnitude = -value if value < 0 else value
        raw = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        if len(raw) <= 255:
            out.append(SMALL_BIG_EXT)
            out.append(len(raw))
        else:
            out.append(LARGE_BIG_EXT)
            out += _U32.pack(len(raw))
        out.append(1 if value < 0 else 0)
        out += raw


def _encode_float(value: float, out: bytearray) -> None:
    if not math.isfinite(value):
        raise EncodeError(f"Erlang floats are finite; cannot encode {value}")
    out.append(NEW_FLOAT_EXT)
    out += _F64.pack(value)


def _encode_bool(value: bool, out: bytearray) -> None:
    _encode_atom(_TRUE if value else _FALSE, out)


def _encode_atom(atom: Atom, out: bytearray) -> None:
    ext = atom._ext
    if not ext:
        raw = atom.name.encode("utf-8")
        if len(raw) <= 255:
            ext = bytes((SMALL_ATOM_UTF8_EXT, len(raw))) + raw
        else:
            ext = bytes((ATOM_UTF8_EXT,)) + _U16.pack(len(raw)) + raw
        atom._ext = ext
    out += ext


def _encode_str(value: str, out: bytearray) -> None:
    # A Python str is an Erlang string, i.e. a list of code points. STRING_EXT is the compact
    # form Erlang itself uses when every code point fits in a byte.
    if not value:
        out.append(NIL_EXT)
        return
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = b""
    if raw and len(raw) <= 0xFFFF:
        out.append(STRING_EXT)
        out += _U16.pack(len(raw))
        out += raw
        return
    out.append(LIST_EXT)
    out += _U32.pack(len(value))
    for char in value:
        _encode_int(ord(char), out)
    out.append(NIL_EXT)


def _encode_tuple(value: tuple[Any, ...], out: bytearray) -> None:
    n = len(value)
    if n <= 255:
        out.append(SMALL_TUPLE_EXT)
        out.append(n)
    else:
        out.append(LARGE_TUPLE_EXT)
        out += _U32.pack(n)
    for item in value:
        encode_term_into(item, out)


def _encode_list(value: list[Any], out: bytearray) -> None:
    if not value:
        out.append(NIL_EXT)
        return
    out.append(LIST_EXT)
    out += _U32.pack(len(value))
    for item in value:
        encode_term_into(item, out)
    out.append(NIL_EXT)


def _encode_improper(value: ImproperList, out: bytearray) -> None:
    out.append(LIST_EXT)
    out += _U32.pack(len(value.items))
    for item in value.items:
        encode_term_into(item, out)
    encode_term_into(value.tail, out)


def _encode_map(value: dict[Any, Any], out: bytearray) -> None:
    out.append(MAP_EXT)
    out += _U32.pack(len(value))
    for key, item in value.items():
        encode_term_into(key, out)
        encode_term_into(item, out)


def _encode_binary(value: bytes | bytearray | memoryview, out: bytearray) -> None:
    raw = bytes(value)
    out.append(BINARY_EXT)
    out += _U32.pack(len(raw))
    out += raw


def _encode_bitstring(value: BitString, out: bytearray) -> None:
    out.append(BIT_BINARY_EXT)
    out += _U32.pack(len(value.data))
    out.append(value.tail_bits)
    out += value.data


def _encode_pid(value: Pid, out: bytearray) -> None:
    out.append(NEW_PID_EXT)
    _encode_atom(value.node, out)
    out += _PID_TAIL.pack(value.id, value.serial, value.creation)


def _encode_reference(value: Reference, out: bytearray) -> None:
    if not 1 <= len(value.ids) <= 5:
        raise EncodeError(f"a reference has 1..5 words, got {len(value.ids)}")
    out.append(NEWER_REFERENCE_EXT)
    out += _U16.pack(len(value.ids))
    _encode_atom(value.node, out)
    out += _U32.pack(value.creation)
    out += struct.pack(f">{len(value.ids)}I", *value.ids)


def _encode_port(value: Port, out: bytearray) -> None:
    if value.id <= 0xFFFF_FFFF:
        out.append(NEW_PORT_EXT)
        _encode_atom(value.node, out)
        out += _PORT_TAIL.pack(value.id, value.creation)
    else:
        out.append(V4_PORT_EXT)
        _encode_atom(value.node, out)
        out += struct.pack(">QI", value.id, value.creation)


def _encode_export(value: Export, out: bytearray) -> None:
    out.append(EXPORT_EXT)
    _encode_atom(value.module, out)
    _encode_atom(value.function, out)
    _encode_int(value.arity, out)


def _encode_fun(value: Fun, out: bytearray) -> None:
    out.append(NEW_FUN_EXT)
    out += value.raw


def _checked(encoder: Callable[[Any, bytearray], None]) -> Callable[[Any, bytearray], None]:
    # struct raises struct.error for out-of-range fields; callers should see EncodeError.
    def wrapper(term: Any, out: bytearray) -> None:
        try:
            encoder(term, out)
        except (struct.error, AttributeError, TypeError) as exc:
            raise EncodeError(f"{term!r:.80} does not fit the external format: {exc}") from None

    return wrapper


_ENCODERS: dict[type, Callable[[Any, bytearray], None]] = {
    int: _encode_int,
    Atom: _encode_atom,
    tuple: _encode_tuple,
    list: _encode_list,
    str: _encode_str,
    bytes: _encode_binary,
    bool: _encode_bool,
    float: _encode_float,
    dict: _encode_map,
    Pid: _checked(_encode_pid),
    Reference: _checked(_encode_reference),
    Port: _checked(_encode_port),
    ImproperList: _encode_improper,
    BitString: _encode_bitstring,
    Export: _checked(_encode_export),
    Fun: _encode_fun,
    bytearray: _encode_binary,
    memoryview: _encode_binary,
}
