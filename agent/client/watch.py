"""What a rollout knows of one agent's operation while it runs, and what it learns after the
agent went silent.

- :class:`Watch` holds what the agent's progress stream showed: the operation's id and the
  step it was in; :func:`watched_stub` fills it and says at once when the stream is lost (a
  cut link is noticed by the channel's keepalive within ``--host-timeout``; an agent that
  stopped closes the connection), and ends the agent's attempt there, rather than waiting
  for the agent to come back as a single-agent upgrade does.
- :class:`Recovery` then asks the agent for that operation again, a fresh connection each
  time, until it answers with the operation finished or the rollout's time is up: a host
  that answers again is reported with its real outcome, never guessed.

Why a separate module: the rollout (:mod:`agent.client.fleet`) decides; this only watches
and asks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from .common import Settings, connect, connection_lost
from .output import outcome_of
from .status import GOES_ON, CliError

RUNNING = "running"
# How often a silent agent is asked again (each try also waits up to its own deadline).
RETRY_INTERVAL = 1.0
# The deadline of one try: short, so that a host that answers again is seen soon.
TRY_TIMEOUT = 5.0


@dataclass
class Watch:
    """One agent's operation as its stream showed it; ``lost``: why the stream broke, once
    it broke without the operation's end."""

    agent: str
    operation_id: int = 0
    step: str = ""
    lost: str = ""
    lost_at: float | None = None

    def where(self) -> str:
        """"step verify of operation 12", as far as the stream had told."""
        step = f"step {self.step}" if self.step else "its first step"
        return (f"{step} of operation {self.operation_id}" if self.operation_id
                else f"{step} (before the agent named the operation)")


def lost_reason(err: grpc.RpcError, host_timeout: float) -> str:
    """Why a call's connection is gone, in words: silence (keepalive) or a closed connection."""
    details = (err.details() if isinstance(err, grpc.Call) else "") or str(err)
    lowered = details.lower()
    if "keepalive" in lowered or "ping" in lowered:
        return f"no answer for {host_timeout:g} s, not even to keepalive pings ({details})"
    return f"the connection broke ({details})"


def is_lost(err: grpc.RpcError) -> bool:
    """The call reached the agent and then its connection went (silence or a close)."""
    return connection_lost(err)


def watched_stub(channel: grpc.Channel, watch: Watch, host_timeout: float,
                 on_lost: Callable[[Watch], None]) -> agent_pb2_grpc.AgentStub:
    """An AgentStub whose Upgrade stream fills ``watch`` and calls ``on_lost(watch)`` the
    moment the stream breaks without its last event (the error then goes on as before)."""
    stub = agent_pb2_grpc.AgentStub(channel)
    upgrade = stub.Upgrade

    def events(request: Any, **kwargs: Any) -> Iterator[pb.ProgressEvent]:
        call = upgrade(request, **kwargs)
        try:
            for event in call:
                if event.operation_id:
                    watch.operation_id = event.operation_id
                if event.HasField("step"):
                    watch.step = event.step.name
                yield event
        except grpc.RpcError as err:
            if not is_lost(err):
                raise
            watch.lost = lost_reason(err, host_timeout)
            watch.lost_at = time.monotonic()
            on_lost(watch)
            # Not the RpcError: a single agent's follow() would wait here for the agent to
            # come back (transfer.follow_returning_agent), holding up the whole batch; in a
            # rollout the row is unknown now and Recovery asks again in the background.
            raise CliError(f"lost during {watch.where()}: {watch.lost}", GOES_ON) from None

    setattr(stub, "Upgrade", events)  # noqa: B010 - the stub's methods are instance attributes
    return stub


class Recovery:
    """Asks silent agents for their operation until each answers with it finished, on a
    thread per agent; :meth:`outcome` says what came back."""

    def __init__(self, settings: Settings,
                 on_answer: Callable[[str, pb.Operation], None]) -> None:
        self._settings = settings
        self._on_answer = on_answer
        self._lock = threading.Lock()
        self._finished: dict[str, pb.Operation] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    def follow(self, agent: str, operation_id: int) -> None:
        """Start asking ``agent`` for ``operation_id``."""
        if not operation_id or agent in self._threads:
            return
        thread = threading.Thread(target=self._ask, args=(agent, operation_id),
                                  name=f"relctl-recover-{agent}", daemon=True)
        self._threads[agent] = thread
        thread.start()

    def outcome(self, agent: str) -> pb.Operation | None:
        """The operation as the agent gave it, finished; None while not known."""
        with self._lock:
            return self._finished.get(agent)

    def pending(self) -> list[str]:
        """The agents still asked."""
        with self._lock:
            return [a for a, t in self._threads.items()
                    if t.is_alive() and a not in self._finished]

    def wait(self, seconds: float) -> None:
        """Until every agent answered, or ``seconds`` passed (timed joins: Ctrl-C stays
        deliverable to the main thread)."""
        deadline = time.monotonic() + seconds
        while self.pending() and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def stop(self) -> None:
        self._stop.set()

    def _ask(self, agent: str, operation_id: int) -> None:
        request = pb.GetOperationRequest(id=operation_id)
        timeout = min(self._settings.timeout, TRY_TIMEOUT)
        while not self._stop.is_set():
            op = self._try(agent, request, timeout)
            if op is not None and outcome_of(op) != RUNNING:
                with self._lock:
                    self._finished[agent] = op
                self._on_answer(agent, op)
                return
            self._stop.wait(RETRY_INTERVAL)

    def _try(self, agent: str, request: pb.GetOperationRequest,
             timeout: float) -> pb.Operation | None:
        try:
            with connect(self._settings, agent) as channel:
                reply: pb.Operation = agent_pb2_grpc.AgentStub(channel).GetOperation(
                    request, timeout=timeout)
                return reply
        except (grpc.RpcError, CliError):
            # Still silent, or not back yet: asked again. (A CliError here is the token or TLS
            # files, read fine for the first call: changed meanwhile; the row stays unknown.)
            return None
