"""Checks a release tarball before anything of it reaches a node's release root.

`inspect_tarball` reads the .tar.gz as a stream, in memory, and never extracts it. It
refuses what release_handler would unpack outside the release root (absolute paths, `..`,
links that leave the root, devices), archive bombs, and tarballs that hold no release,
and it answers what the upgrade needs: the release's name, version and applications, the
name `release_handler:unpack_release/1` takes, its sys.config and relup, size and sha256.

Any input, however hostile, ends in a `ReleaseTarball` or a `TarballError` that names the
file (and member) and says what to do; nothing else escapes.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import posixpath
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from agent.errors import RequestError
from agent.relfile import RelSyntaxError, parse_rel

GZIP_MAGIC = b"\x1f\x8b"
REL_MAX = 1024**2             # one .rel file: a few KiB in practice
REL_TOTAL_MAX = 16 * 1024**2  # all .rel candidates together: bounds memory on hostile input
EXTRA_MAX = 16 * 1024**2      # sys.config, relup
HEADER_MAX = 1024**2          # one pax / GNU long-name header, which tarfile reads whole
MEMBER_HEADERS_MAX = 2 * HEADER_MAX  # all the headers of one member (pax, long name, sparse map)
PAX_DIGITS_MAX = 64           # longest run of digits in a pax header (see _pax_problem)
GLOBAL_PAX_KEYS_MAX = 16      # keys of global pax headers, which tarfile copies into every member
TRAILING_MAX = 1024**2        # bytes after the tar's end marker (record padding)
PER_MEMBER_SLACK = 4096       # header blocks and padding a member adds to the stream
CHUNK = 64 * 1024
BLOCK = tarfile.BLOCKSIZE

MAKERS = "systools:make_tar, rebar3 tar (relx) or mix release"


class TarballError(RequestError):
    """The tarball cannot be installed as it is: names the file, the member and what to do."""


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


def inspect_tarball(path: Path, *, expected_version: str | None = None,
                    max_size: int = 2 * 1024**3, max_members: int = 200_000,
                    max_unpacked: int = 8 * 1024**3) -> ReleaseTarball:
    """Check the tarball at `path` and say what it holds; raises TarballError otherwise."""
    limits = _Limits(max_members, max_unpacked)
    with _open_file(path, max_size) as (raw, size):
        _require_gzip(path, raw)
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            stream = _TarStream(path, gz, limits.stream_max, limits.headers_max)
            tar = _open_tar(path, stream)
            with _reading(path):
                scan = _scan_members(path, tar, stream, limits)
                _require_clean_end(path, stream, tar.offset)
            rel = _choose_release(path, scan.rels, expected_version)
            with _reading(path):
                sys_config = _read_extra(path, tar, scan.extras, f"releases/{rel.vsn}/sys.config")
                relup = _read_extra(path, tar, scan.extras, f"releases/{rel.vsn}/relup")
        sha256 = _digest(path, raw, size)
    return ReleaseTarball(path, rel.name, rel.vsn, rel.erts, rel.unpack_name, rel.member,
                          rel.apps, sys_config, relup, size, sha256)


# --- The file and its compression -----------------------------------------------------

@dataclass(frozen=True)
class _Limits:
    max_members: int
    max_unpacked: int

    @property
    def stream_max(self) -> int:
        """The most the decompressed tar stream may hold: the members' data plus headers."""
        return (self.max_unpacked + self.max_members * PER_MEMBER_SLACK
                + HEADER_MAX + TRAILING_MAX)

    @property
    def headers_max(self) -> int:
        """The most tarfile may read while parsing headers, all members together. Header
        data stays in memory (tarfile keeps every member), unlike the members' data."""
        return self.max_members * PER_MEMBER_SLACK + MEMBER_HEADERS_MAX


@contextmanager
def _open_file(path: Path, max_size: int) -> Iterator[tuple[BinaryIO, int]]:
    # stat first: opening a FIFO for reading would block.
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TarballError(f"{path}: no such file; check the path the tarball was "
                           "uploaded to") from None
    except OSError as e:
        raise _unreadable(path, e) from None
    if not stat.S_ISREG(info.st_mode):
        raise TarballError(f"{path}: not a regular file; give the path of the release .tar.gz")
    if info.st_size > max_size:
        raise TarballError(f"{path}: {info.st_size} bytes, more than the {max_size}-byte "
                           "limit for a release tarball; raise max_size if it is genuine")
    try:
        raw = path.open("rb")
    except OSError as e:
        raise _unreadable(path, e) from None
    with raw:
        yield raw, info.st_size


