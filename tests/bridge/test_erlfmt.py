"""format_term: Erlang terms printed the way Erlang prints them, for error messages."""

from __future__ import annotations

from bridge import Atom, BadRpc, Pid, format_term


def test_terms_look_like_erlang() -> None:
    term = (Atom("error"), (Atom("bad_relup"), "0.0.1", [1, 2.5, b"bin", True],
                            {Atom("k"): Atom("Quoted Atom")}))
    assert format_term(term) == ('{error,{bad_relup,"0.0.1",[1,2.5,<<"bin">>,true],'
                                 "#{k => 'Quoted Atom'}}}")
    assert format_term(Pid(Atom("a@h"), 1, 2, 3)) == "<a@h.1.2>"


def test_long_terms_are_cut() -> None:
    text = format_term(list(range(1000)), limit=40)
    assert len(text) == 40 and text.endswith("...")


def test_badrpc_messages_use_it() -> None:
    exc = BadRpc((Atom("EXIT"), (Atom("noproc"), Atom("x"))), mfa="m:f/0", node="n@h")
    assert str(exc) == "m:f/0 on n@h failed: {'EXIT',{noproc,x}}"


def test_binaries_print_as_erlang_prints_them() -> None:
    assert format_term(b"runtime.exs") == '<<"runtime.exs">>'
    assert format_term('héllo'.encode()) == '<<"héllo"/utf8>>'
    assert format_term(b'say "hi" \\o/') == '<<"say \\"hi\\" \\\\o/">>'
    assert format_term(b"\x00\xff") == "<<0,255>>"
    assert format_term(b"") == "<<>>"
