"""Checks a release tarball before anything of it reaches a node's release root.

`inspect_tarball` reads the .tar.gz as a stream, in memory, and never extracts it. It
refuses what release_handler would unpack outside the release root (absolute paths, `..`,
links that leave the root, devices), archive bombs, and tarballs that hold no release,
and it answers what the upgrade needs: the release's name, version and applications, the
name `release_handler:unpack_release/1` takes, its sys.config and relup, size and sha256.

Any input, however hostile, ends in a `ReleaseTarball` or a `TarballError` that names the
file (and member) and says what to do; nothing else escapes.

Here: the members (paths, links, kinds, sizes) and the release they hold (its .rel, sys.config
and relup), in one pass (`read_members`) that the extraction shares: it hands each checked
member to a sink (extract.py writes it), so that a tarball is decompressed once whether it is
only checked, or checked and extracted as it arrives. Reading the file, its gzip and the bounded tar stream is stream.py's part.
"""

from __future__ import annotations

import bisect
import gzip
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.relfile import RelSyntaxError, decode, parse_rel

from .stream import (
    CHUNK,
    MAKERS,
    Limits,
    RawFile,
    TarballError,
    TarStream,
    corrupt,
    digest,
    open_file,
    open_tar,
    reading,
    require_clean_end,
    require_gzip,
)

# TarballError lives with the stream checks, which raise it first; it is this module's API too.
__all__ = ["Contents", "MemberSink", "ReleaseTarball", "TarballError", "check_member",
           "inspect_tarball", "is_rel_member", "normalise", "read_members"]

REL_MAX = 1024**2             # one .rel file: a few KiB in practice
REL_TOTAL_MAX = 16 * 1024**2  # all .rel candidates together: bounds memory on hostile input
EXTRA_MAX = 16 * 1024**2      # sys.config, relup
MAX_MEMBERS = 200_000         # defaults of inspect_tarball, which the agent's unpack applies too
MAX_UNPACKED = 8 * 1024**3


@dataclass(frozen=True)
class ReleaseTarball:
    path: Path
    release_name: str          # from the .rel file, e.g. "counter"
    version: str               # from the .rel file, e.g. "0.0.2"
    erts_version: str
    unpack_name: str           # for unpack_release/1: "NAME-VSN" (systools) or "VSN/NAME" (relx)
    rel_member: str            # "releases/NAME-VSN.rel" or "releases/VSN/NAME.rel"
    applications: tuple[tuple[str, str], ...]  # (app, vsn), in .rel order
    sys_config: bytes | None   # releases/VSN/sys.config
    relup: bytes | None        # releases/VSN/relup
    size: int                  # bytes of the .tar.gz
    sha256: str                # hex digest of the .tar.gz
    sys_config_src: bytes | None = None  # releases/VSN/sys.config.src (relx renders it at boot)
    erts_included: bool = False  # it ships erts-ERTS_VERSION/bin/erlexec (include_erts)
    # The first one and two components of every member's path ("lib", "lib/app-1.0", "bin",
    # "bin/app-1.0", "releases/1.0", "erts-13.1.5"): what an unpack may create under the root.
    tops: frozenset[str] = frozenset()

    def new_paths(self, root: Path) -> tuple[Path, ...]:
        """What an unpack into ``root`` would create there, as of now: each of :attr:`tops`
        that ``root`` lacks while its parent exists (or is created by the unpack itself)."""
        made: list[Path] = []
        for top in sorted(self.tops, key=lambda t: (t.count("/"), t)):
            path = root / top
            parent = posixpath.dirname(top)
            if parent and root / parent in made:
                continue  # inside a new dir: goes with it
            if not os.path.lexists(path):
                made.append(path)
        return tuple(made)


def inspect_tarball(path: Path, *, expected_version: str | None = None,
                    max_size: int, max_members: int = MAX_MEMBERS,
                    max_unpacked: int = MAX_UNPACKED) -> ReleaseTarball:
    """Check the tarball at `path` and say what it holds; raises TarballError otherwise."""
    limits = Limits(max_members, max_unpacked)
    with open_file(path, max_size) as (raw, size):
        require_gzip(path, raw)
        contents = read_members(path, raw, limits, expected_version=expected_version)
        sha256 = digest(path, raw, size)
    return contents.tarball(path, size, sha256)


