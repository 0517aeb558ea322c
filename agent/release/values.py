"""The release engine's values: what an operation is given (``Options``, ``Probe``), what it
reports as it goes and leaves behind (``StepRecord``, ``ConfigChange``, ``Result`` and its
outcomes), the ``Failure`` that ends it, and what the journal keeps for it (``Placing``).

Also what the engine needs of a node (``Caller``) and how it words an Erlang term
(``term_text``). Plain frozen data otherwise: the rooms above the engine (operations, api, daemon) build and read these,
and the engine's core (core.py) acts on them. Nothing here talks to a node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import RESTART_TIMEOUT, Hook, NodeConfig
from bridge import format_term

from .releases import Release

SUCCEEDED = "succeeded"
FAILED_UNCHANGED = "failed_unchanged"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
DRY_RUN = "dry_run"
UP_TO_DATE = "up_to_date"  # the target already runs and is permanent: nothing was done
# What the journal may hold: the engine's outcomes, and the runner's own two (an operation
# still going, or one the agent's stop ended).
OUTCOMES = frozenset({SUCCEEDED, FAILED_UNCHANGED, ROLLED_BACK, FAILED, DRY_RUN, UP_TO_DATE,
                      "running", "interrupted"})

STEP_STATES = frozenset({"running", "succeeded", "failed", "skipped"})


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



StepSink = Callable[[StepRecord], None]


@dataclass(frozen=True)
class Result:
    outcome: str
    from_version: str
    to_version: str
    error: str = ""
    releases: tuple[Release, ...] = ()
    detail: str = ""
    config_changes: tuple[ConfigChange, ...] = ()


class Failure(Exception):
    """Ends an operation: ``outcome`` says where the node stands, ``message`` what happened
    and what to do. Frozen: a failure is reported as raised, and a caller that wants another
    message raises a new one."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(outcome, message)
        self._outcome = outcome
        self._message = message

    @property
    def outcome(self) -> str:
        return self._outcome

    @property
    def message(self) -> str:
        return self._message

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"Failure({self._outcome!r}, {self._message!r})"


@dataclass(frozen=True)
class NodeDirs:
    root: str
    releases: str


@dataclass(frozen=True)
class Probe:
    """A health probe: ``module:function()`` must return ``ok``."""

    module: str
    function: str

    def __str__(self) -> str:
        return f"{self.module}:{self.function}()"


@dataclass(frozen=True)
class Options:
    permanent: bool = True
    dry_run: bool = False
    # relup scripts may migrate big states; the config's default (agent/config/values.py)
    install_timeout: float = NodeConfig.install_timeout
    # Seconds the probes must keep passing (health_soak in agent.toml, the API and relctl);
    # 0: they run once.
    health_soak: float = NodeConfig.health_soak
    probes: tuple[Probe, ...] = ()
    restart_timeout: float = RESTART_TIMEOUT  # a node restarted by release_handler
    hooks: tuple[Hook, ...] = ()     # RPCs before and after each install_release
    replace: bool = False            # a release of the version already there is replaced
    # A release whose runtime config cannot be reproduced (runtime.py) is installed anyway,
    # its unset relx variables rendered empty, its unknown providers not run.
    allow_config_reset: bool = False
    # Processes still on old code at make_permanent are killed by its purge and reported,
    # instead of failing the verification (proccheck.py).
    allow_purge_kill: bool = False


@dataclass(frozen=True)
class Placing:
    """What one operation was about to place under a release root for ``version``: the paths
    that did not exist before it (the agent's extraction dir included). Kept in the ledger from
    before the first file is written until the operation knows what became of them."""

    key: int                  # the operation's id (the ledger's key)
    version: str
    paths: tuple[str, ...]
    # Files and dirs it added inside directories the root had (a new file in an existing
    # lib/APP-VSN, at the deepest level the root had): taken back though the dir is in use.
    added: tuple[str, ...] = ()


class Caller(Protocol):
    """What an operation needs of a node connection (NodeLink provides it)."""

    @property
    def name(self) -> str: ...

    async def call(self, module: str, function: str, args: Sequence[Any] = (), *,
                   timeout: float | None = None) -> Any: ...

    async def wait_for_restart(self, *, down_within: float, up_within: float) -> bool:
        """True when the node dropped the connection within ``down_within`` seconds and was
        connected again within ``up_within`` more."""
        ...


def term_text(value: Any) -> str:
    """An Erlang reason as text, short enough for a step detail."""
    return value if isinstance(value, str) and len(value) <= 500 else format_term(value)
