"""The audit trail file: appended JSON lines, read back newest first, secrets left out."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.api.audit import AuditLog, AuditRecord, without_secrets


def record(i: int, node: str = "a@h") -> AuditRecord:
    return AuditRecord(time=1700000000.0 + i, peer="ipv4:10.0.0.1:1", identity="bot",
                       rpc="Upgrade", node=node, result="ok", detail=f"operation {i}: succeeded",
                       operation_id=i, arguments={"version": "0.0.2", "pad": "x" * 300})


def test_records_read_back_newest_first_across_blocks_and_by_node(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(1, 601):  # about 250 kB: several blocks of the backwards reader
        log.append(record(i, node="a@h" if i % 3 else "b@h"))
    log.close()
    again = AuditLog(tmp_path / "audit.jsonl")  # reopening appends, never truncates
    again.append(record(601))
    newest = again.tail(5)
    assert [r.operation_id for r in newest] == [601, 600, 599, 598, 597]
    assert newest[0] == record(601)
    only_b = again.tail(1000, node="b@h")
    assert [r.operation_id for r in only_b][:3] == [600, 597, 594] and len(only_b) == 200
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o640
    again.close()


def test_a_torn_last_line_is_skipped_and_the_rest_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append(record(1))
    log.append(record(2))
    log.close()
    with open(path, "a") as f:
        f.write('{"time": 17000')  # the agent died mid-write
    restarted = AuditLog(path)
    assert [r.operation_id for r in restarted.tail(10)] == [2, 1]
    restarted.append(record(3))  # starts on a line of its own
    assert [r.operation_id for r in restarted.tail(10)] == [3, 2, 1]
    restarted.close()


def test_one_json_object_per_line_without_secrets(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(AuditRecord(time=1.0, peer="p", identity="i", rpc="Upload", node="n",
                           result="ok", arguments=without_secrets(
                               {"version": "1", "token": "t0ps3cret", "chunk": "AAAA",
                                "nested": {"cookie": "c00kie", "keep": 1}})))
    log.close()
    [line] = (tmp_path / "audit.jsonl").read_text().splitlines()
    data = json.loads(line)
    assert data["arguments"] == {"version": "1", "nested": {"keep": 1}}
    assert "t0ps3cret" not in line and "c00kie" not in line


def test_an_empty_trail_reads_as_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.tail(10) == []
    log.close()


def test_a_full_disk_loses_records_but_never_breaks_append_or_close(
        caplog: pytest.LogCaptureFixture) -> None:
    # /dev/full: every write fails with ENOSPC, as on a full state_dir.
    log = AuditLog(Path("/dev/full"))
    log.append(record(1))
    log.append(record(2))
    log.close()  # nothing buffered is left to flush into the full disk
    log.close()
    errors = [r for r in caplog.records if "cannot write the audit trail" in r.getMessage()]
    assert len(errors) == 1 and "No space left" in errors[0].getMessage()


def test_a_record_of_a_call_that_ends_after_close_is_still_written(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    """The agent closes the trail last; a call grpc finalised later still gets its record
    (issue 22: "Bad file descriptor" lost the record of an upgrade cut by a restart)."""
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(record(1, "a@h"))
    log.close()
    log.append(record(2, "b@h"))
    assert [r.node for r in log.tail(10)] == ["b@h", "a@h"]
    assert "cannot write the audit trail" not in caplog.text