class MemberSink(Protocol):
    """What a pass over the members does with each one besides checking it (extract.py
    writes it under a release root)."""

    def take(self, tar: tarfile.TarFile, info: tarfile.TarInfo, name: str,
             data: bytes | None) -> None:
        """``info``, checked, at ``name`` (normalised); ``data``: its bytes when the pass read
        them already (a .rel, or a sys.config or relup of the expected version), else None
        (the sink reads them from ``tar`` if it needs them)."""
        ...


@dataclass(frozen=True)
class Contents:
    """What one pass over a tarball found: the release it holds and what the upgrade reads."""

    release_name: str
    version: str
    erts_version: str
    unpack_name: str
    rel_member: str
    applications: tuple[tuple[str, str], ...]
    sys_config: bytes | None
    relup: bytes | None
    sys_config_src: bytes | None
    erts_included: bool
    tops: frozenset[str]

    def tarball(self, path: Path, size: int, sha256: str) -> ReleaseTarball:
        return ReleaseTarball(path, self.release_name, self.version, self.erts_version,
                              self.unpack_name, self.rel_member, self.applications,
                              self.sys_config, self.relup, size, sha256, self.sys_config_src,
                              erts_included=self.erts_included, tops=self.tops)


def read_members(path: Path, raw: RawFile, limits: Limits, *, expected_version: str | None,
                 sink: MemberSink | None = None) -> Contents:
    """One pass over the gzipped tar in ``raw`` (read from its start, never seeked back when
    ``expected_version`` is given): every member checked, and handed to ``sink``; then the
    release it holds. ``path`` names the file in every refusal."""
    # The standard library's zlib: isal and zlib-ng (PyPI) decompress faster, not by enough to
    # be worth a dependency (issue 24: the commit that says so has the figures).
    with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        stream = TarStream(path, gz, limits.stream_max, limits.headers_max)
        tar = open_tar(path, stream)
        with reading(path):
            scan = _scan_members(path, tar, stream, limits, sink, expected_version)
            require_clean_end(path, stream, tar.offset)
        rel = _choose_release(path, scan.rels, expected_version)
        with reading(path):
            sys_config, relup, src = (
                _extra(path, tar, scan, f"releases/{rel.vsn}/{name}")
                for name in ("sys.config", "relup", "sys.config.src"))
    return Contents(rel.name, rel.vsn, rel.erts, rel.unpack_name, rel.member, rel.apps,
                    sys_config, relup, src,
                    erts_included=f"erts-{rel.erts}/bin/erlexec" in scan.erts_bins,
                    tops=scan.tops)


# --- Members ---------------------------------------------------------------------------

_REL_PATH = re.compile(r"releases/(?:[^/]+/)?[^/]+\.rel")
_EXTRA_PATH = re.compile(r"releases/[^/]+/(?:sys\.config(?:\.src)?|relup)")
_ERLEXEC = re.compile(r"erts-[^/]+/bin/erlexec")
_WINDOWS = re.compile(r"[A-Za-z]:|.*\\", re.DOTALL)

_KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
          tarfile.FIFOTYPE: "a FIFO", tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link",
          tarfile.DIRTYPE: "a directory"}


@dataclass(frozen=True)
class _Scan:
    rels: dict[str, _RelFile | _BadRel]    # normalised member -> its .rel, last copy wins
    extras: dict[str, tarfile.TarInfo]     # normalised member -> sys.config / relup
    read: dict[str, bytes]                 # of those, the ones read during the pass
    erts_bins: frozenset[str]              # erts-VSN/bin/erlexec members (regular files)
    tops: frozenset[str]                   # every member path's first one and two components


_EXTRA_NAMES = ("sys.config", "relup", "sys.config.src")


