"""An upload checked and extracted while it arrives (issue 24): one pass, one decompression,
so that the operation's stage is a rename.

When the upload names a node whose release root the agent may write (the same rule as the
stage's own extraction, agent/release/tarballs/extract.py ``why_not_write``), a thread reads
the upload's ``.part`` file as the chunks are written to it and extracts the release into
ROOT/.relctl-upload-ID, with every check of ``inspect_tarball``. Otherwise, or when the
extraction cannot write there, the upload is checked once it is complete and the operation
extracts it, as before.

What an upload extracts is the agent's like what an operation places: recorded in the
journal's placing records before the dir is made (keyed by a negative number, never an
operation's id), removed with its record when the upload fails, is aborted, expires or is
discarded, and moved by the operation that uses it (``adopt``: its stage renames it to
ROOT/.relctl-unpack-XXXX). An agent killed meanwhile leaves the record: the next operation on
that node takes the dir back, as it takes back what an unfinished operation placed. The keys
of the uploads alive in this agent are never taken back (:meth:`AheadPlaces.busy`).

The dir is also made locked (agent/release/tarballs/held.py: an exclusive flock on an fd of
it, taken at once, the window after mkdir closed on both sides), and stays locked while the
upload owns it; ``adopt`` hands the operation a holder of the same lock, which it keeps until
it removed the dir. The lock dies with the agent's process, so when the journal was lost with
the state dir too, the next stage on that root still removes the dir (extract.py
``clear_leftovers``), and never one whose lock is held: an upload alive in this agent or in
another one on the same root.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import shutil
import threading
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from agent.nodes import NodeManager
from agent.release import (
    BEAMS,
    TREE,
    UPLOAD_PREFIX,
    Contents,
    Extracted,
    HeldDir,
    Interrupted,
    ebins,
    extract_arriving,
    make_held,
    node_dirs,
    why_not_write,
)

from .journal import Journal, JournalError

log = logging.getLogger("relctl.agent.operations.ahead")


class AheadPlaces(Protocol):
    """Where an upload for a node may be extracted as it arrives, and the record of it."""

    async def root(self, node: str) -> Path | None:
        """The node's release root if the agent may extract into it; else None."""
        ...

    def placing(self, node: str, key: int, version: str, path: Path) -> bool:
        """Record that ``path`` is about to be made for an upload; False: not recorded."""
        ...

    def settled(self, node: str, key: int) -> None:
        """What was recorded under ``key`` is gone (or an operation owns it now)."""
        ...


class JournalPlaces:
    """AheadPlaces over the agent's nodes and journal."""

    def __init__(self, nodes: NodeManager, journal: Journal, *, rpc_timeout: float) -> None:
        self._nodes = nodes
        self._journal = journal
        self._rpc_timeout = rpc_timeout
        self._busy: set[int] = set()

    def busy(self) -> Collection[int]:
        """The keys of the uploads alive in this agent: no operation takes them back."""
        return frozenset(self._busy)

    async def root(self, node: str) -> Path | None:
        try:
            link = self._nodes.get(node)
            if not link.state.up:
                return None
            dirs = await node_dirs(link, self._rpc_timeout)
        except Exception as exc:  # noqa: BLE001 - unknown root: the operation extracts, as before
            log.info("upload for %s: its release root is unknown (%s); the operation will "
                     "extract the tarball", node, exc)
            return None
        if not isinstance(dirs.root, str) or not isinstance(dirs.releases, str):
            return None
        root = Path(dirs.root)
        why_not = why_not_write(root, Path(dirs.releases))
        if why_not is not None:
            log.info("upload for %s: not extracted as it arrives (%s)", node, why_not)
            return None
        return root

    def placing(self, node: str, key: int, version: str, path: Path) -> bool:
        try:
            self._journal.record_placing(node, key, version, [str(path)])
        except JournalError as exc:
            log.warning("upload for %s: not extracted as it arrives, its dir cannot be "
                        "recorded in the journal (%s)", node, exc)
            return False
        self._busy.add(key)
        return True

    def settled(self, node: str, key: int) -> None:
        try:
            self._journal.settle_placing(node, key)
        except JournalError as exc:
            log.warning("upload for %s: cannot mark its extraction dir gone in the journal "
                        "(%s); the next operation on it checks again", node, exc)
        self._busy.discard(key)


