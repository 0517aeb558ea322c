"""The .rel file, read without Erlang: a small parser for the one term it holds; and the
version keys of a relup (relup_versions), its instructions skipped unread.

Used where no node is at hand: the agent checks an uploaded tarball before anything of it
reaches a node, and `relctl make-relup` finds the releases in a build. Standard library and
agent.errors only (it is part of the `relctl` client), bounded on hostile input (nesting, no backtracking).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from agent.errors import RequestError

MAX_DEPTH = 8  # a .rel nests 4 deep; the bound keeps hostile nesting from recursing away


class RelSyntaxError(RequestError, ValueError):
    """A .rel file that does not parse: whoever supplied the release is at fault."""


def decode(data: bytes) -> str:
    """The text of a term file (.rel, relup, RELEASES) as file:consult reads it: UTF-8, else
    Latin-1, Erlang's encoding for source files before OTP 17 (a file may still be in it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@dataclass(frozen=True)
class _Atom:
    name: str


_Term: TypeAlias = "str | _Atom | tuple[_Term, ...] | list[_Term]"

_TOKEN = re.compile(r"""
    (?P<space> \s+ | %[^\n]* )
  | (?P<punct> [{}\[\],.] )
  | (?P<string> "(?:[^"\\]|\\.)*" )
  | (?P<qatom> '(?:[^'\\]|\\.)*' )
  | (?P<atom> [a-z][A-Za-z0-9_@]* )
""", re.VERBOSE | re.DOTALL)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "\\": "\\", '"': '"', "'": "'"}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, offset) of each token; a punctuation mark is its own kind."""
    found: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise RelSyntaxError(f"unexpected {text[pos]!r} at line {_line(text, pos)}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((match.group() if kind == "punct" else kind, match.group(), pos))
        pos = match.end()
    return found


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _unescape(quoted: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(1) not in _ESCAPES:
            raise RelSyntaxError(f"unsupported escape \\{match.group(1)}")
        return _ESCAPES[match.group(1)]
    return re.sub(r"\\(.)", one, quoted[1:-1], flags=re.DOTALL)


def _parse_term(text: str) -> _Term:
    """The one term of a .rel file, with an optional final '.'."""
    parser = _Parser(text, _tokens(text))
    term = parser.term(0)
    parser.end()
    return term


class _Parser:
    """Recursive descent over the tokens, nesting at most MAX_DEPTH deep."""

    def __init__(self, text: str, tokens: list[tuple[str, str, int]]) -> None:
        self._text = text
        self._tokens = tokens
        self._next = 0

    def term(self, depth: int) -> _Term:
        kind, text, pos = self._take()
        if kind in ("{", "["):
            if depth >= MAX_DEPTH:
                raise RelSyntaxError(f"terms nest too deep at line {_line(self._text, pos)}")
            items = self._items("}" if kind == "{" else "]", depth + 1)
            return tuple(items) if kind == "{" else items
        if kind == "string":
            # Adjacent strings are one string in Erlang (a pretty-printer may split long ones).
            parts = [_unescape(text)]
            while self._peek() == "string":
                parts.append(_unescape(self._take()[1]))
            return "".join(parts)
        if kind == "qatom":
            return _Atom(_unescape(text))
        if kind == "atom":
            return _Atom(text)
        raise self._unexpected("a term", text, pos)

    def end(self) -> None:
        if self._peek() == ".":
            self._take()
        if self._peek() is not None:
            _, text, pos = self._take()
            raise self._unexpected("the end of the file", text, pos)

    def _items(self, close: str, depth: int) -> list[_Term]:
        items: list[_Term] = []
        if self._peek() == close:
            self._take()
            return items
        while True:
            items.append(self.term(depth))
            kind, text, pos = self._take()
            if kind == close:
                return items
            if kind != ",":
                raise self._unexpected(f"',' or '{close}'", text, pos)

    def _peek(self) -> str | None:
        return self._tokens[self._next][0] if self._next < len(self._tokens) else None

    def _take(self) -> tuple[str, str, int]:
        if self._next >= len(self._tokens):
            raise RelSyntaxError("the file ends in the middle of the term")
        self._next += 1
        return self._tokens[self._next - 1]

    def _unexpected(self, expected: str, text: str, pos: int) -> RelSyntaxError:
        return RelSyntaxError(f"expected {expected} at line {_line(self._text, pos)}, "
                               f"found {text[:20]!r}")


def parse_rel(text: str) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    """Name, version, erts version and (app, vsn) pairs of a .rel file's text; RelSyntaxError
    says what is wrong, with the line."""
    term = _parse_term(text)
    if not (isinstance(term, tuple) and len(term) == 4 and term[0] == _Atom("release")):
        raise RelSyntaxError("it is not a {release, ...} tuple of four elements")
    _, name_vsn, erts, apps = term
    if not (isinstance(name_vsn, tuple) and len(name_vsn) == 2
            and isinstance(name_vsn[0], str) and isinstance(name_vsn[1], str)
            and name_vsn[0] and name_vsn[1]):
        raise RelSyntaxError('the release is not named as {"Name", "Vsn"}')
    if not (isinstance(erts, tuple) and len(erts) == 2 and erts[0] == _Atom("erts")
            and isinstance(erts[1], str)):
        raise RelSyntaxError('its erts entry is not {erts, "Vsn"}')
    if not isinstance(apps, list):
        raise RelSyntaxError("its applications are not a list")
    pairs = tuple(_application(entry, i) for i, entry in enumerate(apps, 1))
    return name_vsn[0], name_vsn[1], erts[1], pairs


def _application(entry: _Term, index: int) -> tuple[str, str]:
    if (isinstance(entry, tuple) and 2 <= len(entry) <= 4
            and isinstance(entry[0], _Atom) and isinstance(entry[1], str)):
        return entry[0].name, entry[1]
    raise RelSyntaxError(f'application {index} is not {{App, "Vsn"}}, {{App, "Vsn", Type}}, '
                          f'{{App, "Vsn", IncApps}} or {{App, "Vsn", Type, IncApps}}')


@dataclass(frozen=True)
class ListedRelease:
    """One release of a ``releases/RELEASES`` file: what release_handler lists at its start."""

    name: str
    version: str
    erts_version: str
    libs: tuple[tuple[str, str, str], ...]  # (app, vsn, dir): dir is lib/APP-VSN, as written
    status: str


def parse_releases(text: str) -> tuple[ListedRelease, ...]:
    """The releases of a RELEASES file's text (``[{release, Name, Vsn, Erts, Libs, Status}]``
    as release_handler writes it); RelSyntaxError says what is wrong, with the line."""
    term = _parse_term(text)
    if not isinstance(term, list):
        raise RelSyntaxError("it is not a list of {release, ...} tuples")
    found = []
    for index, entry in enumerate(term, 1):
        if not (isinstance(entry, tuple) and len(entry) == 6 and entry[0] == _Atom("release")
                and all(isinstance(x, str) for x in entry[1:4])
                and isinstance(entry[4], list) and isinstance(entry[5], _Atom)):
            raise RelSyntaxError(f"entry {index} is not {{release, Name, Vsn, Erts, Libs, "
                                 "Status}")
        libs = []
        for lib in entry[4]:
            if not (isinstance(lib, tuple) and len(lib) == 3 and isinstance(lib[0], _Atom)
                    and isinstance(lib[1], str) and isinstance(lib[2], str)):
                raise RelSyntaxError(f"entry {index} has a library that is not "
                                     '{App, "Vsn", "Dir"}')
            libs.append((lib[0].name, lib[1], lib[2]))
        name, vsn, erts = (str(x) for x in entry[1:4])
        found.append(ListedRelease(name, vsn, erts, tuple(libs), entry[5].name))
    return tuple(found)


# --- relup files: only the version keys ---------------------------------------------------

@dataclass(frozen=True)
class RelupVersions:
    """The keys of a relup ``{Vsn, [{UpFrom, Descr, Instrs}], [{DownTo, Descr, Instrs}]}``."""

    version: str
    up_from: tuple[str, ...]
    down_to: tuple[str, ...]
    # The up-from versions whose script starts with restart_new_emulator: systools writes it
    # first when the ERTS of the two releases differ.
    new_emulator_from: tuple[str, ...] = ()
    # The entries whose instructions hold restart_emulator (release_handler answers ok, then
    # reboots the node into the release): by version, up and down.
    up_restart: tuple[str, ...] = ()
    down_restart: tuple[str, ...] = ()


# Every token the text of an Erlang term can hold, coarsely: enough to skip the instructions
# without understanding them. Char literals first, so that $" $} $% are never a string, a
# closing brace or a comment; anything else is one character of "other" (numbers, #, =>, |).
_RELUP_TOKEN = re.compile(r"""
    (?P<space> \s+ | %[^\n]* )
  | (?P<char> \$ (?: \\ (?: x\{[0-9A-Fa-f]*\} | x[0-9A-Fa-f]{0,2} | [0-7]{1,3} | \^. | . ) | . ) )
  | (?P<string> "(?:[^"\\]|\\.)*" )
  | (?P<qatom> '(?:[^'\\]|\\.)*' )
  | (?P<open> << | [{\[] )
  | (?P<close> >> | [}\]] )
  | (?P<punct> [,.] )
  | (?P<word> [A-Za-z0-9_@]+ )
  | (?P<other> . )
