"""The audit trail: one JSON object per line in ``state_dir/audit.jsonl``, appended and never
rewritten, so that `tail -f` and log shippers can follow it.

Each record: time, peer, identity, certificate, rpc, node, arguments (no secrets, no
tarball bytes), result ("ok" or the status code), detail and operation id. A write that
fails is logged as an error and does not fail the call: the journal still has the operation.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("relctl.agent.api.audit")

FILE_NAME = "audit.jsonl"
_TAIL_BLOCK = 64 * 1024
# Request fields never written, whatever the RPC: what could carry a secret or bulk data.
_SECRET_FIELDS = frozenset({"token", "cookie", "password", "secret", "chunk"})


@dataclass(frozen=True)
class AuditRecord:
    time: float
    peer: str
    identity: str
    rpc: str
    node: str
    result: str                    # "ok" or the status code name, e.g. "PERMISSION_DENIED"
    detail: str = ""
    certificate: str = ""
    operation_id: int = 0
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, line: str) -> AuditRecord:
        raw = json.loads(line)
        return cls(time=float(raw["time"]), peer=str(raw.get("peer", "")),
                   identity=str(raw.get("identity", "")), rpc=str(raw.get("rpc", "")),
                   node=str(raw.get("node", "")), result=str(raw.get("result", "")),
                   detail=str(raw.get("detail", "")),
                   certificate=str(raw.get("certificate", "")),
                   operation_id=int(raw.get("operation_id", 0)),
                   arguments=dict(raw.get("arguments", {})))


def without_secrets(arguments: Mapping[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in arguments.items():
        if key in _SECRET_FIELDS:
            continue
        clean[key] = without_secrets(value) if isinstance(value, Mapping) else value
    return clean


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # 0640: the operators' group may read it; nobody else (it names users and hosts).
        # Unbuffered: a record is on disk when append returns, and a write that fails (a full
        # disk) leaves nothing behind in a buffer for a later flush or close to trip over.
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        # A crash mid-line: the next record starts on its own line.
        self._torn = _ends_torn(self._fd)
        self._failed = False

    def append(self, record: AuditRecord) -> None:
        line = (record.to_json() + "\n").encode("utf-8")
        try:
            with self._lock:
                # A call that ended after close (the agent's last moments): its record still
                # belongs in the trail, so the file is opened for it alone.
                late = self._fd < 0
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND) if late else self._fd
                if self._torn:
                    line = b"\n" + line
                    self._torn = False
                view = memoryview(line)
                try:
                    while view:
                        view = view[os.write(fd, view):]
                except OSError:
                    self._torn = len(view) < len(line)  # part of it is in the file
                    raise
                finally:
                    if late:
                        os.close(fd)
            if self._failed:
                log.info("the audit trail %s is written again", self.path)
            self._failed = False
        except OSError as exc:
            if not self._failed:  # once per outage, not once per call
                log.error("cannot write the audit trail %s: %s; the records of calls until "
                          "it works again are lost (the journal still has the operations)",
                          self.path, exc)
            self._failed = True

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def tail(self, limit: int, *, node: str | None = None) -> list[AuditRecord]:
        """The last ``limit`` records (of ``node`` only, if given), newest first."""
        found: list[AuditRecord] = []
        for line in _lines_backwards(self.path):
            try:
                record = AuditRecord.from_json(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash: skip it, keep the rest
            if node and record.node != node:
                continue
            found.append(record)
            if len(found) >= limit:
                break
        return found


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _lines_backwards(path: Path) -> Iterator[str]:
    """The file's lines from the last to the first, read in blocks from the end."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(0, os.SEEK_END)
        position = f.tell()
        rest = b""
        while position > 0:
            size = min(_TAIL_BLOCK, position)
            position -= size
            f.seek(position)
            block = f.read(size) + rest
            lines = block.split(b"\n")
            rest = lines[0]
            for raw in reversed(lines[1:]):
                if raw.strip():
                    yield raw.decode("utf-8", "replace")
        if rest.strip():
            yield rest.decode("utf-8", "replace")
