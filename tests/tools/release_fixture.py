"""Build the ``counter`` example into a real OTP release fixture.

Responsibility: turn the sources under ``examples/counter/<vsn>/`` into what
a production deployment of an Erlang release looks like, using only the
installed Erlang/OTP (``erlc``, ``erl`` and ``systools``; no rebar3, no hex):

* ``lib/counter-<vsn>/`` for every version (compiled beams, .app, .appup);
* ``counter-<vsn>.rel``, boot scripts, a ``relup`` (0.0.2 <-> 0.0.1) and one
  ``systools:make_tar`` tarball per version, ERTS included;
* an *installed* 0.0.1 target directory laid out as in OTP's "Creating a
  target system" guide (``releases/RELEASES``, ``releases/start_erl.data``,
  ``bin/counter`` ...), which tests copy with :func:`make_target_copy` and
  then upgrade in place with ``release_handler``.

This module only runs short-lived ``erl``/``erlc`` commands; starting and
stopping nodes is the job of :mod:`tests.tools.otp_procs`.

CLI: ``python -m tests.tools.release_fixture OUT_DIR`` builds and prints a
summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from tests.tools import otp_select

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO_ROOT / "examples" / "counter"

REL_NAME = "counter"
BASE_VSN = "0.0.1"
UPGRADE_VSN = "0.0.2"
VERSIONS: tuple[str, ...] = (BASE_VSN, UPGRADE_VSN)

# The OTP applications the release is made of, besides counter itself.
# sasl must be there: release_handler (unpack/install/make_permanent) is
# part of it and only runs if sasl is started in the target node.
OTP_APPS: tuple[str, ...] = ("kernel", "stdlib", "sasl")

# Erlang commands run for building must not pick up a user's ~/.erlang.
_ERL_BASE_ARGS: tuple[str, ...] = ("-boot", "no_dot_erlang", "-noshell", "-noinput")

# Environment variables that would silently change how erl/erlc behave.
_ERL_ENV_NOISE: tuple[str, ...] = (
    "ERL_FLAGS",
    "ERL_AFLAGS",
    "ERL_ZFLAGS",
    "ERL_LIBS",
    "ERL_COMPILER_OPTIONS",
    "ERL_ROOTDIR",
)


class ReleaseBuildError(RuntimeError):
    """A build step failed; the message carries the command and its output."""

    def __init__(self, step: str, argv: Sequence[str], returncode: int, output: str) -> None:
        self.step = step
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output
        if not argv:
            super().__init__(f"release build step {step!r} failed: {output.rstrip()}")
            return
        super().__init__(
            f"release build step {step!r} failed (exit {returncode})\n"
            f"command: {' '.join(self.argv)}\n--- output ---\n{output.rstrip()}"
        )


@dataclass(frozen=True)
class OtpInstall:
    """Versions of the Erlang/OTP found on PATH, discovered by running it."""

    root_dir: Path
    otp_release: str
    erts_vsn: str
    app_vsns: Mapping[str, str]  # kernel/stdlib/sasl -> version


@dataclass(frozen=True)
class ReleaseVersion:
    """One built version of the counter release."""

    vsn: str
    rel_file: Path  # counter-<vsn>.rel in the version's build dir
    build_dir: Path  # where make_script/make_relup/make_tar ran
    tarball: Path  # counter-<vsn>.tar.gz made by systools:make_tar
    # release_handler:unpack_release/1 argument once the tarball is copied
    # to ROOT/releases/<unpack_name>.tar.gz
    unpack_name: str
    tar_members: tuple[str, ...]  # sorted member names of the tarball
    has_relup: bool


@dataclass(frozen=True)
class ReleaseBuild:
    """Everything :func:`build_release` produced; paths are absolute."""

    out_dir: Path
    name: str
    otp: OtpInstall
    versions: Mapping[str, ReleaseVersion]
    base_vsn: str  # version installed in target_template
    upgrade_vsn: str  # version only available as a tarball
    target_template: Path  # installed base_vsn target; copy, never mutate
    build_seconds: float

    @property
    def erts_vsn(self) -> str:
        return self.otp.erts_vsn

    @property
    def app_vsns(self) -> Mapping[str, str]:
        """Versions of every application in the release, counter excluded."""
        return self.otp.app_vsns

    @property
    def tarballs(self) -> Mapping[str, Path]:
        """systools:make_tar tarball of each version."""
        return MappingProxyType({vsn: rel.tarball for vsn, rel in self.versions.items()})

    @property
    def unpack_names(self) -> Mapping[str, str]:
        """release_handler:unpack_release/1 argument of each version."""
        return MappingProxyType({vsn: rel.unpack_name for vsn, rel in self.versions.items()})

    def tarball(self, vsn: str) -> Path:
        return self.versions[vsn].tarball

    def unpack_name(self, vsn: str) -> str:
        return self.versions[vsn].unpack_name


# ---------------------------------------------------------------------------
# running erl / erlc


def erl_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _ERL_ENV_NOISE}


def _run(step: str, argv: Sequence[str], *, cwd: Path, timeout: float = 120.0) -> str:
    """Run a command to completion; raise ReleaseBuildError unless it exits 0."""
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=erl_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode("utf-8", "replace") if isinstance(exc.output, bytes) else ""
        raise ReleaseBuildError(step, argv, -1, f"timed out after {timeout}s\n{out}") from exc
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise ReleaseBuildError(step, argv, proc.returncode, output)
    return output


def erl_string(text: str | Path) -> str:
    """Quote ``text`` as an Erlang string literal."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _erl_list(items: Sequence[str | Path]) -> str:
    return "[" + ", ".join(erl_string(i) for i in items) + "]"


