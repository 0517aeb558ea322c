"""Upgrade hooks: RPCs the agent makes on a node before and after it installs a release
(``[[nodes.hooks]]`` in the agent's config), e.g. clearing a web framework's static cache.

A hook succeeds when ``module:function(args...)`` returns ``ok`` or ``{ok, _}`` within its
timeout; any other reply, an exception on the node, a lost connection or the timeout is a
failure. Each hook is a step of its own (``pre_install:NAME``, ``post_install:NAME``), so the
journal and every client following the operation see it. What a failure does to the operation
is the engine's choice: it names the outcome, and :func:`run_hooks` raises it.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.config import CONTINUE, PRE_INSTALL, Hook
from agent.errors import NodeTimeout, NodeUnavailable, ReplyTooLarge
from bridge import Atom, BadRpc

from .core import Steps
from .present import TermStyle
from .values import Caller, Failure

_OK = Atom("ok")


async def run_hooks(node: Caller, steps: Steps, hooks: Sequence[Hook], when: str, *,
                    outcome: str) -> None:
    """Run the ``when`` hooks in their configured order, each as its own step.

    The first failing hook with ``on_failure = "fail"`` raises Failure(``outcome``), after the
    hooks behind it are shown skipped; with "continue" its step fails and the next one runs."""
    chosen = [h for h in hooks if h.when == when]
    for i, hook in enumerate(chosen):
        try:
            async with steps.step(hook.step) as st:
                st.detail = await _run(node, hook, outcome)
        except Failure:
            if hook.on_failure == CONTINUE:
                continue
            for later in chosen[i + 1:]:
                steps.skip(later.step, f"not run: hook {hook.name} failed before it")
            raise


async def _call_text(style: TermStyle, hook: Hook) -> str:
    """The hook's call as the node's language writes it: ``Date.new!(2024, 13, 1)`` on an
    Elixir node, ``'Elixir.Date':'new!'(2024,13,1)`` (Hook's own str) elsewhere."""
    if not await style.elixir():
        return str(hook)
    # inspect gives the module as Elixir writes it: Date, or :counter_hooks for Erlang's.
    module, *args = await style.values([Atom(hook.module), *hook.args])
    return f"{module}.{hook.function}({', '.join(args)})"


async def _run(node: Caller, hook: Hook, outcome: str) -> str:
    style = TermStyle(node)  # the node link remembers what the node runs: no extra RPC
    try:
        res = await node.call(hook.module, hook.function, list(hook.args), timeout=hook.timeout)
    except NodeTimeout:
        # Erlang RPC cannot take a call back: the function may still finish on the node.
        problem = (f"did not return within its timeout of {hook.timeout:g} s (it may still be "
                   "running on the node; raise the hook's timeout if it needs longer)")
    except BadRpc as exc:
        problem = f"failed on the node: {await style.reason(exc.reason)}"
    except NodeUnavailable as exc:
        problem = f"could not run: {exc}"
    except ReplyTooLarge as exc:
        problem = f"returned a reply too large to read ({exc})"
    else:
        if res == _OK or (isinstance(res, tuple) and len(res) == 2 and res[0] == _OK):
            return f"{await _call_text(style, hook)} returned {await style.value(res)}"
        ok = "ok or {ok, _}" if not await style.elixir() else ":ok or {:ok, _}"
        problem = f"returned {await style.value(res)}, not {ok}"
    message = f"hook {hook.name}: {await _call_text(style, hook)} {problem}"
    if hook.on_failure == CONTINUE:
        message += '; on_failure = "continue": the operation goes on'
    elif hook.when == PRE_INSTALL:
        message += "; the release was not installed"
    raise Failure(outcome, message)
