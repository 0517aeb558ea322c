"""Build the ``counter`` example as a relx release with Debian's real ``rebar3``, and boot it
with relx's own start script.

Responsibility: turn ``examples/counter/<vsn>/`` into what a rebar3 user has, offline (HOME
and REBAR_CACHE_DIR inside the output directory, no dependencies, no Hex, REBAR_OFFLINE):

* one rebar3 project; ``rebar3 release`` of 0.0.1, then of 0.0.2 into the same
  ``_build/default/rel/counter`` (as a user bumps the version), ``rebar3 relup`` 0.0.1 ->
  0.0.2 (relx's own, made from the appup rebar3 copies from the project's ``ebin/``), and
  ``rebar3 tar`` of 0.0.2; ``include_erts`` false: the node runs the host's OTP, and relx's
  script finds its ERTS through ``erl`` on PATH;
* runtime config as relx ships it: ``sys_config_src`` and ``vm_args_src`` with ``${VAR}``s,
  which relx's start script renders from the OS environment at every boot;
* an installed 0.0.1 target: the release directory as rebar3 left it after the first build
  (relx writes ``releases/RELEASES`` and ``start_erl.data`` itself).

:func:`start_relx_node` boots a target with ``bin/counter foreground`` (relx's script execs
erlexec, which execs the emulator: the pid is beam's). relx's ``bin/counter`` names its
release version itself (``bin/counter-VSN`` is copied over it when a version is made
permanent); it does not read ``start_erl.data``.

CLI: ``python -m tests.tools.rebar3_fixture OUT_DIR`` builds and prints a summary.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.tools.otp_procs import (
    NodeProc,
    OtpProcessError,
    await_started,
    clean_env,
    epmd_names,
    split_name,
    write_cookie_home,
)
from tests.tools.release_fixture import EXAMPLE_DIR, ReleaseBuildError, erl_env

REL_NAME = "counter"
BASE_VSN = "0.0.1"
UPGRADE_VSN = "0.0.2"

# relx renders these at boot from the node's environment (sys_config_src / vm_args_src).
SYS_CONFIG_SRC = {
    BASE_VSN: '[{counter, [{greeting, "${GREETING}"}]},\n {kernel, [{logger_level, notice}]}].\n',
    UPGRADE_VSN: ('[{counter, [{greeting, "${GREETING} (0.0.2)"}, {mode, normal}]},\n'
                  ' {kernel, [{logger_level, notice}]}].\n'),
}
# The node name comes from the environment, as relx users do it; a private epmd (the
# ERL_EPMD_PORT of the environment), never the system one, and distribution on loopback.
VM_ARGS_SRC = """\
-sname ${RELX_TEST_NODE}
-start_epmd false
-kernel inet_dist_use_interface {127,0,0,1}
"""


def rebar3_missing_reason() -> str | None:
    if shutil.which("rebar3") is None:
        return "needs rebar3: not found on PATH (.ci/setup installs Debian's rebar3)"
    return None


@dataclass(frozen=True)
class Rebar3Build:
    """What :func:`build_rebar3_release` made; paths are absolute."""

    out_dir: Path
    name: str
    project: Path          # the rebar3 project (rebar.config, src/, _build/)
    release_dir: Path      # _build/default/rel/counter after both builds
    tarball: Path          # `rebar3 tar` of 0.0.2 (its relup made by `rebar3 relup`)
    target_template: Path  # installed 0.0.1; copy, never mutate
    build_seconds: float


def _rebar_config(vsn: str) -> str:
    return f"""\
{{erl_opts, [debug_info]}}.
{{deps, []}}.
{{relx, [{{release, {{{REL_NAME}, "{vsn}"}}, [sasl, {REL_NAME}]}},
        {{sys_config_src, "config/sys.config.src"}},
        {{vm_args_src, "config/vm.args.src"}},
        {{include_erts, false}},
        {{include_src, false}},
        {{dev_mode, false}},
        {{extended_start_script, true}}]}}.
"""


def _rebar3(out_dir: Path, project: Path, *args: str) -> str:
    home = out_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = erl_env()
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "REBAR_CACHE_DIR": str(out_dir / "rebar_cache"),
        "REBAR_GLOBAL_CONFIG_DIR": str(home / ".config" / "rebar3"),
        "REBAR_OFFLINE": "1",  # no dependency means no Hex anyway; this makes sure
        "REBAR_COLOR": "none",
    })
    argv = ["rebar3", *args]
    try:
        proc = subprocess.run(argv, cwd=project, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ReleaseBuildError(" ".join(argv), argv, -1, "timed out") from exc
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise ReleaseBuildError(" ".join(argv), argv, proc.returncode, output)
    return output


def _write_version(project: Path, vsn: str) -> None:
    """The project's sources, config and rebar.config as they are at ``vsn``."""
    src = project / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for erl in (EXAMPLE_DIR / vsn / "src").glob("*.erl"):
        shutil.copy2(erl, src / erl.name)
    # The example's .app is what rebar3 wants as the .app.src (same term, vsn included).
    shutil.copy2(EXAMPLE_DIR / vsn / "ebin" / f"{REL_NAME}.app", src / f"{REL_NAME}.app.src")
    # rebar3 copies a project's ebin/ (the appup) next to the beams it compiles.
    appup = EXAMPLE_DIR / vsn / "ebin" / f"{REL_NAME}.appup"
    ebin = project / "ebin"
    shutil.rmtree(ebin, ignore_errors=True)
    if appup.is_file():
        ebin.mkdir()
        shutil.copy2(appup, ebin / appup.name)
    config = project / "config"
    config.mkdir(exist_ok=True)
    (config / "sys.config.src").write_text(SYS_CONFIG_SRC[vsn])
    (config / "vm.args.src").write_text(VM_ARGS_SRC)
    (project / "rebar.config").write_text(_rebar_config(vsn))


