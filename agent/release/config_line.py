"""Where in a mix release's runtime config (``config/runtime.exs``) an exception was raised.

The agent runs a mix release's config providers again on the node (reload.py). When
``Config.Reader`` raises, the stack Elixir 1.14 gives holds only ``erl_eval`` and Elixir's own
frames: the file's name and line are not in it (Elixir 1.15+ adds them), so an error in a
40-line runtime.exs would not say where it is. This module finds the line as an operator
would: it reads the file on the node, takes the line of each top-level expression from
``Code.string_to_quoted/2``, and evaluates ever longer prefixes of the file with the public
``Config.Reader.eval!/3`` (with the provider's own options) until one raises: the last
expression of that prefix is the one that fails. A config file is meant to be free of side
effects; it is read again by every boot and every reload anyway.

Only calls through the given :class:`~agent.release.values.Caller`-like function; no I/O of its
own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bridge import Atom, BadRpc

Call = Callable[[str, str, Sequence[Any]], Awaitable[Any]]

READER = "Elixir.Config.Reader"
# Evaluating prefixes costs one call each: a config with more top-level expressions than this
# is located by its first ones only.
MAX_EXPRESSIONS = 200


def _line(expr: Any) -> int | None:
    """The line of a quoted Elixir expression ``{Name, Meta, Args}`` (Meta a keyword list)."""
    if isinstance(expr, tuple) and len(expr) == 3 and isinstance(expr[1], list):
        for item in expr[1]:
            if isinstance(item, tuple) and len(item) == 2 and item[0] == Atom("line") \
                    and isinstance(item[1], int):
                return item[1]
    return None


def top_level_lines(quoted: Any) -> list[int]:
    """The first line of each top-level expression of a quoted file (its ``__block__``)."""
    if isinstance(quoted, tuple) and len(quoted) == 3 and quoted[0] == Atom("__block__") \
            and isinstance(quoted[2], list):
        exprs = quoted[2]
    else:
        exprs = [quoted]
    lines = [_line(e) for e in exprs]
    return [n for n in lines if n is not None]


async def locate(call: Call, state: Any) -> str | None:
    """``FILE:LINE`` of the top-level expression of ``Config.Reader``'s file (``state`` is the
    provider state, ``{PathSpec, Opts}``) that raises, or None when it cannot be told (the
    file is gone, does not parse, or no prefix raises: then it is no error of the file's)."""
    if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], list)):
        return None
    spec, opts = state
    try:
        path = await call("Elixir.Config.Provider", "resolve_config_path!", [spec])
        read = await call("file", "read_file", [path])
        if not (isinstance(path, bytes) and isinstance(read, tuple) and len(read) == 2
                and read[0] == Atom("ok") and isinstance(read[1], bytes)):
            return None
        contents: bytes = read[1]
        quoted = await call("Elixir.Code", "string_to_quoted", [contents, [(Atom("file"), path)]])
    except BadRpc:
        return None
    if not (isinstance(quoted, tuple) and len(quoted) == 2 and quoted[0] == Atom("ok")):
        return None  # a syntax error: Elixir's own message names file and line already
    starts = top_level_lines(quoted[1])[:MAX_EXPRESSIONS]
    lines = contents.split(b"\n")
    for i, start in enumerate(starts):
        # The file up to the line before the next expression: expressions 1..i+1.
        end = starts[i + 1] - 1 if i + 1 < len(starts) else len(lines)
        prefix = b"\n".join(lines[:end]) + b"\n"
        try:
            await call(READER, "eval!", [path, prefix, opts])
        except BadRpc:
            return f"{path.decode('utf-8', 'replace')}:{start}"
    return None
