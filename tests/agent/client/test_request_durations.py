"""What relctl puts in a request's Duration fields: only the options given, 0 included, since
the agent reads an absent field as "the node's config" and a present one as its value
(protobuf message-field presence). The live proof is tests/e2e/test_operation_options_live.py."""

from __future__ import annotations

from agent.client.transfer import durations
from relctl.v1 import agent_pb2 as pb


def test_an_option_not_given_is_not_sent_and_zero_is_sent_as_zero() -> None:
    request = pb.UpgradeRequest(**durations(health_soak=0.0, install_timeout=None))
    assert request.HasField("health_soak") and request.health_soak.ToNanoseconds() == 0
    assert not request.HasField("install_timeout")
    # On the wire too: the absent field is not there, the zero one is (an empty message).
    again = pb.UpgradeRequest.FromString(request.SerializeToString())
    assert again.HasField("health_soak") and not again.HasField("install_timeout")


def test_a_duration_keeps_its_fraction() -> None:
    request = pb.DowngradeRequest(**durations(install_timeout=2.5))
    assert request.install_timeout.ToNanoseconds() == 2_500_000_000
    assert durations(install_timeout=None, health_soak=None) == {}
