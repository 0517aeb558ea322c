"""What an operation leaves behind: its steps and the config keys it changed, as values the
engine reports and the journal keeps (agent/operations/journal.py stores them)."""

from __future__ import annotations

from dataclasses import dataclass

STEP_STATES = frozenset({"running", "succeeded", "failed", "skipped"})
OUTCOMES = frozenset({"running", "succeeded", "failed_unchanged", "rolled_back", "failed",
                      "interrupted", "dry_run", "up_to_date"})


@dataclass(frozen=True)
class StepRecord:
    name: str                 # "preflight", "stage", "unpack", ..., "rollback"
    state: str                # one of STEP_STATES
    started_at: float         # unix seconds
    duration: float | None    # seconds, None while running
    detail: str = ""


@dataclass(frozen=True)
class ConfigChange:
    """One application environment key a config reload added, changed or removed. The values
    (Erlang terms as text, empty unless the requester asked for them) are never journaled:
    they may be secrets, and the journal is readable by every viewer."""
    application: str
    key: str                  # the key as an Erlang term, e.g. "greeting"
    kind: str                 # "added", "changed" or "removed"
    old_value: str = ""
    new_value: str = ""
