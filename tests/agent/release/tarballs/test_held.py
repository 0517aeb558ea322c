"""Extraction dirs locked by their live owner (agent/release/tarballs/held.py), and the scan at
stage that removes only those no one holds (extract.py ``clear_leftovers``): a lock held by
another open file description of this process or by another process keeps a dir; a lock
that died with its process frees it; the window between mkdir and the lock loses nothing."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.release.tarballs.extract import UNPACK_PREFIX, UPLOAD_PREFIX, clear_leftovers
from agent.release.tarballs.held import Taken, make_held, make_held_temp, take_free
from tests.tools.needs import unavailable

# A child that takes the lock on the dir it is given, says so, and keeps it until killed.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""


def stray(root: Path, name: str) -> Path:
    """A dir left as a killed agent leaves it: some of an extraction in it, no lock."""
    path = root / name
    (path / "root" / "lib" / "counter-0.0.2").mkdir(parents=True)
    (path / "root" / "lib" / "counter-0.0.2" / "half.beam").write_bytes(b"trunc")
    return path


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_free_dirs_of_both_prefixes_go_and_a_held_one_stays(tmp_path: Path) -> None:
    upload_left = stray(tmp_path, f"{UPLOAD_PREFIX}dead")
    unpack_left = stray(tmp_path, f"{UNPACK_PREFIX}dead")
    live = tmp_path / f"{UPLOAD_PREFIX}live"
    held = make_held(live)
    (tmp_path / "lib").mkdir()
    (tmp_path / ".relctl-other").mkdir()

    removed, failed = clear_leftovers(tmp_path)

    assert sorted(removed) == sorted([upload_left, unpack_left]) and failed == []
    assert names(tmp_path) == [".relctl-other", f"{UPLOAD_PREFIX}live", "lib"]
    held.release()
    assert held.released
    assert clear_leftovers(tmp_path) == ([live], [])  # its owner let go: free now


def test_a_lock_of_another_open_file_description_of_this_process_keeps_the_dir(
        tmp_path: Path) -> None:
    path = stray(tmp_path, f"{UNPACK_PREFIX}mine")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert take_free([path]) == ([], [])
        assert (path / "root" / "lib" / "counter-0.0.2" / "half.beam").is_file()
    finally:
        os.close(fd)
    assert take_free([path]) == ([path], [])
    assert not path.exists()


def test_a_lock_held_by_another_process_keeps_the_dir_until_that_process_dies(
        tmp_path: Path) -> None:
    path = stray(tmp_path, f"{UPLOAD_PREFIX}other")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        assert clear_leftovers(tmp_path) == ([], [])
        assert path.is_dir()
    finally:
        child.kill()  # as a SIGKILLed agent: the kernel drops its lock
        child.communicate(timeout=30)
    assert clear_leftovers(tmp_path) == ([path], [])
    assert names(tmp_path) == []


def test_files_and_links_with_the_prefix_are_not_the_agents_and_stay(tmp_path: Path) -> None:
    (tmp_path / f"{UPLOAD_PREFIX}file").write_text("someone's")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / f"{UNPACK_PREFIX}link").symlink_to(target)
    assert clear_leftovers(tmp_path) == ([], [])
    assert names(tmp_path) == [f"{UNPACK_PREFIX}link", f"{UPLOAD_PREFIX}file", "elsewhere"]


def test_a_dir_the_scan_takes_before_it_is_locked_is_given_up_and_another_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window between mkdir and flock, forced: a scan runs in it (removing the dir, or
    holding its lock to remove it). The maker gives that dir up (Taken) and writes nothing
    into it; make_held_temp makes another."""
    real_mkdir = os.mkdir
    scans: list[tuple[list[Path], list[str]]] = []
    holders: list[int] = []

    def mkdir_then_scan(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        if len(scans) == 0:
            scans.append(clear_leftovers(tmp_path))  # takes it whole
        elif len(scans) == 1:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # a scan holding it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holders.append(fd)
            scans.append(([], []))
    monkeypatch.setattr(os, "mkdir", mkdir_then_scan)

    first = tmp_path / f"{UPLOAD_PREFIX}one"
    with pytest.raises(Taken):
        make_held(first)
    assert scans[0] == ([first], []) and not first.exists()

    second = tmp_path / f"{UPLOAD_PREFIX}two"
    try:
        with pytest.raises(Taken):
            make_held(second)
        assert second.is_dir()  # the scan that holds it removes it, not the maker
    finally:
        for fd in holders:
            os.close(fd)
    assert take_free([second]) == ([second], [])

    path, held = make_held_temp(tmp_path, UNPACK_PREFIX)  # no scan in its window now
    try:
        assert path.name.startswith(UNPACK_PREFIX) and path.is_dir()
        assert clear_leftovers(tmp_path) == ([], [])
    finally:
        held.release()
    assert names(tmp_path) == [path.name]


def test_a_dir_a_live_scan_removed_is_not_removed_twice(tmp_path: Path) -> None:
    """Two scans (two operations on one root) never trip over each other: the lock lets one
    remove a dir; the other finds it gone, which is neither removed by it nor a failure."""
    path = stray(tmp_path, f"{UPLOAD_PREFIX}both")
    assert take_free([path, path]) == ([path], [])


def test_a_held_dir_lost_without_release_frees_its_lock(tmp_path: Path) -> None:
    path = tmp_path / f"{UNPACK_PREFIX}lost"
    held = make_held(path)
    assert take_free([path]) == ([], [])
    del held  # as an operation's context dropped without its undo: the fd is closed
    assert take_free([path]) == ([path], [])


def test_a_free_dir_that_cannot_be_deleted_is_named_with_what_would_not_go(
        tmp_path: Path) -> None:
    path = stray(tmp_path, f"{UPLOAD_PREFIX}stuck")
    stuck = path / "root" / "lib" / "counter-0.0.2"
    if os.geteuid() == 0:  # root may delete in any dir but an immutable one
        made = subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, text=True,
                              timeout=30)
        if made.returncode != 0:
            unavailable(f"chattr +i {stuck} failed (a file system without the immutable "
                        f"flag?): {made.stderr.strip()}")
        undo = ["chattr", "-i", str(stuck)]
    else:
        stuck.chmod(0o500)
        undo = ["chmod", "700", str(stuck)]
    try:
        removed, failed = clear_leftovers(tmp_path)
        assert removed == []
        why = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
        assert failed == [f"{path} ({why}: {stuck}/half.beam)"]
    finally:
        subprocess.run(undo, check=True, timeout=30)
    assert clear_leftovers(tmp_path) == ([path], [])


def test_on_a_file_system_without_locks_dirs_are_made_and_never_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock refused by the file system (ENOLCK, as some FUSE ones answer; faked, as no such
    file system can be mounted on demand here): the extraction goes on unlocked, and the scan,
    which cannot tell a live dir from a dead one there, keeps every dir."""
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    made = make_held(tmp_path / f"{UPLOAD_PREFIX}arriving")
    left = stray(tmp_path, f"{UNPACK_PREFIX}dead")
    assert clear_leftovers(tmp_path) == ([], [])
    assert left.is_dir()
    made.release()
