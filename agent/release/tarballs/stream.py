"""Reading a release tarball without trusting it: the file (regular, within its size), its gzip
layer, and the decompressed tar stream that tarfile parses, bounded so that no header or archive
bomb makes us read or keep more than the limits allow; pax headers are checked before tarfile
parses them (CVE-2024-6232). Also the end of the archive and the file's sha256.

Every failure is a `TarballError` (defined here, where the first checks raise it) that names
the file and says what to do; check.py checks the members and the release they hold.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from agent.errors import RequestError

GZIP_MAGIC = b"\x1f\x8b"
HEADER_MAX = 1024**2          # one pax / GNU long-name header, which tarfile reads whole
MEMBER_HEADERS_MAX = 2 * HEADER_MAX  # all the headers of one member (pax, long name, sparse map)
PAX_DIGITS_MAX = 64           # longest run of digits in a pax header (see _pax_problem)
GLOBAL_PAX_KEYS_MAX = 16      # keys of global pax headers, which tarfile copies into every member
TRAILING_MAX = 1024**2        # bytes after the tar's end marker (record padding)
PER_MEMBER_SLACK = 4096       # header blocks and padding a member adds to the stream
CHUNK = 64 * 1024
BLOCK = tarfile.BLOCKSIZE
# Bytes already read that a seek back may return to without gzip rewinding the whole stream
# (it would decompress it again from the start): tarfile steps back one block at the end of
# the archive, and the end check reads that block again.
HISTORY = 4 * BLOCK

MAKERS = "systools:make_tar, rebar3 tar (relx) or mix release"


class TarballError(RequestError):
    """The tarball cannot be installed as it is: names the file, the member and what to do."""


class RawFile(Protocol):
    """The compressed bytes: a file, or one still arriving (agent/operations/uploads.py)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


# --- The file and its compression -----------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """What inspect_tarball's caller allows, and the stream bounds that follow from it."""

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
def open_file(path: Path, max_size: int) -> Iterator[tuple[BinaryIO, int]]:
    """The regular file at `path`, open for reading, and its size (at most `max_size`)."""
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


def require_gzip(path: Path, raw: RawFile) -> None:
    """Refuse what is not gzip, saying what it looks like instead."""
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


def corrupt(path: Path, reason: object) -> TarballError:
    return TarballError(f"{path}: corrupt or truncated ({reason}); upload it again and "
                        "compare its sha256 with the original's")


# What a damaged or hostile stream makes gzip or tarfile raise, rather than a TarError.
_BROKEN = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, IndexError,
           OverflowError, RecursionError)  # RecursionError: a chain of pax headers


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Around tarfile's work: what a damaged stream makes it raise says the file is corrupt."""
    try:
        yield
    except _BROKEN as e:
        raise corrupt(path, e) from None


class TarStream:
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
        self._history = b""  # the last bytes read, up to HISTORY, for a short seek back
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
        data = ahead + self._read_gz(size - len(ahead))
        self._remember(data)
        return data

    def _remember(self, data: bytes) -> None:
        if len(data) >= HISTORY:
            self._history = data[-HISTORY:]
        elif data:
            self._history = (self._history + data)[-HISTORY:]

    def peek(self, size: int) -> bytes:
        """The next `size` bytes (fewer at the end of the stream), still to be read."""
        if len(self._ahead) < size:
            self._within_limit(self.tell() + size)
            self._ahead += self._read_gz(size - len(self._ahead))
        return self._ahead[:size]

    def seek(self, offset: int) -> int:
        """Forward within what was peeked, or back within HISTORY, without gzip seeking (a
        seek back in gzip decompresses the stream again from its start; a stream that is
        still arriving cannot go back at all)."""
        self._within_limit(offset)
        position = self.tell()
        if position <= offset <= position + len(self._ahead):
            self._remember(self._ahead[:offset - position])
            self._ahead = self._ahead[offset - position:]
            return offset
        if offset < position and position - offset <= len(self._history):
            cut = len(self._history) - (position - offset)
            self._ahead = self._history[cut:] + self._ahead
            self._history = self._history[:cut]
            return offset
        self._ahead = self._history = b""
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
            raise corrupt(self._path, e) from None


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
        assert isinstance(stream, TarStream)
        stream.check_pax(archive, cls)
        member = super().fromtarfile(archive)
        stream.check_global_pax(len(archive.pax_headers))
        return member


def open_tar(path: Path, stream: TarStream) -> tarfile.TarFile:
    # Only the first header is read here; gzip's own failures are already TarballError.
    try:
        with stream.headers():
            return tarfile.open(fileobj=stream, mode="r:", tarinfo=_CheckedTarInfo)
    except tarfile.ReadError as e:
        raise TarballError(f"{path}: gzip, but not a tar archive ({e}); a release tarball "
                           f"is a gzipped tar: make one with {MAKERS}") from None
    except _BROKEN as e:
        raise corrupt(path, e) from None


def require_clean_end(path: Path, stream: TarStream, offset: int) -> None:
    """tarfile stops quietly at a damaged header past the first; so the archive must end
    with a zero block (or exactly at end of data), and gzip must reach its checksum."""
    stream.seek(offset)
    block = stream.read(BLOCK)
    if block and block != bytes(BLOCK):
        raise corrupt(path, f"damaged or partial tar header at byte {offset}")
    end = offset + len(block)
    while stream.read(CHUNK):
        if stream.tell() - end > TRAILING_MAX:
            raise TarballError(f"{path}: more than {TRAILING_MAX} bytes follow the end of the "
                               f"tar archive; rebuild the tarball with {MAKERS}")


def digest(path: Path, raw: BinaryIO, size: int) -> str:
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
