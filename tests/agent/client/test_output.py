"""How `relctl` words a finished operation (agent/client/output.py), for the outcomes a script
or a person acts on."""

from __future__ import annotations

import json

import pytest

from agent.client.common import Settings
from agent.client.output import operation_json, print_operation, summary
from agent.client.status import ExitCode, exit_code_for_outcome
from relctl.v1 import agent_pb2 as pb


def _up_to_date() -> pb.Operation:
    return pb.Operation(
        id=2, node="counter@localhost", kind=pb.OPERATION_KIND_UPGRADE, from_version="0.0.2",
        to_version="0.0.2", outcome=pb.OUTCOME_UP_TO_DATE,
        releases_after=[pb.Release(name="counter", version="0.0.2",
                                   status=pb.RELEASE_STATUS_PERMANENT)])


def test_an_up_to_date_upgrade_reads_as_such_and_exits_0() -> None:
    op = _up_to_date()
    lines = summary(op).splitlines()
    assert lines[0] == "upgrade 0.0.2 on counter@localhost: up to date (operation 2)"
    assert lines[1:] == ["RELEASE  VERSION  STATUS", "counter  0.0.2    permanent"]
    assert exit_code_for_outcome(operation_json(op)["outcome"]) == ExitCode.OK


def test_an_up_to_date_upgrade_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    print_operation(Settings(output="json"), _up_to_date())
    data = json.loads(capsys.readouterr().out)["operation"]
    assert (data["outcome"], data["kind"], data["error"]) == ("up_to_date", "upgrade", "")


@pytest.mark.parametrize("name", [k.removeprefix("OUTCOME_").lower() for k in pb.Outcome.keys()
                                  if k not in ("OUTCOME_UNSPECIFIED", "OUTCOME_RUNNING")])
def test_every_final_outcome_has_its_own_words(name: str) -> None:
    op = pb.Operation(id=1, node="n@h", kind=pb.OPERATION_KIND_UPGRADE, to_version="1",
                      outcome=pb.Outcome.Value(f"OUTCOME_{name.upper()}"))
    # The raw name would mean the client forgot the outcome.
    assert not summary(op).splitlines()[0].endswith(f": {name} (operation 1)")