def _unreadable(path: Path, e: OSError) -> TarballError:
    return TarballError(f"{path}: cannot read it ({e.strerror or e}); check that it exists "
                        "and that the agent may read it")


def _require_gzip(path: Path, raw: BinaryIO) -> None:
    try:
        head = raw.read(BLOCK)
        raw.seek(0)
    except OSError as e:
        raise _unreadable(path, e) from None
    if head[:2] == GZIP_MAGIC:
        return
    hint = ("it looks like an uncompressed tar: gzip it" if head[257:262] == b"ustar"
            else f"make one with {MAKERS}")
    raise TarballError(f"{path}: not a gzip file (it starts with {head[:4].hex(' ') or 'nothing'});"
                       f" a release tarball is a .tar.gz: {hint}")


def _corrupt(path: Path, reason: object) -> TarballError:
    return TarballError(f"{path}: corrupt or truncated ({reason}); upload it again and "
                        "compare its sha256 with the original's")


# What a damaged or hostile stream makes gzip or tarfile raise, rather than a TarError.
_BROKEN = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, IndexError,
           OverflowError, RecursionError)  # RecursionError: a chain of pax headers


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except _BROKEN as e:
        raise _corrupt(path, e) from None


class _TarStream:
    """The decompressed tar stream as tarfile sees it.

    gzip's failures become TarballError here, before tarfile can mistake them for a bad
    header; and no header, however large it claims to be, makes us read without bound.
    Inside `headers()` the reads are tarfile parsing headers, which it keeps in memory (and
    for sparse maps, loops over block by block): those are bounded per member and in all.
    """

    def __init__(self, path: Path, gz: gzip.GzipFile, limit: int, headers_max: int) -> None:
        self._path = path
        self._gz = gz
        self._limit = limit
        self._ahead = b""  # peeked, not yet read
        self._in_headers = False
        self._member_header_bytes = 0
        self._header_bytes = 0
        self._headers_max = headers_max

    def read(self, size: int = -1) -> bytes:
        if not 0 <= size <= HEADER_MAX:
            raise TarballError(f"{self._path}: a tar header asks to read {size} bytes at once "
                               f"(at most {HEADER_MAX} make sense); refused as hostile")
        self._within_limit(self.tell() + size)
        if self._in_headers:
            self._count_header_bytes(size)
        ahead, self._ahead = self._ahead[:size], self._ahead[size:]
        return ahead + self._read_gz(size - len(ahead))

    def peek(self, size: int) -> bytes:
        """The next `size` bytes (fewer at the end of the stream), still to be read."""
        if len(self._ahead) < size:
            self._within_limit(self.tell() + size)
            self._ahead += self._read_gz(size - len(self._ahead))
        return self._ahead[:size]

    def seek(self, offset: int) -> int:
        self._within_limit(offset)
        self._ahead = b""
        with self._guard():
            return self._gz.seek(offset)

    def tell(self) -> int:
        return self._gz.tell() - len(self._ahead)

    @contextmanager
    def headers(self) -> Iterator[None]:
        """Around tarfile's parsing of one member's headers."""
        self._in_headers = True
        self._member_header_bytes = 0
        try:
            yield
        finally:
            self._in_headers = False

    def check_pax(self, archive: tarfile.TarFile, info_class: type[tarfile.TarInfo]) -> None:
        """Refuse a pax header that is next in the stream unless its records are well formed."""
        block = self.peek(BLOCK)
        if len(block) < BLOCK or block[156:157] not in _PAX_TYPES:
            return
        try:
            size = info_class.frombuf(block, archive.encoding, archive.errors).size
        except tarfile.HeaderError:
            return  # tarfile refuses it in its own words
        padded = -(-size // BLOCK) * BLOCK
        if not 0 <= padded <= HEADER_MAX:
            return  # read() refuses that size
        problem = _pax_problem(self.peek(BLOCK + padded)[BLOCK:])
        if problem:
            raise TarballError(f"{self._path}: a pax header at byte {self.tell()} {problem}; "
                               f"refused as damaged or hostile (rebuild it with {MAKERS})")

    def check_global_pax(self, keys: int) -> None:
        if keys > GLOBAL_PAX_KEYS_MAX:
            raise TarballError(f"{self._path}: its global pax headers set {keys} keys (at most "
                               f"{GLOBAL_PAX_KEYS_MAX} are accepted); refused as a possible "
                               "archive bomb, since each member gets a copy of them")

    def _count_header_bytes(self, size: int) -> None:
        self._member_header_bytes += size
        self._header_bytes += size
        if self._member_header_bytes > MEMBER_HEADERS_MAX:
            raise TarballError(f"{self._path}: the headers of one member take more than "
                               f"{MEMBER_HEADERS_MAX} bytes (at byte {self.tell()}); refused as "
                               "hostile")
        if self._header_bytes > self._headers_max:
            raise TarballError(f"{self._path}: its tar headers take more than {self._headers_max}"
                               " bytes in all; refused as a possible archive bomb (raise "
                               "max_members if it is genuine)")

    def _read_gz(self, size: int) -> bytes:
        if size <= 0:
            return b""
        with self._guard():
            return self._gz.read(size)

    def write(self, b: bytes) -> int:
        raise TypeError("read only")

    def close(self) -> None:
        pass  # the caller closes the file

    def _within_limit(self, position: int) -> None:
        if position > self._limit:
            raise TarballError(f"{self._path}: decompresses to more than {self._limit} bytes, "
                               "more than its members' sizes explain; refused as a possible "
                               "archive bomb")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (EOFError, zlib.error, OSError) as e:
            raise _corrupt(self._path, e) from None


_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (PAX_DIGITS_MAX + 1))


