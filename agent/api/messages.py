"""Agent values as relctl.v1 messages, and the options a request asks for as agent values
(protobuf only; no grpc here)."""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from agent.errors import RequestError
from agent.nodes import NodeState, PingResult
from agent.operations import OperationRecord, Progress
from agent.release import Release, Requested, StepRecord
from relctl.v1 import agent_pb2 as pb

_STATUS = {
    "permanent": pb.RELEASE_STATUS_PERMANENT,
    "current": pb.RELEASE_STATUS_CURRENT,
    "old": pb.RELEASE_STATUS_OLD,
    "unpacked": pb.RELEASE_STATUS_UNPACKED,
}
_KIND = {
    "upload": pb.OPERATION_KIND_UPLOAD,
    "unpack": pb.OPERATION_KIND_UNPACK,
    "check_install": pb.OPERATION_KIND_CHECK_INSTALL,
    "install": pb.OPERATION_KIND_INSTALL,
    "make_permanent": pb.OPERATION_KIND_MAKE_PERMANENT,
    "remove": pb.OPERATION_KIND_REMOVE,
    "upgrade": pb.OPERATION_KIND_UPGRADE,
    "downgrade": pb.OPERATION_KIND_DOWNGRADE,
    "reload_config": pb.OPERATION_KIND_RELOAD_CONFIG,
}
_OUTCOME = {
    "running": pb.OUTCOME_RUNNING,
    "succeeded": pb.OUTCOME_SUCCEEDED,
    "failed_unchanged": pb.OUTCOME_FAILED_UNCHANGED,
    "rolled_back": pb.OUTCOME_ROLLED_BACK,
    "failed": pb.OUTCOME_FAILED,
    "interrupted": pb.OUTCOME_INTERRUPTED,
    "dry_run": pb.OUTCOME_DRY_RUN,
    "up_to_date": pb.OUTCOME_UP_TO_DATE,
}
_CHANGE_KIND = {
    "added": pb.CONFIG_CHANGE_KIND_ADDED,
    "changed": pb.CONFIG_CHANGE_KIND_CHANGED,
    "removed": pb.CONFIG_CHANGE_KIND_REMOVED,
}
_STEP_STATE = {
    "running": pb.STEP_STATE_RUNNING,
    "succeeded": pb.STEP_STATE_SUCCEEDED,
    "failed": pb.STEP_STATE_FAILED,
    "skipped": pb.STEP_STATE_SKIPPED,
}


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def release_message(rel: Release) -> pb.Release:
    return pb.Release(name=rel.name, version=rel.version, status=_STATUS[rel.status],
                      running=rel.running, applications=rel.applications)


def node_message(state: NodeState) -> pb.NodeStatus:
    msg = pb.NodeStatus(node=state.name, up=state.up, error=state.error,
                        since=timestamp(state.since))
    if state.refreshed_at is not None:
        msg.refreshed_at.CopyFrom(timestamp(state.refreshed_at))
    if state.up:
        msg.releases.extend(release_message(r) for r in state.releases)
    return msg


def ping_message(result: PingResult) -> pb.NodePing:
    msg = pb.NodePing(node=result.name, up=result.up, error=result.error)
    if result.round_trip is not None:
        msg.round_trip.CopyFrom(duration(result.round_trip))
    return msg


def step_message(step: StepRecord) -> pb.Step:
    msg = pb.Step(name=step.name, state=_STEP_STATE.get(step.state, pb.STEP_STATE_UNSPECIFIED),
                  started_at=timestamp(step.started_at), detail=step.detail)
    if step.duration is not None:
        msg.duration.CopyFrom(duration(step.duration))
    return msg


def operation_message(op: OperationRecord) -> pb.Operation:
    msg = pb.Operation(
        id=op.id, node=op.node, kind=_KIND.get(op.kind, pb.OPERATION_KIND_UNSPECIFIED),
        from_version=op.from_version, to_version=op.to_version, requested_by=op.requested_by,
        started_at=timestamp(op.started_at),
        outcome=_OUTCOME.get(op.outcome, pb.OUTCOME_UNSPECIFIED), error=op.error,
        steps=[step_message(s) for s in op.steps],
        releases_after=[pb.Release(name=r.name, version=r.version,
                                   status=_STATUS.get(r.status, pb.RELEASE_STATUS_UNSPECIFIED))
                        for r in op.releases_after],
        config_changes=[pb.ConfigChange(
            application=c.application, key=c.key,
            kind=_CHANGE_KIND.get(c.kind, pb.CONFIG_CHANGE_KIND_UNSPECIFIED),
            old_value=c.old_value, new_value=c.new_value) for c in op.config_changes])
    if op.finished_at is not None:
        msg.finished_at.CopyFrom(timestamp(op.finished_at))
    return msg


def progress_message(event: Progress) -> pb.ProgressEvent:
    if event.finished is not None:
        return pb.ProgressEvent(operation_id=event.op_id, finished=operation_message(event.finished))
    assert event.step is not None
    return pb.ProgressEvent(operation_id=event.op_id, step=step_message(event.step))


# The fields of an operation request that say what to act on; every other field is an option.
TARGET_FIELDS = frozenset({"node", "version", "upload_id"})
_REQUESTED = frozenset(f.name for f in dataclasses.fields(Requested))


# Durations that are time limits: present, they must be more than 0 (a zero limit means
# nothing; it is also what a relctl from before presence counted sent for "the config").
_LIMITS = frozenset({"install_timeout"})


def _seconds(message: Message, name: str) -> float | None:
    """A Duration field in seconds; None when absent (the node's config decides). Presence,
    not zero, says "not given", so that `--health-soak 0` can override a configured soak."""
    if not message.HasField(name):
        return None
    seconds: float = getattr(message, name).ToNanoseconds() / 1e9
    if seconds < 0 or (seconds == 0 and name in _LIMITS):
        raise RequestError(
            f"{name} {seconds:g} s: give more than 0{'' if name in _LIMITS else ' or 0'}, or "
            "leave it out for the node's config (a relctl older than this agent sends 0 for "
            "\"not given\": upgrade relctl)")
    return seconds


def requested(message: Message, **fixed: Any) -> Requested:
    """The options ``message`` (an operation request) asks for, taken by field name: each
    field but the TARGET_FIELDS is the Requested field of the same name (``no_permanent``
    is ``permanent`` negated; a Duration is seconds, None when absent: the node's config
    decides); ``fixed`` sets what the RPC itself decides (an install is never made
    permanent). A field Requested does not know raises TypeError, so a new option cannot be
    dropped on its way; a Duration out of range raises RequestError (INVALID_ARGUMENT)."""
    values: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        name, value = field.name, getattr(message, field.name)
        if name in TARGET_FIELDS:
            continue
        if name == "no_permanent":
            name, value = "permanent", not value
        elif isinstance(value, Duration):
            value = _seconds(message, name)
        if name not in _REQUESTED:
            raise TypeError(f"{message.DESCRIPTOR.name}.{field.name} is not an operation option "
                            "(agent/release/options.py Requested) nor a target field")
        values[name] = value
    return Requested(**(values | fixed))