def _run_erl_step(step: str, expr: str, *, cwd: Path, erl: str | None = None) -> str:
    """Evaluate ``expr`` in a fresh ``erl``; it must return ``ok`` or ``{ok, ...}``.

    Anything else (``error``, ``{error, ...}``, an exception) becomes a
    ReleaseBuildError carrying everything the step printed, which is where
    systools explains what went wrong.
    """
    program = (
        "Result = try begin " + expr + " end\n"
        "         catch Class:Reason:Stack -> {exception, Class, Reason, Stack} end,\n"
        "case Result of\n"
        "    ok -> halt(0);\n"
        "    _ when element(1, Result) =:= ok -> halt(0);\n"
        '    _ -> io:format("~nstep result: ~tp~n", [Result]), halt(1)\n'
        "end."
    )
    return _run(step, [erl or otp_select.erl(), *_ERL_BASE_ARGS, "-eval", program], cwd=cwd)


def discover_otp(erl: str = "erl") -> OtpInstall:
    """Ask the installed OTP for its ERTS and application versions."""
    apps = _erl_list(list(OTP_APPS))
    program = (
        "Apps = [list_to_atom(A) || A <- " + apps + "],\n"
        "[ok = application:load(A) || A <- Apps, A =/= kernel, A =/= stdlib],\n"
        'io:format("root ~ts~n", [code:root_dir()]),\n'
        'io:format("otp ~ts~n", [erlang:system_info(otp_release)]),\n'
        'io:format("erts ~ts~n", [erlang:system_info(version)]),\n'
        "[begin {ok, V} = application:get_key(A, vsn),\n"
        '       io:format("app ~ts ~ts~n", [A, V]) end || A <- Apps],\n'
        "halt(0)."
    )
    out = _run("discover OTP versions", [erl, *_ERL_BASE_ARGS, "-eval", program], cwd=Path.cwd())
    root = otp = erts = ""
    app_vsns: dict[str, str] = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "root":
            root = rest
        elif key == "otp":
            otp = rest
        elif key == "erts":
            erts = rest
        elif key == "app":
            app, _, vsn = rest.partition(" ")
            app_vsns[app] = vsn
    if not (root and otp and erts) or set(app_vsns) != set(OTP_APPS):
        raise ReleaseBuildError("discover OTP versions", [erl], 0, f"unexpected output:\n{out}")
    return OtpInstall(
        root_dir=Path(root),
        otp_release=otp,
        erts_vsn=erts,
        app_vsns=MappingProxyType(dict(app_vsns)),
    )


