"""Release tarballs uploaded to the agent, kept in `state_dir/uploads` until an operation
uses them.

An upload is written to a `.part` file, checked against its announced size and sha256, and
validated as a release tarball (agent/release/tarballs/): while it arrives, together with its
extraction into the node's release root when the agent may write there (ahead.py), else once it
is complete. Anything that fails is deleted: nothing half-received is ever offered to
release_handler. Uploads do not survive an agent restart.

Bounded: an upload (being received, or received and not yet used) that sees no activity for
``idle_expiry`` seconds is removed by :meth:`UploadStore.expire` (run every so often by
:meth:`UploadStore.sweep_forever`), and all uploads together may not announce more than
``max_total`` bytes. The sweep also removes any file of the directory that no upload owns
(what a writer cancelled mid-finish may leave), so nothing outlives its upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import HostError, NotFound, RequestError
from agent.release import Extracted, ReleaseTarball, TarballError, WriteFailed, inspect_tarball

from .ahead import Ahead, AheadPlaces

_T = TypeVar("_T")

log = logging.getLogger("relctl.agent.operations.uploads")

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UploadRefused(RequestError):
    pass


class UploadNotStored(HostError):
    """The agent's disk refused an upload (its state_dir's file system is full, or worse);
    what was received is deleted and nothing was changed."""

    def __init__(self, directory: Path, exc: OSError) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            why = (f"no space left in {directory} (the file system of the agent's state_dir); "
                   "free space there and send it again")
        else:
            why = f"writing in {directory} failed: {exc.strerror or exc}"
        super().__init__(f"the agent cannot store the upload, nothing was changed: {why}")


class UnknownUpload(NotFound):
    def __init__(self, upload_id: str, node: str) -> None:
        super().__init__(f"no upload {upload_id!r} for {node} on this agent (uploads do not "
                         "survive an agent restart); upload the tarball again")


@dataclass(frozen=True)
class Upload:
    id: str
    node: str
    tarball: ReleaseTarball
    # Its extraction as it arrived, under the node's release root (ahead.py), for the
    # operation that uses it to move into place; None: that operation extracts it.
    staged: Extracted | None = None


class UploadWriter:
    """Receives one upload's chunks; ``finish()`` checks and validates it."""

    def __init__(self, store: UploadStore, upload_id: str, node: str, version: str,
                 size: int, sha256: str, path: Path) -> None:
        self._store = store
        self.id = upload_id
        self.node = node
        self.version = version
        self.size = size
        self._sha256 = sha256
        self._path = path
        try:
            self._file = open(path, "wb")  # noqa: SIM115 - closed by finish()/abort()
        except OSError as exc:
            raise UploadNotStored(path.parent, exc) from None
        self._digest = hashlib.sha256()
        self.received = 0
        self.touched = store.now()
        self.finishing = False  # finish() runs (in a thread): expiry leaves it alone
        self.expired = False
        self._ended = False
        self._gone: asyncio.Future[None] | None = None  # set by abort(): wakes receive()
        self.ahead: Ahead | None = None  # the extraction as it arrives, if any

    @property
    def path(self) -> Path:
        """The ``.part`` file being written."""
        return self._path

    @property
    def ended(self) -> bool:
        return self._ended

    def drop_ahead(self) -> None:
        """The extraction as it arrived is not kept: removed, with its record (event loop)."""
        if self.ahead is not None:
            ahead, self.ahead = self.ahead, None
            ahead.drop()

    def _ended_error(self) -> UploadRefused:
        if self.expired:
            return UploadRefused(
                f"upload {self.id} expired after {self._store.idle_expiry:g} s without data "
                "(agent.upload_idle_expiry); the agent removed what it had received: send the "
                "tarball again")
        return UploadRefused(f"upload {self.id} has ended")

    async def receive(self, part: Awaitable[_T]) -> _T:
        """``part`` (the caller's next message), unless the upload ends first (expiry): then
        UploadRefused, which ends the call. Without this, a client that stalled and set no
        deadline would wait forever on a call whose file is long gone."""
        if self._ended:
            raise self._ended_error()
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(part)
        either: set[asyncio.Future[Any]] = {task, self._gone}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise self._ended_error()

    def write(self, chunk: bytes) -> None:
        if self._ended:
            raise self._ended_error()
        self.touched = self._store.now()
        self.received += len(chunk)
        if self.received > self.size:
            self.abort()
            raise UploadRefused(f"upload is larger than the {self.size} bytes announced")
        self._digest.update(chunk)
        try:
            self._file.write(chunk)
            if self.ahead is not None:  # the extraction reads the file as it grows
                self._file.flush()
                self.ahead.wrote(self.received)
        except OSError as exc:  # a full disk: say so, and keep nothing
            self.abort()
            raise UploadNotStored(self._path.parent, exc) from None

    def finish(self) -> Upload:
        """Check and validate what was received, and offer it to operations (blocking: the
        event loop calls :meth:`UploadStore.finish` instead)."""
        self.finishing = True
        try:
            upload = self.check()
        finally:
            self._store.forget(self)
        self._store.keep(upload, self.ahead)
        return upload

    def check(self) -> Upload:
        """The checks of :meth:`finish`, touching nothing but this upload's files (so it may run
        in a thread); on any failure the files are gone."""
        self.finishing = True
        if self._ended:
            raise self._ended_error()
        self._ended = True
        try:
            try:
                self._file.close()  # writes what was buffered: the disk may be full now
            except OSError as exc:
                raise UploadNotStored(self._path.parent, exc) from None
            if self.received != self.size:
                raise UploadRefused(f"upload ended after {self.received} of {self.size} bytes; "
                                    "send it again")
            digest = self._digest.hexdigest()
            if digest != self._sha256:
                raise UploadRefused(f"sha256 mismatch: the agent received {digest}, the client "
                                    f"announced {self._sha256}; the file changed or was "
                                    "corrupted in transit")
            final = self._path.with_suffix("")  # drop .part
            os.replace(self._path, final)
            try:
                return self._validated(final, digest)
            except BaseException:
                final.unlink(missing_ok=True)
                raise
        except BaseException:
            if self.ahead is not None:
                self.ahead.cancel()
            self._path.unlink(missing_ok=True)
            raise

    def _validated(self, final: Path, digest: str) -> Upload:
        """The upload at ``final`` as a release tarball: as its extraction found it while it
        arrived, or, without one, as inspect_tarball finds it now."""
        if self.ahead is not None:
            try:
                contents, staged = self.ahead.result()
            except (WriteFailed, OSError) as exc:  # the root's fault, not the tarball's
                log.warning("upload %s for %s: extracting it as it arrived failed (%s); the "
                            "operation will extract it", self.id, self.node, exc)
            else:
                return Upload(self.id, self.node, contents.tarball(final, self.size, digest),
                              staged)
        # The agent's own limit (agent.max_upload_bytes), not the check's.
        return Upload(self.id, self.node, inspect_tarball(
            final, expected_version=self.version, max_size=self._store.max_size))

    def abort(self) -> None:
        """Drop what was received; nothing once finish() has started (it cleans up itself)."""
        if self._ended or self.finishing:
            return
        self._ended = True
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self._store.forget(self)
        self.drop_ahead()
        with contextlib.suppress(OSError):  # what was buffered cannot be written: no matter
            self._file.close()
        self._path.unlink(missing_ok=True)


