"""What every operation on a node shares: its outcomes, the failure that ends it, how it
reports its steps, and the node facts each of them starts from.

An operation (an upgrade, a config reload, ...) is a sequence of named steps. Each step is
reported when it starts and when it ends (with its duration and what it found), so that the
journal and every client following the operation see the same story.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import NodeFault, NodeUnavailable
from bridge import Atom, format_term

from agent.config import Hook

from .flows import Flow, UndeclaredStep
from .records import ConfigChange, StepRecord
from .releases import Release

SUCCEEDED = "succeeded"
FAILED_UNCHANGED = "failed_unchanged"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
DRY_RUN = "dry_run"
UP_TO_DATE = "up_to_date"  # the target already runs and is permanent: nothing was done

StepSink = Callable[[StepRecord], None]


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


@dataclass(frozen=True)
class Result:
    outcome: str
    from_version: str
    to_version: str
    error: str = ""
    releases: tuple[Release, ...] = ()
    detail: str = ""
    config_changes: tuple[ConfigChange, ...] = ()


@dataclass
class Failure(Exception):
    """Ends an operation: ``outcome`` says where the node stands, ``message`` what happened
    and what to do."""

    outcome: str
    message: str


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


def term_text(value: Any) -> str:
    """An Erlang reason as text, short enough for a step detail."""
    return value if isinstance(value, str) and len(value) <= 500 else format_term(value)


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


@dataclass(frozen=True)
class NodeDirs:
    root: str
    releases: str


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
