"""What every part of the release engine stands on: the node it talks to and how (the RPC
timeout, the step reporter), the options of an operation, the context one operation carries
from step to step, and the guard that turns the Failure ending an operation into its Result.

The parts (preflight.py, staging.py, switch.py) and the operations (single.py, upgrade.py)
all act through one :class:`EngineCore`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from agent.config import Hook
from agent.errors import NodeUnavailable
from bridge import BadRpc

from .present import TermStyle
from .releases import Release, parse_which_releases
from .steps import Caller, Failure, NodeDirs, Result, Steps, StepSink, node_dirs
from .tarball import ReleaseTarball
from .unpack import Extracted


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
    install_timeout: float = 300.0   # relup scripts may migrate big states
    health_timeout: float = 0.0      # soak time of the probes; 0: probes run once
    probes: tuple[Probe, ...] = ()
    restart_timeout: float = 60.0    # how long a node restarted by release_handler may take
    hooks: tuple[Hook, ...] = ()     # RPCs before and after each install_release
    replace: bool = False            # a release of the version already there is replaced
    # A release whose runtime config cannot be reproduced (runtime.py) is installed anyway,
    # its unset relx variables rendered empty, its unknown providers not run.
    allow_config_reset: bool = False


class UnpackLedger(Protocol):
    """Where the agent keeps the sha256 of each tarball it unpacked, besides the release's own
    dir (releases/VSN/relctl.sha256): the agent's journal. Either one answers when the other is
    lost. Neither call raises: a ledger that cannot be written only weakens a later check."""

    def recorded(self, version: str) -> str | None: ...

    def record(self, version: str, sha256: str) -> None: ...


class NoLedger:
    """No record besides the release dir (the engine's default, e.g. in unit tests)."""

    def recorded(self, version: str) -> str | None:
        return None

    def record(self, version: str, sha256: str) -> None:
        pass


@dataclass
class OperationContext:
    """What one operation learns as it goes, and what it did that a failure must take back."""

    from_version: str = ""
    releases: tuple[Release, ...] = ()
    dirs: NodeDirs | None = None
    unpacked_here: bool = False
    staged_file: Path | None = None
    tarball: ReleaseTarball | None = None
    extracted: Extracted | None = None   # the agent's extraction, until unpack places it
    placed: tuple[Path, ...] = ()        # what the agent's unpack put under the root
    in_node: str = ""                    # why the node unpacks (the agent may not write)

    def find(self, version: str) -> Release | None:
        return next((r for r in self.releases if r.version == version), None)


class EngineCore:
    """The node, the step reporter and the RPC timeout that every part of an operation shares."""

    def __init__(self, node: Caller, on_step: StepSink, *, rpc_timeout: float,
                 ledger: UnpackLedger | None = None, agent_unpack: bool = True) -> None:
        self._node = node
        # False: always unpack_release in the node (the scripted-node tests of that way).
        self.agent_unpack = agent_unpack
        self._steps = Steps(on_step)
        self._rpc_timeout = rpc_timeout
        self._ledger: UnpackLedger = ledger or NoLedger()
        self._style = TermStyle(node)

    @property
    def ledger(self) -> UnpackLedger:
        return self._ledger

    @property
    def node(self) -> Caller:
        return self._node

    @property
    def style(self) -> TermStyle:
        """Terms and crashes of this node as its users read them (Erlang or Elixir)."""
        return self._style

    @property
    def steps(self) -> Steps:
        return self._steps

    @property
    def rpc_timeout(self) -> float:
        return self._rpc_timeout

    async def call(self, module: str, function: str, args: Sequence[Any] = (),
                   timeout: float | None = None) -> Any:
        return await self._node.call(module, function, args,
                                     timeout=self._rpc_timeout if timeout is None else timeout)

    async def releases(self) -> tuple[Release, ...]:
        return parse_which_releases(await self.call("release_handler", "which_releases"))

    async def read_node(self, ctx: OperationContext) -> None:
        """The facts every operation starts from: the releases, which one runs, the dirs."""
        ctx.releases = await self.releases()
        running = next((r for r in ctx.releases if r.running), None)
        ctx.from_version = running.version if running else ""
        ctx.dirs = await node_dirs(self._node, self._rpc_timeout)

    async def failed(self, failure: Failure, ctx: OperationContext, version: str) -> Result:
        try:
            releases = await self.releases()
        except (NodeUnavailable, BadRpc):
            releases = ()  # the result still says what happened, without the node's view
        return Result(failure.outcome, ctx.from_version, version, error=failure.message,
                      releases=releases)


class HasCore(Protocol):
    @property
    def core(self) -> EngineCore: ...


_S = TypeVar("_S", bound=HasCore)
_P = ParamSpec("_P")


def guarded(method: Callable[Concatenate[_S, OperationContext, str, _P], Awaitable[Result]]
            ) -> Callable[Concatenate[_S, str, _P], Awaitable[Result]]:
    """An operation with a fresh context; a refusal or failure becomes its Result."""
    @functools.wraps(method)
    async def run(self: _S, version: str, /, *args: _P.args, **kwargs: _P.kwargs) -> Result:
        ctx = OperationContext()
        try:
            return await method(self, ctx, version, *args, **kwargs)
        except Failure as failure:
            return await self.core.failed(failure, ctx, version)
    return run
