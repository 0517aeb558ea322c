"""Each operation's steps, declared once, in the order they run (DESIGN.md section 4).

The engine reports a step only if the flow of the running operation declares it (``Steps``
refuses any other name: a new step is one entry here, or it does not run), and every list of
steps shown skipped is cut from this table, never written out again at the place that skips.

Entries:
- a plain name is a step the operation always shows (run, failed or skipped);
- ``NAME?`` is a step that runs only when it has work (``--replace``, the runtime config
  steps): never shown skipped;
- ``pre_install:*`` / ``post_install:*`` stand for the configured hooks, one step each.

``TAKE_BACK`` are the steps any flow may end with when it takes back what it placed
(``undo_unpack``, the one undo of staging.py), and ``ROLLBACK`` those an upgrade runs when the
target fails after its install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import POST_INSTALL, PRE_INSTALL, Hook

HOOKS = {f"{PRE_INSTALL}:*": PRE_INSTALL, f"{POST_INSTALL}:*": POST_INSTALL}
_PRE, _POST = f"{PRE_INSTALL}:*", f"{POST_INSTALL}:*"

_SWITCH = (_PRE, "write_config?", "install", "runtime_config?", _POST, "verify",
           "make_permanent")

FLOWS: dict[str, tuple[str, ...]] = {
    "upgrade": ("preflight", "replace?", "stage", "unpack", "check", *_SWITCH),
    "downgrade": ("preflight", "check", *_SWITCH),
    "unpack": ("preflight", "replace?", "stage", "unpack"),
    "check": ("check",),
    "install": ("preflight", _PRE, "write_config?", "install", _POST, "verify"),
    "make_permanent": ("preflight", "make_permanent"),
    "remove": ("preflight", "remove"),
    "reload": ("preflight", "read_config", "diff", "apply"),
}
TAKE_BACK = ("undo_unpack",)
ROLLBACK = ("write_config?", "rollback", "runtime_config?", _POST, "verify")


class UndeclaredStep(Exception):
    """The engine reported a step its flow does not declare: a bug of relctl's, never of the
    node's or the caller's."""


@dataclass(frozen=True)
class Flow:
    name: str
    steps: tuple[str, ...]

    @classmethod
    def of(cls, name: str) -> Flow:
        return cls(name, FLOWS[name])

    def declares(self, step: str) -> bool:
        names = {s.rstrip("?") for s in (*self.steps, *TAKE_BACK, *ROLLBACK)}
        hook_kind = step.partition(":")[0]
        return step in names or (":" in step and f"{hook_kind}:*" in names)

    def between(self, first: str, last: str, hooks: Sequence[Hook] = ()) -> list[str]:
        """The steps from ``first`` to ``last`` (both included) that are shown when skipped,
        with each configured hook in its place."""
        plain = [s.rstrip("?") for s in self.steps]
        start, end = plain.index(first), plain.index(last)
        shown: list[str] = []
        for entry in self.steps[start:end + 1]:
            if entry.endswith("?"):
                continue
            if entry in HOOKS:
                shown += [h.step for h in hooks if h.when == HOOKS[entry]]
            else:
                shown.append(entry)
        return shown
