"""The agent's operation journal: what it did to which node, step by step, in SQLite.

Responsibility: record operations (start, steps, finish) durably in
``<state_dir>/journal.sqlite3`` and read them back. The file outlives the agent, so an
operation still marked "running" at the next start is one the agent died during; the daemon
finds it with :meth:`Journal.running` and closes it with :meth:`Journal.mark_interrupted`.
Nothing here talks to nodes or knows gRPC; callers are single-threaded (the asyncio loop).
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.errors import HostError
from agent.release import OUTCOMES, STEP_STATES, ConfigChange, StepRecord

FILE_NAME = "journal.sqlite3"
# Like the audit trail: the agent writes, its group (operators) may read, nobody else.
FILE_MODE = 0o640
SCHEMA_VERSION = 5  # 2: operations.config_changes; 3: unpacked; 4: placing; 5: *.added

# AUTOINCREMENT: ids are never reused, so an id a client pages from keeps meaning one operation.
_SCHEMA = """
CREATE TABLE operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_version TEXT NOT NULL,
    to_version TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    releases_after TEXT NOT NULL DEFAULT '[]',
    config_changes TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX operations_by_node ON operations (node, id);
CREATE INDEX operations_by_outcome ON operations (outcome);
CREATE TABLE steps (
    op_id INTEGER NOT NULL REFERENCES operations (id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    duration REAL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (op_id, seq)
);
CREATE TABLE unpacked (
    node TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    op_id INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (node, version)
);
CREATE TABLE placing (
    node TEXT NOT NULL,
    op_id INTEGER NOT NULL,
    version TEXT NOT NULL,
    paths TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (node, op_id)
);
"""
# Schema 5: what an operation adds inside directories the root already had (a new file in an
# existing lib/APP-VSN): taken back on their own, though the directory around them is in use;
# and, once the release is registered, kept with its record so that its removal can name what
# stays. Columns of their own: a record written before (schema 4) reads as adding nothing.
_ADDED = ("ALTER TABLE placing ADD COLUMN added TEXT NOT NULL DEFAULT '[]'",
          "ALTER TABLE unpacked ADD COLUMN added TEXT NOT NULL DEFAULT '[]'")

# The sha256 of the tarball each release was unpacked from (one row per node and version),
# so that a tarball of the same version with other bytes is told apart (see unpacked_sha256).
_UNPACKED = _SCHEMA[_SCHEMA.index("CREATE TABLE unpacked"):
                    _SCHEMA.index("CREATE TABLE placing")].strip().rstrip(";")
# What an operation is placing under a node's release root until it knows what became of it
# (see record_placing): the next operation takes back what one that never finished left.
_PLACING = _SCHEMA[_SCHEMA.index("CREATE TABLE placing"):].strip().rstrip(";")

_OP_COLUMNS = ("id, node, kind, from_version, to_version, requested_by, started_at, finished_at, "
               "outcome, error, releases_after, config_changes")

# Schema upgrades of an existing journal, by the version they lead to.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE operations ADD COLUMN config_changes TEXT NOT NULL DEFAULT '[]'",),
    3: (_UNPACKED,),
    4: (_PLACING,),
    5: _ADDED,
}


class JournalError(HostError):
    """The journal cannot be opened, or was asked for something its records forbid."""


class JournalWriteError(JournalError):
    """A write to the journal failed and left it as it was: its file system is full
    (``full``), read-only, or the file is locked or damaged. Retrying later may succeed."""

    def __init__(self, path: Path, cause: sqlite3.Error) -> None:
        self.full = (getattr(cause, "sqlite_errorname", "") == "SQLITE_FULL"
                     or "disk is full" in str(cause))
        reason = ("no space left on the file system of the agent's state_dir "
                  f"({path.parent})" if self.full else str(cause))
        super().__init__(f"cannot write the journal {path}: {reason}")


@dataclass(frozen=True)
class ReleaseRow:
    """A release as the node reported it when the operation ended."""
    name: str
    version: str
    status: str


@dataclass(frozen=True)
class OperationRecord:
    id: int
    node: str
    kind: str                 # "upgrade", "downgrade", "unpack", "install", ...
    from_version: str
    to_version: str
    requested_by: str
    started_at: float
    finished_at: float | None
    outcome: str              # one of OUTCOMES
    error: str
    steps: tuple[StepRecord, ...]
    releases_after: tuple[ReleaseRow, ...]
    config_changes: tuple[ConfigChange, ...] = ()


class Journal:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open the journal at ``path`` (normally ``state_dir / FILE_NAME``), creating it."""
        _restrict(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every write is in exactly
        # the transaction we mean and nothing is left open between calls.
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the journal {path}: {e}") from e
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------

    def start(self, node: str, kind: str, from_version: str, to_version: str,
              requested_by: str, *, now: float | None = None) -> int:
        with self._tx():
            cur = self._conn.execute(
                "INSERT INTO operations (node, kind, from_version, to_version, requested_by,"
                " started_at, outcome) VALUES (?, ?, ?, ?, ?, ?, 'running')",
                (node, kind, from_version, to_version, requested_by, _now(now)))
            op_id = cur.lastrowid
        assert op_id is not None
        return op_id

    def step(self, op_id: int, step: StepRecord) -> None:
        """Record ``step``: it updates the same-named step if that is still running (so a step
        goes running -> succeeded), else it is appended (a step may run twice, e.g. verify
        after a rollback)."""
        if step.state not in STEP_STATES:
            raise ValueError(f"unknown step state {step.state!r}")
        with self._tx():
            self._require_running(op_id)
            row = self._conn.execute(
                "SELECT seq FROM steps WHERE op_id = ? AND name = ? AND state = 'running'"
                " ORDER BY seq DESC LIMIT 1", (op_id, step.name)).fetchone()
            values = (step.state, step.started_at, step.duration, step.detail)
            if row is not None:
                self._conn.execute(
                    "UPDATE steps SET state = ?, started_at = ?, duration = ?, detail = ?"
                    " WHERE op_id = ? AND seq = ?", (*values, op_id, row[0]))
            else:
                self._conn.execute(
                    "INSERT INTO steps (op_id, seq, name, state, started_at, duration, detail)"
                    " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ? FROM steps"
                    " WHERE op_id = ?", (op_id, step.name, *values, op_id))

    def set_from_version(self, op_id: int, version: str) -> None:
        """The version the node ran before, known only once preflight has asked it."""
        with self._tx():
            self._require_running(op_id)
            self._conn.execute("UPDATE operations SET from_version = ? WHERE id = ?",
                               (version, op_id))

    def finish(self, op_id: int, outcome: str, *, error: str = "",
               releases_after: Sequence[ReleaseRow] = (),
               config_changes: Sequence[ConfigChange] = (),
               now: float | None = None) -> OperationRecord:
        if outcome not in OUTCOMES or outcome == "running":
            raise ValueError(f"not a final outcome: {outcome!r}")
        return self._end(op_id, outcome, error, releases_after, "did not finish", _now(now),
                         config_changes)

    def mark_interrupted(self, op_id: int, note: str, releases_after: Sequence[ReleaseRow] = (),
                         *, now: float | None = None) -> OperationRecord:
        """Close an operation the agent died during (found by :meth:`running` at start)."""
        return self._end(op_id, "interrupted", note, releases_after,
                         "interrupted: agent stopped", _now(now))

    def record_unpacked(self, node: str, version: str, sha256: str, op_id: int, *,
                        added: Sequence[str] = (), now: float | None = None) -> None:
        """Operation ``op_id`` unpacked ``version`` on ``node`` from a tarball of ``sha256``,
        adding ``added`` inside directories the root had."""
        with self._tx():
            self._conn.execute(
                "INSERT OR REPLACE INTO unpacked (node, version, sha256, op_id, recorded_at,"
                " added) VALUES (?, ?, ?, ?, ?, ?)",
                (node, version, sha256, op_id, _now(now), json.dumps(list(added))))

    def forget_unpacked(self, node: str, keep: Sequence[str]) -> None:
        """Drop the records of ``node``'s releases that are gone (not in ``keep``): a release
        unpacked again later, by hand or by the agent, is not that tarball's any more."""
        marks = ", ".join("?" * len(keep))
        with self._tx():
            self._conn.execute(f"DELETE FROM unpacked WHERE node = ? AND version NOT IN ({marks})",
                               (node, *keep))

    def record_placing(self, node: str, op_id: int, version: str, paths: Sequence[str], *,
                       added: Sequence[str] = (), now: float | None = None) -> None:
        """Operation ``op_id`` is about to place ``paths`` under ``node``'s root for
        ``version``, and ``added`` inside directories the root has (replacing what it
        recorded before)."""
        with self._tx():
            self._conn.execute(
                "INSERT OR REPLACE INTO placing (node, op_id, version, paths, recorded_at, added)"
                " VALUES (?, ?, ?, ?, ?, ?)", (node, op_id, version, json.dumps(list(paths)),
                                               _now(now), json.dumps(list(added))))

    def settle_placing(self, node: str, op_id: int) -> None:
        """What operation ``op_id`` placed is registered with the node, or taken back."""
        with self._tx():
            self._conn.execute("DELETE FROM placing WHERE node = ? AND op_id = ?",
                               (node, op_id))

    def placings(self, node: str
                 ) -> builtins.list[tuple[int, str, tuple[str, ...], tuple[str, ...]]]:
        """(op_id, version, paths, added) of every placing of ``node`` not settled, oldest
        first (``added``: empty for a placing recorded before schema 5)."""
        try:
            with self._tx(write=False):
                rows = self._conn.execute(
                    "SELECT op_id, version, paths, added FROM placing WHERE node = ?"
                    " ORDER BY op_id", (node,)).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from exc
        return [(int(r[0]), str(r[1]), tuple(str(p) for p in json.loads(r[2])),
                 tuple(str(p) for p in json.loads(r[3]))) for r in rows]

    # -- reads ----------------------------------------------------------------------------

    def unpacked_sha256(self, node: str, version: str) -> str | None:
        """The sha256 recorded by :meth:`record_unpacked`, or None."""
        try:
            with self._tx(write=False):
                row = self._conn.execute(
                    "SELECT sha256 FROM unpacked WHERE node = ? AND version = ?",
                    (node, version)).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from exc
        return str(row[0]) if row else None

    def unpacked_added(self, node: str, version: str) -> tuple[str, ...]:
        """What the unpack recorded by :meth:`record_unpacked` added inside dirs the root had
        (empty when there is no record, or one of schema 4)."""
        try:
            with self._tx(write=False):
                row = self._conn.execute(
                    "SELECT added FROM unpacked WHERE node = ? AND version = ?",
                    (node, version)).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from exc
        return tuple(str(p) for p in json.loads(row[0])) if row else ()

    def get(self, op_id: int) -> OperationRecord | None:
        with self._tx(write=False):
            found = self._load(f"SELECT {_OP_COLUMNS} FROM operations WHERE id = ?", (op_id,))
        return found[0] if found else None

    def list(self, *, limit: int, node: str | None = None,
             before_id: int | None = None) -> builtins.list[OperationRecord]:
        """Newest first, at most ``limit`` (the API's default is the contract's, relctl.v1
        DEFAULT_LIST_LIMIT); page on by passing the last id seen as ``before_id``."""
        if limit <= 0:
            return []   # SQLite reads a negative LIMIT as "no limit"
        where: builtins.list[str] = []
        args: builtins.list[object] = []
        if node is not None:
            where.append("node = ?")
            args.append(node)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = f"SELECT {_OP_COLUMNS} FROM operations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._tx(write=False):
            return self._load(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))

    def running(self) -> builtins.list[OperationRecord]:
        """Operations not finished, oldest first."""
        with self._tx(write=False):
            return self._load(f"SELECT {_OP_COLUMNS} FROM operations WHERE outcome = 'running'"
                              " ORDER BY id", ())

    # -- internals ------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: a read-check-write never sees another
        # writer slip in between (a second agent on the same state_dir, by mistake). Reads
        # need no lock, only one snapshot for the operations and their steps.
        try:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does that to a COMMIT).
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if not write:
                raise
            raise JournalWriteError(self.path, exc) from exc

    def _require_running(self, op_id: int) -> None:
        row = self._conn.execute("SELECT outcome FROM operations WHERE id = ?",
                                 (op_id,)).fetchone()
        if row is None:
            raise JournalError(f"no operation {op_id} in the journal")
        if row[0] != "running":
            raise JournalError(f"operation {op_id} is not running (it ended: {row[0]})")

    def _end(self, op_id: int, outcome: str, error: str, releases_after: Sequence[ReleaseRow],
             step_detail: str, now: float,
             config_changes: Sequence[ConfigChange] = ()) -> OperationRecord:
        rows = json.dumps([{"name": r.name, "version": r.version, "status": r.status}
                           for r in releases_after])
        changes = json.dumps([{"application": c.application, "key": c.key, "kind": c.kind}
                              for c in config_changes])
        with self._tx():
            self._require_running(op_id)
            # A step left running never reported its end: it did not succeed.
            self._conn.execute(
                "UPDATE steps SET state = 'failed', detail = ?, duration = MAX(? - started_at, 0)"
                " WHERE op_id = ? AND state = 'running'", (step_detail, now, op_id))
            self._conn.execute(
                "UPDATE operations SET outcome = ?, error = ?, finished_at = ?,"
                " releases_after = ?, config_changes = ? WHERE id = ?",
                (outcome, error, now, rows, changes, op_id))
            [record] = self._load(f"SELECT {_OP_COLUMNS} FROM operations WHERE id = ?",
                                  (op_id,))
        return record

    def _load(self, sql: str, args: Sequence[Any]) -> builtins.list[OperationRecord]:
        ops = self._conn.execute(sql, args).fetchall()
        if not ops:
            return []
        ids = [op[0] for op in ops]
        steps: dict[int, builtins.list[StepRecord]] = {i: [] for i in ids}
        marks = ", ".join("?" * len(ids))
        for op_id, name, state, started_at, duration, detail in self._conn.execute(
                "SELECT op_id, name, state, started_at, duration, detail FROM steps"
                f" WHERE op_id IN ({marks}) ORDER BY op_id, seq", ids):
            steps[op_id].append(StepRecord(name, state, started_at, duration, detail))
        return [OperationRecord(
            id=op[0], node=op[1], kind=op[2], from_version=op[3], to_version=op[4],
            requested_by=op[5], started_at=op[6], finished_at=op[7], outcome=op[8],
            error=op[9], steps=tuple(steps[op[0]]),
            releases_after=tuple(ReleaseRow(r["name"], r["version"], r["status"])
                                 for r in json.loads(op[10])),
            config_changes=tuple(ConfigChange(c["application"], c["key"], c["kind"])
                                 for c in json.loads(op[11])),
        ) for op in ops]


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _restrict(path: Path) -> None:
    """Create the journal file FILE_MODE whatever the umask (SQLite would make it 0644 under
    umask 022, and gives its -wal and -shm files the database's mode); a journal created
    looser by an older agent is tightened."""
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT, FILE_MODE) if name == path else \
                os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise JournalError(f"cannot open the journal {name}: {e.strerror or e}") from e
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode & ~FILE_MODE:
                os.fchmod(fd, mode & FILE_MODE)
        except OSError as e:
            raise JournalError(f"cannot restrict the journal {name} to mode "
                               f"{FILE_MODE:o}: {e.strerror or e}") from e
        finally:
            os.close(fd)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check the file is our journal at a version we know, and create the schema if new."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise JournalError(f"{path} is not a relctl journal (not an SQLite database: {e}); "
                           "move it away and restart the agent, which then starts a new one"
                           ) from e
    if version > SCHEMA_VERSION:
        raise JournalError(f"the journal {path} was written by a newer relctl (schema version "
                           f"{version}, this relctl knows up to {SCHEMA_VERSION}); upgrade "
                           "relctl, or move the file away to start a new journal")
    # WAL: readers never block the writer.
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL with NORMAL survives the agent being killed at any point (what the journal is for);
    # only an OS crash may lose the last commits. FULL would fsync every step update and
    # add tens of milliseconds to each upgrade.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Asked again under the write lock: another process may have created or upgraded it.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            _create_schema(conn, path)
        elif version < SCHEMA_VERSION:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
    if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
        # An SQLite file someone else made: creating our tables in it would mix the two.
        raise JournalError(f"{path} is an SQLite database but not a relctl journal; "
                           "move it away and restart the agent, which then starts a new one")
    # Statement by statement: executescript() would COMMIT and leave our transaction.
    for statement in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(statement)
    for statement in _ADDED:  # _SCHEMA keeps schema 4's tables, which migrations 3, 4 make
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
