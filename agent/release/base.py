"""What every part of the release engine stands on: the node it talks to and how (the RPC
timeout, the step reporter), the options of an operation, the context one operation carries
from step to step, and the guard that turns the Failure ending an operation into its Result.

The parts (preflight.py, staging.py, switch.py) and the operations (single.py, upgrade.py)
all act through one :class:`EngineCore`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from agent.config import Hook
from agent.errors import NodeUnavailable
from bridge import Atom, BadRpc

from .inuse import InUse
from .inuse import compute as compute_in_use
from .present import TermStyle
from .releases import Release, parse_which_releases
from .steps import DRY_RUN, FAILED, FAILED_UNCHANGED, Caller, Failure, NodeDirs, Result, Steps
from .steps import StepSink, node_dirs
from .tarballs import Extracted


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


class UnpackLedger(Protocol):
    """What the agent keeps beside the node's files, in its journal: the sha256 of each
    tarball it unpacked (besides the release's own releases/VSN/relctl.sha256; either one
    answers when the other is lost), and what an operation is placing under the root, so that
    an operation that never finished (agent or node killed) is taken back by the next one from
    that record, never from a guess about what is on disk. No call raises: a ledger that
    cannot be written only weakens a later check or leaves files behind."""

    def recorded(self, version: str) -> str | None: ...

    def record(self, version: str, sha256: str) -> None: ...

    def placing(self, version: str, paths: Sequence[Path]) -> None:
        """This operation is about to place ``paths`` for ``version``."""
        ...

    def settled(self) -> None:
        """What this operation was placing is registered with the node, or taken back."""
        ...

    def unfinished(self) -> tuple[Placing, ...]:
        """What other operations on this node were placing and never settled."""
        ...

    def forget(self, placing: Placing) -> None:
        """``placing`` was taken back (as far as nothing in use was in it)."""
        ...


class NoLedger:
    """A ledger in memory only (the engine's default, e.g. in unit tests)."""

    def __init__(self) -> None:
        self._sha: dict[str, str] = {}

    def recorded(self, version: str) -> str | None:
        return self._sha.get(version)

    def record(self, version: str, sha256: str) -> None:
        self._sha[version] = sha256

    def placing(self, version: str, paths: Sequence[Path]) -> None:
        pass

    def settled(self) -> None:
        pass

    def unfinished(self) -> tuple[Placing, ...]:
        return ()

    def forget(self, placing: Placing) -> None:
        pass


Undo = Callable[[], Awaitable[str]]


@dataclass
class OperationContext:
    """What one operation learns as it goes, and what it did that a failure must take back."""

    from_version: str = ""
    erts_version: str = ""               # the running emulator's (erlang:system_info(version))
    releases: tuple[Release, ...] = ()
    dirs: NodeDirs | None = None
    extracted: Extracted | None = None   # the agent's extraction, until unpack places it
    placed: tuple[Path, ...] = ()        # what this operation put under the root (or may have)
    registered: bool = False             # the node lists the release this operation unpacked
    in_node: str = ""                    # why the node unpacks (the agent may not write)
    # The one way back for what this operation placed (staging.py sets it): run by
    # :func:`guarded` when the operation ends with the node unchanged or as a dry run.
    undo: Undo | None = None

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

    async def in_use(self, ctx: OperationContext, *, placing: Collection[str] = (),
                     removing: Collection[str] = ()) -> InUse:
        """What under the node's root no step may delete (inuse.py), read now."""
        assert ctx.dirs is not None
        code_path = await self.call("code", "get_path")
        paths = [p for p in code_path if isinstance(p, str)] if isinstance(code_path, list) else []
        return await asyncio.to_thread(
            compute_in_use, Path(ctx.dirs.root), Path(ctx.dirs.releases), code_path=paths,
            erts_version=ctx.erts_version, placing=placing, removing=removing)

    async def read_node(self, ctx: OperationContext) -> None:
        """The facts every operation starts from: the releases, which one runs, the dirs."""
        ctx.releases = await self.releases()
        running = next((r for r in ctx.releases if r.running), None)
        ctx.from_version = running.version if running else ""
        ctx.dirs = await node_dirs(self._node, self._rpc_timeout)
        erts = await self.call("erlang", "system_info", [Atom("version")])
        ctx.erts_version = erts if isinstance(erts, str) else ""

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


_Method = Callable[Concatenate[_S, OperationContext, str, _P], Awaitable[Result]]
_Operation = Callable[Concatenate[_S, str, _P], Awaitable[Result]]


def guarded(flow: str) -> Callable[[_Method[_S, _P]], _Operation[_S, _P]]:
    """An operation of ``flow`` (flows.py) with a fresh context; a refusal or failure becomes
    its Result. The one place where what an operation placed is taken back (``ctx.undo``):
    when it ends with the node unchanged (a refusal, a failed check or hook, a failed
    install_release) or as a dry run. After any other outcome the node changed, and what it
    runs is never taken back."""
    def wrap(method: _Method[_S, _P]) -> _Operation[_S, _P]:
        @functools.wraps(method)
        async def run(self: _S, version: str, /, *args: _P.args, **kwargs: _P.kwargs
                      ) -> Result:
            self.core.steps.follow(flow)
            ctx = OperationContext()
            try:
                result = await method(self, ctx, version, *args, **kwargs)
            except Failure as failure:
                if failure.outcome == FAILED_UNCHANGED and ctx.undo is not None:
                    failure = await _take_back(ctx, failure)
                return await self.core.failed(failure, ctx, version)
            if result.outcome == DRY_RUN and ctx.undo is not None:
                undone = await _take_back(ctx, Failure(DRY_RUN, ""))
                if undone.outcome != DRY_RUN:
                    return await self.core.failed(Failure(
                        undone.outcome, f"the dry run unpacked {version} to check it"
                        f"{undone.message}"), ctx, version)
                result = dataclasses.replace(result, releases=await self.core.releases())
            return result
        return run
    return wrap


async def _take_back(ctx: OperationContext, failure: Failure) -> Failure:
    """``failure`` once ctx.undo ran, or a FAILED one saying why the undo did not."""
    assert ctx.undo is not None
    try:
        await ctx.undo()
    except Failure as again:
        return Failure(FAILED, f"{failure.message}; then taking back the unpack failed: "
                               f"{again.message}")
    except (NodeUnavailable, BadRpc) as exc:
        return Failure(FAILED, f"{failure.message}; then taking back the unpack failed: {exc}")
    return failure
