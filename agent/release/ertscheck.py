"""Does the ERTS a tarball ships run on this host? Asked at preflight, before anything changes,
because the node learns it too late: an ERTS change restarts the emulator
(``restart_new_emulator``), and a node under ``heart`` whose new ``erlexec`` cannot start (other
architecture, newer C library, a file missing) never comes back.

The tarball's ``erts-VSN/bin`` is copied into a private temporary dir (no node involved, nothing
under the release root) and its ``erlexec`` started with that dir as its ``BINDIR``, on a boot
script of one instruction that halts with :data:`STATUS`: that status proves ``erlexec`` and
the emulator it starts both ran here, and no code of the release (nor any Erlang code at all)
was loaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from bridge import Atom, encode

from .tarballs import ReleaseTarball, normalise

STATUS = 73  # what the boot script halts with; erlexec's own failures are 1 or 127
_BOOT = encode((Atom("script"), ("relctl_erts_check", "1"),
                [(Atom("preLoaded"), []), (Atom("progress"), Atom("preloaded")),
                 (Atom("apply"), (Atom("erlang"), Atom("halt"), [STATUS]))]))


def _copy_bin(tarball: ReleaseTarball, dest: Path) -> int:
    """Copy the regular files of erts-VSN/bin/ (validated names, no links) into ``dest``."""
    wanted = re.compile(rf"erts-{re.escape(tarball.erts_version)}/bin/[^/]+")
    copied = 0
    with tarfile.open(tarball.path, "r|gz") as tar:
        for info in tar:
            name = normalise(info.name)
            if not (info.isreg() and wanted.fullmatch(name)):
                continue
            source = tar.extractfile(info)
            assert source is not None
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(target, 0o700 if info.mode & 0o111 else 0o600)
            copied += 1
    return copied


def erts_runs_here(tarball: ReleaseTarball, *, timeout: float = 20.0) -> str | None:
    """None when the tarball's ERTS starts on this host; else what went wrong, in words."""
    erts = f"erts-{tarball.erts_version}"
    with tempfile.TemporaryDirectory(prefix="relctl-erts-check-") as tmp:
        root = Path(tmp)
        try:
            _copy_bin(tarball, root)
        except (OSError, tarfile.TarError, EOFError) as exc:
            return f"its {erts}/bin could not be copied out of the tarball to try it ({exc})"
        bindir = root / erts / "bin"
        erlexec = bindir / "erlexec"
        if not erlexec.is_file():
            return f"the tarball has no {erts}/bin/erlexec"
        (root / "check.boot").write_bytes(_BOOT)
        env = {"BINDIR": str(bindir), "ROOTDIR": str(root), "EMU": "beam", "PROGNAME": "erl",
               "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
        try:
            done = subprocess.run([str(erlexec), "-boot", str(root / "check"), "-noshell",
                                   "-noinput"], env=env, cwd=root,
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"its {erts}/bin/erlexec did not finish within {timeout:g} s"
        except OSError as exc:
            # ENOEXEC: another architecture; ENOENT: a missing program loader.
            return f"its {erts}/bin/erlexec cannot be started here: {exc.strerror or exc}"
        if done.returncode == STATUS:
            return None
        said = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        return (f"its {erts}/bin/erlexec exited {done.returncode} instead of starting the "
                f"emulator" + (f": {said[-1][:300]}" if said else ""))
