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
from bridge import Atom, BadRpc, format_term

from .steps import Caller, Failure, Steps

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


def skip_hooks(steps: Steps, hooks: Sequence[Hook], when: str, reason: str) -> None:
    """Show the ``when`` hooks as skipped, so the steps say why they did not run."""
    for hook in hooks:
        if hook.when == when:
            steps.skip(hook.step, f"{reason}; hooks run only when a release is installed")


async def _run(node: Caller, hook: Hook, outcome: str) -> str:
    try:
        res = await node.call(hook.module, hook.function, list(hook.args), timeout=hook.timeout)
    except NodeTimeout:
        # Erlang RPC cannot take a call back: the function may still finish on the node.
        problem = (f"did not return within its timeout of {hook.timeout:g} s (it may still be "
                   "running on the node; raise the hook's timeout if it needs longer)")
    except BadRpc as exc:
        problem = f"failed on the node: {format_term(exc.reason)}"
    except NodeUnavailable as exc:
        problem = f"could not run: {exc}"
    except ReplyTooLarge as exc:
        problem = f"returned a reply too large to read ({exc})"
    else:
        if res == _OK or (isinstance(res, tuple) and len(res) == 2 and res[0] == _OK):
            return f"{hook} returned {format_term(res)}"
        problem = f"returned {format_term(res)}, not ok or {{ok, _}}"
    message = f"hook {hook.name}: {hook} {problem}"
    if hook.on_failure == CONTINUE:
        message += '; on_failure = "continue": the operation goes on'
    elif hook.when == PRE_INSTALL:
        message += "; the release was not installed"
    raise Failure(outcome, message)
