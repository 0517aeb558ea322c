"""The agent's own unpack (agent/release/tarballs/extract.py) on real tarballs and a real root on disk:
what it places and keeps (erl_tar's keep_old_files), where the .rel ends up in each layout,
that it extracts only the bytes that were validated, and when it declines to write the root."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent.release.tarballs.check import (
    MAX_MEMBERS,
    MAX_UNPACKED,
    Contents,
    ReleaseTarball,
    TarballError,
    inspect_tarball,
    read_members,
)
from agent.release.tarballs.extract import (
    TREE,
    UNPACK_PREFIX,
    Extracted,
    adopt,
    extract,
    extract_arriving,
    place,
    planned,
    unpack_adds,
    why_not_write,
)
from agent.release.tarballs.stream import Limits
from tests.tools.needs import needs_root
from tests.tools.settings import MAX_UPLOAD

REL = (b'{release, {"counter", "0.0.2"}, {erts, "13.1.5"}, '
       b'[{kernel, "8.5.3"}, {counter, "0.0.2"}]}.')


def make_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def systools(tmp_path: Path) -> ReleaseTarball:
    return inspect_tarball(make_tarball(tmp_path / "sys.tar.gz", {
        "releases/counter-0.0.2.rel": REL, "releases/0.0.2/start.boot": b"boot",
        "lib/kernel-8.5.3/ebin/kernel.app": b"the tarball's",
        "lib/kernel-8.5.3/ebin/new.beam": b"new in a kept dir",
        "lib/counter-0.0.2/ebin/counter.beam": b"beam"}), max_size=MAX_UPLOAD)


def test_new_dirs_are_placed_and_what_the_root_has_is_kept(root: Path, tmp_path: Path) -> None:
    tarball = systools(tmp_path)
    extracted = extract(tarball, root)
    assert (extracted.written, extracted.kept) == (4, 1)
    placed = place(extracted, root, "0.0.2")

    assert [p.relative_to(root) for p in placed.paths] == [
        Path("lib/counter-0.0.2"), Path("lib/kernel-8.5.3/ebin/new.beam"), Path("releases/0.0.2")]
    assert (root / "lib/kernel-8.5.3/ebin/kernel.app").read_bytes() == b"the node's own"
    beam = root / "lib/counter-0.0.2/ebin/counter.beam"
    assert (beam.read_bytes(), beam.stat().st_mode & 0o777, beam.stat().st_mtime) == (
        b"beam", 0o640, 1_700_000_000)
    # As unpack_release: the .rel copied into releases/VSN, none left in releases/.
    assert extracted.rel_file == root / "releases/0.0.2/counter-0.0.2.rel"
    assert extracted.rel_file.read_bytes() == REL
    assert not (root / "releases/counter-0.0.2.rel").exists()


def test_what_goes_into_dirs_the_root_has_is_planned_before_and_placed_at_its_deepest_level(
        root: Path, tmp_path: Path) -> None:
    tarball = inspect_tarball(make_tarball(tmp_path / "sys.tar.gz", {
        "releases/counter-0.0.2.rel": REL, "releases/0.0.2/start.boot": b"boot",
        "lib/kernel-8.5.3/ebin/kernel.app": b"the tarball's",
        "lib/kernel-8.5.3/ebin/new.beam": b"new in a kept dir",
        "lib/kernel-8.5.3/priv/sub/new.so": b"new dir in a kept dir",
        "lib/counter-0.0.2/ebin/counter.beam": b"beam"}), max_size=MAX_UPLOAD)
    # The node's unpack_release (erl_tar, keep_old_files) adds the same, listed beforehand
    # from the members: the kept dir's new file and its new dir whole, nothing the root has.
    adds = [p.relative_to(root) for p in unpack_adds(tarball, root)]
    assert adds == [Path("lib/kernel-8.5.3/ebin/new.beam"), Path("lib/kernel-8.5.3/priv")]
    extracted = extract(tarball, root)
    plan = planned(extracted, root, "0.0.2")
    assert not (root / "lib/kernel-8.5.3/priv").exists()  # planning moves nothing
    placed = place(extracted, root, "0.0.2")
    assert plan == placed.paths
    assert [p.relative_to(root) for p in placed.paths] == [
        Path("lib/counter-0.0.2"), *adds, Path("releases/0.0.2")]
    assert (root / "lib/kernel-8.5.3/ebin/kernel.app").read_bytes() == b"the node's own"


def test_a_relx_rel_is_read_from_the_temporary_dir_and_never_placed(
        root: Path, tmp_path: Path) -> None:
    tarball = inspect_tarball(make_tarball(tmp_path / "relx.tar.gz", {
        "releases/0.0.2/counter.rel": REL, "lib/counter-0.0.2/ebin/counter.beam": b"beam"}),
        max_size=MAX_UPLOAD)
    extracted = extract(tarball, root)
    place(extracted, root, "0.0.2")
    assert extracted.rel_file == extracted.tmp / "counter.rel"
    assert extracted.rel_file.read_bytes() == REL
    assert sorted(p.name for p in (root / "releases" / "0.0.2").iterdir()) == []


def test_a_tarball_changed_after_its_validation_is_refused_and_nothing_is_left(
        root: Path, tmp_path: Path) -> None:
    tarball = systools(tmp_path)
    make_tarball(tarball.path, {"releases/counter-0.0.2.rel": REL,
                                "lib/counter-0.0.2/ebin/counter.beam": b"other bytes"})
    before = sorted(root.rglob("*"))
    with pytest.raises(TarballError, match="changed since it was checked"):
        extract(tarball, root)
    assert sorted(root.rglob("*")) == before


def test_the_agent_declines_a_root_it_should_not_write(root: Path, tmp_path: Path) -> None:
    assert why_not_write(root, root / "releases") is None
    elsewhere = tmp_path / "elsewhere"
    assert why_not_write(root, elsewhere) == (f"the node's releases dir {elsewhere} is not "
                                              f"{root}/releases")
    os.rename(root / "lib", tmp_path / "lib-away")
    assert why_not_write(root, root / "releases") == (
        f"cannot inspect {root}/lib: No such file or directory")


def _as_nodes_user(root: Path, mode: int) -> None:
    """The README's layout, seen by the agent: the node's user owns the root; the group is one
    the agent is in (here: the test's own group)."""
    for path in (root, root / "releases", root / "lib"):
        os.chown(path, 65534, os.getegid())
        os.chmod(path, mode)


@needs_root("giving the root to another user (chown)")
def test_a_root_shared_by_group_is_unpacked_group_writable(root: Path, tmp_path: Path) -> None:
    """Issue 22, point 5: the root belongs to the node's user, group-writable and setgid for
    a group of the agent's: the agent unpacks there, and what it places stays writable (so
    removable) by the node's group, and keeps the group in new dirs."""
    _as_nodes_user(root, 0o2775)
    assert why_not_write(root, root / "releases") is None
    old_umask = os.umask(0o007)  # the unit's UMask=0007
    try:
        extracted = extract(systools(tmp_path), root)
    finally:
        os.umask(old_umask)
    place(extracted, root, "0.0.2")
    beam = root / "lib/counter-0.0.2/ebin/counter.beam"
    assert beam.stat().st_mode & 0o777 == 0o660  # the member's 0640, and the group may write
    ebin = beam.parent
    assert ebin.stat().st_mode & 0o2070 == 0o2070, oct(ebin.stat().st_mode)
    assert beam.stat().st_gid == os.getegid()


@needs_root("giving the root to another user (chown)")
def test_a_root_of_another_user_not_shared_names_users_and_groups(root: Path) -> None:
    _as_nodes_user(root, 0o755)
    why = why_not_write(root, root / "releases")
    assert why is not None and why.startswith(f"{root} belongs to user nobody and group "), why
    assert "(mode 0755)" in why and "the agent runs as user root in groups" in why, why
    assert "chmod 2775" in why and "uid" not in why.replace("SupplementaryGroups", ""), why


# --- one pass: checked and extracted as an upload arrives (issue 24) --------------------------

def tree_of(base: Path) -> dict[str, bytes | str]:
    """Every file (its bytes) and dir ("dir") under ``base``, by relative path."""
    return {str(p.relative_to(base)): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(base.rglob("*"))}


def arriving(tarball: ReleaseTarball, root: Path, name: str = ".relctl-upload-1"
             ) -> tuple[Contents, Extracted]:
    tmp = root / name
    tmp.mkdir()
    with open(tarball.path, "rb") as source:
        return extract_arriving(source, tarball.path, tmp, root, version=tarball.version)


@pytest.mark.parametrize("layout", ["systools", "relx"])
def test_extracting_as_it_arrives_checks_and_makes_what_extract_makes(
        root: Path, tmp_path: Path, layout: str) -> None:
    tarball = systools(tmp_path) if layout == "systools" else inspect_tarball(make_tarball(
        tmp_path / "relx.tar.gz", {"releases/0.0.2/counter.rel": REL,
                                   "lib/kernel-8.5.3/ebin/kernel.app": b"the tarball's",
                                   "lib/counter-0.0.2/ebin/counter.beam": b"beam"}),
        max_size=MAX_UPLOAD)
    contents, ahead = arriving(tarball, root)
    # What the validation alone finds, from the same single pass.
    assert contents.tarball(tarball.path, tarball.size, tarball.sha256) == tarball
    staged = extract(tarball, root)
    assert (ahead.written, ahead.kept) == (staged.written, staged.kept)
    assert tree_of(ahead.tmp / TREE) == tree_of(staged.tmp / TREE)
    assert ahead.kept_in_root == ("lib/kernel-8.5.3/ebin/kernel.app",)
    assert ahead.rel_file == (ahead.tmp / "counter.rel" if layout == "relx"
                              else root / "releases/0.0.2/counter-0.0.2.rel")


def test_an_extraction_made_ahead_is_moved_for_the_operation_in_one_rename(
        root: Path, tmp_path: Path) -> None:
    tarball = inspect_tarball(make_tarball(tmp_path / "relx.tar.gz", {
        "releases/0.0.2/counter.rel": REL, "lib/counter-0.0.2/ebin/counter.beam": b"beam"}),
        max_size=MAX_UPLOAD)
    _, ahead = arriving(tarball, root)
    files = tree_of(ahead.tmp)
    moved = adopt(ahead, root)
    assert moved is not None and not ahead.tmp.exists()
    assert moved.tmp.parent == root and moved.tmp.name.startswith(UNPACK_PREFIX)
    assert moved.rel_file == moved.tmp / "counter.rel" and tree_of(moved.tmp) == files
    placed = place(moved, root, "0.0.2")
    assert [p.relative_to(root) for p in placed.paths] == [
        Path("lib/counter-0.0.2"), Path("releases/0.0.2")]


def test_an_extraction_made_ahead_is_not_used_once_the_root_lost_what_it_kept(
        root: Path, tmp_path: Path) -> None:
    """keep_old_files was decided when the upload arrived: a file the root had then and has
    no more would be missing from the release, so the operation extracts again."""
    _, ahead = arriving(systools(tmp_path), root)
    (root / "lib/kernel-8.5.3/ebin/kernel.app").unlink()
    assert adopt(ahead, root) is None
    assert ahead.tmp.is_dir()  # still the upload's: it removes it
    assert adopt(ahead, tmp_path / "another-root") is None


class CountingFile:
    """A file that counts the bytes read from it (the compressed stream)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by the test
        self.read_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._file.read(size)
        self.read_bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def test_one_pass_decompresses_the_tarball_once(tmp_path: Path) -> None:
    """The end check steps back one block and sys.config is read as it passes: before, each
    made gzip decompress the whole tarball again from its start."""
    path = make_tarball(tmp_path / "sys.tar.gz", {
        "releases/counter-0.0.2.rel": REL, "releases/0.0.2/sys.config": b"[].",
        "lib/counter-0.0.2/ebin/big.beam": os.urandom(3 * 1024**2)})
    raw = CountingFile(path)
    try:
        contents = read_members(path, raw, Limits(MAX_MEMBERS, MAX_UNPACKED),
                                expected_version="0.0.2")
    finally:
        raw.close()
    assert contents.sys_config == b"[]."
    assert raw.read_bytes <= path.stat().st_size
