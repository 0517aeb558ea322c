"""The agent unpacks, the node only switches (DESIGN.md section 4, step 2): the agent extracts
a validated release tarball into a temporary dir on the release root's file system, moves what
is new into place, and the node only registers it (``release_handler:set_unpacked``), instead
of decompressing the tarball again inside the production VM with ``unpack_release``.

The extraction is the validation's own pass (check.py ``read_members``, stream.py) with a sink
that writes each member: from a validated tarball file (``extract``, comparing the sha256 of the
bytes it read with the validated tarball's: it extracts exactly what the validation accepted),
or from an upload as it arrives (``extract_arriving``: validated and extracted at once, one
decompression; ``adopt`` hands that extraction to the operation that places it).

The result is what ``unpack_release`` leaves, file for file: erl_tar's ``keep_old_files``
(a file the root already has is kept as it is, hard links are not extracted), the systools
``releases/NAME-VSN.rel`` copied into ``releases/VSN/`` and not left in ``releases/``, and the
relx ``releases/VSN/NAME.rel`` not left at all (unpack_release copies it onto itself, then
deletes it). Everything placed is listed, so that a failure takes back exactly that: a dir
the root lacks by itself, and what goes into a dir the root has (a new file in an existing
lib/APP-VSN) at the deepest level the root has, listed before anything moves (``planned``);
for the node's own unpack_release, the same is listed from the members (``unpack_adds``).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import os
import pwd
import secrets
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from .check import MAX_MEMBERS, MAX_UNPACKED, Contents, ReleaseTarball, is_rel_member
from .check import read_members
from .held import HeldDir, make_held_temp, take_free
from .stream import CHUNK, Limits, RawFile, TarballError, open_file, require_gzip

UNPACK_PREFIX = ".relctl-unpack-"  # ROOT/.relctl-unpack-XXXX: what an extraction in progress holds
UPLOAD_PREFIX = ".relctl-upload-"  # ROOT/.relctl-upload-ID: an upload's, as it arrives
TREE = "root"                       # in it: the files as they go under ROOT


class WriteFailed(Exception):
    """Writing under the release root failed (a full disk, ...): the host's fault, not the
    tarball's. Kept apart from OSError, which the tar readers take for a corrupt stream."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"{path}: {error.strerror or error}")
        self.path = path
        self.error = error