def _scan_members(path: Path, tar: tarfile.TarFile, stream: TarStream, limits: Limits,
                  sink: MemberSink | None = None, version: str | None = None) -> _Scan:
    rels: dict[str, _RelFile | _BadRel] = {}
    extras: dict[str, tarfile.TarInfo] = {}
    read: dict[str, bytes] = {}
    # The expected version's extras are read as they pass (no seek back for them later).
    wanted = {f"releases/{version}/{n}" for n in _EXTRA_NAMES} if version else set()
    names: list[str] = []
    erlexecs: set[str] = set()
    symlinks: set[str] = set()
    unpacked = rel_bytes = count = 0
    while True:
        with stream.headers():
            info = tar.next()
        if info is None:
            break
        count += 1
        if count > limits.max_members:
            raise TarballError(f"{path}: more than {limits.max_members} members; refused as a "
                               "possible archive bomb (raise max_members if it is genuine)")
        check_member(path, info, tar.offset)
        name = normalise(info.name)
        names.append(name)
        if info.issym():
            symlinks.add(name)
        if info.isreg():
            if _ERLEXEC.fullmatch(name):
                erlexecs.add(name)
            unpacked += info.size
            if unpacked > limits.max_unpacked:
                raise TarballError(f"{path}: members add up to more than {limits.max_unpacked} "
                                   f"bytes unpacked (at member {info.name!r}); refused as a "
                                   "possible archive bomb (raise max_unpacked if it is genuine)")
        data = None
        if _REL_PATH.fullmatch(name):
            rel_bytes += info.size if info.isreg() and info.size <= REL_MAX else 0
            if rel_bytes > REL_TOTAL_MAX:
                raise TarballError(f"{path}: its .rel files add up to more than {REL_TOTAL_MAX} "
                                   f"bytes (at member {info.name!r}); a release has one small "
                                   ".rel file")
            rels[name], data = _read_rel(tar, info, name)
        elif _EXTRA_PATH.fullmatch(name):
            extras[name] = info  # the last copy counts, as tarfile's extractfile finds it
            read.pop(name, None)
            if name in wanted and info.isreg() and info.size <= EXTRA_MAX:
                data = read[name] = _read_capped(tar, info, EXTRA_MAX)
        if sink is not None:
            sink.take(tar, info, name, data)
    _check_not_under_symlink(path, names, symlinks)
    tops = {"/".join(name.split("/")[:depth]) for name in names for depth in (1, 2)}
    return _Scan(rels, extras, read, frozenset(erlexecs),
                 frozenset(t for t in tops if t not in ("", ".")))


def is_rel_member(name: str) -> bool:
    """Whether the member at ``name`` (normalised) is where a release's .rel may be."""
    return _REL_PATH.fullmatch(name) is not None


def normalise(name: str) -> str:
    """The path a member unpacks to, relative to the root: "./a//b/" is "a/b"."""
    return posixpath.normpath(name)


def check_member(path: Path, info: tarfile.TarInfo, next_offset: int) -> None:
    where = f"{path}: member {info.name!r}"
    problem = _path_problem(info.name)
    if problem:
        raise TarballError(f"{where} {problem}; a release tarball holds relative paths "
                           "inside the release root only")
    if "." in info.name.rstrip("/").split("/"):
        # release_handler finds releases/NAME.rel by its exact name (erl_tar's {files, [...]})
        # and never finds "./releases/NAME.rel": the unpack would fail after staging.
        raise TarballError(f"{where} has a '.' component (a tarball made with `tar -C DIR "
                           "-czf FILE .` has one in every name); release_handler cannot "
                           "unpack it: repack it with names relative to the release root, "
                           "`tar -C DIR -czf FILE releases lib` (add erts-* and bin if the "
                           f"release has them), or make it with {MAKERS}")
    if info.size < 0 or next_offset <= info.offset:
        raise corrupt(path, f"member {info.name!r} has a size or position that makes no sense")
    if info.issym() or info.islnk():
        _check_link(where, info)
    elif not (info.isdir() or (info.isreg() and not info.issparse())):
        kind = "a sparse file" if info.issparse() else _kind(info)
        raise TarballError(f"{where} is {kind}; a release tarball holds only files, "
                           "directories and links, so rebuild it with " + MAKERS)


