"""Broken variants of a good release tarball, for the tests of what the agent refuses.

Each variant is the real tarball with some members replaced, so everything else about it
(layout, .rel, libraries) stays genuine and only the fault under test differs.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path


def rewrite_tarball(src: Path, dest: Path, replace: Mapping[str, bytes]) -> Path:
    """Copy ``src`` (a .tar.gz) to ``dest`` with the members named in ``replace`` swapped."""
    missing = set(replace)
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin:
            if member.name in replace:
                data = replace[member.name]
                missing.discard(member.name)
                info = tarfile.TarInfo(member.name)
                info.size, info.mode, info.mtime = len(data), member.mode, member.mtime
                tout.addfile(info, io.BytesIO(data))
            else:
                tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
    if missing:
        raise KeyError(f"not in {src}: {sorted(missing)}")
    return dest


def compile_module(source: str, module: str, workdir: Path) -> bytes:
    """Compile Erlang ``source`` with erlc; return the .beam bytes."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{module}.erl").write_text(source)
    subprocess.run(["erlc", "-o", str(workdir), str(workdir / f"{module}.erl")], check=True,
                   capture_output=True, timeout=60)
    return (workdir / f"{module}.beam").read_bytes()
