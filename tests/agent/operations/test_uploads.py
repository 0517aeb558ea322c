"""The upload store's bounds: idle expiry, the total quota, and nothing left behind when an
upload fails, expires, or its client goes away while the agent checks it."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import pytest

from agent.operations.uploads import Upload, UploadRefused, UploadStore, UploadWriter
from agent.release.tarballs.check import ReleaseTarball
from tests.tools.settings import UPLOADS, settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _begin(store: UploadStore, data: bytes) -> UploadWriter:
    return store.begin("n@h", "0.0.2", len(data), hashlib.sha256(data).hexdigest())


def test_an_idle_upload_being_received_expires_and_its_part_is_removed(tmp_path: Path) -> None:
    clock = Clock()
    store = UploadStore(tmp_path / "up", **settings(UPLOADS, upload_idle_expiry=60), clock=clock)
    writer = _begin(store, b"abcdef")
    writer.write(b"abc")
    clock.now += 59
    assert store.expire() == 0 and len(list((tmp_path / "up").iterdir())) == 1
    clock.now += 2
    assert store.expire() == 1
    assert list((tmp_path / "up").iterdir()) == []
    with pytest.raises(UploadRefused, match=r"expired after 60 s .*agent\.upload_idle_expiry"):
        writer.write(b"def")
    assert store.total() == 0


def _tarball(path: Path, size: int) -> ReleaseTarball:
    return ReleaseTarball(path=path, release_name="r", version="0.0.2", erts_version="13.0",
                          unpack_name="r-0.0.2", rel_member="releases/r-0.0.2.rel",
                          applications=(), sys_config=None, relup=None, size=size,
                          sha256="0" * 64)


def _kept(store: UploadStore, tmp_path: Path, upload_id: str, size: int) -> Upload:
    path = tmp_path / "up" / f"{upload_id}.tar.gz"
    path.write_bytes(b"x" * size)
    tarball = _tarball(path, size)
    upload = Upload(upload_id, "n@h", tarball)
    store.keep(upload)
    return upload


def test_an_unused_upload_expires_but_one_claimed_by_an_operation_does_not(
        tmp_path: Path) -> None:
    clock = Clock()
    store = UploadStore(tmp_path / "up", **settings(UPLOADS, upload_idle_expiry=60), clock=clock)
    _kept(store, tmp_path, "aaaa", 10)
    _kept(store, tmp_path, "bbbb", 10)
    store.get("bbbb", "n@h", claim=True)
    clock.now += 61
    assert store.expire() == 1
    assert [p.name for p in (tmp_path / "up").iterdir()] == ["bbbb.tar.gz"]
    store.discard("bbbb")
    assert list((tmp_path / "up").iterdir()) == []


def test_the_quota_counts_kept_and_incoming_uploads_and_names_its_key(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "up", **settings(UPLOADS, uploads_max_bytes=100))
    _kept(store, tmp_path, "aaaa", 60)
    writer = _begin(store, b"y" * 30)
    with pytest.raises(UploadRefused, match=r"quota is 100 bytes \(agent\.uploads_max_bytes\)"):
        _begin(store, b"z" * 11)
    writer.abort()
    _begin(store, b"z" * 40).abort()  # fits once the other ended
    assert [p.name for p in (tmp_path / "up").iterdir()] == ["aaaa.tar.gz"]


def test_an_expired_upload_makes_room_for_a_new_one(tmp_path: Path) -> None:
    clock = Clock()
    store = UploadStore(tmp_path / "up", **settings(UPLOADS, uploads_max_bytes=100,
                                                           upload_idle_expiry=60), clock=clock)
    _kept(store, tmp_path, "aaaa", 80)
    clock.now += 61
    _begin(store, b"z" * 50).abort()
    assert list((tmp_path / "up").iterdir()) == []


def test_files_no_upload_owns_are_swept(tmp_path: Path) -> None:
    store = UploadStore(tmp_path / "up", **settings(UPLOADS))
    (tmp_path / "up" / "0123.tar.gz.part").write_bytes(b"left")
    writer = _begin(store, b"abc")
    store.expire()
    assert [p.name for p in (tmp_path / "up").iterdir()] == [f"{writer.id}.tar.gz.part"]
    writer.abort()


async def test_a_client_gone_while_the_agent_checks_its_upload_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel race: the handler is cancelled while finish() runs in a thread; the thread's
    result (here: a valid upload) must not stay behind."""
    store = UploadStore(tmp_path / "up", **settings(UPLOADS))
    data = b"abc"
    writer = _begin(store, data)
    writer.write(data)
    entered, release = threading.Event(), threading.Event()
    fake = _tarball(tmp_path / "up" / f"{writer.id}.tar.gz", 3)

    def slow_inspect(path: Path, *, expected_version: str, max_size: int) -> ReleaseTarball:
        entered.set()
        release.wait(10)
        return fake
    monkeypatch.setattr("agent.operations.uploads.inspect_tarball", slow_inspect)
    task = asyncio.create_task(store.finish(writer))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writer.abort()  # what the handler's finally does: must not disturb the running check
    release.set()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not list((tmp_path / "up").iterdir()):
            break
    assert list((tmp_path / "up").iterdir()) == []
    assert store.total() == 0
    with pytest.raises(Exception, match="no upload"):
        store.get(writer.id, "n@h")


@pytest.mark.parametrize("yields", [0, 1, 2, 3])
async def test_a_cancel_before_the_check_thread_starts_still_removes_the_part(
        tmp_path: Path, yields: int) -> None:
    """What a client killed mid-upload over the Unix socket does: its stream ends (short),
    then its call is cancelled at once, before the executor has started the check."""
    store = UploadStore(tmp_path / "up", **settings(UPLOADS))
    writer = _begin(store, b"abcdef")
    writer.write(b"abc")
    task = asyncio.create_task(store.finish(writer))
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises((asyncio.CancelledError, UploadRefused)):
        await task
    writer.abort()  # the handler's finally
    for _ in range(100):  # the check's thread and its done-callback end on their own
        if not list((tmp_path / "up").iterdir()) and store.total() == 0:
            break
        await asyncio.sleep(0.02)
    assert list((tmp_path / "up").iterdir()) == []
    assert store.total() == 0


async def test_the_tarball_check_takes_the_agents_upload_limit_not_one_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent configured for 3 GiB tarballs checks them with that limit: the check once had
    its own 2 GiB default and refused what agent.max_upload_bytes allowed."""
    limit = 3 * 1024**3
    store = UploadStore(tmp_path / "up", **settings(UPLOADS, max_upload_bytes=limit))
    writer = _begin(store, b"abc")
    writer.write(b"abc")
    asked: list[int] = []

    def inspect(path: Path, *, expected_version: str, max_size: int) -> ReleaseTarball:
        asked.append(max_size)  # a 3 GiB file is not written here: the limit is what matters
        return _tarball(path, 3)
    monkeypatch.setattr("agent.operations.uploads.inspect_tarball", inspect)
    upload = await store.finish(writer)
    assert asked == [limit] and upload.tarball.size == 3
    store.discard(upload.id)
