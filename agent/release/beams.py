"""The md5 the runtime gives a module (``erlang:get_module_info(M, md5)``, what
``beam_lib:md5/1`` computes from a .beam file), computed in the agent from the beam's bytes, so
that checking a node's code costs one look at what it has loaded instead of the node reading
every beam of the release (codecheck.py, loaded.py).

It is not the file's md5: beam_lib hashes the chunks that make the code, in a fixed order
(``md5_chunks()`` of OTP's beam_lib.erl: Atom or AtU8, Code, StrT, ImpT, ExpT, FunT, LitT and,
in newer releases, Meta; the ones a file lacks are skipped, but Code, StrT, ImpT and ExpT must be
there), with the OldUniq field of every FunT entry zeroed, from the file gunzipped if it is
compressed. Anything that does not parse as beam_lib would parse it gives None: the caller then
asks the node, which never makes a wrong answer, only a slower one.

Computed md5s are kept by the file's identity (device, inode, size, mtime and ctime: a rename
of its dir keeps them, any write changes the ctime), so that a release's beams are read once
per agent, when the agent extracts them or first checks them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

MD5_CHUNKS = (b"Atom", b"AtU8", b"Code", b"StrT", b"ImpT", b"ExpT", b"FunT", b"LitT", b"Meta")
MANDATORY = frozenset({b"Code", b"ExpT", b"ImpT", b"StrT"})
FUNT_ENTRY = 24      # per fun: 20 bytes kept, then 4 of OldUniq that the md5 sees as zeros
MAX_BEAM = 64 * 1024**2  # a beam larger than this is not read here (the node checks it)
CACHE_MAX = 200_000


def beam_md5(data: bytes) -> bytes | None:
    """beam_lib:md5 of a .beam file's bytes, or None when beam_lib would not give one."""
    if not data.startswith(b"FOR1"):
        try:  # beam_lib reads a gzipped beam too (compiled with `compressed`)
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    if len(data) < 12 or data[:4] != b"FOR1" or data[8:12] != b"BEAM":
        return None
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos < len(data):
        if len(data) - pos < 8:
            return None  # a partial chunk header
        cid = data[pos:pos + 4]
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        start = pos + 8
        if start + size > len(data):
            return None  # a chunk larger than the file
        if cid in MD5_CHUNKS and cid not in chunks:  # the first of each, as beam_lib takes
            chunks[cid] = data[start:start + size]
        pos = start + (size + 3) // 4 * 4
    if not (b"Atom" in chunks or b"AtU8" in chunks) or not MANDATORY <= chunks.keys():
        return None
    digest = hashlib.md5()  # noqa: S324 - the runtime's identity of code, not a security hash
    for cid in MD5_CHUNKS:
        chunk = chunks.get(cid)
        if chunk is None:
            continue
        if cid == b"FunT" and len(chunk) >= 4:
            chunk = _zero_old_uniq(chunk)
        digest.update(chunk)
    return digest.digest()


def _zero_old_uniq(funt: bytes) -> bytes:
    out = bytearray(funt)
    for entry in range(4, len(funt) - FUNT_ENTRY + 1, FUNT_ENTRY):
        out[entry + 20:entry + FUNT_ENTRY] = bytes(4)
    return bytes(out)


_Key = tuple[int, int, int, int, int]


class Md5Cache:
    """beam_md5 of files, by their identity (thread-safe: extraction threads fill it)."""

    def __init__(self, limit: int = CACHE_MAX) -> None:
        self._known: dict[_Key, bytes | None] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def md5(self, path: Path | str) -> bytes | None:
        """beam_md5 of the file at ``path`` (None: not a beam beam_lib reads, or unreadable)."""
        try:
            return self._md5(path, os.stat(path))
        except OSError:
            return None

    def _md5(self, path: Path | str, info: os.stat_result) -> bytes | None:
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        with self._lock:
            if key in self._known:
                return self._known[key]
        if info.st_size > MAX_BEAM:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BEAM + 1)
        except OSError:
            return None
        md5 = beam_md5(data) if len(data) == info.st_size else None
        with self._lock:
            if len(self._known) >= self._limit:
                self._known.clear()
            self._known[key] = md5
        return md5

    def ebin(self, ebin: Path | str) -> dict[str, bytes | None] | None:
        """module -> beam_md5 of each .beam in ``ebin``; None when it cannot be listed."""
        found: dict[str, bytes | None] = {}
        try:
            with os.scandir(ebin) as entries:
                for entry in entries:
                    if entry.name.endswith(".beam"):
                        try:
                            found[entry.name[:-5]] = self._md5(entry.path, entry.stat())
                        except OSError:
                            found[entry.name[:-5]] = None
        except OSError:
            return None
        return found

    def remember(self, ebins: Iterable[Path | str]) -> None:
        """Compute ahead what :meth:`ebin` will be asked of these dirs (those that exist)."""
        for ebin in ebins:
            self.ebin(ebin)


def ebins(base: Path, apps: Iterable[tuple[str, str]]) -> list[Path]:
    """BASE/lib/APP-VSN/ebin of each (app, vsn) of a release."""
    return [base / "lib" / f"{app}-{vsn}" / "ebin" for app, vsn in apps]


# One per agent: what it computed is valid as long as the file is the same.
BEAMS = Md5Cache()
