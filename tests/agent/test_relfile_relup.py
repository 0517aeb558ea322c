"""agent.relfile.relup_versions: the version keys of a relup, read without Erlang, whatever
the instructions hold (strings, chars, binaries, maps, floats, comments), and refused with the
line when the file is not a relup."""

from __future__ import annotations

import pytest

from agent.relfile import RelSyntaxError, RelupVersions, relup_versions

SYSTOOLS = """%% coding: utf-8
{"0.0.2",
 [{"0.0.1",[],
   [{load_object_code,{counter,"0.0.2",[counter_app,counter]}},
    point_of_no_return,
    {code_change,up,[{counter,[]}]}]}],
 [{"0.0.1",[],
   [{load_object_code,{counter,"0.0.1",[counter_app,counter]}},
    point_of_no_return]}]}.
"""


def test_a_relup_as_systools_writes_it() -> None:
    assert relup_versions(SYSTOOLS) == RelupVersions("0.0.2", ("0.0.1",), ("0.0.1",))


def test_instructions_are_skipped_whatever_they_hold() -> None:
    # $} and $" are characters, not a brace or a string; "}" and '}' neither; % starts a
    # comment only outside them; binaries, maps, negative floats and improper lists pass.
    extra = ('[<<"x}">>, #{a => <<1,2>>, "k" => $}}, $", $\\x{7d}, -1.5e3, \'q}\', [a|b], '
             '"%", {}] % a comment with } and ]\n')
    text = (f'{{"2", [{{"1", "descr }}", [{{apply, {{m, f, {extra}}}}}]}},\n'
            f'        {{"0", [], []}}], []}}')
    assert relup_versions(text) == RelupVersions("2", ("1", "0"), ())


def test_a_deeply_nested_instruction_costs_no_recursion() -> None:
    deep = "[" * 5000 + "]" * 5000
    assert relup_versions(f'{{"2", [{{"1", [], {deep}}}], []}}.').up_from == ("1",)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "the file ends where '{' was expected"),
    ('{"2", [], []', "the file ends where '}' was expected"),
    ('{two, [], []}.', "expected a version string at line 1, found 'two'"),
    ('{"2", [{"1", [], [x]}], []}. extra', "expected the end of the file at line 1"),
    ('{"2", [{"1", [x]}], []}', "expected ',' at line 1, found '}'"),
    ('{"2",\n [{"1", , []}], []}', "expected a term at line 2, found ','"),
])
def test_what_is_not_a_relup_is_refused_with_the_line(text: str, expected: str) -> None:
    with pytest.raises(RelSyntaxError) as caught:
        relup_versions(text)
    assert expected in str(caught.value)