def _pax_problem(body: bytes) -> str | None:
    """What is wrong with the records of a pax header, as tarfile will read them, if anything.

    Python before 3.11.10 and 3.12.6 (CVE-2024-6232) parses these records with regular
    expressions that take quadratic time, and keep quadratic memory, on crafted input: a
    1 MiB header takes minutes, or all the memory there is. Here, in linear time, each record
    must be "LENGTH KEY=VALUE\n" of exactly LENGTH bytes up to the NUL padding, as every tar
    writer makes them, and no run of digits may be long enough to make a regex backtrack.
    """
    pos = 0
    while pos < len(body) and body[pos] != 0:
        space = body.find(b" ", pos, pos + 21)
        if space <= pos or not body[pos:space].isdigit():
            return f"has a record that does not start with its length (at offset {pos})"
        end = pos + int(body[pos:space])
        if not space + 2 < end <= len(body) or body[end - 1] != 0x0A:
            return f"has a record whose length does not end at its newline (at offset {pos})"
        if body.find(b"=", space + 2, end) < 0:
            return f"has a record without KEY=VALUE (at offset {pos})"
        pos = end
    if _LONG_DIGITS.search(body):
        return f"has a run of more than {PAX_DIGITS_MAX} digits"
    return None


class _CheckedTarInfo(tarfile.TarInfo):
    """tarfile's member class, given to it through its documented `tarinfo` argument: each
    header is checked (pax records, global pax keys) around tarfile's own parsing of it."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        stream = archive.fileobj
        assert isinstance(stream, _TarStream)
        stream.check_pax(archive, cls)
        member = super().fromtarfile(archive)
        stream.check_global_pax(len(archive.pax_headers))
        return member


def _open_tar(path: Path, stream: _TarStream) -> tarfile.TarFile:
    # Only the first header is read here; gzip's own failures are already TarballError.
    try:
        with stream.headers():
            return tarfile.open(fileobj=stream, mode="r:", tarinfo=_CheckedTarInfo)
    except tarfile.ReadError as e:
        raise TarballError(f"{path}: gzip, but not a tar archive ({e}); a release tarball "
                           f"is a gzipped tar: make one with {MAKERS}") from None
    except _BROKEN as e:
        raise _corrupt(path, e) from None


def _require_clean_end(path: Path, stream: _TarStream, offset: int) -> None:
    """tarfile stops quietly at a damaged header past the first; so the archive must end
    with a zero block (or exactly at end of data), and gzip must reach its checksum."""
    stream.seek(offset)
    block = stream.read(BLOCK)
    if block and block != bytes(BLOCK):
        raise _corrupt(path, f"damaged or partial tar header at byte {offset}")
    end = offset + len(block)
    while stream.read(CHUNK):
        if stream.tell() - end > TRAILING_MAX:
            raise TarballError(f"{path}: more than {TRAILING_MAX} bytes follow the end of the "
                               f"tar archive; rebuild the tarball with {MAKERS}")


def _digest(path: Path, raw: BinaryIO, size: int) -> str:
    digest = hashlib.sha256()
    seen = 0
    try:
        raw.seek(0)
        while seen <= size and (chunk := raw.read(CHUNK)):
            digest.update(chunk)
            seen += len(chunk)
    except OSError as e:
        raise _unreadable(path, e) from None
    if seen != size:
        raise TarballError(f"{path}: changed while being inspected ({size} bytes, then {seen}); "
                           "inspect it again once the upload is complete")
    return digest.hexdigest()


# --- Members ---------------------------------------------------------------------------

_REL_PATH = re.compile(r"releases/(?:[^/]+/)?[^/]+\.rel")
_EXTRA_PATH = re.compile(r"releases/[^/]+/(?:sys\.config|relup)")
_WINDOWS = re.compile(r"[A-Za-z]:|.*\\", re.DOTALL)

_KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
          tarfile.FIFOTYPE: "a FIFO", tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link",
          tarfile.DIRTYPE: "a directory"}


@dataclass(frozen=True)
class _Scan:
    rels: dict[str, _RelFile | _BadRel]    # normalised member -> its .rel, last copy wins
    extras: dict[str, tarfile.TarInfo]     # normalised member -> sys.config / relup


def _scan_members(path: Path, tar: tarfile.TarFile, stream: _TarStream,
                  limits: _Limits) -> _Scan:
    rels: dict[str, _RelFile | _BadRel] = {}
    extras: dict[str, tarfile.TarInfo] = {}
    names: list[str] = []
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
        _check_member(path, info, tar.offset)
        name = _normalise(info.name)
        names.append(name)
        if info.issym():
            symlinks.add(name)
        if info.isreg():
            unpacked += info.size
            if unpacked > limits.max_unpacked:
                raise TarballError(f"{path}: members add up to more than {limits.max_unpacked} "
                                   f"bytes unpacked (at member {info.name!r}); refused as a "
                                   "possible archive bomb (raise max_unpacked if it is genuine)")
        if _REL_PATH.fullmatch(name):
            rel_bytes += info.size if info.isreg() and info.size <= REL_MAX else 0
            if rel_bytes > REL_TOTAL_MAX:
                raise TarballError(f"{path}: its .rel files add up to more than {REL_TOTAL_MAX} "
                                   f"bytes (at member {info.name!r}); a release has one small "
                                   ".rel file")
            rels[name] = _read_rel(tar, info, name)
        elif _EXTRA_PATH.fullmatch(name):
            extras[name] = info
    _check_not_under_symlink(path, names, symlinks)
    return _Scan(rels, extras)


def _normalise(name: str) -> str:
    """The path a member unpacks to, relative to the root: "./a//b/" is "a/b"."""
    return posixpath.normpath(name)


def _check_member(path: Path, info: tarfile.TarInfo, next_offset: int) -> None:
    where = f"{path}: member {info.name!r}"
    problem = _path_problem(info.name)
    if problem:
        raise TarballError(f"{where} {problem}; a release tarball holds relative paths "
                           "inside the release root only")
    if info.size < 0 or next_offset <= info.offset:
        raise _corrupt(path, f"member {info.name!r} has a size or position that makes no sense")
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
    base = posixpath.dirname(_normalise(info.name)) if info.issym() else ""
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


def _read_extra(path: Path, tar: tarfile.TarFile, extras: dict[str, tarfile.TarInfo],
                member: str) -> bytes | None:
    info = extras.get(member)
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


def _read_rel(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> _RelFile | _BadRel:
    if not info.isreg():
        return _BadRel(info.name, f"it is {_kind(info)}, not a regular file")
    if info.size > REL_MAX:
        return _BadRel(info.name, f"{info.size} bytes, more than the {REL_MAX} a .rel may have")
    data = _read_capped(tar, info, REL_MAX)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # Erlang's encoding for source files before OTP 17
    try:
        rel_name, vsn, erts, apps = parse_rel(text)
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