def _path_problem(name: str) -> str | None:
    if not name:
        return "has an empty name"
    if "\0" in name:
        return "has a NUL byte in its name"
    if _WINDOWS.match(name):
        return "has a Windows drive or backslash in its name"
    if name.startswith("/"):
        return "has an absolute path"
    if ".." in name.split("/"):
        return "has a '..' component, which would unpack outside the release root"
    return None


def _check_link(where: str, info: tarfile.TarInfo) -> None:
    """A symlink's target is relative to its directory, a hard link's to the root."""
    kind = "symlink" if info.issym() else "hard link"
    base = posixpath.dirname(normalise(info.name)) if info.issym() else ""
    target = info.linkname
    problem = _link_problem(base, target)
    if problem:
        raise TarballError(f"{where} is a {kind} to {target!r}, {problem}; a release tarball "
                           "may only link inside the release root")


def _link_problem(base: str, target: str) -> str | None:
    if not target or "\0" in target or _WINDOWS.match(target):
        return "which is not a plain relative path"
    if target.startswith("/"):
        return "an absolute path"
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        return "which is outside the release root"
    # Checked lexically, "a/../b" is only right if "a" is no link itself; refuse rather
    # than guess. Leading ".." climb from the link's own directory, which is a real one.
    parts = target.split("/")
    climbs = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
    if ".." in parts[climbs:]:
        return "whose '..' after a name cannot be checked without following links"
    return None


def _check_not_under_symlink(path: Path, names: list[str], symlinks: set[str]) -> None:
    """A member below a symlink would be written through the link, wherever it points."""
    if not symlinks:
        return
    # Sorted, the names below "link/" come right at or after it: a binary search per link.
    # Trying every prefix of every name was quadratic in a name's depth (a 40,000-component
    # name in a 264-byte tarball took 6 s).
    ordered = sorted(names)
    for link in sorted(symlinks):
        below = link + "/"
        i = bisect.bisect_left(ordered, below)
        if i < len(ordered) and ordered[i].startswith(below):
            raise TarballError(f"{path}: member {ordered[i]!r} lies under the symlink {link!r}, "
                               "so unpacking it would write through the link; rebuild "
                               "the tarball without it")


def _read_capped(archive: tarfile.TarFile, info: tarfile.TarInfo, cap: int) -> bytes:
    """At most `cap` bytes of a regular member, read in chunks the stream accepts."""
    handle = archive.extractfile(info)
    assert handle is not None  # a regular file, checked by the caller
    data = bytearray()
    while len(data) <= cap and (chunk := handle.read(CHUNK)):
        data += chunk
    return bytes(data)


def _extra(path: Path, tar: tarfile.TarFile, scan: _Scan, member: str) -> bytes | None:
    """The release's ``member`` (sys.config, relup), as read during the pass or now."""
    if member in scan.read:
        return scan.read[member]
    info = scan.extras.get(member)
    if info is None:
        return None
    if not info.isreg():
        raise TarballError(f"{path}: member {info.name!r} is {_kind(info)}, not a regular "
                           f"file; rebuild the tarball with {MAKERS}")
    if info.size > EXTRA_MAX:
        raise TarballError(f"{path}: member {info.name!r} is {info.size} bytes, more than the "
                           f"{EXTRA_MAX} allowed for sys.config and relup")
    return _read_capped(tar, info, EXTRA_MAX)


def _kind(info: tarfile.TarInfo) -> str:
    return _KINDS.get(info.type, f"of type {info.type!r}")


# --- The .rel file -----------------------------------------------------------------------

