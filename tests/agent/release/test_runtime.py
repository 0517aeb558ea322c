"""relx's ${VAR} rendering as the agent does it (runtime.py), against what relx's start script
(its awk replace_os_vars) writes: values, defaults, unset variables, no regex surprises."""

from __future__ import annotations

from agent.release.runtime import relx_variables, render_relx

TEMPLATE = (b'[{app, [{greeting, "${GREETING}"}, {port, ${PORT:-4000}}, '
            b'{mode, ${MODE:-normal}}, {again, "${GREETING}"}, {plain, "$HOME {x}"}]}].\n')


def test_variables_are_listed_once_in_order_with_their_defaults() -> None:
    assert relx_variables(TEMPLATE) == [("GREETING", None), ("PORT", "4000"), ("MODE", "normal")]
    assert relx_variables(b'[{app, [{k, "no variables, $X or {Y}"}]}].') == []


def test_every_reference_gets_the_value_or_its_default_when_empty_or_unset() -> None:
    rendered = render_relx(TEMPLATE, {"GREETING": "hi & bye \\1", "PORT": "", "MODE": None})
    assert rendered == (b'[{app, [{greeting, "hi & bye \\1"}, {port, 4000}, '
                        b'{mode, normal}, {again, "hi & bye \\1"}, {plain, "$HOME {x}"}]}].\n')


def test_an_unset_variable_without_default_renders_empty_as_relx_does() -> None:
    assert render_relx(b'"${MISSING}" ${PORT:-1}', {"MISSING": None, "PORT": "8080"}) == \
        b'"" 8080'


def test_utf8_values_are_written_as_utf8() -> None:
    assert render_relx(b'"${G}"', {"G": "gr\u00fc\u00df"}) == '"gr\u00fc\u00df"'.encode()
