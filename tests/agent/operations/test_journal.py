"""The operation journal: lifecycle, paging, surviving a restart, refusing files it cannot use."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.operations.journal import FILE_NAME, SCHEMA_VERSION, Journal, JournalError, ReleaseRow
from agent.release import ConfigChange, StepRecord


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / FILE_NAME


def test_an_upgrade_is_recorded_step_by_step(path: Path) -> None:
    with Journal.open(path) as journal:
        op = journal.start("a@h", "upgrade", "", "0.0.2", "alice", now=100.0)
        journal.step(op, StepRecord("preflight", "running", 100.0, None))
        journal.step(op, StepRecord("preflight", "succeeded", 100.0, 0.5))
        journal.set_from_version(op, "0.0.1")
        journal.step(op, StepRecord("verify", "running", 101.0, None))
        journal.step(op, StepRecord("verify", "failed", 101.0, 1.0, "counter not answering"))
        journal.step(op, StepRecord("rollback", "succeeded", 102.0, 2.0))
        # A second verify after the rollback is a new step, not the failed one overwritten.
        journal.step(op, StepRecord("verify", "running", 104.0, None))
        journal.step(op, StepRecord("verify", "succeeded", 104.0, 0.25))
        assert journal.running()[0].outcome == "running"
        record = journal.finish(op, "rolled_back", error="verify failed", now=105.0)

    with Journal.open(path) as journal:
        assert journal.get(op) == record
    assert (record.node, record.kind, record.requested_by) == ("a@h", "upgrade", "alice")
    assert (record.from_version, record.to_version) == ("0.0.1", "0.0.2")
    assert (record.started_at, record.finished_at) == (100.0, 105.0)
    assert (record.outcome, record.error) == ("rolled_back", "verify failed")
    assert record.steps == (
        StepRecord("preflight", "succeeded", 100.0, 0.5),
        StepRecord("verify", "failed", 101.0, 1.0, "counter not answering"),
        StepRecord("rollback", "succeeded", 102.0, 2.0),
        StepRecord("verify", "succeeded", 104.0, 0.25),
    )


def test_steps_left_running_at_finish_did_not_finish(path: Path) -> None:
    with Journal.open(path) as journal:
        op = journal.start("a@h", "install", "0.0.1", "0.0.2", "alice", now=10.0)
        journal.step(op, StepRecord("install", "running", 11.0, None))
        record = journal.finish(op, "failed", error="node went down", now=14.0)
    assert record.steps == (StepRecord("install", "failed", 11.0, 3.0, "did not finish"),)


def test_list_is_newest_first_pages_by_id_and_filters_by_node(path: Path) -> None:
    with Journal.open(path) as journal:
        ids = [journal.start(node, "upgrade", "1", "2", "bob")
               for node in ("a@h", "b@h", "a@h", "a@h", "b@h")]
        assert journal.get(ids[0]) is not None and journal.get(max(ids) + 1) is None
        assert [r.id for r in journal.list(limit=10)] == ids[::-1]
        first = journal.list(limit=2)
        assert [r.id for r in first] == [ids[4], ids[3]]
        second = journal.list(limit=2, before_id=first[-1].id)
        assert [r.id for r in second] == [ids[2], ids[1]]
        assert [r.id for r in journal.list(limit=2, before_id=second[-1].id)] == [ids[0]]
        assert [r.id for r in journal.list(node="a@h", limit=10)] == [ids[3], ids[2], ids[0]]
        assert [r.id for r in journal.list(node="a@h", before_id=ids[3], limit=1)] == [ids[2]]
        assert journal.list(node="c@h", limit=10) == [] and journal.list(limit=0) == []


def test_an_operation_running_when_the_agent_died_is_found_and_marked_interrupted(
        path: Path) -> None:
    journal = Journal.open(path)
    done = journal.start("a@h", "upgrade", "0.0.1", "0.0.2", "alice", now=1.0)
    journal.finish(done, "succeeded", now=2.0)
    op = journal.start("b@h", "upgrade", "0.0.1", "0.0.2", "alice", now=3.0)
    journal.step(op, StepRecord("preflight", "succeeded", 3.0, 0.1))
    journal.step(op, StepRecord("install", "running", 4.0, None))
    journal.close()   # the agent dies here; a restart opens the same file

    with Journal.open(path) as journal:
        [left] = journal.running()
        assert (left.id, left.outcome, left.finished_at) == (op, "running", None)
        after = (ReleaseRow("counter", "0.0.2", "current"),
                 ReleaseRow("counter", "0.0.1", "permanent"))
        record = journal.mark_interrupted(op, "agent restarted during install", after, now=9.0)
        assert journal.running() == []

    assert (record.outcome, record.error) == ("interrupted", "agent restarted during install")
    assert record.finished_at == 9.0 and record.releases_after == after
    assert record.steps == (
        StepRecord("preflight", "succeeded", 3.0, 0.1),
        StepRecord("install", "failed", 4.0, 5.0, "interrupted: agent stopped"),
    )


def test_releases_after_round_trip(path: Path) -> None:
    after = [ReleaseRow("counter", "0.0.2", "permanent"), ReleaseRow("cöunter", "1.0-rc.1", "old")]
    with Journal.open(path) as journal:
        op = journal.start("a@h", "make_permanent", "0.0.1", "0.0.2", "alice")
        assert journal.finish(op, "succeeded", releases_after=after).releases_after == tuple(after)
    with Journal.open(path) as journal:
        record = journal.get(op)
    assert record is not None and record.releases_after == tuple(after)


def test_config_changes_are_journaled_without_values(path: Path) -> None:
    changes = [ConfigChange("counter", "greeting", "changed"),
               ConfigChange("counter", "{db,password}", "added")]
    secret = ConfigChange("counter", "{db,password}", "changed", '"old-pw"', '"new-pw"')
    with Journal.open(path) as journal:
        op = journal.start("a@h", "reload_config", "0.0.2", "0.0.2", "alice")
        journal.finish(op, "succeeded", config_changes=[*changes, secret])
    with Journal.open(path) as journal:
        record = journal.get(op)
    assert record is not None
    assert record.config_changes == (*changes, ConfigChange("counter", "{db,password}", "changed"))
    stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert b"counter" in stored and b"-pw" not in stored


_V1_SCHEMA = """
CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, kind TEXT NOT NULL,
    from_version TEXT NOT NULL, to_version TEXT NOT NULL, requested_by TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, outcome TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '', releases_after TEXT NOT NULL DEFAULT '[]');
