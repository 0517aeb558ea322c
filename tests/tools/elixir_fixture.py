"""Build the Elixir ``ex_counter`` example into mix releases and start it as a real node.

Responsibility: turn ``examples/elixir_counter/<vsn>/`` (mix projects without dependencies)
into what a user of relctl has after ``mix release``, using only Debian's ``elixir`` and the
installed OTP:

* one ``MIX_ENV=prod mix release`` per version, built in a copy of the sources under the
  output directory, with HOME, MIX_HOME and HEX_HOME there too (nothing is written to the
  real home, and without dependencies mix never asks Hex or the network);
* the relup 0.0.1 <-> 0.0.2 and the upgrade tarball, made by relctl's own helper
  (:mod:`agent.build.relup`, i.e. ``relctl make-relup``) as a user would;
* an installed 0.0.1 target: the 0.0.1 release directory as mix left it, so with no
  ``releases/RELEASES`` (relctl's agent creates it on first contact).

:func:`start_elixir_node` boots a copy of the target through mix's own ``bin/ex_counter
start``, in the foreground: the start scripts exec all the way down, so the pid is the
emulator's. Processes are owned and stopped as in :mod:`tests.tools.otp_procs`.

CLI: ``python -m tests.tools.elixir_fixture OUT_DIR`` builds and prints a summary.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from agent.build.relup import RelupError, RelupResult
from agent.build.relup import build as build_relup
from tests.tools.otp_procs import (
    NodeProc,
    OtpProcessError,
    clean_env,
    split_name,
    write_cookie_home,
    await_started,
    epmd_names,
)
from tests.tools.release_fixture import REPO_ROOT, ReleaseBuildError, erl_env

EXAMPLE_DIR = REPO_ROOT / "examples" / "elixir_counter"
REL_NAME = "ex_counter"
BASE_VSN = "0.0.1"
UPGRADE_VSN = "0.0.2"
VERSIONS: tuple[str, ...] = (BASE_VSN, UPGRADE_VSN)
ELIXIR_TOOLS: tuple[str, ...] = ("elixir", "mix")
COUNTER = "'Elixir.ExCounter.Counter'"  # the registered GenServer, as Erlang spells it

# What the caller's environment could slip into mix or into the release's start scripts.
_ELIXIR_ENV_PREFIXES = ("MIX_", "HEX_", "ELIXIR_", "RELEASE_")


def elixir_missing_reason() -> str | None:
    missing = [tool for tool in ELIXIR_TOOLS if shutil.which(tool) is None]
    if not missing:
        return None
    return f"needs Elixir: {', '.join(missing)} not found on PATH (.ci/setup installs it)"


def _without_elixir_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(_ELIXIR_ENV_PREFIXES)}


@dataclass(frozen=True)
class ElixirBuild:
    """Everything :func:`build_elixir_release` produced; paths are absolute."""

    out_dir: Path
    name: str
    release_dirs: Mapping[str, Path]  # vsn -> _build/prod/rel/ex_counter of that version
    relup: RelupResult           # what `relctl make-relup` made, tarball included
    target_template: Path             # installed 0.0.1; copy, never mutate
    build_seconds: float

    @property
    def tarball(self) -> Path:
        """The 0.0.2 upgrade tarball (systools layout), for `relctl upgrade --tarball`."""
        assert self.relup.tarball is not None
        return self.relup.tarball.path


def _mix_release(src: Path, out_dir: Path) -> Path:
    """``MIX_ENV=prod mix release`` in ``src``; returns the release directory."""
    home = out_dir / "home"
    env = _without_elixir_env(erl_env())
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "MIX_HOME": str(out_dir / "mix_home"),
        "HEX_HOME": str(out_dir / "hex_home"),
        "HEX_OFFLINE": "1",  # belt and braces: no dependency means no Hex anyway
        "MIX_ENV": "prod",
    })
    home.mkdir(parents=True, exist_ok=True)
    argv = ["mix", "release", "--overwrite", "--quiet"]
    try:
        proc = subprocess.run(argv, cwd=src, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=300, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ReleaseBuildError(f"mix release in {src}", argv, -1, "timed out") from exc
    if proc.returncode != 0:
        raise ReleaseBuildError(f"mix release in {src}", argv, proc.returncode,
                                proc.stdout.decode("utf-8", "replace"))
    return src / "_build" / "prod" / "rel" / REL_NAME


def build_elixir_release(out_dir: Path) -> ElixirBuild:
    """Build both versions, the relup and tarball, and the installed 0.0.1 target.

    Layout afterwards::

        out_dir/src/<vsn>/                       (copied mix project, _build inside)
        out_dir/src/<vsn>/_build/prod/rel/ex_counter/   (the release of <vsn>)
        out_dir/ex_counter-0.0.2.tar.gz          (upgrade tarball)
        out_dir/target-0.0.1/                    (installed target, no RELEASES)
    """
    started = time.monotonic()
    out_dir = out_dir.resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ReleaseBuildError("prepare", [], 0, f"{out_dir} is not empty")
    release_dirs: dict[str, Path] = {}
    for vsn in VERSIONS:
        src = out_dir / "src" / vsn
        shutil.copytree(EXAMPLE_DIR / vsn, src)
        release_dirs[vsn] = _mix_release(src, out_dir)
    try:
        made = build_relup(release_dirs[BASE_VSN], release_dirs[UPGRADE_VSN],
                           tarball=out_dir / f"{REL_NAME}-{UPGRADE_VSN}.tar.gz")
    except RelupError as exc:
        raise ReleaseBuildError("relctl make-relup", [], 0, str(exc)) from exc
    target = out_dir / f"target-{BASE_VSN}"
    shutil.copytree(release_dirs[BASE_VSN], target, symlinks=True)
    return ElixirBuild(out_dir, REL_NAME, MappingProxyType(release_dirs), made, target,
                       time.monotonic() - started)


def make_target_copy(build: ElixirBuild, dest: Path) -> Path:
    """A fresh copy of the installed 0.0.1 target at ``dest`` (must not exist)."""
    dest = dest.resolve()
    shutil.copytree(build.target_template, dest, symlinks=True)
    return dest


def start_elixir_node(target_root: Path, name: str = f"{REL_NAME}@localhost", *,
                      cookie: str, epmd_port: int, workdir: Path,
                      timeout: float = 30.0, node_env: Mapping[str, str] | None = None) -> NodeProc:
    """Boot ``target_root`` with mix's ``bin/ex_counter start`` and wait until it is ready.

    The name and cookie are given as mix releases take them (RELEASE_NODE, RELEASE_COOKIE;
    mix's script puts the cookie on the emulator's command line, as it does for every mix
    user); the probes of :mod:`tests.tools.otp_procs` find it in ``workdir/home``. Ready means
    the boot script finished (a file written from ``-eval``) and the node is registered with
    the private epmd. ``stop()`` of the result stops it by pid.
    """
    alive, host = split_name(name)
    full_name = f"{alive}@{host}"
    wdir = workdir.resolve()
    wdir.mkdir(parents=True, exist_ok=True)
    write_cookie_home(wdir / "home", cookie)
    ready_file = wdir / "booted"
    ready_file.unlink(missing_ok=True)
    if alive in epmd_names(epmd_port):
        raise OtpProcessError(f"{alive!r} is already registered with epmd on port {epmd_port}")
    root = target_root.resolve()
    # mix's scripts pass ELIXIR_ERL_OPTIONS to erl unquoted, split at blanks: no blank
    # may occur inside one argument, hence the file name from the environment.
    erl_options = ("-start_epmd false -kernel inet_dist_use_interface {127,0,0,1} "
                   '-eval ok=file:write_file(os:getenv("RELCTL_READY_FILE"),<<>>)')
    env = _without_elixir_env(clean_env({
        "HOME": str(wdir / "home"),
        "XDG_CONFIG_HOME": str(wdir / "home" / ".config"),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_CRASH_DUMP": str(wdir / "erl_crash.dump"),
        "RELCTL_READY_FILE": str(ready_file),
    }))
    env.update({
        "RELEASE_NODE": full_name,
        "RELEASE_DISTRIBUTION": "sname",
        "RELEASE_COOKIE": cookie,
        "RELEASE_TMP": str(wdir / "release_tmp"),  # mix's default is inside the root
        "ELIXIR_ERL_OPTIONS": erl_options,
        **(node_env or {}),  # the node's own variables, e.g. what runtime.exs reads
    })
    t0 = time.monotonic()
    with open(wdir / "node.log", "ab") as log:
        proc = subprocess.Popen([str(root / "bin" / REL_NAME), "start"], cwd=wdir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    node = NodeProc(proc, name=full_name, cookie=cookie, epmd_port=epmd_port, root=root,
                    workdir=wdir, owns_workdir=False)
    return await_started(node, proc, ready_file, timeout, t0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.elixir_fixture",
                                     description="Build the ex_counter mix releases (0.0.1, "
                                                 "0.0.2), their relup and upgrade tarball.")
    parser.add_argument("out_dir", type=Path, help="empty or missing output directory")
    args = parser.parse_args(argv)
    reason = elixir_missing_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    build = build_elixir_release(args.out_dir)
    tar = build.relup.tarball
    assert tar is not None
    print(f"{build.name} built in {build.build_seconds:.2f}s under {build.out_dir}")
    for vsn, path in build.release_dirs.items():
        print(f"  {vsn}: {path}")
    print(f"  relup: {build.relup.relup}")
    print(f"  tarball: {tar.path} ({tar.size} bytes, {tar.members} members)")
    print(f"  installed target ({BASE_VSN}): {build.target_template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
