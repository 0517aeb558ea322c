"""The release engine's core: the node it talks to (``Caller``) and how (the RPC timeout, the
step reporter ``Steps``), the context one operation carries from step to step, the ledger that
outlives it, and the guard that turns the Failure ending an operation into its Result.

The parts (preflight.py, staging.py, runtime.py, switch.py) and the operations (single.py,
upgrade.py) all act through one :class:`EngineCore`; reload.py uses its ``Steps`` and
``Caller``. An operation is a sequence of named steps, declared once in flows.py: each step is
reported when it starts and when it ends (with its duration and what it found), so that the
journal and every client following the operation see the same story.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from agent.config import Hook
from agent.errors import NodeFault, NodeUnavailable
from bridge import Atom, BadRpc, format_term

from .flows import Flow, UndeclaredStep
from .inuse import InUse
from .inuse import compute as compute_in_use
from .present import TermStyle
from .releases import Release, parse_which_releases
from .tarballs import Extracted
from .values import DRY_RUN, FAILED, FAILED_UNCHANGED, Caller, Failure, NodeDirs, Placing, Result
from .values import StepRecord, StepSink, term_text


@dataclass
class StepState:
    detail: str = ""


class Steps:
    """Reports steps to a sink: started, then succeeded (with ``detail``) or failed. Once told
    which flow it follows (flows.py), it reports only the steps that flow declares."""

    def __init__(self, sink: StepSink) -> None:
        self._sink = sink
        self._flow: Flow | None = None

    @property
    def flow(self) -> Flow | None:
        return self._flow

    def follow(self, flow: str) -> Flow:
        self._flow = Flow.of(flow)
        return self._flow

    def _declared(self, name: str) -> None:
        if self._flow is not None and not self._flow.declares(name):
            raise UndeclaredStep(f"step {name!r} is not declared in the {self._flow.name} "
                                 "flow (agent/release/flows.py)")

    def skip_between(self, first: str, last: str, reason: str,
                     hooks: Sequence[Hook] = ()) -> None:
        """The flow's steps from ``first`` to ``last`` shown skipped, for ``reason``."""
        assert self._flow is not None
        for name in self._flow.between(first, last, hooks):
            self.skip(name, f"{reason}; hooks run only when a release is installed"
                      if ":" in name else reason)

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[StepState]:
        self._declared(name)
        started = time.time()
        clock = time.perf_counter()
        self._sink(StepRecord(name, "running", started, None))
        state = StepState()
        try:
            yield state
        except Failure as failure:
            self._sink(StepRecord(name, "failed", started, time.perf_counter() - clock,
                                  failure.message))
            raise
        except (NodeUnavailable, NodeFault) as exc:  # their messages name the node and cause
            self._sink(StepRecord(name, "failed", started, time.perf_counter() - clock, str(exc)))
            raise
        except BaseException as exc:
            self._sink(StepRecord(name, "failed", started, time.perf_counter() - clock,
                                  f"internal error: {exc!r}"))
            raise
        self._sink(StepRecord(name, "succeeded", started, time.perf_counter() - clock,
                              state.detail))

    def skip(self, name: str, detail: str) -> None:
        self._declared(name)
        self._sink(StepRecord(name, "skipped", time.time(), 0.0, detail))


async def consult_error(node: Caller, reason: Any, timeout: float) -> str:
    """Why file:consult failed, in file:format_error's words: "line 2: syntax error before:
    '{'" for a parse error, "no such file or directory" for enoent."""
    words = await node.call("lists", "flatten",
                            [await node.call("file", "format_error", [reason], timeout=timeout)],
                            timeout=timeout)
    text = term_text(words)
    # {Line, Module, Term} comes out as "Line: text".
    return f"line {text}" if (isinstance(reason, tuple) and len(reason) == 3
                              and isinstance(reason[0], int)) else text


async def node_dirs(node: Caller, timeout: float) -> NodeDirs:
    """The node's root and releases directory, found the way release_handler finds them."""
    root = await node.call("code", "root_dir", timeout=timeout)
    env = await node.call("application", "get_env", [Atom("sasl"), Atom("releases_dir")],
                          timeout=timeout)
    if isinstance(env, tuple) and len(env) == 2 and isinstance(env[1], str):
        return NodeDirs(root, env[1])
    reldir = await node.call("os", "getenv", ["RELDIR"], timeout=timeout)
    if isinstance(reldir, str) and reldir:
        return NodeDirs(root, reldir)
    return NodeDirs(root, os.path.join(root, "releases"))


class UnpackLedger(Protocol):
    """What the agent keeps beside the node's files, in its journal: the sha256 of each
    tarball it unpacked (besides the release's own releases/VSN/relctl.sha256; either one
    answers when the other is lost), and what an operation is placing under the root, so that
    an operation that never finished (agent or node killed) is taken back by the next one from
    that record, never from a guess about what is on disk. No call raises: a ledger that
    cannot be written only weakens a later check or leaves files behind."""

    def recorded(self, version: str) -> str | None: ...

    def record(self, version: str, sha256: str, added: Sequence[Path] = ()) -> None:
        """``version`` was unpacked from a tarball of ``sha256``, adding ``added`` inside
        directories the root had (they stay when the release is removed: see added_by)."""
        ...

    def added_by(self, version: str) -> tuple[str, ...]:
        """What the recorded unpack of ``version`` added inside directories the root had."""
        ...

    def placing(self, version: str, paths: Sequence[Path], added: Sequence[Path] = ()) -> None:
        """This operation is about to place ``paths`` for ``version`` (each absent from the
        root), and ``added`` inside directories the root has (replacing what it said before)."""
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
        self._added: dict[str, tuple[str, ...]] = {}

    def recorded(self, version: str) -> str | None:
        return self._sha.get(version)

    def record(self, version: str, sha256: str, added: Sequence[Path] = ()) -> None:
        self._sha[version] = sha256
        self._added[version] = tuple(str(p) for p in added)

    def added_by(self, version: str) -> tuple[str, ...]:
        return self._added.get(version, ())

    def placing(self, version: str, paths: Sequence[Path], added: Sequence[Path] = ()) -> None:
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
    # What it added inside dirs the root had (or may have), at the deepest level the root
    # had: taken back on their own, though the dir around them is in use.
    added: tuple[Path, ...] = ()
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
                 ledger: UnpackLedger | None = None, agent_unpack: bool) -> None:
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