# ---------------------------------------------------------------------------
# generated files


def rel_file_text(vsn: str, otp: OtpInstall) -> str:
    apps = [f'{{{app}, "{otp.app_vsns[app]}"}}' for app in OTP_APPS]
    apps.append(f'{{{REL_NAME}, "{vsn}"}}')
    return (
        f'{{release, {{"{REL_NAME}", "{vsn}"}}, {{erts, "{otp.erts_vsn}"}},\n'
        " [" + ",\n  ".join(apps) + "]}.\n"
    )


def vm_args_text(vsn: str) -> str:
    return f"""\
## vm.args of {REL_NAME} {vsn}, generated by tests/tools/release_fixture.py.
## The node name (-sname) and the cookie ($HOME/.erlang.cookie) differ per
## test run, so they are given at start time and never written here.
##
## Tests run a private epmd on a free port (ERL_EPMD_PORT); the node must
## neither start nor use the system epmd.
-start_epmd false
## Distribution stays on loopback.
-kernel inet_dist_use_interface {{127,0,0,1}}
"""


# Foreground start of the release. ``exec`` all the way down: erlexec execs
# beam.smp, so the pid of whoever runs this script is the emulator's pid and
# can be signalled and reaped directly. The root is found from the script's
# own location, so a copied target needs no rewriting.
_START_SCRIPT = """\
#!/bin/sh
# Start the {name} release in the foreground. Generated by
# tests/tools/release_fixture.py: Debian's erlang-base has no erts *.src
# start templates and its own scripts hard-code /usr/lib/erlang.
# Extra arguments (e.g. -sname n@localhost) are passed on to the emulator.
die() {{ echo "{name}: $*" >&2; exit 1; }}
BIN_DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd -P) || die "cannot locate $0"
ROOTDIR=$(dirname -- "$BIN_DIR")
# start_erl.data holds "ERTS_VSN REL_VSN"; release_handler rewrites it on
# make_permanent, so a restart boots the permanent release. It writes no
# final newline, so read's exit status is no use: check the values.
read -r ERTS_VSN REL_VSN < "$ROOTDIR/releases/start_erl.data"
[ -n "$ERTS_VSN" ] && [ -n "$REL_VSN" ] || die "bad $ROOTDIR/releases/start_erl.data"
BINDIR="$ROOTDIR/erts-$ERTS_VSN/bin"
REL_DIR="$ROOTDIR/releases/$REL_VSN"
for f in "$BINDIR/erlexec" "$REL_DIR/start.boot" "$REL_DIR/sys.config" "$REL_DIR/vm.args"; do
    [ -f "$f" ] || die "missing $f"
done
EMU=beam
PROGNAME={name}
export ROOTDIR BINDIR EMU PROGNAME
exec "$BINDIR/erlexec" \\
    -boot "$REL_DIR/start" \\
    -config "$REL_DIR/sys" \\
    -args_file "$REL_DIR/vm.args" \\
    -mode embedded -noshell -noinput "$@"
"""

# A plain erl rooted at the target (Debian's erl scripts always point at
# /usr/lib/erlang). Without -boot, erlexec boots $ROOTDIR/bin/start.boot.
_ERL_SCRIPT = """\
#!/bin/sh
# erl for this target system (generated by tests/tools/release_fixture.py).
die() { echo "erl: $*" >&2; exit 1; }
BIN_DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd -P) || die "cannot locate $0"
ROOTDIR=$(dirname -- "$BIN_DIR")
read -r ERTS_VSN _REL_VSN < "$ROOTDIR/releases/start_erl.data"
[ -n "$ERTS_VSN" ] || die "bad $ROOTDIR/releases/start_erl.data"
BINDIR="$ROOTDIR/erts-$ERTS_VSN/bin"
EMU=beam
PROGNAME=erl
export ROOTDIR BINDIR EMU PROGNAME
exec "$BINDIR/erlexec" "$@"
"""

