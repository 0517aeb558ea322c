"""The codec against real OTP: decode what term_to_binary writes, and have binary_to_term read
back what we write, equal (=:=) to the original."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bridge import Atom, BitString, Export, Fun, ImproperList, Pid, Port, Reference, decode, encode
from tests.tools.needs import needs_tool

pytestmark = [
    pytest.mark.otp,
    needs_tool("escript", hint="Erlang/OTP: run .ci/setup"),
]

ORACLE = Path(__file__).with_name("etf_oracle.escript")
NOWHERE = Atom("nonode@nohost")

# Erlang source -> the Python value it must decode to (a callable checks the opaque ones).
CASES: list[tuple[str, Any]] = [
    ("0", 0),
    ("255", 255),
    ("256", 256),
    ("-1", -1),
    ("2147483647", 2147483647),
    ("-2147483648", -2147483648),
    ("1 bsl 40", 1 << 40),
    ("-(1 bsl 70)", -(1 << 70)),
    ("1 bsl 3000", 1 << 3000),
    ("3.14", 3.14),
    ("-0.0", -0.0),
    ("1.0e300", 1.0e300),
    ("ok", Atom("ok")),
    ("true", True),
    ("false", False),
    ("'hello world'", Atom("hello world")),
    ("'\u00e5\u00e4\u00f6'", Atom("\u00e5\u00e4\u00f6")),
    ("'\u539f\u5b50'", Atom("\u539f\u5b50")),
    ("''", Atom("")),
    ("{}", ()),
    ("{1, {2, three}, \"four\"}", (1, (2, Atom("three")), "four")),
    ("list_to_tuple(lists:seq(1, 300))", tuple(range(1, 301))),
    ("[]", []),
    ("\"hello\"", "hello"),
    ("\"h\u00e9llo\"", "h\u00e9llo"),
    ("\"\u65e5\u672c\"", [0x65E5, 0x672C]),
    ("[1, 2, 3]", "\x01\x02\x03"),  # Erlang itself sends small-int lists as STRING_EXT
    ("lists:seq(1, 300)", list(range(1, 301))),
    ("[a, [b, [c]], <<\"d\">>]", [Atom("a"), [Atom("b"), [Atom("c")]], b"d"]),
    ("[a | b]", ImproperList((Atom("a"),), Atom("b"))),
    ("[1, 2 | {3}]", ImproperList((1, 2), (3,))),
    ("<<>>", b""),
    ("<<1, 2, 255>>", b"\x01\x02\xff"),
    ("<<1:1>>", BitString(b"\x80", 1)),
    ("<<255, 7:3>>", BitString(b"\xff\xe0", 3)),
    ("list_to_binary(lists:duplicate(5000, $a))", b"a" * 5000),
    ("#{}", {}),
    ("#{a => 1, <<\"k\">> => [x], {t} => 2.5}", {Atom("a"): 1, b"k": [Atom("x")], (Atom("t"),): 2.5}),
    ("maps:from_list([{I, I * I} || I <- lists:seq(1, 40)])", {i: i * i for i in range(1, 41)}),
    ("lists:foldl(fun(_, A) -> {A} end, x, lists:seq(1, 100))", None),  # deep: checked by round trip
    ("fun lists:map/2", Export(Atom("lists"), Atom("map"), 2)),
    ("self()", lambda v: type(v) is Pid and v.node == NOWHERE),
    ("make_ref()", lambda v: type(v) is Reference and v.node == NOWHERE and len(v.ids) == 3),
    ("alias()", lambda v: type(v) is Reference and v.node == NOWHERE),
    ("hd(erlang:ports())", lambda v: type(v) is Port and v.node == NOWHERE),
    ("fun(X) -> X + 1 end", lambda v: type(v) is Fun and v.arity == 1 and v.module == Atom("erl_eval")),
    ("{self(), make_ref(), #{pid => self()}, [fun erlang:now/0]}", lambda v: type(v[0]) is Pid),
]


class Oracle:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["escript", str(ORACLE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, encoding="utf-8")

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"the oracle died on {line!r}"
        return answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def oracle() -> Any:
    oracle = Oracle()
    yield oracle
    oracle.close()


@pytest.mark.parametrize(("source", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_golden_bytes_decode_and_reencode_equal(oracle: Oracle, source: str, expected: Any) -> None:
    forms = [bytes.fromhex(h) for h in oracle.ask(f"eval {source}").split()]
    assert len(forms) == 3
    values = [decode(form) for form in forms]
    assert values[0] == values[1] == values[2]  # plain, minor_version 1 and compressed agree
    value = values[0]
    if callable(expected):
        assert expected(value), value
    elif expected is not None:
        assert value == expected and type(value) is type(expected)
    theirs = forms[0].hex()
    for ours in (encode(value), encode(value, compressed=True)):
        assert oracle.ask(f"same {theirs} {ours.hex()}") == "true", f"binary_to_term of ours differs for {source}"