class _Arriving:
    """The ``.part`` file as the extraction reads it while it is written: a read waits for
    the bytes not written yet (up to the size asked, or the end); an abort wakes it with
    Interrupted."""

    mode = "rb"  # for gzip.GzipFile

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._cond = threading.Condition()
        self._written = 0
        self._ended = False
        self._aborted = False

    def wrote(self, total: int) -> None:
        with self._cond:
            self._written = total
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def read(self, size: int = -1, /) -> bytes:
        position = self._file.tell()
        with self._cond:
            while not (self._aborted or self._ended
                       or 0 <= size <= self._written - position):
                self._cond.wait()
            if self._aborted:
                raise Interrupted()
            available = self._written - position
        want = available if size < 0 else min(size, available)
        out = bytearray()
        while len(out) < want and (chunk := self._file.read(want - len(out))):
            out += chunk
        return bytes(out)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


class Ahead:
    """One upload's extraction as it arrives, into ``tmp`` under ``root``."""

    def __init__(self, places: AheadPlaces, node: str, root: Path, tmp: Path, key: int,
                 part: Path, held: HeldDir) -> None:
        self.node = node
        self.root = root
        self.tmp = tmp
        self.key = key
        self._places = places
        self._held = held  # the lock on tmp: let go once tmp is removed
        self._feed = _Arriving(part)
        self._done: concurrent.futures.Future[tuple[Contents, Extracted]] = \
            concurrent.futures.Future()
        self._settled = False

    @classmethod
    async def start(cls, places: AheadPlaces, node: str, upload_id: str, version: str,
                    part: Path, final: Path) -> Ahead | None:
        """The extraction of the upload being written to ``part`` (``final``: its name once
        complete, in refusals), or None when it cannot be done as it arrives."""
        root = await places.root(node)
        if root is None:
            return None
        tmp = root / f"{UPLOAD_PREFIX}{upload_id}"
        key = -secrets.randbits(62) - 1  # never an operation's id (those count up from 1)
        if not places.placing(node, key, version, tmp):
            return None
        try:
            # Made and locked at once (a scan for leftovers never takes a dir whose lock is
            # held); when it raises, no dir of its own is left.
            held = make_held(tmp)
        except OSError as exc:
            log.info("upload %s for %s: cannot extract into %s as it arrives (%s); the "
                     "operation will", upload_id, node, root, exc.strerror or exc)
            places.settled(node, key)
            return None
        try:
            ahead = cls(places, node, root, tmp, key, part, held)
        except OSError as exc:
            log.info("upload %s for %s: cannot extract into %s as it arrives (%s); the "
                     "operation will", upload_id, node, root, exc.strerror or exc)
            with contextlib.suppress(OSError):
                tmp.rmdir()
            held.release()
            places.settled(node, key)
            return None
        threading.Thread(target=ahead._run, args=(final, version), daemon=True,
                         name=f"relctl upload {upload_id}").start()
        return ahead

    def _run(self, final: Path, version: str) -> None:
        try:
            result = extract_arriving(self._feed, final, self.tmp, self.root, version=version)
            # The md5 of every beam of the release, for the verify at the switch (loaded.py):
            # those extracted (renamed into place with their dirs, they stay the same files)
            # and those the root has.
            apps = result[0].applications
            BEAMS.remember([*ebins(self.tmp / TREE, apps), *ebins(self.root, apps)])
        except BaseException as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._held.release()
            self._done.set_exception(exc)
        else:
            # With the lock, so that adopt hands it on to the operation (tarballs/held.py).
            self._done.set_result((result[0], replace(result[1], held=self._held)))
        finally:
            self._feed.close()

    def wrote(self, total: int) -> None:
        """``total`` bytes of the upload are in its ``.part`` file (flushed)."""
        self._feed.wrote(total)

    def result(self) -> tuple[Contents, Extracted]:
        """Once the whole upload was written and checked (blocking): what the extraction
        found and made; else its error, and nothing of it is left."""
        self._feed.end()
        return self._done.result()

    def cancel(self) -> None:
        """Stop the extraction (blocking until it ended) and remove what it made."""
        self._feed.abort()
        with contextlib.suppress(BaseException):
            self._done.result()
        shutil.rmtree(self.tmp, ignore_errors=True)  # gone already if an operation adopted it
        self._held.release()  # the operation that adopted it holds the lock on its own

    def drop(self) -> None:
        """From the event loop: stop the extraction, remove its dir (unless an operation
        moved it away) and its record, in a thread; nothing waits for it."""
        self._feed.abort()
        loop = asyncio.get_running_loop()

        def gone(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the record stays
                loop.call_soon_threadsafe(self.settle)
        work = loop.run_in_executor(None, self.cancel)
        work.add_done_callback(gone)

    def settle(self) -> None:
        """Its dir is gone or owned by an operation: drop the record (event loop only)."""
        if not self._settled:
            self._settled = True
            self._places.settled(self.node, self.key)