""", re.VERBOSE | re.DOTALL)


class _RelupReader:
    """Walks a relup's tokens one at a time (a relup may be megabytes: no token list is
    kept), reading the version strings and skipping each instruction list by bracket depth,
    so nesting costs no recursion."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._ahead: tuple[str, str, int] | None = None

    def _next(self) -> tuple[str, str, int] | None:
        if self._ahead is not None:
            token, self._ahead = self._ahead, None
            return token
        while self._pos < len(self._text):
            match = _RELUP_TOKEN.match(self._text, self._pos)
            assert match is not None  # "other" matches any character
            self._pos = match.end()
            kind = match.lastgroup or ""
            if kind != "space":
                return kind, match.group(), match.start()
        return None

    def _take(self, expected: str) -> tuple[str, str, int]:
        token = self._next()
        if token is None:
            raise RelSyntaxError(f"the file ends where {expected} was expected")
        return token

    def expect(self, text: str) -> None:
        _, found, pos = self._take(repr(text))
        if found != text:
            raise self._unexpected(repr(text), found, pos)

    def _unexpected(self, expected: str, found: str, pos: int) -> RelSyntaxError:
        return RelSyntaxError(f"expected {expected} at line {_line(self._text, pos)}, "
                              f"found {found[:20]!r}")

    def string(self) -> str:
        kind, found, pos = self._take("a version string")
        if kind != "string":
            raise self._unexpected("a version string", found, pos)
        return _unescape(found)

    def skip_term(self) -> None:
        """One term, whatever it holds: up to the ',' or closing bracket at its own level."""
        depth = 0
        seen = False
        while True:
            token = self._take("a term")
            kind, found, pos = token
            if depth == 0 and seen and (kind == "close" or found == ","):
                self._ahead = token
                return
            if depth == 0 and not seen and (kind == "close" or found == ","):
                raise self._unexpected("a term", found, pos)
            seen = True
            if kind == "open":
                depth += 1
            elif kind == "close":
                depth -= 1

    def instructions(self) -> tuple[str, bool]:
        """A list skipped like skip_term: the atom it starts with ("" if none), and whether
        one of its instructions is restart_emulator (the bare atom, at the list's own
        level)."""
        kind, found, pos = self._take("a list")
        if found != "[":
            raise self._unexpected("a list", found, pos)
        depth, first, restart, index = 1, "", False, 0
        while depth:
            kind, found, pos = self._take("']'")
            if depth == 1 and kind == "word":
                first = found if index == 0 else first
                restart = restart or found == "restart_emulator"
            depth += (kind == "open") - (kind == "close")
            index += 1
        return first, restart

    def entries(self, firsts: list[str] | None = None,
                restarts: list[str] | None = None) -> tuple[str, ...]:
        """[{Vsn, Descr, Instructions}, ...]: the Vsn of each (and, into ``firsts``, the
        atom each script starts with; into ``restarts``, the Vsn of those whose instructions
        restart the emulator)."""
        self.expect("[")
        found: list[str] = []
        _, text, pos = self._take("']' or '{'")
        if text == "]":
            return ()
        while True:
            if text != "{":
                raise self._unexpected("'{'", text, pos)
            found.append(self.string())
            self.expect(",")
            self.skip_term()
            self.expect(",")
            first, restart = self.instructions()
            if firsts is not None:
                firsts.append(first)
            if restart and restarts is not None:
                restarts.append(found[-1])
            self.expect("}")
            _, text, pos = self._take("',' or ']'")
            if text == "]":
                return tuple(found)
            if text != ",":
                raise self._unexpected("',' or ']'", text, pos)
            _, text, pos = self._take("'{'")

    def end(self) -> None:
        token = self._next()
        if token is not None and token[1] == ".":
            token = self._next()
        if token is not None:
            raise self._unexpected("the end of the file", token[1], token[2])


def relup_versions(text: str) -> RelupVersions:
    """The version of a relup file and the versions its up and down entries name, without
    reading the instructions (RelSyntaxError says what is wrong, with the line)."""
    reader = _RelupReader(text)
    reader.expect("{")
    version = reader.string()
    reader.expect(",")
    firsts: list[str] = []
    up_restart: list[str] = []
    up = reader.entries(firsts, up_restart)
    reader.expect(",")
    down_restart: list[str] = []
    down = reader.entries(None, down_restart)
    reader.expect("}")
    reader.end()
    return RelupVersions(version, up, down, tuple(
        vsn for vsn, first in zip(up, firsts) if first == "restart_new_emulator"),
        tuple(up_restart), tuple(down_restart))
