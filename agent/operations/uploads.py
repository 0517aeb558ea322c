"""Release tarballs uploaded to the agent, kept in `state_dir/uploads` until an operation
uses them.

An upload is written to a `.part` file, checked against its announced size and sha256, then
validated as a release tarball (agent/tarball.py). Anything that fails is deleted: nothing
half-received is ever offered to release_handler. Uploads do not survive an agent restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.errors import NotFound, RequestError
from agent.release.tarball import ReleaseTarball, TarballError, inspect_tarball

log = logging.getLogger("relctl.agent.operations.uploads")

DEFAULT_MAX_UPLOAD = 2 * 1024**3
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UploadRefused(RequestError):
    pass


class UnknownUpload(NotFound):
    def __init__(self, upload_id: str, node: str) -> None:
        super().__init__(f"no upload {upload_id!r} for {node} on this agent (uploads do not "
                         "survive an agent restart); upload the tarball again")


@dataclass(frozen=True)
class Upload:
    id: str
    node: str
    tarball: ReleaseTarball


class UploadWriter:
    """Receives one upload's chunks; ``finish()`` checks and validates it."""

    def __init__(self, store: UploadStore, upload_id: str, node: str, version: str,
                 size: int, sha256: str, path: Path) -> None:
        self._store = store
        self.id = upload_id
        self.node = node
        self.version = version
        self.size = size
        self._sha256 = sha256
        self._path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by finish()/abort()
        self._digest = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            self.abort()
            raise UploadRefused(f"upload is larger than the {self.size} bytes announced")
        self._digest.update(chunk)
        self._file.write(chunk)

    def finish(self) -> Upload:
        self._file.close()
        try:
            if self.received != self.size:
                raise UploadRefused(f"upload ended after {self.received} of {self.size} bytes; "
                                    "send it again")
            digest = self._digest.hexdigest()
            if digest != self._sha256:
                raise UploadRefused(f"sha256 mismatch: the agent received {digest}, the client "
                                    f"announced {self._sha256}; the file changed or was "
                                    "corrupted in transit")
            final = self._path.with_suffix("")  # drop .part
            os.replace(self._path, final)
            try:
                tarball = inspect_tarball(final, expected_version=self.version)
            except TarballError:
                final.unlink(missing_ok=True)
                raise
        except BaseException:
            self._path.unlink(missing_ok=True)
            raise
        upload = Upload(self.id, self.node, tarball)
        self._store.keep(upload)
        log.info("upload %s for %s: %s %s, %d bytes, sha256 %s", self.id, self.node,
                 tarball.release_name, tarball.version, tarball.size, tarball.sha256)
        return upload

    def abort(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


class UploadStore:
    def __init__(self, directory: Path, *, max_size: int = DEFAULT_MAX_UPLOAD) -> None:
        self._dir = directory
        self.max_size = max_size
        self._uploads: dict[str, Upload] = {}
        # Leftovers of a previous run are not trusted (their checks happened in another life).
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def begin(self, node: str, version: str, size: int, sha256: str) -> UploadWriter:
        if not version:
            raise UploadRefused("the upload header names no version")
        if size <= 0:
            raise UploadRefused("the upload header announces no size")
        if size > self.max_size:
            raise UploadRefused(f"upload of {size} bytes is over the agent's limit of "
                                f"{self.max_size} bytes (agent.max_upload_bytes)")
        sha = sha256.lower()
        if not _SHA256.fullmatch(sha):
            raise UploadRefused("the upload header's sha256 is not 64 hex digits")
        upload_id = secrets.token_hex(8)
        path = self._dir / f"{upload_id}.tar.gz.part"
        return UploadWriter(self, upload_id, node, version, size, sha, path)

    def keep(self, upload: Upload) -> None:
        """Offer a checked and validated upload to operations."""
        self._uploads[upload.id] = upload

    def get(self, upload_id: str, node: str) -> Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.node != node:
            raise UnknownUpload(upload_id, node)
        return upload

    def discard(self, upload_id: str) -> None:
        upload = self._uploads.pop(upload_id, None)
        if upload is not None:
            upload.tarball.path.unlink(missing_ok=True)