def build_rebar3_release(out_dir: Path) -> Rebar3Build:
    """Both releases, rebar3's relup and tarball of 0.0.2, and the installed 0.0.1 target.

    Layout afterwards::

        out_dir/project/                       (rebar3 project, _build inside)
        out_dir/project/_build/default/rel/counter/counter-0.0.2.tar.gz
        out_dir/target-0.0.1/                  (installed target, as rebar3 built it)
    """
    started = time.monotonic()
    out_dir = out_dir.resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ReleaseBuildError("prepare", [], 0, f"{out_dir} is not empty")
    project = out_dir / "project"
    release_dir = project / "_build" / "default" / "rel" / REL_NAME
    target = out_dir / f"target-{BASE_VSN}"

    _write_version(project, BASE_VSN)
    _rebar3(out_dir, project, "release")
    shutil.copytree(release_dir, target, symlinks=True)

    _write_version(project, UPGRADE_VSN)
    _rebar3(out_dir, project, "release")
    _rebar3(out_dir, project, "relup", "--relname", REL_NAME, "--relvsn", UPGRADE_VSN,
            "--upfrom", BASE_VSN)
    _rebar3(out_dir, project, "tar", "--relname", REL_NAME, "--relvsn", UPGRADE_VSN)
    tarball = release_dir / f"{REL_NAME}-{UPGRADE_VSN}.tar.gz"
    for needed in (tarball, release_dir / "releases" / UPGRADE_VSN / "relup",
                   target / "releases" / "RELEASES", target / "bin" / REL_NAME):
        if not needed.is_file():
            raise ReleaseBuildError("rebar3 build", [], 0, f"{needed} was not made")
    return Rebar3Build(out_dir, REL_NAME, project, release_dir, tarball, target,
                       time.monotonic() - started)


def make_target_copy(build: Rebar3Build, dest: Path) -> Path:
    """A fresh copy of the installed 0.0.1 target at ``dest`` (must not exist). relx's
    RELEASES names libraries relative to the root (``./lib/...``): the copy needs no edit."""
    dest = dest.resolve()
    shutil.copytree(build.target_template, dest, symlinks=True)
    return dest


def start_relx_node(target_root: Path, name: str = f"{REL_NAME}@localhost", *, cookie: str,
                    epmd_port: int, workdir: Path, timeout: float = 30.0,
                    node_env: Mapping[str, str] | None = None) -> NodeProc:
    """Boot ``target_root`` with relx's ``bin/counter foreground`` and wait until it is ready.

    relx's script reads the node name from the rendered vm.args (RELX_TEST_NODE here) and the
    cookie from ``$HOME/.erlang.cookie`` (never on a command line). Arguments after
    ``foreground`` reach the node as plain arguments only, so the ready signal (a file written
    once the boot script finished) goes in through ERL_FLAGS, which erlexec reads; its
    backslashes keep erlexec's own quote handling from eating the string's quotes."""
    alive, host = split_name(name)
    full_name = f"{alive}@{host}"
    wdir = workdir.resolve()
    wdir.mkdir(parents=True, exist_ok=True)
    home = wdir / "home"
    write_cookie_home(home, cookie)
    ready_file = wdir / "booted"
    ready_file.unlink(missing_ok=True)
    if alive in epmd_names(epmd_port):
        raise OtpProcessError(f"{alive!r} is already registered with epmd on port {epmd_port}")
    root = target_root.resolve()
    env = clean_env({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_CRASH_DUMP": str(wdir / "erl_crash.dump"),
        "RELX_TEST_NODE": full_name,
        "RELCTL_READY_FILE": str(ready_file),
        "ERL_FLAGS": r'-eval ok=file:write_file(os:getenv(\"RELCTL_READY_FILE\"),<<>>)',
    })
    for noise in ("RELX_REPLACE_OS_VARS", "RELX_OUT_FILE_PATH", "RELX_COOKIE", "VMARGS_PATH",
                  "RELX_CONFIG_PATH", "RELX_MULTI_NODE", "CODE_LOADING_MODE"):
        env.pop(noise, None)
    env.update(node_env or {})
    t0 = time.monotonic()
    with open(wdir / "node.log", "ab") as log:
        proc = subprocess.Popen([str(root / "bin" / REL_NAME), "foreground"], cwd=wdir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    node = NodeProc(proc, name=full_name, cookie=cookie, epmd_port=epmd_port, root=root,
                    workdir=wdir, owns_workdir=False)
    return await_started(node, proc, ready_file, timeout, t0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.rebar3_fixture",
                                     description="Build the counter example as a relx release "
                                                 "with rebar3 (0.0.1, 0.0.2, relup, tarball).")
    parser.add_argument("out_dir", type=Path, help="empty or missing output directory")
    args = parser.parse_args(argv)
    reason = rebar3_missing_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    try:
        build = build_rebar3_release(args.out_dir)
    except ReleaseBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    with tarfile.open(build.tarball) as tar:
        members = tar.getnames()
    print(f"{build.name} built by rebar3 in {build.build_seconds:.2f}s under {build.out_dir}")
    print(f"  tarball: {build.tarball} ({len(members)} members)")
    print("\n".join(f"      {m}" for m in members if not m.startswith("lib/")))
    print(f"  installed target ({BASE_VSN}): {build.target_template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
