"""Uploads checked and extracted as they arrive (agent/operations/ahead.py, issue 24): through
the real UploadStore and a real release root on disk, the chunks written one by one while the
extraction's thread reads them. What an upload extracts is recorded before its dir is made,
and whatever becomes of the upload (used, refused, aborted, expired, discarded, the agent
stopping), nothing of it stays in the root, nor in the record."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from agent.release import UPLOAD_PREFIX
from agent.operations.uploads import Upload, UploadRefused, UploadStore, UploadWriter
from agent.release.beams import BEAMS
from agent.release.tarballs.check import TarballError
from agent.release.tarballs.extract import adopt, clear_leftovers
from tests.tools.settings import UPLOADS, settings

REL = (b'{release, {"counter", "0.0.2"}, {erts, "13.1.5"}, '
       b'[{kernel, "8.5.3"}, {counter, "0.0.2"}]}.')
NODE = "counter@host"
BEAM = Path("/usr/lib/erlang/lib/stdlib-4.2/ebin/lists.beam")


class Places:
    """AheadPlaces over a root on disk, the records in memory (the journal's, in the agent)."""

    def __init__(self, root: Path | None) -> None:
        self._root = root
        self.records: dict[int, tuple[str, str, Path]] = {}
        self.refuse_records = False

    async def root(self, node: str) -> Path | None:
        return self._root

    def placing(self, node: str, key: int, version: str, path: Path) -> bool:
        if self.refuse_records:
            return False
        assert key < 0 and not path.exists()  # recorded before the dir is made
        self.records[key] = (node, version, path)
        return True

    def settled(self, node: str, key: int) -> None:
        del self.records[key]


def tarball_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


def release(**extra: bytes) -> bytes:
    members = {"releases/counter-0.0.2.rel": REL, "releases/0.0.2/sys.config": b"[].",
               "lib/kernel-8.5.3/ebin/kernel.app": b"the tarball's",
               "lib/counter-0.0.2/ebin/counter.app": b"{application, counter, []}.",
               "lib/counter-0.0.2/ebin/lists.beam": BEAM.read_bytes()}
    members.update(extra)
    return tarball_bytes(members)


def uploads_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(UPLOAD_PREFIX))


async def send(store: UploadStore, data: bytes, *, chunk: int = 4096,
               sha256: str | None = None) -> tuple[UploadWriter, Upload]:
    writer = await store.open(NODE, "0.0.2", len(data),
                              sha256 or hashlib.sha256(data).hexdigest())
    for start in range(0, len(data), chunk):
        writer.write(data[start:start + chunk])
        await asyncio.sleep(0)  # the extraction's thread reads along
    return writer, await store.finish(writer)


async def settled(places: Places, root: Path) -> None:
    """Removing an upload's dir runs in a thread: wait for it (and its record) to go."""
    for _ in range(250):
        if not places.records and not uploads_in(root):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"left: {places.records} {uploads_in(root)}")


async def test_an_upload_is_extracted_as_it_arrives_and_its_dir_goes_with_it(
        tmp_path: Path, root: Path) -> None:
    places = Places(root)
    store = UploadStore(tmp_path / "up", places=places, **settings(UPLOADS))
    writer, upload = await send(store, release())
    staged = upload.staged
    assert staged is not None and staged.tmp == root / f"{UPLOAD_PREFIX}{upload.id}"
    assert (staged.written, staged.kept) == (4, 1)  # the root's kernel.app is kept
    assert staged.rel_file == root / "releases/0.0.2/counter-0.0.2.rel"
    assert (staged.tmp / "root/lib/counter-0.0.2/ebin/lists.beam").read_bytes() == \
        BEAM.read_bytes()
    # What the validation alone finds, from the same pass.
    assert (upload.tarball.release_name, upload.tarball.version, upload.tarball.sys_config) == (
        "counter", "0.0.2", b"[].")
    assert [(n, v, p) for n, v, p in places.records.values()] == [(NODE, "0.0.2", staged.tmp)]
    # What verify at the switch compares the loaded code with: the extracted beam's md5.
    ebin = staged.tmp / "root/lib/counter-0.0.2/ebin"
    assert BEAMS.ebin(ebin) == {"lists": BEAMS.md5(BEAM)} and BEAMS.md5(BEAM) is not None
    store.discard(upload.id)  # unused (or used: then its operation moved the dir away)
    await settled(places, root)
    assert not upload.tarball.path.exists()


