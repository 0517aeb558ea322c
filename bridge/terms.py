"""Python values for the Erlang terms that have no natural Python counterpart.

Natural mappings (done by the codec, not here): integers <-> int, floats <-> float,
tuples <-> tuple, proper lists <-> list, maps <-> dict, binaries <-> bytes, the atoms
``true``/``false`` <-> bool, Erlang strings (charlists) <- str. Everything else gets a small
immutable type from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Atom", "Pid", "Reference", "Port", "ImproperList", "BitString", "Export", "Fun"]

MAX_ATOM_CHARACTERS = 255


class Atom:
    """An Erlang atom. Never equal to a ``str``: ``Atom("ok")`` and ``"ok"`` are different terms."""

    __slots__ = ("name", "_ext")

    # Interned so that decoding the same node name a million times allocates once. Bounded,
    # because atoms arrive from the network and must not grow our memory without limit.
    _interned: ClassVar[dict[str, Atom]] = {}
    _INTERN_LIMIT: ClassVar[int] = 65_536

    name: str
    _ext: bytes  # cached external encoding, filled by the codec on first use

    def __new__(cls, name: str) -> Atom:
        atom = cls._interned.get(name)
        if atom is not None:
            return atom
        if not isinstance(name, str):
            raise TypeError(f"an atom's name is a str, not {type(name).__name__}")
        if len(name) > MAX_ATOM_CHARACTERS:
            raise ValueError(f"an atom has at most {MAX_ATOM_CHARACTERS} characters, got {len(name)}")
        atom = object.__new__(cls)
        object.__setattr__(atom, "name", name)
        object.__setattr__(atom, "_ext", b"")
        if len(cls._interned) < cls._INTERN_LIMIT:
            cls._interned[name] = atom
        return atom

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "_ext":  # the codec's cache; not part of the value
            object.__setattr__(self, key, value)
            return
        raise AttributeError("Atom is immutable")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is Atom:
            return self.name == other.name
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((Atom, self.name))

    def __repr__(self) -> str:
        return f"Atom({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> tuple[type[Atom], tuple[str]]:
        return (Atom, (self.name,))


@dataclass(frozen=True, slots=True)
class Pid:
    """A process identifier: the node it lives on, and the numbers that name it there."""

    node: Atom
    id: int
    serial: int
    creation: int

    def __str__(self) -> str:
        return f"<{self.node.name}.{self.id}.{self.serial}>"


@dataclass(frozen=True, slots=True)
class Reference:
    """A reference (``make_ref()``, monitor refs, aliases): up to five 32-bit words."""

    node: Atom
    creation: int
    ids: tuple[int, ...]

    def __str__(self) -> str:
        return f"#Ref<{self.node.name}.{'.'.join(str(i) for i in reversed(self.ids))}>"


@dataclass(frozen=True, slots=True)
class Port:
    """A port identifier."""

    node: Atom
    id: int
    creation: int

    def __str__(self) -> str:
        return f"#Port<{self.node.name}.{self.id}>"


@dataclass(frozen=True, slots=True)
class ImproperList:
    """A list whose tail is not ``[]``: ``[1, 2 | tail]`` is ``ImproperList((1, 2), tail)``."""

    items: tuple[Any, ...]
    tail: Any

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("an improper list has at least one element before its tail")
        if isinstance(self.tail, list):
            raise ValueError("a list tail makes a proper or longer list; build that list instead")


@dataclass(frozen=True, slots=True)
class BitString:
    """A bitstring whose size is not a multiple of 8: all of ``data`` but the last byte is
    used whole; of the last byte only the ``tail_bits`` high bits count (1..8)."""

    data: bytes
    tail_bits: int

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("an empty bitstring is the empty binary b''")
        if not 1 <= self.tail_bits <= 8:
            raise ValueError(f"tail_bits is 1..8, got {self.tail_bits}")

    @property
    def bit_size(self) -> int:
        return (len(self.data) - 1) * 8 + self.tail_bits


@dataclass(frozen=True, slots=True)
class Export:
    """An external fun, ``fun Module:Function/Arity``."""

    module: Atom
    function: Atom
    arity: int


@dataclass(frozen=True, slots=True)
class Fun:
    """A local fun, kept opaque: ``raw`` is its external form after the tag, so the fun can be
    sent back unchanged. ``module`` and ``arity`` are decoded for display."""

    module: Atom
    arity: int
    raw: bytes