# Replaces the target's erts-<vsn>/bin/erl, which systools copied from the
# installed OTP: Debian's hard-codes ROOTDIR=/usr/lib/erlang even when moved.
_ERTS_ERL_SCRIPT = """\
#!/bin/sh
# erl of this target's ERTS (generated by tests/tools/release_fixture.py).
BINDIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd -P) || exit 1
ROOTDIR=$(CDPATH= cd -- "$BINDIR/../.." && pwd -P) || exit 1
EMU=beam
PROGNAME=erl
export ROOTDIR BINDIR EMU PROGNAME
exec "$BINDIR/erlexec" "$@"
"""


def _write(path: Path, text: str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if mode is not None:
        path.chmod(mode)


# ---------------------------------------------------------------------------
# build steps


def _compile_app(vsn: str, lib_root: Path, erlc: str) -> Path:
    """Compile examples/counter/<vsn> into lib/counter-<vsn>; return ebin."""
    src_dir = EXAMPLE_DIR / vsn / "src"
    app_dir = lib_root / f"{REL_NAME}-{vsn}"
    ebin = app_dir / "ebin"
    ebin.mkdir(parents=True)
    # Sources sit next to ebin as in any OTP application directory, which
    # also keeps systools from warning that they are missing.
    shutil.copytree(src_dir, app_dir / "src")
    sources = sorted(str(p) for p in (app_dir / "src").glob("*.erl"))
    _run(
        f"erlc counter {vsn}",
        [erlc, "-Wall", "+warnings_as_errors", "+debug_info", "-o", str(ebin), *sources],
        cwd=app_dir,
    )
    for meta in sorted((EXAMPLE_DIR / vsn / "ebin").iterdir()):
        if meta.suffix in (".app", ".appup"):
            shutil.copy2(meta, ebin / meta.name)
    return ebin


def _tar_members(tarball: Path) -> tuple[str, ...]:
    with tarfile.open(tarball, "r:gz") as tar:
        return tuple(sorted(m.name for m in tar.getmembers()))


def _create_releases(root: Path, rel_file: Path, erl: str) -> None:
    """(Re)write ROOT/releases/RELEASES for ``rel_file``, marked permanent.

    RELEASES records absolute application directories, which is why a
    copied target gets its own instead of inheriting the template's.
    """
    releases = root / "releases" / "RELEASES"
    releases.unlink(missing_ok=True)
    expr = (
        "release_handler:create_RELEASES("
        f"{erl_string(root)}, {erl_string(root / 'releases')}, {erl_string(rel_file)}, [])"
    )
    _run_erl_step("create_RELEASES", expr, cwd=root, erl=erl)


def extract_tar(tarball: Path, dest: Path) -> Path:
    """Extract a tarball the suite built itself into ``dest``.

    The "tar" filter exists from Python 3.11.4 (and 3.12 warns without a filter); Debian 12's
    own Python is 3.11.2, which extracts these trusted tarballs the same way without one."""
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, filter="tar")
        else:
            tar.extractall(dest)
    return dest