@pytest.mark.parametrize("fault", ["sha256", "short", "hostile", "not gzip"])
async def test_a_refused_upload_leaves_nothing_in_the_root(
        tmp_path: Path, root: Path, fault: str) -> None:
    places = Places(root)
    store = UploadStore(tmp_path / "up", places=places, **settings(UPLOADS))
    data = release(**({"/etc/evil": b"x"} if fault == "hostile" else {}))
    if fault == "not gzip":
        data = b"just some bytes, not a tarball" * 100
    writer = await store.open(NODE, "0.0.2", len(data) + (fault == "short"),
                              "0" * 64 if fault == "sha256" else hashlib.sha256(data).hexdigest())
    writer.write(data)
    with pytest.raises((UploadRefused, TarballError)) as refused:
        await store.finish(writer)
    expected = {"sha256": "sha256 mismatch", "short": "upload ended after",
                "hostile": "'/etc/evil' has an absolute path", "not gzip": "not a gzip file"}
    assert expected[fault] in str(refused.value)
    await settled(places, root)
    assert sorted(p.name for p in root.iterdir()) == ["lib", "releases"]
    assert list((tmp_path / "up").iterdir()) == []


async def test_an_upload_aborted_or_expired_midway_leaves_nothing_in_the_root(
        tmp_path: Path, root: Path) -> None:
    places = Places(root)
    clock = [1000.0]
    store = UploadStore(tmp_path / "up", places=places, clock=lambda: clock[0],
                        **settings(UPLOADS, upload_idle_expiry=60))
    data = release(**{"lib/counter-0.0.2/priv/big": os.urandom(512 * 1024)})
    for ending in ("abort", "expire"):
        writer = await store.open(NODE, "0.0.2", len(data), hashlib.sha256(data).hexdigest())
        writer.write(data[:len(data) // 2])
        assert uploads_in(root) == [f"{UPLOAD_PREFIX}{writer.id}"]
        if ending == "abort":
            writer.abort()  # the client went away
        else:
            clock[0] += 61
            assert store.expire() == 1
        await settled(places, root)
        assert list((tmp_path / "up").iterdir()) == []


async def test_the_agent_stopping_removes_every_extraction(tmp_path: Path, root: Path) -> None:
    places = Places(root)
    store = UploadStore(tmp_path / "up", places=places, **settings(UPLOADS))
    data = release()
    _, kept = await send(store, data)
    arriving = await store.open(NODE, "0.0.2", len(data), hashlib.sha256(data).hexdigest())
    arriving.write(data[:100])
    assert len(uploads_in(root)) == 2
    store.close()
    assert uploads_in(root) == [] and places.records == {}


async def test_a_scan_for_leftovers_never_takes_an_uploads_dir_while_anyone_owns_it(
        tmp_path: Path, root: Path) -> None:
    """The dir is locked from its making (tarballs/held.py): a scan at another operation's
    stage keeps it while the upload arrives, once it is kept, and once an operation adopted it,
    until that operation removed it and let go, even after the upload was discarded."""
    places = Places(root)
    store = UploadStore(tmp_path / "up", places=places, **settings(UPLOADS))
    data = release()
    writer = await store.open(NODE, "0.0.2", len(data), hashlib.sha256(data).hexdigest())
    writer.write(data[:len(data) // 2])
    assert clear_leftovers(root) == ([], [])  # arriving
    writer.write(data[len(data) // 2:])
    upload = await store.finish(writer)
    assert upload.staged is not None
    assert clear_leftovers(root) == ([], [])  # kept for an operation
    adopted = adopt(upload.staged, root)
    assert adopted is not None and adopted.held is not None
    store.discard(upload.id)  # the upload lets go of its holder
    await settled(places, root)
    assert clear_leftovers(root) == ([], [])  # the operation's now
    assert adopted.tmp.is_dir()
    shutil.rmtree(adopted.tmp)  # as staging.py does once placed
    adopted.held.release()
    assert sorted(p.name for p in root.iterdir()) == ["lib", "releases"]


@pytest.mark.parametrize("why", ["no root", "no record"])
async def test_without_a_root_or_a_record_the_upload_is_checked_whole_as_before(
        tmp_path: Path, root: Path, why: str) -> None:
    places = Places(None if why == "no root" else root)
    places.refuse_records = why == "no record"
    store = UploadStore(tmp_path / "up", places=places, **settings(UPLOADS))
    _, upload = await send(store, release())
    assert upload.staged is None and upload.tarball.version == "0.0.2"
    assert uploads_in(root) == [] and places.records == {}


async def test_a_root_the_extraction_cannot_write_falls_back_to_the_whole_check(
        tmp_path: Path, root: Path) -> None:
    """A write that fails in the root (here: a name longer than the file system takes) is the
    host's fault, not the tarball's: the upload is checked whole, the operation extracts."""
    places = Places(root)
    store = UploadStore(tmp_path / "up", places=places, **settings(UPLOADS))
    _, upload = await send(store, release(**{"lib/counter-0.0.2/" + "n" * 300: b"x"}))
    assert upload.staged is None and upload.tarball.version == "0.0.2"
    await settled(places, root)