class NotADirectoryOnNode(Exception):
    """The tarball has files below a path the root has as a file (erl_tar fails there too)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is not a directory on the node, and the tarball has files "
                         "below it")
        self.path = path


class Interrupted(Exception):
    """The operation was cancelled while the agent extracted: what it wrote is removed."""


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def shared_root(root: Path) -> bool:
    """Whether the agent writes into ``root`` as a member of its group (the README's layout:
    the root belongs to the node's user, group-writable and setgid for the node's group)
    rather than as its owner; then what it extracts is made group-writable (see extract)."""
    return root.stat().st_uid != os.geteuid()


def why_not_write(root: Path, releases: Path) -> str | None:
    """None when the agent may unpack into ``root`` itself; else why not, in a few words.

    The files must end up as unpack_release would leave them: removable by the release's
    owner later, on the root's file system (moved into place by rename), in the dirs
    release_handler uses. So the agent owns the dirs, or shares their group: group-writable
    and setgid (new entries keep the node's group), a group the agent is in."""
    if releases.resolve() != (root / "releases").resolve():
        return f"the node's releases dir {releases} is not {root}/releases"
    euid = os.geteuid()
    groups = {os.getegid(), *os.getgroups()}
    try:
        root_dev = root.stat().st_dev
        for path in (root, root / "releases", root / "lib"):
            info = path.stat()
            if not stat.S_ISDIR(info.st_mode):
                return f"{path} is not a directory"
            if os.statvfs(path).f_flag & os.ST_RDONLY:
                return f"{path} is on a read-only file system"
            shared = (info.st_gid in groups and info.st_mode & stat.S_IWGRP
                      and info.st_mode & stat.S_ISGID)
            if info.st_uid != euid and not shared:
                return (f"{path} belongs to {_user(info.st_uid)} and group "
                        f"{_group(info.st_gid)} (mode {stat.S_IMODE(info.st_mode):04o}), and "
                        f"the agent runs as {_user(euid)} in groups "
                        f"{', '.join(sorted(_group(g) for g in groups))}: for the agent to "
                        "unpack there, make it group-writable and setgid for the node's group "
                        f"and give the agent that group (chgrp GROUP {path}; chmod 2775 {path}; "
                        "SupplementaryGroups=GROUP)")
            if not os.access(path, os.W_OK | os.X_OK):
                return f"{path} is not writable by the agent"
            if info.st_dev != root_dev:
                return f"{path} is on another file system than {root}"
    except OSError as exc:
        return f"cannot inspect {exc.filename}: {exc.strerror or exc}"
    return None


@dataclass(frozen=True)
class Extracted:
    tmp: Path          # ROOT/.relctl-unpack-XXXX, removed once the unpack is over
    rel_file: Path     # the .rel set_unpacked reads: its final path (systools) or in tmp (relx)
    written: int       # regular files written
    kept: int          # regular files not written: the root has them (keep_old_files)
    # What was not written because the root had it then (files and links): an extraction made
    # ahead (while the upload arrived) is placed only if the root still has them all.
    kept_in_root: tuple[str, ...] = ()
    # The lock on ``tmp`` (held.py) while the agent owns it: released once tmp is removed.
    held: HeldDir | None = field(default=None, compare=False, repr=False)


def extract(tarball: ReleaseTarball, root: Path, *, stop: threading.Event | None = None,
            max_members: int = MAX_MEMBERS, max_unpacked: int = MAX_UNPACKED) -> Extracted:
    """Extract ``tarball`` into a new ROOT/.relctl-unpack-XXXX. Raises TarballError (the
    tarball), WriteFailed (the disk) or Interrupted (``stop`` set); then nothing is left."""
    tmp, held = make_held_temp(root, UNPACK_PREFIX)
    try:
        limits = Limits(max_members, max_unpacked)
        path = tarball.path
        with open_file(path, tarball.size) as (raw, size):
            require_gzip(path, raw)
            hashed = _Hashing(raw)
            try:
                writer = _Writer(path, tmp / TREE, root, stop)
                read_members(path, hashed, limits, expected_version=tarball.version,
                             sink=writer)
            except TarballError:
                if hashed.hexdigest() != tarball.sha256:
                    raise _changed(tarball, hashed.hexdigest()) from None
                raise
            if (size, hashed.hexdigest()) != (tarball.size, tarball.sha256):
                raise _changed(tarball, hashed.hexdigest())
        rel_file = _arrange(tarball.version, tarball.rel_member, tmp, root)
        return replace(writer.extracted(tmp, rel_file), held=held)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        held.release()
        raise


def _changed(tarball: ReleaseTarball, sha256: str) -> TarballError:
    return TarballError(f"{tarball.path}: changed since it was checked (sha256 {sha256[:12]}..., "
                        f"checked {tarball.sha256[:12]}...); upload it again")


def extract_arriving(source: RawFile, path: Path, tmp: Path, root: Path, *, version: str,
                     max_members: int = MAX_MEMBERS,
                     max_unpacked: int = MAX_UNPACKED) -> tuple[Contents, Extracted]:
    """Check the tarball of ``version`` that ``source`` reads as it arrives (``path``: its
    name in refusals) and extract it into ``tmp``, a new dir of the caller's under ``root``:
    one pass, one decompression, the checks of inspect_tarball. What the root has is not
    written (keep_old_files, as of now: see :func:`adopt`). Raises as :func:`extract`; what
    it wrote is then left in ``tmp`` for the caller to remove."""
    writer = _Writer(path, tmp / TREE, root, None)
    require_gzip(path, source)
    contents = read_members(path, source, Limits(max_members, max_unpacked),
                            expected_version=version, sink=writer)
    rel_file = _arrange(contents.version, contents.rel_member, tmp, root)
    return contents, writer.extracted(tmp, rel_file)


def adopt(ahead: Extracted, root: Path) -> Extracted | None:
    """An extraction made ahead into a dir under ``root`` (:func:`extract_arriving`), moved
    to a new ROOT/.relctl-unpack-XXXX (one rename) for the operation that places it; None,
    and nothing moved, when the root lost something the extraction kept as the root had it
    (then keep_old_files decides differently now: extract again). Raises OSError.

    The dir stays locked throughout (held.py): the operation gets a holder of the upload's
    own lock, which lasts until both have let go (the upload once it is discarded, the
    operation once the dir is removed), so no scan for leftovers ever sees it free."""
    if ahead.tmp.parent != root or not all(os.path.lexists(root / name)
                                           for name in ahead.kept_in_root):
        return None
    tmp = root / f"{UNPACK_PREFIX}{secrets.token_hex(4)}"
    held = ahead.held.share() if ahead.held is not None else None
    try:
        os.rename(ahead.tmp, tmp)
    except BaseException:
        if held is not None:
            held.release()
        raise
    rel_file = (tmp / ahead.rel_file.relative_to(ahead.tmp)
                if ahead.rel_file.is_relative_to(ahead.tmp) else ahead.rel_file)
    return Extracted(tmp, rel_file, ahead.written, ahead.kept, ahead.kept_in_root, held)


class _Hashing:
    """The raw file for gzip, hashing each byte once however gzip seeks (it rewinds on a
    backward seek of the decompressed stream)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._digest = hashlib.sha256()
        self._hashed = 0

    def read(self, size: int = -1) -> bytes:
        pos = self._raw.tell()
        data = self._raw.read(size)
        if pos <= self._hashed < pos + len(data):
            self._digest.update(data[self._hashed - pos:])
            self._hashed = pos + len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def hexdigest(self) -> str:
        self._raw.seek(self._hashed)  # what gzip did not need (nothing, for a sound file)
        while chunk := self.read(CHUNK):
            pass
        return self._digest.hexdigest()


class _Writer:
    """The MemberSink that writes each member under ``tree`` as erl_tar's keep_old_files
    would under ``root``: a file the root has (or a second copy of a member) is not written,
    hard links are not extracted. The .rel files are always written: the release's own is moved
    by _arrange, the others stay as the root has them when placed (place keeps what exists)."""

    def __init__(self, path: Path, tree: Path, root: Path, stop: threading.Event | None) -> None:
        self._path = path
        self._tree = tree
        self._root = root
        self._stop = stop
        # In a root the agent shares by group: group-writable files, and dirs that stay
        # setgid, so that the node's user can remove what the agent placed (see _set_info).
        self._extra = _GROUP_BITS if shared_root(root) else 0
        self.written = self.kept = 0
        self._kept_in_root: list[str] = []
        tree.mkdir()

    def extracted(self, tmp: Path, rel_file: Path) -> Extracted:
        return Extracted(tmp, rel_file, self.written, self.kept, tuple(self._kept_in_root))

    def take(self, tar: tarfile.TarFile, info: tarfile.TarInfo, name: str,
             data: bytes | None) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted()
        if info.islnk():
            return  # erl_tar extracts no hard links: neither does unpack_release
        path, tree, root = self._path, self._tree, self._root
        dest = tree / name
        try:
            if info.isdir():
                if _make_dirs(path, tree, name):
                    _set_info(dest, info, self._extra)
            elif info.issym():
                _make_dirs(path, tree, _parent(name))
                if os.path.lexists(dest):
                    pass
                elif os.path.lexists(root / name):
                    self._kept_in_root.append(name)
                else:
                    os.symlink(info.linkname, dest)
            elif not is_rel_member(name) and (os.path.lexists(dest)
                                              or os.path.exists(root / name)):
                self.kept += 1  # keep_old_files (a second copy of a member: the first stays)
                if not os.path.lexists(dest):
                    self._kept_in_root.append(name)
            else:
                _make_dirs(path, tree, _parent(name))
                _write(tar, info, dest, data, self._extra)
                self.written += 1
        except OSError as exc:
            raise WriteFailed(dest, exc) from None


def _parent(name: str) -> str:
    return name.rpartition("/")[0]


def _make_dirs(path: Path, tree: Path, name: str) -> bool:
    """Make tree/name and its parents, never through a link; True when it made tree/name.
    (In a root shared by group, a new dir inherits its parent's group and setgid bit.)"""
    made = False
    current = tree
    for part in name.split("/") if name else ():
        current = current / part
        try:
            os.mkdir(current)
            made = True
        except FileExistsError:
            mode = os.lstat(current).st_mode
            if stat.S_ISDIR(mode):
                made = False
                continue
            within = str(current.relative_to(tree))
            if current != tree / name and stat.S_ISLNK(mode):
                # The words of check.py's own check, which would refuse it at the end.
                raise TarballError(f"{path}: member {name!r} lies under the symlink {within!r}, "
                                   "so unpacking it would write through the link; rebuild the "
                                   "tarball without it") from None
            kind = "symlink" if stat.S_ISLNK(mode) else "file"
            raise TarballError(f"{path}: member {name!r} needs {within} to be a directory, "
                               f"where the tarball made a {kind}; rebuild the tarball without "
                               "one of them") from None
    return made


def _write(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path, data: bytes | None,
           extra: int = 0) -> None:
    """``info``'s bytes (``data`` when the pass read them already) into a new ``dest``."""
    if data is None:
        source = tar.extractfile(info)
        assert source is not None  # a regular member
        chunks: Iterable[bytes] = iter(lambda: source.read(CHUNK), b"")
    else:
        chunks = (data,)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    _set_info(dest, info, extra)


# Added to the mode of every file in a root shared by group: the node's group may write it.
_GROUP_BITS = stat.S_IWGRP


def _set_info(dest: Path, info: tarfile.TarInfo, extra: int = 0) -> None:
    # As erl_tar: the member's mode and mtime. No setuid/setgid bits from an upload, though.
    # In a root shared by group (``extra``), a dir keeps the mode it was made with: the setgid
    # bit it inherited (new entries keep the node's group) and the group's write bit from the
    # unit's UMask=0007; a chmod would have to name S_ISGID to keep it, which the unit's
    # RestrictSUIDSGID=yes refuses (EPERM).
    if not (extra and info.isdir()):
        os.chmod(dest, (info.mode & 0o1777) | extra)
    os.utime(dest, (info.mtime, info.mtime))


def _arrange(version: str, rel_member: str, tmp: Path, root: Path) -> Path:
    """Put the .rel where unpack_release leaves it; the path set_unpacked is to read."""
    tree = tmp / TREE
    vsn_dir = tree / "releases" / version
    vsn_dir.mkdir(parents=True, exist_ok=True)
    extracted = tree / rel_member
    if rel_member.count("/") == 1:  # systools: releases/NAME-VSN.rel -> releases/VSN/
        os.replace(extracted, vsn_dir / extracted.name)
        return root / "releases" / version / extracted.name
    kept = tmp / extracted.name  # relx: read by set_unpacked from here, never placed
    os.replace(extracted, kept)
    return kept


def write_sha(tree: Path, version: str, name: str, sha256: str) -> None:
    (tree / "releases" / version / name).write_text(f"{sha256}\n", encoding="ascii")


@dataclass(frozen=True)
class Placed:
    paths: tuple[Path, ...]   # new under ROOT, in the order they were moved there


def planned(extracted: Extracted, root: Path, version: str) -> tuple[Path, ...]:
    """What :func:`place` would move into ROOT, as of now: each path of the extraction the
    root lacks, at the deepest level the root has (a new lib/APP-VSN whole; a new file or dir
    inside an existing one by itself), releases/VSN last. Reads only: recorded in the ledger
    before :func:`place` moves anything, so that an operation that never finishes is taken
    back exactly (never a file the root had). Raises OSError, NotADirectoryOnNode."""
    found: list[Path] = []
    vsn_dir = Path("releases") / version
    _merge(extracted.tmp / TREE, root, Path(), vsn_dir, found, move=False)
    return (*found, root / vsn_dir)


def place(extracted: Extracted, root: Path, version: str) -> Placed:
    """Move what is new from the extraction into ROOT: a dir the root lacks goes whole (one
    rename), one it has is entered, a file it has stays (keep_old_files). releases/VSN goes
    last. On failure, what was moved is taken back and the error raised. What it moves into a
    dir the root had is in :attr:`Placed.paths` by itself (see :func:`planned`)."""
    tree = extracted.tmp / TREE
    vsn_dir = Path("releases") / version
    placed: list[Path] = []
    try:
        if os.path.lexists(root / vsn_dir):
            raise FileExistsError(errno.EEXIST, "exists already, though the node does not list "
                                  f"{version}", str(root / vsn_dir))
        _merge(tree, root, Path(), vsn_dir, placed)
        os.rename(tree / vsn_dir, root / vsn_dir)
        placed.append(root / vsn_dir)
    except BaseException:
        remove(placed)
        raise
    return Placed(tuple(placed))


def _merge(tree: Path, root: Path, rel: Path, skip: Path, placed: list[Path], *,
           move: bool = True) -> None:
    """Move (``move``) or only list what of tree/rel the root lacks into ``placed``."""
    with os.scandir(tree / rel) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        part = rel / name
        if part == skip:
            continue
        src, dst = tree / part, root / part
        if not os.path.lexists(dst):
            if move:
                os.rename(src, dst)
            placed.append(dst)
        elif src.is_dir() and not src.is_symlink():
            if dst.is_dir():
                _merge(tree, root, part, skip, placed, move=move)
            elif any(os.scandir(src)):  # erl_tar fails to write below a file, so do we
                raise NotADirectoryOnNode(dst)


class _Names:
    """The MemberSink that only lists what erl_tar would extract (no hard links)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def take(self, tar: tarfile.TarFile, info: tarfile.TarInfo, name: str,
             data: bytes | None) -> None:
        if not info.islnk():
            self.names.append(name)


def unpack_adds(tarball: ReleaseTarball, root: Path, *, max_members: int = MAX_MEMBERS,
                max_unpacked: int = MAX_UNPACKED) -> tuple[Path, ...]:
    """What release_handler:unpack_release (erl_tar, keep_old_files) would add to ``root``
    inside the dirs it has of those the tarball names at its top two levels (a file the root's
    lib/APP-VSN lacks), each at the deepest level the root has, as of now; the rest is
    :meth:`ReleaseTarball.new_paths`. For the node's own unpack, whose files the agent does not
    write: listed before it, taken back by the undo as the agent's own additions are. Raises
    TarballError, OSError."""
    names = _Names()
    with open_file(tarball.path, tarball.size) as (raw, _):
        require_gzip(tarball.path, raw)
        read_members(tarball.path, raw, Limits(max_members, max_unpacked),
                     expected_version=tarball.version, sink=names)
    found: dict[Path, None] = {}
    for name in names.names:
        parts = name.split("/")
        if not os.path.isdir(root.joinpath(*parts[:2])) or os.path.islink(
                root.joinpath(*parts[:2])):
            continue  # new at the top two levels (new_paths), or not a dir to enter
        for depth in range(3, len(parts) + 1):
            path = root.joinpath(*parts[:depth])
            if not os.path.lexists(path):
                found.setdefault(path)
                break
            if os.path.islink(path) or not os.path.isdir(path):
                break  # kept as the root has it (keep_old_files), or erl_tar fails there
    return tuple(found)


def remove(paths: tuple[Path, ...] | list[Path]) -> list[str]:
    """Delete what the agent placed, newest first; what could not be deleted, with why."""
    failed = []
    for path in reversed(paths):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            failed.append(f"{path} ({exc.strerror or exc})")
    return failed


def clear_leftovers(root: Path) -> tuple[list[Path], list[str]]:
    """Remove the extractions no live agent owns: ROOT/.relctl-unpack-* (an operation's) and
    ROOT/.relctl-upload-* (an upload's, as it arrived) whose lock is free (held.py: its maker
    was killed, and with its journal lost nothing else would ever remove it). One whose lock
    is held is extracting or owned now, by this agent or another on the same root, and is
    kept. The dirs removed, and those that could not be, each with why."""
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        found = [Path(e.path) for e in entries
                 if e.name.startswith((UNPACK_PREFIX, UPLOAD_PREFIX))]
    return take_free(found)
