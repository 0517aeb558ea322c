"""The journal's record of the tarball each release was unpacked from (schema 3): written,
read back per node and version, forgotten when the release is gone, and added in place to a
journal of schema 2; and what an operation is placing (schema 4), with what it adds inside
dirs the root had (schema 5), read from a journal of schema 4 as adding nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.operations.journal import SCHEMA_VERSION, Journal

SHA_A, SHA_B = "a" * 64, "b" * 64
UNPACKED_V3 = ("CREATE TABLE unpacked (node TEXT NOT NULL, version TEXT NOT NULL, "
               "sha256 TEXT NOT NULL, op_id INTEGER NOT NULL, recorded_at REAL NOT NULL, "
               "PRIMARY KEY (node, version))")


def test_a_record_is_per_node_and_version_and_the_last_one_wins(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        op = journal.start("a@h", "unpack", "0.0.1", "0.0.2", "alice")
        journal.record_unpacked("a@h", "0.0.2", SHA_A, op)
        journal.record_unpacked("b@h", "0.0.2", SHA_B, op)
        assert journal.unpacked_sha256("a@h", "0.0.2") == SHA_A
        journal.record_unpacked("a@h", "0.0.2", SHA_B, op)  # replaced (--replace)
        assert journal.unpacked_sha256("a@h", "0.0.2") == SHA_B
        assert journal.unpacked_sha256("a@h", "0.0.3") is None


def test_records_of_releases_no_longer_on_the_node_are_forgotten(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        op = journal.start("a@h", "unpack", "0.0.1", "0.0.2", "alice")
        journal.record_unpacked("a@h", "0.0.2", SHA_A, op)
        journal.record_unpacked("a@h", "0.0.3", SHA_A, op)
        journal.record_unpacked("b@h", "0.0.2", SHA_B, op)
        journal.forget_unpacked("a@h", ["0.0.1", "0.0.3"])
        assert journal.unpacked_sha256("a@h", "0.0.2") is None
        assert journal.unpacked_sha256("a@h", "0.0.3") == SHA_A
        assert journal.unpacked_sha256("b@h", "0.0.2") == SHA_B  # another node's


def test_a_schema_2_journal_gets_the_table_in_place(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal.open(path) as journal:
        op = journal.start("a@h", "upgrade", "0.0.1", "0.0.2", "alice")
        journal.finish(op, "succeeded")
    conn = sqlite3.connect(path)
    with conn:  # back to what an agent of schema 2 left
        conn.execute("DROP TABLE unpacked")
        conn.execute("DROP TABLE placing")
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    with Journal.open(path) as journal:
        assert journal.get(op) is not None
        journal.record_unpacked("a@h", "0.0.2", SHA_A, op)
        assert journal.unpacked_sha256("a@h", "0.0.2") == SHA_A
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


def test_what_an_operation_places_is_kept_until_settled_and_survives_a_reopen(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal.open(path) as journal:
        first = journal.start("a@h", "upgrade", "0.0.1", "0.0.2", "alice")
        journal.record_placing("a@h", first, "0.0.2", ["/r/releases/0.0.2"])
        journal.record_placing("a@h", first, "0.0.2", ["/r/releases/0.0.2", "/r/lib/c-0.0.2"],
                               added=["/r/lib/stdlib-4.2/extra"])
        second = journal.start("b@h", "upgrade", "0.0.1", "0.0.2", "alice")
        journal.record_placing("b@h", second, "0.0.2", ["/s/releases/0.0.2"])
    # The agent died: the next one finds what each node's operation was placing.
    with Journal.open(path) as journal:
        assert journal.placings("a@h") == [(first, "0.0.2", ("/r/releases/0.0.2",
                                                              "/r/lib/c-0.0.2"),
                                            ("/r/lib/stdlib-4.2/extra",))]
        journal.settle_placing("a@h", first)
        assert journal.placings("a@h") == []
        assert journal.placings("b@h") == [(second, "0.0.2", ("/s/releases/0.0.2",), ())]


def test_a_schema_3_journal_gets_the_placing_table_in_place(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal.open(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE placing")
        conn.execute("DROP TABLE unpacked")  # as schema 3 made it: no added column
        conn.execute(UNPACKED_V3)
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    with Journal.open(path) as journal:
        journal.record_placing("a@h", 1, "0.0.2", ["/x"])
        assert journal.placings("a@h") == [(1, "0.0.2", ("/x",), ())]


def test_records_of_schema_4_read_as_adding_nothing_and_get_the_columns(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal.open(path):
        pass
    conn = sqlite3.connect(path)
    with conn:  # what the agent of schema 4 left: no added columns
        conn.execute("DROP TABLE placing")
        conn.execute("CREATE TABLE placing (node TEXT NOT NULL, op_id INTEGER NOT NULL, "
                     "version TEXT NOT NULL, paths TEXT NOT NULL, recorded_at REAL NOT NULL, "
                     "PRIMARY KEY (node, op_id))")
        conn.execute("INSERT INTO placing VALUES ('a@h', 3, '0.0.2', '[\"/r/lib/c-0.0.2\"]', 1.0)")
        conn.execute("DROP TABLE unpacked")
        conn.execute(UNPACKED_V3)
        conn.execute(f"INSERT INTO unpacked VALUES ('a@h', '0.0.1', '{SHA_A}', 2, 1.0)")
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    with Journal.open(path) as journal:
        assert journal.placings("a@h") == [(3, "0.0.2", ("/r/lib/c-0.0.2",), ())]
        journal.record_placing("a@h", 4, "0.0.3", ["/r/lib/c-0.0.3"], added=["/r/lib/k/x"])
        assert journal.placings("a@h")[1] == (4, "0.0.3", ("/r/lib/c-0.0.3",), ("/r/lib/k/x",))
        assert journal.unpacked_sha256("a@h", "0.0.1") == SHA_A
        assert journal.unpacked_added("a@h", "0.0.1") == ()
        journal.record_unpacked("a@h", "0.0.3", SHA_B, 4, added=["/r/lib/k/x"])
        assert journal.unpacked_added("a@h", "0.0.3") == ("/r/lib/k/x",)
        assert journal.unpacked_added("a@h", "0.0.9") == ()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    conn.close()
