"""Does a tarball's ERTS start on this host (agent/release/ertscheck.py)? With the host's own
ERTS binaries packed under another version, and with an erlexec no kernel can execute."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from agent.release.ertscheck import erts_runs_here
from agent.release.tarballs.check import ReleaseTarball
from tests.tools.release_fixture import discover_otp

pytestmark = pytest.mark.otp


def tarball_with(tmp_path: Path, files: dict[str, Path | bytes]) -> ReleaseTarball:
    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, source in files.items():
            if isinstance(source, Path):
                tar.add(source, name)
            else:
                data = tmp_path / "data"
                data.write_bytes(source)
                data.chmod(0o755)
                tar.add(data, name)
    return ReleaseTarball(path, "app", "2.0", "99.0.0", "app-2.0", "releases/app-2.0.rel", (),
                          None, None, path.stat().st_size, "0" * 64, erts_included=True)


def test_the_host_s_own_emulator_starts_and_halts(tmp_path: Path) -> None:
    otp = discover_otp()
    bindir = otp.root_dir / f"erts-{otp.erts_vsn}" / "bin"
    files: dict[str, Path | bytes] = {f"erts-99.0.0/bin/{p.name}": p for p in bindir.iterdir()
                                      if p.is_file()}
    assert erts_runs_here(tarball_with(tmp_path, files)) is None


def test_an_erlexec_of_another_architecture_is_named(tmp_path: Path) -> None:
    found = erts_runs_here(tarball_with(tmp_path, {
        "erts-99.0.0/bin/erlexec": b"\x7fELF\x02\x01\x01" + bytes(57)}))
    assert found == "its erts-99.0.0/bin/erlexec cannot be started here: Exec format error"


def test_an_erlexec_that_does_not_start_the_emulator_is_named(tmp_path: Path) -> None:
    found = erts_runs_here(tarball_with(tmp_path, {
        "erts-99.0.0/bin/erlexec": b"#!/bin/sh\necho no beam here >&2\nexit 1\n"}))
    assert found == ("its erts-99.0.0/bin/erlexec exited 1 instead of starting the emulator: "
                     "no beam here")
