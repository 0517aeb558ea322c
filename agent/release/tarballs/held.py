"""Extraction dirs under a release root that say whether their maker is alive: each is made
and at once locked (an exclusive ``flock`` on an open fd of the dir) by the extraction that
owns it, and stays locked as long as something of this agent owns it, whatever its name
becomes (a rename keeps the lock: it is the inode's). The kernel drops the lock with the
last fd of it, so a killed agent's dirs are free, and only those are taken by
:func:`take_free` (extract.py ``leftovers``), with no journal needed to know them.

The window between ``mkdir`` and ``flock`` is closed on both sides: a scan removes a dir only
while it holds its lock and only if the path still names the inode it locked; the maker, once
locked, checks that its path still names the dir it made, else gives it up (:class:`Taken`):
so a dir is never removed while someone writes into it, and never written after its removal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import sys
import weakref
from pathlib import Path

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# flock's answers on a file system that has no such locks (some FUSE ones): there the dirs
# are made unlocked, and the scan, which cannot lock them either, keeps them all.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})


class Taken(OSError):
    """A scan for leftovers took the dir between its mkdir and its lock: make another."""


class HeldDir:
    """The lock on one extraction dir (the fd it is on). Released (idempotent) once the dir
    is removed or handed on; a HeldDir lost without release closes its fd when collected, so
    that a dir whose owner is gone becomes free as if the agent had died."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._close = weakref.finalize(self, os.close, fd)

    def share(self) -> HeldDir:
        """A second holder of the same lock (a dup of the fd: one open file description): the
        lock stays until both are released. For the operation that adopts an upload's dir."""
        return HeldDir(os.dup(self._fd))

    def release(self) -> None:
        self._close()

    @property
    def released(self) -> bool:
        return not self._close.alive


def _same(fd: int, path: Path) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def make_held(path: Path, mode: int = 0o700) -> HeldDir:
    """Make the dir ``path`` and lock it. Raises FileExistsError when the name is taken,
    :class:`Taken` when a scan removed it before it was locked, other OSError as mkdir."""
    os.mkdir(path, mode)
    try:
        fd = os.open(path, _OPEN_DIR)
    except OSError as exc:  # gone (or replaced) already: a scan took it
        raise Taken(exc.errno, "taken by a scan for leftovers as it was made", str(path)) \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a scan holds it, to remove it
            raise Taken(0, "taken by a scan for leftovers as it was made", str(path)) from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        if not _same(fd, path):  # the scan removed it, then let go of it
            raise Taken(0, "taken by a scan for leftovers as it was made", str(path))
    except BaseException:
        os.close(fd)
        raise
    return HeldDir(fd)


def make_held_temp(root: Path, prefix: str) -> tuple[Path, HeldDir]:
    """A new dir ROOT/PREFIXXXXXXXXX, locked (as tempfile.mkdtemp: mode 0700, a fresh name)."""
    for _ in range(100):
        path = root / f"{prefix}{secrets.token_hex(4)}"
        try:
            return path, make_held(path)
        except (FileExistsError, Taken):
            continue
    raise FileExistsError(f"no free name for {root}/{prefix}XXXXXXXX after 100 tries")


def _rmtree(path: Path) -> str | None:
    """Remove the tree ``path``, as much of it as it can; None when it all went, else the
    first thing that would not go, with its full path (rmtree's own error names only the
    entry, relative to the dir it was in)."""
    errors: list[str] = []

    def note(name: str, exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):
            errors.append(f"{exc.strerror if isinstance(exc, OSError) else exc}: {name}")
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _, name, exc: note(name, exc))
    else:
        shutil.rmtree(path, onerror=lambda _, name, info: note(name, info[1]))
    return errors[0] if errors else None


def take_free(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Remove each of ``paths`` that is a dir nobody holds (:func:`make_held`), holding its
    lock while it goes. A held one is kept (a live extraction, of this agent or another), and
    so is anything that is not a dir (never one of the agent's). The paths removed, and those
    that could not be, each with why."""
    removed: list[Path] = []
    failed: list[str] = []
    for path in paths:
        try:
            fd = os.open(path, _OPEN_DIR)
        except FileNotFoundError:
            continue  # its owner removed it meanwhile
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                continue  # a file or a link: not an extraction dir
            failed.append(f"{path} (cannot open it to see whether an extraction holds it: "
                          f"{exc.strerror or exc})")
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live extraction's
            except OSError as exc:
                if exc.errno in _NO_LOCKS:
                    continue  # cannot tell a live one: never taken on a guess
                failed.append(f"{path} (cannot lock it to see whether an extraction holds "
                              f"it: {exc.strerror or exc})")
                continue
            if not _same(fd, path):
                continue  # removed and made again meanwhile: not the one locked
            why = _rmtree(path)
            if why is None:
                removed.append(path)
            elif os.path.lexists(path):  # else a remover that takes no lock was faster
                failed.append(f"{path} ({why})")
        finally:
            os.close(fd)
    return removed, failed