def _install_target(
    out_dir: Path, rel: ReleaseVersion, otp: OtpInstall, clean_boot: Path, erl: str
) -> Path:
    """Unpack ``rel`` into a fresh installed target system; return its root."""
    root = out_dir / f"target-{rel.vsn}"
    root.mkdir()
    extract_tar(rel.tarball, root)
    releases = root / "releases"
    _write(releases / "start_erl.data", f"{otp.erts_vsn} {rel.vsn}\n")
    _create_releases(root, releases / rel.vsn / f"{REL_NAME}-{rel.vsn}.rel", erl)
    for needed in ("start.boot", "sys.config", "vm.args"):
        if not (releases / rel.vsn / needed).is_file():
            raise ReleaseBuildError(
                "install target", [], 0, f"releases/{rel.vsn}/{needed} missing from the tarball"
            )
    bin_dir = root / "bin"
    _write(bin_dir / REL_NAME, _START_SCRIPT.format(name=REL_NAME), 0o755)
    _write(bin_dir / "erl", _ERL_SCRIPT, 0o755)
    erts_erl = root / f"erts-{otp.erts_vsn}" / "bin" / "erl"
    erts_erl.unlink()
    _write(erts_erl, _ERTS_ERL_SCRIPT, 0o755)
    shutil.copy2(clean_boot, bin_dir / "start.boot")
    shutil.copy2(clean_boot, bin_dir / "start_clean.boot")
    return root


