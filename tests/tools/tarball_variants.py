"""Broken variants of a good release tarball, for the tests of what the agent refuses.

Each variant is the real tarball with some members replaced, so everything else about it
(layout, .rel, libraries) stays genuine and only the fault under test differs.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

from tests.tools import otp_select
from tests.tools.release_fixture import ReleaseBuild, erl_env, erl_string


def rewrite_tarball(src: Path, dest: Path, replace: Mapping[str, bytes], *,
                    compresslevel: int = 9) -> Path:
    """Copy ``src`` (a .tar.gz) to ``dest`` with the members named in ``replace`` swapped
    (``compresslevel`` 1 is several times faster, for a test that makes many)."""
    missing = set(replace)
    with tarfile.open(src, "r:gz") as tin, \
            tarfile.open(dest, "w:gz", compresslevel=compresslevel) as tout:
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


def appup_variant(build: ReleaseBuild, dest: Path, workdir: Path, appup: str, *,
                  app_file: str | None = None, new_beams: Mapping[str, bytes] | None = None
                  ) -> Path:
    """The 0.0.2 tarball of ``build`` with counter's appup
    replaced by ``appup`` (and its .app by ``app_file``, plus ``new_beams`` added to its ebin),
    and the relup systools makes from them: a release as a build with that appup ships it."""
    ebin = workdir / "lib" / "counter-0.0.2" / "ebin"
    shutil.copytree(build.out_dir / "lib" / "counter-0.0.2" / "ebin", ebin)
    files: dict[str, bytes] = {"counter.appup": appup.encode()}
    if app_file is not None:
        files["counter.app"] = app_file.encode()
    files.update({f"{m}.beam": b for m, b in (new_beams or {}).items()})
    for name, data in files.items():
        (ebin / name).write_bytes(data)
    shutil.copy2(build.versions["0.0.2"].rel_file, workdir / "counter-0.0.2.rel")
    base = build.versions["0.0.1"]
    path = "[" + ", ".join(erl_string(p) for p in (
        base.build_dir, build.out_dir / "lib" / "counter-0.0.1" / "ebin", ebin)) + "]"
    expr = ('ok = systools:make_relup("counter-0.0.2", ["counter-0.0.1"], ["counter-0.0.1"], '
            f'[{{path, {path}}}, silent]), halt().')
    made = subprocess.run([otp_select.erl(), "-boot", "no_dot_erlang",
                           "-noshell", "-noinput", "-eval", expr], cwd=workdir, env=erl_env(),
                          capture_output=True, text=True, timeout=120)
    assert (workdir / "relup").is_file(), f"make_relup failed: {made.stdout}{made.stderr}"
    # systools:make_tar leaves appups out; a relx or mix tarball ships them (added here).
    replace = {"releases/0.0.2/relup": (workdir / "relup").read_bytes()}
    if app_file is not None:
        replace["lib/counter-0.0.2/ebin/counter.app"] = files["counter.app"]
    add = {f"lib/counter-0.0.2/ebin/{name}": data for name, data in files.items()
           if name != "counter.app"}
    return _add_members(rewrite_tarball(build.tarball("0.0.2"), dest, replace), add)


def _add_members(tarball: Path, add: Mapping[str, bytes]) -> Path:
    """``tarball`` rewritten in place with the members of ``add`` appended."""
    if not add:
        return tarball
    tmp = tarball.with_name(tarball.name + ".tmp")
    with tarfile.open(tarball, "r:gz") as tin, tarfile.open(tmp, "w:gz") as tout:
        for member in tin:
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tout.addfile(info, io.BytesIO(data))
    tmp.replace(tarball)
    return tarball
