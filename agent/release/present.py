"""How a node's terms read in the messages relctl shows: in Erlang syntax, or, on an Elixir
release, the way Elixir prints them.

An Elixir user reads ``{:error, :busy}``, ``"GBP"`` and ``** (ArgumentError) ... lib/x.ex:12``,
not ``{error,busy}``, ``<<"GBP">>`` and ``{'EXIT',{#{'__struct__' => ...},[...]}}``. So on a
node that runs Elixir, values go through ``Kernel.inspect/1`` and exceptions through
``Exception.format/3``, both on the node: only the node knows the Inspect implementations of
its structs and how its exceptions word their messages. Every other node, and every case where
the node cannot answer, gets :func:`bridge.format_term` exactly as before.

Whether a node runs Elixir is the node link's business (it asks once per connection); a
``Caller`` that cannot tell (a scripted node in a unit test) is taken for an Erlang node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from agent.errors import NodeUnavailable, ReplyTooLarge
from bridge import Atom, BadRpc, Export, format_term

from .values import Caller, term_text

VALUE_LIMIT = 500         # format_term's own limit: a value in a step detail
EXCEPTION_LIMIT = 4 * VALUE_LIMIT   # an exception with a few stack lines (file:line each)
FORMAT_TIMEOUT = 5.0      # formatting is for a message: a busy node must not hold it up

_EXIT = Atom("EXIT")
_ERROR = Atom("error")
_EXIT_KIND = Atom("exit")
_INSPECT = Export(Atom("Elixir.Kernel"), Atom("inspect"), 1)


@runtime_checkable
class KnowsLanguage(Protocol):
    """A Caller that can tell whether its node runs Elixir (NodeLink can)."""

    async def runs_elixir(self, timeout: float) -> bool: ...


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_stack(value: Any) -> bool:
    """An Erlang stacktrace: [{Module, Function, ArityOrArgs, Location}, ...]."""
    return (isinstance(value, list) and bool(value) and all(
        isinstance(f, tuple) and len(f) == 4 and isinstance(f[0], Atom)
        and isinstance(f[3], list) for f in value))


def find_exception(reason: Any, depth: int = 0) -> tuple[Atom, Any, list[Any]] | None:
    """(Kind, Reason, Stack) of the first ``{'EXIT', ...}`` in ``reason``, as rpc:call and
    ``catch`` wrap a crash: ``{'EXIT', {Reason, Stack}}`` for an error, ``{'EXIT', Reason}``
    for an exit. It may be nested: a code_change that raised during install_release comes back
    inside release_handler's own badmatch. None when there is none."""
    if depth > 8:
        return None
    if isinstance(reason, tuple):
        if len(reason) == 2 and reason[0] == _EXIT:
            inner = reason[1]
            if isinstance(inner, tuple) and len(inner) == 2 and _is_stack(inner[1]):
                return _ERROR, inner[0], inner[1]
            return _EXIT_KIND, inner, []
        items: Sequence[Any] = reason
    elif isinstance(reason, list):
        items = reason
    else:
        return None
    for item in items:
        found = find_exception(item, depth + 1)
        if found is not None:
            return found
    return None


class TermStyle:
    """Formats one node's terms for messages, in the node's language."""

    def __init__(self, node: Caller, *, timeout: float = FORMAT_TIMEOUT) -> None:
        self._node = node
        self._timeout = timeout

    async def elixir(self) -> bool:
        if not isinstance(self._node, KnowsLanguage):
            return False
        try:
            return await self._node.runs_elixir(self._timeout)
        except (NodeUnavailable, BadRpc, ReplyTooLarge):
            return False  # cannot tell now: the Erlang form is always right, if less friendly

    async def value(self, term: Any) -> str:
        """One value: ``{:error, :busy}`` on an Elixir node, ``{error,busy}`` elsewhere."""
        [text] = await self.values([term])
        return text

    async def values(self, terms: Sequence[Any]) -> list[str]:
        """Several values with one RPC (a config reload may show many)."""
        if terms and await self.elixir():
            texts = await self._call("lists", "map", [_INSPECT, list(terms)])
            if (isinstance(texts, list) and len(texts) == len(terms)
                    and all(isinstance(t, bytes) for t in texts)):
                return [_cut(t.decode("utf-8", "replace"), VALUE_LIMIT) for t in texts]
        return [format_term(t) for t in terms]

    async def reason(self, reason: Any) -> str:
        """Why something failed on the node. On an Elixir node a crash reads as Elixir prints
        it, ``** (ArgumentError) message`` then its stack with file:line; any other reason is
        a value. Elsewhere the Erlang term, as term_text gives it."""
        if isinstance(reason, str) or not await self.elixir():
            return term_text(reason)  # a charlist reason is already text (file:format_error)
        found = find_exception(reason)
        if found is None and isinstance(reason, tuple) and len(reason) == 2 \
                and _is_stack(reason[1]):
            found = (_ERROR, reason[0], reason[1])  # {Reason, Stack}, as an 'EXIT' carries it
        if found is not None:
            text = await self._call("Elixir.Exception", "format", list(found))
            if isinstance(text, bytes):
                return _cut(text.decode("utf-8", "replace").rstrip(), EXCEPTION_LIMIT)
        return await self.value(reason)

    async def _call(self, module: str, function: str, args: list[Any]) -> Any:
        try:
            return await self._node.call(module, function, args, timeout=self._timeout)
        except (NodeUnavailable, BadRpc, ReplyTooLarge):
            return None  # the caller falls back to the Erlang form
