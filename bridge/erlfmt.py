"""Erlang terms as Erlang-looking text ({error,{bad_relup,"0.0.1"}}) for messages people read,
never Python reprs. Sans-IO."""

from __future__ import annotations

import re
from typing import Any

from .terms import Atom

_PLAIN_ATOM = re.compile(r"[a-z][A-Za-z0-9_@]*")
_MAX = 500


def _atom(name: str) -> str:
    return name if _PLAIN_ATOM.fullmatch(name) else "'" + name.replace("'", "\\'") + "'"


def _fmt(value: Any, depth: int) -> str:
    if depth > 20:
        return "..."
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Atom):
        return _atom(value.name)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bytes):
        # As Erlang prints them: printable ASCII as <<"text">>, other UTF-8 text marked /utf8.
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and text.isprintable():
            quoted = '<<"' + text.replace("\\", "\\\\").replace('"', '\\"')
            return quoted + ('">>' if text.isascii() else '"/utf8>>')
        return "<<" + ",".join(str(b) for b in value) + ">>"
    if isinstance(value, tuple):
        return "{" + ",".join(_fmt(v, depth + 1) for v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{_fmt(k, depth + 1)} => {_fmt(v, depth + 1)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, int) and value.bit_length() > 10_000:
        # Python refuses str() of ints past 4300 digits (a DoS guard); Erlang reads 16#... too.
        return ("-" if value < 0 else "") + f"16#{abs(value):X}"
    return str(value)  # numbers; Pid, Reference and Port print themselves the Erlang way


def format_term(value: Any, limit: int = _MAX) -> str:
    """``value`` as Erlang would print it (roughly ~p), cut at ``limit`` characters."""
    text = _fmt(value, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."