CREATE TABLE steps (
    op_id INTEGER NOT NULL REFERENCES operations (id), seq INTEGER NOT NULL,
    name TEXT NOT NULL, state TEXT NOT NULL, started_at REAL NOT NULL, duration REAL,
    detail TEXT NOT NULL DEFAULT '', PRIMARY KEY (op_id, seq));
INSERT INTO operations (node, kind, from_version, to_version, requested_by, started_at,
    finished_at, outcome) VALUES ('a@h', 'upgrade', '0.0.1', '0.0.2', 'alice', 1.0, 2.0,
    'succeeded');
PRAGMA user_version = 1;
"""


def test_a_journal_of_the_previous_schema_is_upgraded_in_place(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
    conn.close()
    with Journal.open(path) as journal:
        old = journal.get(1)
        op = journal.start("a@h", "reload_config", "0.0.2", "0.0.2", "bob")
        journal.finish(op, "succeeded", config_changes=[ConfigChange("c", "k", "removed")])
        new = journal.get(op)
    assert old is not None and (old.kind, old.outcome, old.config_changes) == (
        "upgrade", "succeeded", ())
    assert new is not None and new.config_changes == (ConfigChange("c", "k", "removed"),)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_an_operation_ends_once(path: Path) -> None:
    with Journal.open(path) as journal:
        op = journal.start("a@h", "upgrade", "0.0.1", "0.0.2", "alice")
        journal.finish(op, "succeeded", now=5.0)
        with pytest.raises(JournalError, match=f"operation {op} is not running"):
            journal.finish(op, "failed")
        with pytest.raises(JournalError, match="not running"):
            journal.mark_interrupted(op, "late")
        with pytest.raises(JournalError, match="not running"):
            journal.step(op, StepRecord("verify", "running", 6.0, None))
        with pytest.raises(JournalError, match="no operation"):
            journal.finish(op + 1, "failed")
        record = journal.get(op)
    # The refused calls left the record as it was.
    assert record is not None and (record.outcome, record.finished_at) == ("succeeded", 5.0)
    assert record.steps == ()


def test_a_journal_from_a_newer_relctl_is_refused(path: Path) -> None:
    Journal.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer relctl"):
        Journal.open(path)


def test_a_file_that_is_not_sqlite_is_refused_by_name(path: Path) -> None:
    path.write_bytes(b"operation log from something else\n" * 100)
    with pytest.raises(JournalError) as info:
        Journal.open(path)
    assert str(path) in str(info.value) and "move it away" in str(info.value)
    assert path.read_bytes().startswith(b"operation log")   # left untouched


def test_an_sqlite_file_of_someone_else_is_refused(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE operations (x)")
    conn.close()
    with pytest.raises(JournalError, match="not a relctl journal"):
        Journal.open(path)


def test_the_journal_is_0640_under_umask_022_like_the_audit_trail(path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Journal.open(path) as journal:
            journal.start("n@h", "upgrade", "1", "2", "me")
            files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
                f.name: 0o640 for f in files}
    finally:
        os.umask(old)


def test_a_journal_left_0644_by_an_older_agent_is_tightened(path: Path) -> None:
    with Journal.open(path) as journal:
        journal.start("n@h", "upgrade", "1", "2", "me")
    path.chmod(0o644)
    with Journal.open(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