def build_release(out_dir: Path, *, erl: str | None = None,
                  erlc: str | None = None) -> ReleaseBuild:
    """Build every version of counter, the tarballs and the 0.0.1 target.

    ``out_dir`` must not exist or be empty. Layout afterwards::

        out_dir/lib/counter-<vsn>/{src,ebin}
        out_dir/build/<vsn>/counter-<vsn>.{rel,script,boot,tar.gz}, sys.config,
                            vm.args (+ relup for the upgrade version)
        out_dir/build/start_clean/start_clean.{rel,boot}   (for bin/erl)
        out_dir/target-0.0.1/                              (installed target)
    """
    started = time.monotonic()
    out_dir = out_dir.resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ReleaseBuildError("prepare", [], 0, f"{out_dir} is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every erl step of the build (those below that name none too) uses the chosen OTP.
    erl, erlc = erl or otp_select.erl(), erlc or otp_select.erlc()
    otp = discover_otp(erl)

    lib_root = out_dir / "lib"
    ebins = {vsn: _compile_app(vsn, lib_root, erlc) for vsn in VERSIONS}

    build_root = out_dir / "build"
    build_dirs: dict[str, Path] = {}
    for vsn in VERSIONS:
        bdir = build_root / vsn
        bdir.mkdir(parents=True)
        build_dirs[vsn] = bdir
        _write(bdir / f"{REL_NAME}-{vsn}.rel", rel_file_text(vsn, otp))
        shutil.copy2(EXAMPLE_DIR / vsn / "config" / "sys.config", bdir / "sys.config")
        _write(bdir / "vm.args", vm_args_text(vsn))
        # Default paths are relative to $ROOT, which is what a target needs.
        _run_erl_step(
            f"make_script {vsn}",
            f'systools:make_script("{REL_NAME}-{vsn}", '
            f"[{{path, {_erl_list([ebins[vsn]])}}}, warnings_as_errors])",
            cwd=bdir, erl=erl,
        )

    # Relups live with the newer release and describe both directions:
    # up from BASE_VSN and down to it. The base .rel and both ebins must be
    # on the path; systools picks the .app whose vsn matches each .rel.
    upgrade_dir = build_dirs[UPGRADE_VSN]
    base_rel = f"{REL_NAME}-{BASE_VSN}"
    _run_erl_step(
        f"make_relup {UPGRADE_VSN}",
        f'systools:make_relup("{REL_NAME}-{UPGRADE_VSN}", ["{base_rel}"], ["{base_rel}"], '
        f"[{{path, {_erl_list([build_dirs[BASE_VSN], ebins[BASE_VSN], ebins[UPGRADE_VSN]])}}}, "
        "warnings_as_errors])",
        cwd=upgrade_dir, erl=erl,
    )

    # make_tar looks for start.boot/relup/sys.config next to the .rel first,
    # which is why every version is tarred from its own build dir.
    versions: dict[str, ReleaseVersion] = {}
    for vsn in VERSIONS:
        bdir = build_dirs[vsn]
        rel_stem = f"{REL_NAME}-{vsn}"
        _run_erl_step(
            f"make_tar {vsn}",
            f'systools:make_tar("{rel_stem}", ['
            f"{{erts, code:root_dir()}}, {{path, {_erl_list([ebins[vsn]])}}}, "
            f'{{extra_files, [{{"vm.args", "releases/{vsn}/vm.args"}}]}}])',
            cwd=bdir, erl=erl,
        )
        tarball = bdir / f"{rel_stem}.tar.gz"
        members = _tar_members(tarball)
        versions[vsn] = ReleaseVersion(
            vsn=vsn,
            rel_file=bdir / f"{rel_stem}.rel",
            build_dir=bdir,
            tarball=tarball,
            # unpack_release/1 extracts releases/<Name>.rel from
            # releases/<Name>.tar.gz; systools names both after the .rel stem.
            unpack_name=rel_stem,
            tar_members=members,
            has_relup=f"releases/{vsn}/relup" in members,
        )

    # A kernel+stdlib boot for bin/erl (the guide's "plain" release).
    clean_dir = build_root / "start_clean"
    clean_dir.mkdir()
    _write(
        clean_dir / "start_clean.rel",
        f'{{release, {{"start_clean", "{otp.otp_release}"}}, {{erts, "{otp.erts_vsn}"}},\n'
        f' [{{kernel, "{otp.app_vsns["kernel"]}"}}, {{stdlib, "{otp.app_vsns["stdlib"]}"}}]}}.\n',
    )
    _run_erl_step(
        "make_script start_clean",
        'systools:make_script("start_clean", [no_warn_sasl, warnings_as_errors])',
        cwd=clean_dir, erl=erl,
    )

    target = _install_target(
        out_dir, versions[BASE_VSN], otp, clean_dir / "start_clean.boot", erl
    )
    return ReleaseBuild(
        out_dir=out_dir,
        name=REL_NAME,
        otp=otp,
        versions=MappingProxyType(versions),
        base_vsn=BASE_VSN,
        upgrade_vsn=UPGRADE_VSN,
        target_template=target,
        build_seconds=time.monotonic() - started,
    )


def make_target_copy(build: ReleaseBuild, dest: Path, *, erl: str | None = None) -> Path:
    """Copy the installed base target to ``dest`` (must not exist); return it.

    The start scripts find their root at run time, but releases/RELEASES
    holds absolute application paths, so it is regenerated for the copy;
    otherwise a downgrade in the copy would load code from the template.
    """
    dest = dest.resolve()
    shutil.copytree(build.target_template, dest, symlinks=True)
    rel = build.versions[build.base_vsn]
    _create_releases(dest, dest / "releases" / rel.vsn / f"{build.name}-{rel.vsn}.rel",
                     erl or otp_select.erl())  # the OTP the build was made with
    return dest


# ---------------------------------------------------------------------------
# CLI


def _summary(build: ReleaseBuild) -> str:
    lines = [
        f"release {build.name} built in {build.build_seconds:.2f}s under {build.out_dir}",
        f"OTP {build.otp.otp_release} at {build.otp.root_dir}: erts {build.erts_vsn}, "
        + ", ".join(f"{a} {v}" for a, v in build.app_vsns.items()),
        f"installed target ({build.base_vsn}): {build.target_template}",
    ]
    for vsn, rel in build.versions.items():
        non_lib = [m for m in rel.tar_members if not m.startswith(("lib/", "erts-"))]
        erts_bins = [m for m in rel.tar_members if m.startswith("erts-")]
        lines.append(
            f"  {vsn}: {rel.tarball} ({len(rel.tar_members)} members, "
            f"unpack_release({rel.unpack_name!r}), relup={rel.has_relup})"
        )
        lines.extend(f"      {m}" for m in non_lib)
        lines.append(f"      erts: {len(erts_bins)} members under erts-{build.erts_vsn}/bin")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.tools.release_fixture",
        description="Build the counter example release fixture (real OTP).",
    )
    parser.add_argument("out_dir", type=Path, help="empty or missing output directory")
    args = parser.parse_args(argv)
    try:
        build = build_release(args.out_dir)
    except ReleaseBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(_summary(build))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
