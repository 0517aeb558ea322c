"""What an operation request asks for, as the engine's options: taken from the request message
by field name (agent.api.messages.requested), so a field added to the proto either reaches
operation_options or fails here, never silently drops."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from agent.api.messages import TARGET_FIELDS, requested
from agent.errors import RequestError
from agent.release import Requested
from relctl.v1 import agent_pb2 as pb

# Every request the service turns into options (agent/api/service.py).
OPERATION_REQUESTS = (pb.UpgradeRequest, pb.DowngradeRequest, pb.InstallRequest,
                      pb.UnpackRequest)


def _set(message: Message, name: str) -> None:
    value = getattr(message, name)
    if isinstance(value, Duration):
        value.FromSeconds(42)
    else:
        assert isinstance(value, bool), f"{name}: set it here once such a field exists"
        setattr(message, name, True)


@pytest.mark.parametrize("kind", OPERATION_REQUESTS, ids=lambda k: k.DESCRIPTOR.name)
def test_every_option_of_a_request_changes_what_is_requested(kind: type[Message]) -> None:
    plain = requested(kind())
    assert plain == Requested()  # an empty request asks for the node's config
    options = [f.name for f in kind.DESCRIPTOR.fields if f.name not in TARGET_FIELDS]
    assert options, f"{kind.DESCRIPTOR.name} has no option"
    for name in options:
        message = kind()
        _set(message, name)
        assert requested(message) != plain, f"{kind.DESCRIPTOR.name}.{name} is dropped"


def test_durations_are_seconds_and_an_absent_one_is_the_nodes_config() -> None:
    message = pb.UpgradeRequest(no_permanent=True, health_soak=Duration(seconds=2, nanos=5 * 10**8))
    asked = requested(message)
    assert (asked.permanent, asked.health_soak, asked.install_timeout) == (False, 2.5, None)
    install = requested(pb.InstallRequest(install_timeout=Duration(seconds=9)), permanent=False)
    assert (install.install_timeout, install.permanent) == (9.0, False)


def test_a_present_zero_soak_is_zero_not_the_config() -> None:
    """`relctl upgrade --health-soak 0` overrides a configured soak: presence, not the value,
    says whether the request set it."""
    zero = pb.UpgradeRequest(health_soak=Duration())
    assert zero.HasField("health_soak") and requested(zero).health_soak == 0.0
    assert requested(pb.UpgradeRequest()).health_soak is None


@pytest.mark.parametrize("message", [
    pb.UpgradeRequest(install_timeout=Duration()),
    pb.DowngradeRequest(install_timeout=Duration()),
    pb.InstallRequest(install_timeout=Duration()),
    pb.UpgradeRequest(health_soak=Duration(seconds=-1)),
    pb.InstallRequest(install_timeout=Duration(seconds=-5)),
], ids=lambda m: f"{m.DESCRIPTOR.name}:{m.ListFields()[0][0].name}")
def test_a_zero_time_limit_or_a_negative_duration_is_refused(message: Message) -> None:
    # A zero install_timeout is also what a relctl from before presence counted sent for
    # "the config": refused with a word on it, rather than run with no time limit at all.
    with pytest.raises(RequestError, match=r"leave it out for the node's config .*upgrade "
                                            r"relctl"):
        requested(message)


def test_a_field_that_is_no_option_is_refused_rather_than_dropped() -> None:
    with pytest.raises(TypeError, match=r"ListAuditRequest\.limit is not an operation option"):
        requested(pb.ListAuditRequest(limit=3))


def test_the_requested_fields_are_named_as_in_the_proto() -> None:
    """One name per setting: each Requested field is a field of some operation request."""
    in_proto = {f.name for kind in OPERATION_REQUESTS for f in kind.DESCRIPTOR.fields}
    named = {f.name for f in dataclasses.fields(Requested)} - {"permanent"}  # no_permanent
    assert named <= in_proto, sorted(named - in_proto)