class UploadStore:
    def __init__(self, directory: Path, *, max_upload_bytes: int, uploads_max_bytes: int,
                 upload_idle_expiry: float,
                 clock: Callable[[], float] = time.monotonic,
                 places: AheadPlaces | None = None) -> None:
        self._dir = directory
        self._places = places  # None: never extracted as they arrive
        self._aheads: dict[str, Ahead] = {}    # upload id -> its kept extraction
        self.max_size = max_upload_bytes
        self.max_total = uploads_max_bytes
        self.idle_expiry = upload_idle_expiry
        self.now = clock
        self._uploads: dict[str, Upload] = {}
        self._used: dict[str, float] = {}      # upload id -> when it was kept or last asked for
        self._claimed: set[str] = set()        # in use by an operation: never expires
        self._writers: dict[str, UploadWriter] = {}
        # Leftovers of a previous run are not trusted (their checks happened in another life).
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def begin(self, node: str, version: str, size: int, sha256: str) -> UploadWriter:
        if not version:
            raise UploadRefused("the upload header names no version")
        if size <= 0:
            raise UploadRefused("the upload header announces no size")
        if size > self.max_size:
            raise UploadRefused(f"upload of {size} bytes is over the agent's limit of "
                                f"{self.max_size} bytes (agent.max_upload_bytes)")
        sha = sha256.lower()
        if not _SHA256.fullmatch(sha):
            raise UploadRefused("the upload header's sha256 is not 64 hex digits")
        if self.total() + size > self.max_total:
            self.expire()
            if self.total() + size > self.max_total:
                raise UploadRefused(
                    f"upload of {size} bytes refused: the agent holds {self.total()} bytes of "
                    f"uploads and its quota is {self.max_total} bytes (agent.uploads_max_bytes); "
                    "unused uploads expire after agent.upload_idle_expiry "
                    f"({self.idle_expiry:g} s)")
        upload_id = secrets.token_hex(8)
        path = self._dir / f"{upload_id}.tar.gz.part"
        writer = UploadWriter(self, upload_id, node, version, size, sha, path)
        self._writers[upload_id] = writer
        return writer

    async def open(self, node: str, version: str, size: int, sha256: str) -> UploadWriter:
        """:meth:`begin`, and the upload's extraction as it arrives when the agent may write
        the node's release root (ahead.py)."""
        writer = self.begin(node, version, size, sha256)
        if self._places is not None:
            final = writer.path.with_suffix("")
            ahead = await Ahead.start(self._places, node, writer.id, version, writer.path, final)
            if ahead is not None:
                writer.ahead = ahead
                if writer.ended:  # expired while the root was looked up
                    writer.drop_ahead()
        return writer

    def total(self) -> int:
        """Bytes held: uploads kept, plus the announced size of those being received."""
        return (sum(u.tarball.size for u in self._uploads.values())
                + sum(w.size for w in self._writers.values()))

    def forget(self, writer: UploadWriter) -> None:
        """``writer`` ended (finished or aborted): it no longer counts against the quota."""
        if self._writers.get(writer.id) is writer:
            del self._writers[writer.id]

    def keep(self, upload: Upload, ahead: Ahead | None = None) -> None:
        """Offer a checked and validated upload to operations (``ahead``: its extraction)."""
        self._uploads[upload.id] = upload
        if ahead is not None and upload.staged is not None:
            self._aheads[upload.id] = ahead
        self._used[upload.id] = self.now()
        tarball = upload.tarball
        log.info("upload %s for %s: %s %s, %d bytes, sha256 %s", upload.id, upload.node,
                 tarball.release_name, tarball.version, tarball.size, tarball.sha256)

    def get(self, upload_id: str, node: str, *, claim: bool = False) -> Upload:
        """The upload ``upload_id`` of ``node``; ``claim``: an operation will use it, so it does
        not expire (the caller then discards it, whatever happens)."""
        upload = self._uploads.get(upload_id)
        if upload is None or upload.node != node:
            raise UnknownUpload(upload_id, node)
        self._used[upload_id] = self.now()
        if claim:
            self._claimed.add(upload_id)
        return upload

    def discard(self, upload_id: str) -> None:
        upload = self._uploads.pop(upload_id, None)
        self._used.pop(upload_id, None)
        self._claimed.discard(upload_id)
        if upload is not None:
            upload.tarball.path.unlink(missing_ok=True)
        ahead = self._aheads.pop(upload_id, None)
        if ahead is not None:  # moved away by the operation that used it, or removed now
            ahead.drop()

    def close(self) -> None:
        """The agent stops: every extraction of an upload is removed from the release roots,
        with its record (blocking)."""
        for writer in list(self._writers.values()):
            if writer.ahead is not None:
                writer.ahead.cancel()
                writer.ahead.settle()
        for ahead in self._aheads.values():
            ahead.cancel()
            ahead.settle()
        self._aheads.clear()

    def expire(self) -> int:
        """Remove uploads idle for longer than ``idle_expiry`` and any file no upload owns;
        the number of uploads removed."""
        now = self.now()
        removed = 0
        for writer in list(self._writers.values()):
            if not writer.finishing and now - writer.touched > self.idle_expiry:
                log.warning("upload %s for %s: no data for %g s, removed "
                            "(agent.upload_idle_expiry)", writer.id, writer.node,
                            now - writer.touched)
                writer.expired = True
                writer.abort()
                removed += 1
        for upload_id, used in list(self._used.items()):
            if upload_id not in self._claimed and now - used > self.idle_expiry:
                log.info("upload %s: unused for %g s, removed (agent.upload_idle_expiry)",
                         upload_id, now - used)
                self.discard(upload_id)
                removed += 1
        self._sweep_orphans()
        return removed

    def _sweep_orphans(self) -> None:
        owned = {w.id for w in self._writers.values() if not w.finishing}
        busy = {w.id for w in self._writers.values() if w.finishing}
        owned |= set(self._uploads)
        try:
            entries = list(self._dir.iterdir())
        except OSError:
            return
        for entry in entries:
            upload_id = entry.name.split(".", 1)[0]
            if upload_id in owned or upload_id in busy:
                continue
            log.info("uploads: removing %s, which no upload owns", entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    async def sweep_forever(self, every: float | None = None) -> None:
        """Call :meth:`expire` every ``every`` s (default: a tenth of the expiry, 1 to 60 s)."""
        period = every if every is not None else min(60.0, max(1.0, self.idle_expiry / 10))
        while True:
            await asyncio.sleep(period)
            try:
                self.expire()
            except Exception:
                log.exception("uploads: the expiry sweep failed")

    async def finish(self, writer: UploadWriter) -> Upload:
        """``writer.finish()`` with its checks off the event loop. If the caller is cancelled
        meanwhile (the client went away), the thread still runs to its end and what it made is
        removed: nothing is kept for a client that will never use it. (Unshielded, a cancel
        that came before the executor started the thread cancelled the work itself, and the
        ``.part`` stayed: a client killed mid-upload over the Unix socket ends its stream, then
        its call is cancelled.)"""
        writer.finishing = True
        work = asyncio.ensure_future(asyncio.to_thread(writer.check))

        def drop(done: asyncio.Future[Upload]) -> None:
            self.forget(writer)
            if not done.cancelled() and done.exception() is None:
                done.result().tarball.path.unlink(missing_ok=True)
            writer.drop_ahead()
            self._sweep_orphans()
        try:
            upload = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(drop)
            raise
        except BaseException:
            self.forget(writer)
            writer.drop_ahead()  # the check removed its dir: only the record is left
            raise
        self.forget(writer)
        if upload.staged is None:
            writer.drop_ahead()
        self.keep(upload, writer.ahead)
        return upload
