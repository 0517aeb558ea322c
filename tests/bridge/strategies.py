"""Hypothesis strategies for Python values that survive an encode/decode round trip unchanged."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from bridge import Atom, BitString, ImproperList, Pid, Port, Reference

atom_names = st.text(min_size=0, max_size=40).filter(lambda s: s not in ("true", "false"))
atoms = atom_names.map(Atom)
node_atoms = st.sampled_from(["a@b", "counter@localhost", "nonode@nohost", "n\u00e9@h\u00f4te"]).map(Atom)
u32 = st.integers(0, 0xFFFF_FFFF)

pids = st.builds(Pid, node_atoms, u32, u32, u32)
references = st.builds(Reference, node_atoms, u32, st.lists(u32, min_size=1, max_size=5).map(tuple))
ports = st.builds(Port, node_atoms, st.integers(0, 2**64 - 1), u32)
bitstrings = st.builds(BitString, st.binary(min_size=1, max_size=20), st.integers(1, 7)).map(
    # Erlang keeps the unused low bits zero; so does our decoder.
    lambda b: BitString(b.data[:-1] + bytes((b.data[-1] & (0xFF << (8 - b.tail_bits)) & 0xFF,)), b.tail_bits)
)
# A str is an Erlang string; only Latin-1 text comes back as a str (else a list of code points).
latin1_text = st.text(alphabet=st.characters(max_codepoint=255), min_size=1, max_size=60)

scalars: st.SearchStrategy[Any] = st.one_of(
    st.integers(),
    st.integers(-(2**2100), 2**2100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    atoms,
    st.binary(max_size=64),
    latin1_text,
    bitstrings,
    pids,
    references,
    ports,
)
hashable_keys: st.SearchStrategy[Any] = st.one_of(
    st.integers(), atoms, st.binary(max_size=8), st.tuples(st.integers(), atoms)
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    improper_tails = st.one_of(st.integers(), atoms, st.tuples(children), st.binary(max_size=4))
    return st.one_of(
        st.lists(children, max_size=6).map(tuple),
        st.lists(children, max_size=6),
        st.dictionaries(hashable_keys, children, max_size=6),
        st.builds(ImproperList, st.lists(children, min_size=1, max_size=4).map(tuple), improper_tails),
    )


terms: st.SearchStrategy[Any] = st.recursive(scalars, _extend, max_leaves=30)
