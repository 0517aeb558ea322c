"""The modules an application's ``.app`` file lists, read in the agent (issue 24): what
``file:consult`` then ``proplists:get_value(modules, Props, [])`` give on the node, which the
code check goes by (codecheck.py, loaded.py), without asking the node.

A small reader of Erlang terms as file:consult reads them (atoms, strings, numbers, chars,
tuples, lists, maps, binaries), enough to find the one ``{application, Name, Props}`` term
and its ``modules`` list. Whatever it does not read exactly as the node would (other syntax,
another shape) is None: the caller asks the node. Results are kept by the file's identity.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any

MAX_APP = 1024**2

_TOKEN = re.compile(r"""
    (?P<space> \s+ | %[^\n]* )
  | (?P<string> "(?:[^"\\]|\\.)*" )
  | (?P<qatom> '(?:[^'\\]|\\.)*' )
  | (?P<atom> [a-z][A-Za-z0-9_@]* )
  | (?P<number> -?[0-9][0-9_]*(?:\#[0-9A-Za-z_]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)? )
  | (?P<char> \$(?:\\(?:\^.|[0-7]{1,3}|x[0-9A-Fa-f]{2}|x\{[0-9A-Fa-f]+\}|.)|.) )
  | (?P<punct> <<|>>|=>|:=|\#\{|[{}\[\],|.:/] )
""", re.VERBOSE | re.DOTALL)
# Escapes in a quoted atom, as Erlang reads them (others: not read here).
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class Atom:
    name: str


class _Unread(Exception):
    """Something this reader does not read as the node would."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _Unread(f"at {pos}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
    return out


def _quoted(raw: str) -> str:
    body, out, i = raw[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                raise _Unread("escape")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class _Reader:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self._tokens = tokens
        self._pos = 0

    def done(self) -> bool:
        return self._pos >= len(self._tokens)

    def _next(self) -> tuple[str, str]:
        if self._pos >= len(self._tokens):
            raise _Unread("end")
        token = self._tokens[self._pos]
        self._pos += 1
        return token

    def expect(self, text: str) -> None:
        if self._next() != ("punct", text):
            raise _Unread(f"expected {text}")

    def _peek(self) -> tuple[str, str]:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else ("", "")

    def term(self, depth: int = 0) -> Any:
        if depth > 100:
            raise _Unread("nesting")
        kind, text = self._next()
        if kind == "atom":
            return Atom(text)
        if kind == "qatom":
            return Atom(_quoted(text))
        if kind in ("string", "number", "char"):
            return (kind, text)  # kept opaque: the modules list holds atoms only
        if text == "{":
            return tuple(self._items("}", depth))
        if text == "[":
            return self._list(depth)
        if text == "#{":
            self._items("}", depth, pairs=True)
            return ("map", "")
        if text == "<<":
            while self._next() != ("punct", ">>"):
                pass
            return ("binary", "")
        raise _Unread(text)

    def _items(self, close: str, depth: int, *, pairs: bool = False) -> list[Any]:
        items: list[Any] = []
        if self._peek() == ("punct", close):
            self._next()
            return items
        while True:
            items.append(self.term(depth + 1))
            if pairs:
                if self._next() not in (("punct", "=>"), ("punct", ":=")):
                    raise _Unread("map")
                items.append(self.term(depth + 1))
            kind, text = self._next()
            if text == close and kind == "punct":
                return items
            if (kind, text) != ("punct", ","):
                raise _Unread(text)

    def _list(self, depth: int) -> Any:
        items: list[Any] = []
        if self._peek() == ("punct", "]"):
            self._next()
            return items
        while True:
            items.append(self.term(depth + 1))
            kind, text = self._next()
            if (kind, text) == ("punct", "]"):
                return items
            if (kind, text) == ("punct", "|"):
                self.term(depth + 1)
                self.expect("]")
                return ("improper", "")
            if (kind, text) != ("punct", ","):
                raise _Unread(text)


def modules_of(text: str) -> list[str] | None:
    """The modules ``{application, _, Props}`` in ``text`` lists (None: not read here)."""
    try:
        reader = _Reader(_tokens(text))
        terms = []
        while not reader.done():
            terms.append(reader.term())
            reader.expect(".")
    except (_Unread, RecursionError):
        return None
    if len(terms) != 1:
        return None
    app = terms[0]
    if not (isinstance(app, tuple) and len(app) == 3 and app[0] == Atom("application")
            and isinstance(app[2], list)):
        return None
    for prop in app[2]:
        if prop == Atom("modules"):
            return None  # {modules, true}: not a list; the node's check says what it makes of it
        if isinstance(prop, tuple) and len(prop) >= 1 and prop[0] == Atom("modules"):
            if len(prop) != 2 or not isinstance(prop[1], list) or \
                    not all(isinstance(m, Atom) for m in prop[1]):
                return None
            return [m.name for m in prop[1]]
    return []


class AppFiles:
    """modules_of each .app file, kept by the file's identity (thread-safe)."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int, int], list[str] | None] = {}
        self._lock = threading.Lock()

    def modules(self, path: str) -> list[str] | None:
        try:
            info = os.stat(path)
            key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            with self._lock:
                if key in self._known:
                    return self._known[key]
            if info.st_size > MAX_APP:
                return None
            with open(path, "rb") as f:
                data = f.read(MAX_APP + 1)
        except OSError:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # as file:consult reads a file without an encoding
        found = modules_of(text)
        with self._lock:
            if len(self._known) > 100_000:
                self._known.clear()
            self._known[key] = found
        return found


APP_FILES = AppFiles()