@dataclass(frozen=True)
class _RelFile:
    member: str   # normalised
    name: str
    vsn: str
    erts: str
    apps: tuple[tuple[str, str], ...]

    @property
    def unpack_name(self) -> str:
        return self.member.removeprefix("releases/").removesuffix(".rel")

    @property
    def agrees(self) -> bool:
        """Its path names the release it holds, as its layout does."""
        named = f"{self.name}-{self.vsn}" if self.is_systools else f"{self.vsn}/{self.name}"
        return self.unpack_name == named

    @property
    def is_systools(self) -> bool:
        return "/" not in self.unpack_name


@dataclass(frozen=True)
class _BadRel:
    member: str   # as in the archive
    reason: str


def _read_rel(tar: tarfile.TarFile, info: tarfile.TarInfo,
              name: str) -> tuple[_RelFile | _BadRel, bytes | None]:
    """The .rel member ``info``, and its bytes when it was read."""
    if not info.isreg():
        return _BadRel(info.name, f"it is {_kind(info)}, not a regular file"), None
    if info.size > REL_MAX:
        return _BadRel(info.name, f"{info.size} bytes, more than the {REL_MAX} a .rel may "
                                  "have"), None
    data = _read_capped(tar, info, REL_MAX)
    return _parse_rel(info, name, data), data


def _parse_rel(info: tarfile.TarInfo, name: str, data: bytes) -> _RelFile | _BadRel:
    try:
        rel_name, vsn, erts, apps = parse_rel(decode(data))
    except RelSyntaxError as e:
        return _BadRel(info.name, str(e))
    return _RelFile(name, rel_name, vsn, erts, apps)


def _choose_release(path: Path, rels: dict[str, _RelFile | _BadRel],
                    expected_version: str | None) -> _RelFile:
    for rel in rels.values():
        if isinstance(rel, _BadRel):
            raise TarballError(f"{path}: member {rel.member!r} is not a .rel file it can read "
                               f"({rel.reason}); a .rel holds {REL_SHAPE}.")
    parsed = [rel for rel in rels.values() if isinstance(rel, _RelFile)]
    agreeing = [rel for rel in parsed if rel.agrees]
    if not agreeing:
        raise _no_release(path, parsed)
    if expected_version is not None:
        held = _held(agreeing)
        agreeing = [rel for rel in agreeing if rel.vsn == expected_version]
        if not agreeing:
            word = "release" if len(held) == 1 else "releases"
            raise TarballError(f"{path}: tarball holds {word} {', '.join(held)}, not "
                               f"{expected_version}; upload the tarball of {expected_version}, "
                               "or ask for the version it holds")
    if len({(rel.name, rel.vsn) for rel in agreeing}) > 1:
        what = "give the expected version to choose one" if expected_version is None else \
            "make one tarball per release"
        raise TarballError(f"{path}: holds more than one release "
                           f"({', '.join(_held(agreeing))}); {what}")
    # Both layouts unpack the same release; prefer the one release_handler documents.
    return min(agreeing, key=lambda rel: not rel.is_systools)


def _held(rels: list[_RelFile]) -> list[str]:
    return sorted({f"{_shown(rel.name)} {_shown(rel.vsn)}" for rel in rels})


def _shown(text: str) -> str:
    """`text` as is when printable, else escaped: a member name may hold undecodable bytes
    (lone surrogates, which no UTF-8 channel can carry) or terminal escapes."""
    return text if text.isprintable() else repr(text)


def _no_release(path: Path, disagreeing: list[_RelFile]) -> TarballError:
    notes = "".join(f"; {_shown(rel.member)} holds {_shown(rel.name)} {_shown(rel.vsn)}, which "
                    "its path does not name" for rel in disagreeing[:3])
    return TarballError(f"{path}: no release file found: expected releases/NAME-VSN.rel "
                        "(systools layout) or releases/VSN/NAME.rel (relx layout) naming the "
                        f"release it holds{notes}; this may not be a release tarball: make one "
                        f"with {MAKERS}")


# A .rel file is one Erlang term; only strings, atoms, tuples and lists occur in it.

REL_SHAPE = '{release, {"Name", "Vsn"}, {erts, "EVsn"}, [{App, "AppVsn"}, ...]}'
