"""`relctl make-relup`: the relup and the upgrade tarball of a release, made in the user's build.

mix releases have no relup at all, and relx's or systools' need the old release's files at hand.
This module takes the roots of two built releases of one name (the directories holding `lib/`
and `releases/`, as `mix release`, `rebar3 release` or an unpacked `systools:make_tar` leave
them), runs the local `erl` with `systools:make_relup` over their `.rel` files with the lib
directories of both as the path, and writes `releases/NEW_VSN/relup` into the new release. It
can then pack the new release as a tarball in the systools layout (`releases/NAME-VSN.rel`, the
version's `releases/VSN/` and the `lib/APP-VSN/` of each application in the `.rel`), which
`release_handler:unpack_release/1` and relctl's agent accept.

Standard library only (and :mod:`agent.relfile`); the `relctl` client loads it only when
`make-relup` runs. Every failure is a :class:`RelupError` that says what went wrong and what to
do, with systools' own words kept.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import stat
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.relfile import RelSyntaxError, decode, parse_rel

from .appup import Appup, appup_text, generate, read
from .appup import check as check_appup
from .erl import ERL_TIMEOUT, BuildError, clean_env, erl_path

DOCS = "docs/preparing-releases.md"


class RelupError(BuildError):
    """The relup or the tarball could not be made (see :class:`BuildError`)."""


@dataclass(frozen=True)
class ReleaseDir:
    """One version of a release inside a release root."""

    root: Path
    name: str
    version: str
    erts_version: str
    rel_file: Path
    applications: tuple[tuple[str, str], ...]  # (app, vsn) in .rel order

    @property
    def version_dir(self) -> Path:
        return self.root / "releases" / self.version


@dataclass(frozen=True)
class Tarball:
    path: Path
    size: int
    sha256: str
    members: int
    erts_included: bool


OTP_APPUP = "OTP's own"


@dataclass(frozen=True)
class AppupReport:
    """The appup of one application whose version changed: ``source`` is "generated", "given
    and checked", "given" (not checked: ``problems`` says why, or what it lacks), or
    OTP_APPUP (an application of OTP: the appup its OTP ships, checked too)."""

    app: str
    old_vsn: str
    new_vsn: str
    source: str
    path: Path | None  # the given appup
    generated: Appup | None  # what the beams give (None when they could not be read)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class RelupResult:
    old: ReleaseDir  # the first of ``olds``
    new: ReleaseDir
    relup: Path
    warnings: tuple[str, ...]
    tarball: Tarball | None = None
    appups: tuple[AppupReport, ...] = ()
    olds: tuple[ReleaseDir, ...] = ()  # every version the relup has an entry from

    @property
    def old_versions(self) -> tuple[str, ...]:
        return tuple(o.version for o in self.olds) or (self.old.version,)


# --- finding the releases --------------------------------------------------------------

def read_rel(path: Path) -> ReleaseDir | None:
    """Name, version, ERTS and applications of a .rel file, or None if it is no release file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        name, version, erts, apps = parse_rel(decode(data))
    except RelSyntaxError:
        return None
    # releases/NAME-VSN.rel or releases/VSN/NAME.rel: the root is above releases/
    root = path.parent.parent if path.parent.name == "releases" else path.parent.parent.parent
    return ReleaseDir(root, name, version, erts, path, apps)


def _start_erl_version(releases: Path) -> str | None:
    """The version releases/start_erl.data ("ERTS_VSN REL_VSN") says the root boots."""
    try:
        fields = (releases / "start_erl.data").read_text("utf-8", "replace").split()
    except OSError:
        return None
    return fields[1] if len(fields) == 2 else None


def _rels(releases: Path) -> list[ReleaseDir]:
    return [rel for path in sorted(releases.glob("*/*.rel")) + sorted(releases.glob("*.rel"))
            if (rel := read_rel(path)) is not None]


def find_olds(roots: Sequence[Path], versions: Sequence[str], new: ReleaseDir, *,
              every: bool = False) -> list[ReleaseDir]:
    """The old releases a relup goes up from: each ``versions`` from the first of ``roots``
    holding it; with none, the version each root boots; with ``every``, every version of
    ``new``'s release found in the roots but the new one."""
    roots = [Path(os.path.abspath(r)) for r in roots]
    if every:
        if versions:
            raise RelupError("give --old-version or --all-old-versions, not both",
                             bad_input=True)
        held = sorted({rel.version for root in roots for rel in _rels(root / "releases")
                       if rel.name == new.name and rel.version != new.version})
        if not held:
            raise RelupError(f"no release of {new.name} but {new.version} under "
                             f"{', '.join(map(str, roots))}: nothing to upgrade from",
                             bad_input=True)
        versions = held
    if not versions:
        for root in roots:
            if root == new.root:
                raise RelupError(f"both releases are in {new.root}; give the version to upgrade "
                                 "from with --old-version", bad_input=True)
        return [find_release(root, None, role="old") for root in roots]
    olds = []
    for version in versions:
        holders = [root for root in roots
                   if any(rel.version == version for rel in _rels(root / "releases"))]
        if not holders:
            raise RelupError(f"the old release: no .rel file of version {version} under "
                             + ", ".join(f"{root}/releases" for root in roots)
                             + "; give the root that holds it", bad_input=True)
        olds.append(find_release(holders[0], version, role="old"))
    return olds


def find_release(root: Path, version: str | None = None, *, role: str = "new") -> ReleaseDir:
    """The release of ``version`` in the release root ``root``.

    Without a version, the one releases/start_erl.data names (mix, relx and installed targets
    have it), or the only one there is. The .rel is looked for where each tool leaves it:
    releases/VSN/NAME.rel (mix, relx), releases/VSN/NAME-VSN.rel and releases/NAME-VSN.rel
    (systools)."""
    root = Path(os.path.abspath(root))
    what = f"the {role} release"
    if not root.is_dir():
        raise RelupError(f"{what}: {root} is not a directory; give the release's root (the "
                         "directory holding lib/ and releases/, e.g. _build/prod/rel/NAME)",
                         bad_input=True)
    releases = root / "releases"
    if not releases.is_dir():
        raise RelupError(f"{what}: {root} has no releases/ directory, so it is no release root; "
                         "give the directory `mix release` or `rebar3 release` built (e.g. "
                         "_build/prod/rel/NAME), or one a release tarball was unpacked into",
                         bad_input=True)
    found = _rels(releases)
    versions = sorted({rel.version for rel in found})
    if version is None:
        version = _start_erl_version(releases)
        if version is None:
            if len(versions) != 1:
                raise RelupError(f"{what}: {root} holds "
                                 + (f"releases {', '.join(versions)}" if versions else "no .rel")
                                 + f" and no releases/start_erl.data to choose; give "
                                   f"--{role}-version", bad_input=True)
            version = versions[0]
    matching = [rel for rel in found if rel.version == version]
    if not matching:
        held = f" (it has {', '.join(versions)})" if versions else ""
        raise RelupError(f"{what}: no .rel file of version {version} under {releases}{held}; "
                         f"build that version there or give --{role}-version", bad_input=True)
    names = sorted({rel.name for rel in matching})
    if len(names) > 1:
        raise RelupError(f"{what}: {releases} holds several releases of version {version} "
                         f"({', '.join(names)}); give each release its own root", bad_input=True)
    return dataclasses.replace(matching[0], root=root)


# --- the appups ------------------------------------------------------------------------

def _vsn_of_app_file(app_file: Path) -> str | None:
    try:
        text = app_file.read_text("utf-8", "replace")
    except OSError:
        return None
    found = re.search(r'\{\s*vsn\s*,\s*"([^"]*)"\s*\}', text)
    return found.group(1) if found else None


def _app_ebin(app: str, vsn: str, extra_paths: Sequence[Path],
              roots: Sequence[Path]) -> Path | None:
    """Where systools takes APP.app of ``vsn`` from: the first --path holding it, else
    lib/APP-VSN/ebin of the roots."""
    for extra in extra_paths:
        if _vsn_of_app_file(Path(extra) / f"{app}.app") == vsn:
            return Path(os.path.abspath(extra))
    for root in roots:
        ebin = root / "lib" / f"{app}-{vsn}" / "ebin"
        if (ebin / f"{app}.app").is_file():
            return ebin
    return None


def _beam_dir(app: str, vsn: str, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        ebin = root / "lib" / f"{app}-{vsn}" / "ebin"
        if ebin.is_dir():
            return ebin
    return None


@dataclass(frozen=True)
class OtpAppups:
    """The lib directory of the OTP an ``erl`` runs and the appups its applications ship, as
    that erl sees them: the erl may be a wrapper running OTP in a container or chroot, whose
    files relctl does not see at the same paths (they are only handed back to that erl)."""

    lib: Path
    appups: frozenset[Path]


@functools.lru_cache(maxsize=8)
def otp_appups(erl: str) -> OtpAppups | None:
    """What ``erl``'s OTP ships (code:lib_dir() and its lib/*/ebin/*.appup), None if it
    cannot say."""
    env = clean_env()
    program = ('io:setopts(standard_io, [{encoding, unicode}]), L = code:lib_dir(), '
               'io:format("~ts~n", [L]), [io:format("~ts~n", [F]) || F <- '
               'filelib:wildcard(filename:join([L, "*", "ebin", "*.appup"]))], halt(0).')
    try:
        proc = subprocess.run([erl, "-boot", "no_dot_erlang", "-noshell", "-noinput", "-eval",
                               program], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=ERL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    if proc.returncode != 0 or not lines or not lines[0].startswith("/"):
        return None
    return OtpAppups(Path(lines[0]), frozenset(Path(f) for f in lines[1:] if f))


def otp_lib_dir(erl: str) -> Path | None:
    """The lib directory of the OTP ``erl`` runs (code:lib_dir()), None if it cannot say."""
    found = otp_appups(erl)
    return None if found is None else found.lib


def _otp_appup(app: str, vsn: str, erl: str) -> Path | None:
    """OTP's own appup of ``app`` ``vsn`` when that is an application of the OTP ``erl``
    runs (kernel, stdlib, sasl, ...: their appups carry restart_new_emulator, which no beam
    diff can tell), else None."""
    found = otp_appups(erl)
    if found is None:
        return None
    appup = found.lib / f"{app}-{vsn}" / "ebin" / f"{app}.appup"
    return appup if appup in found.appups else None


def changed_applications(old: ReleaseDir, new: ReleaseDir) -> list[tuple[str, str, str]]:
    """(app, old vsn, new vsn) of every application in both releases whose version changed."""
    before = dict(old.applications)
    return [(app, before[app], vsn) for app, vsn in new.applications
            if before.get(app) not in (None, vsn)]


def plan_appups(old: ReleaseDir, new: ReleaseDir, *, extra_paths: Sequence[Path] = (),
                erl: str = "erl", apps: Sequence[str] = ()) -> list[AppupReport]:
    """For every application whose version changed (or only ``apps``): its given appup checked
    against the beam diff, or the one generated from it."""
    changed = changed_applications(old, new)
    if apps:
        unknown = sorted(set(apps) - {app for app, _, _ in changed})
        if unknown:
            raise RelupError(f"{', '.join(unknown)}: no such application whose version changed "
                             f"between {old.version} and {new.version} (changed: "
                             f"{', '.join(a for a, _, _ in changed) or 'none'})", bad_input=True)
        changed = [c for c in changed if c[0] in apps]
    roots = [new.root, old.root]
    ebins: dict[str, Path] = {}
    given: dict[str, tuple[Path, str]] = {}
    for i, (app, old_vsn, new_vsn) in enumerate(changed):
        old_beams = _beam_dir(app, old_vsn, [old.root, new.root])
        new_beams = _beam_dir(app, new_vsn, roots)
        if old_beams is not None and new_beams is not None:
            ebins[f"o{i}"], ebins[f"n{i}"] = old_beams, new_beams
        app_ebin = _app_ebin(app, new_vsn, extra_paths, roots)
        if app_ebin is not None and (app_ebin / f"{app}.appup").is_file():
            given[f"g{i}"] = (app_ebin / f"{app}.appup", old_vsn)
        elif (own := _otp_appup(app, new_vsn, erl)) is not None:
            given[f"g{i}"] = (own, old_vsn)
    reading = read(ebins, given, erl=erl)
    reports = []
    for i, (app, old_vsn, new_vsn) in enumerate(changed):
        generated = None
        if f"o{i}" in ebins:
            generated = generate(app, old_vsn, new_vsn, reading.beams[f"o{i}"],
                                 reading.beams[f"n{i}"])
        appup = reading.appups.get(f"g{i}")
        if appup is None:
            if generated is None:
                raise RelupError(f"{app} {old_vsn} -> {new_vsn}: no appup is given and its beams "
                                 f"are missing (lib/{app}-{old_vsn}/ebin and lib/{app}-{new_vsn}"
                                 "/ebin must be in the two release roots), so none can be "
                                 f"generated; see {DOCS}", bad_input=True)
            reports.append(AppupReport(app, old_vsn, new_vsn, "generated", None, generated))
        elif generated is None:
            reports.append(AppupReport(app, old_vsn, new_vsn, "given", appup.path, None,
                                       (f"not checked: the beams of {app} {old_vsn} are not in "
                                        "the release roots",)))
        else:
            problems = tuple(check_appup(app, old_vsn, new_vsn, appup, generated))
            lib = otp_lib_dir(erl)
            ours = lib is not None and appup.path.is_relative_to(lib)
            reports.append(AppupReport(app, old_vsn, new_vsn,
                                       OTP_APPUP if ours and not problems else
                                       "given" if problems else "given and checked",
                                       appup.path, generated, problems))
    return reports


def _incomplete(reports: Sequence[AppupReport]) -> list[str]:
    return [f"{r.app} {r.old_vsn} -> {r.new_vsn}: the appup {r.path} is incomplete: "
            + "; ".join(r.problems) for r in reports if r.problems and r.generated is not None]


# --- running systools ------------------------------------------------------------------

# Runs in a fresh erl; inputs come from the environment, so nothing needs quoting. On success
# it prints systools' warnings, on failure systools' own description of the error.
_MAKE_RELUP = r"""
io:setopts(standard_io, [{encoding, unicode}]),
Get = fun(Key) -> os:getenv(Key) end,
Rel = fun(Key) -> filename:rootname(Get(Key), ".rel") end,
Olds = [filename:rootname(F, ".rel") || F <- string:split(Get("RELCTL_OLD_REL"), "\n", all)],
Opts = [{path, string:split(Get("RELCTL_PATH"), "\n", all)},
        {outdir, Get("RELCTL_OUTDIR")}, silent]
       ++ [restart_emulator || Get("RELCTL_RESTART_EMULATOR") =:= "true"],
Result = try systools:make_relup(Rel("RELCTL_NEW_REL"), Olds, Olds, Opts)
         catch Class:Reason -> {error, none, {Class, Reason}} end,
case Result of
    {ok, _Relup, Mod, Warnings} ->
        [io:put_chars(Mod:format_warning(W)) || W <- Warnings],
        halt(0);
    {error, none, Crash} ->
        io:format("systools:make_relup crashed: ~tp~n", [Crash]),
        halt(1);
    {error, Mod, Error} ->
        io:put_chars(Mod:format_error(Error)),
        halt(1);
    Other ->
        io:format("systools:make_relup returned ~tp~n", [Other]),
        halt(1)
end.
"""


def _hint(text: str, old: ReleaseDir, new: ReleaseDir) -> str:
    """What to do about the systools errors users meet most."""
    if "No release upgrade script entry" in text:
        return (f"the .appup has no entry for going from {old.version} (and back); add one "
                f"for each version you upgrade from; see {DOCS}")
    if ".appup" in text:
        before = dict(old.applications)
        changed = [f"{app} {before[app]} -> {vsn}" for app, vsn in new.applications
                   if before.get(app) not in (None, vsn)]
        return ("every application whose version changed needs APP.appup next to its .app, "
                f"with instructions up from {old.version} and down to it (changed: "
                f"{', '.join(changed) or 'none found'}): put it into the new release's "
                "lib/APP-VSN/ebin, or pass --path with the build's ebin holding it "
                f"(systools:make_tar leaves appups out); see {DOCS}")
    if "File not found" in text or "Could not" in text:
        return ("the application files must be in lib/APP-VSN/ebin of one of the two "
                "release roots")
    return f"see {DOCS}"


def make_relup(old: ReleaseDir | Sequence[ReleaseDir], new: ReleaseDir, *, erl: str = "erl",
               extra_paths: Sequence[Path] = (), restart_emulator: bool = False,
               timeout: float = ERL_TIMEOUT, generate_appups: bool = True,
               allow_incomplete_appup: bool = False) -> RelupResult:
    """Write NEW_ROOT/releases/NEW_VSN/relup: up from ``old`` (one release or several: one
    entry each, so that a node on any of them upgrades in one hop), and down to it.

    systools takes each application's .app, and the .appup beside it, from the first
    directory of the path holding that version: ``extra_paths`` first, then the lib
    directories of the new root and of the old one. With ``generate_appups``, every changed
    application without an appup gets one generated from its beams (in a temporary directory
    put first on the path; the release roots are not touched), and every given one is
    checked: an incomplete one fails unless ``allow_incomplete_appup``."""
    olds = [old] if isinstance(old, ReleaseDir) else list(old)
    if not olds:
        raise RelupError("no old release given", bad_input=True)
    for old in olds:
        if old.name != new.name:
            raise RelupError(f"the old release is {old.name} {old.version} ({old.rel_file}) and "
                             f"the new one {new.name} {new.version}: a relup goes between "
                             "versions of one release; check the two roots", bad_input=True)
        if old.version == new.version:
            raise RelupError(f"both roots give {new.name} {new.version}; give the versions to "
                             "go between with --old-version and --new-version", bad_input=True)
    seen = [o.version for o in olds]
    if len(set(seen)) != len(seen):
        raise RelupError(f"old version given twice ({', '.join(seen)}); give each once",
                         bad_input=True)
    old = olds[0]
    out_dir = new.version_dir
    if not out_dir.is_dir():
        raise RelupError(f"{out_dir} does not exist; the new release root must hold its "
                         "version's directory releases/VSN (build it with mix release, rebar3 "
                         "release or systools)", bad_input=True)
    for extra in extra_paths:
        if not Path(extra).is_dir():
            raise RelupError(f"--path {extra}: no such directory; give the ebin directory "
                             "holding the .app and .appup files", bad_input=True)
    old_libs = list(dict.fromkeys(str(o.root / "lib" / "*" / "ebin") for o in olds))
    paths = [*(os.path.abspath(p) for p in extra_paths),
             str(new.root / "lib" / "*" / "ebin"), *old_libs]
    for value in (*paths, str(new.rel_file), *(str(o.rel_file) for o in olds), str(out_dir)):
        if "\n" in value:
            raise RelupError(f"{value!r}: a path with a newline cannot be passed to systools",
                             bad_input=True)
    erl = erl_path(erl)
    reports: list[AppupReport] = []
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="relctl-appups-") as tmp:
        if generate_appups:
            reports = [r for o in olds for r in plan_appups(o, new, extra_paths=extra_paths,
                                                              erl=erl)]
            # Two old releases may hold the same version of an application: one entry.
            reports = list({(r.app, r.old_vsn): r for r in reports}.values())
            incomplete = _incomplete(reports)
            if incomplete and not allow_incomplete_appup:
                raise RelupError(" | ".join(incomplete) + " (add the instructions, e.g. from "
                                 "`relctl make-appup`, or pass --allow-incomplete-appup)")
            warnings += incomplete
            generated: dict[str, list[Appup]] = {}
            for report in reports:
                if report.generated is None:
                    warnings += [f"{report.app} {report.old_vsn} -> {report.new_vsn}: the "
                                 f"appup {report.path} is used {problem}"
                                 for problem in report.problems]
                    continue
                if report.source != OTP_APPUP:  # OTP's own restarts the emulator: moot
                    warnings += [w for w in report.generated.warnings if w not in warnings]
                if report.source == "generated":
                    generated.setdefault(report.app, []).append(report.generated)
            # systools takes APP.appup from the first path directory holding the .app of that
            # version: OTP's own goes before the release roots, whose ebins have none.
            for own in dict.fromkeys(str(r.path.parent) for r in reports
                                     if r.source == OTP_APPUP and r.path is not None):
                paths.insert(0, own)
            for app, entries in generated.items():
                report = next(r for r in reports if r.app == app)
                app_ebin = _app_ebin(report.app, report.new_vsn, extra_paths,
                                     [new.root, old.root])
                if app_ebin is None:
                    raise RelupError(f"{report.app} {report.new_vsn}: no {report.app}.app in "
                                     f"lib/{report.app}-{report.new_vsn}/ebin of the new "
                                     "release or a --path", bad_input=True)
                ebin = Path(tmp) / report.app / "ebin"
                ebin.mkdir(parents=True)
                shutil.copyfile(app_ebin / f"{report.app}.app", ebin / f"{report.app}.app")
                (ebin / f"{report.app}.appup").write_text(appup_text(entries), "utf-8")
                paths.insert(0, str(ebin))
        result = _run_make_relup(olds, new, out_dir, paths, erl, restart_emulator, timeout)
    return dataclasses.replace(result, warnings=(*warnings, *result.warnings),
                               appups=tuple(reports))


def _run_make_relup(olds: Sequence[ReleaseDir], new: ReleaseDir, out_dir: Path,
                    paths: list[str], erl: str, restart_emulator: bool,
                    timeout: float) -> RelupResult:
    old = olds[0]
    env = clean_env(**{"RELCTL_PATH": "\n".join(paths), "RELCTL_OUTDIR": str(out_dir),
                "RELCTL_NEW_REL": str(new.rel_file),
                "RELCTL_OLD_REL": "\n".join(str(o.rel_file) for o in olds),
                "RELCTL_RESTART_EMULATOR": "true" if restart_emulator else "false"})
    argv = [erl_path(erl), "-boot", "no_dot_erlang", "-noshell", "-noinput",
            "-eval", _MAKE_RELUP]
    try:
        proc = subprocess.run(argv, cwd=out_dir, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RelupError(f"systools:make_relup did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise RelupError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        # One line, as relctl prints errors; systools' words are kept as they are.
        said = " ".join((out or proc.stderr.decode("utf-8", "replace")).split()) or "no output"
        froms = ", ".join(o.version for o in olds)
        raise RelupError(f"systools:make_relup {new.name} {froms} -> {new.version} "
                         f"failed: {said} (hint: {_hint(said, old, new)})")
    relup = out_dir / "relup"
    if not relup.is_file():
        raise RelupError(f"systools:make_relup reported success but wrote no {relup}")
    # systools prints each warning as "*WARNING* ..." over one or more lines, the same one
    # once per direction (the ERTS change): one line each, once.
    warnings = tuple(dict.fromkeys(
        " ".join(w.split()) for w in re.split(r"^\*WARNING\* ", out, flags=re.M)
        if w.strip()))
    return RelupResult(old, new, relup, warnings, olds=tuple(olds))


# --- the tarball -----------------------------------------------------------------------

def _walk(top: Path, arcname: str) -> Iterator[tuple[Path, str]]:
    """(path, member name) of ``top`` and everything under it, sorted, links followed (a relx
    dev-mode release links lib/ into _build) but each real directory entered once."""
    seen: set[tuple[int, int]] = set()
    stack = [(top, arcname)]
    while stack:
        path, name = stack.pop()
        info = path.stat()
        yield path, name
        if stat.S_ISDIR(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            children = sorted(path.iterdir(), key=lambda p: p.name, reverse=True)
            stack.extend((child, f"{name}/{child.name}") for child in children)


def source_date_epoch() -> int:
    """Every member's time: $SOURCE_DATE_EPOCH (reproducible-builds.org), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise RelupError(f"SOURCE_DATE_EPOCH={value!r} is no number of seconds since 1970; "
                         "set it to e.g. $(git log -1 --format=%ct) or unset it",
                         bad_input=True)
    return int(value)


def _add(tar: tarfile.TarFile, path: Path, name: str, mtime: int) -> bool:
    """Add one file or directory, owned by root, with its mode and the time ``mtime``; False
    if it is neither (sockets, FIFOs and the like have no place in a release)."""
    info = path.stat()
    member = tarfile.TarInfo(name)
    member.mode = stat.S_IMODE(info.st_mode)
    member.mtime = mtime
    if stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
        tar.addfile(member)
        return True
    if not stat.S_ISREG(info.st_mode):
        return False
    member.size = info.st_size
    with path.open("rb") as fh:
        tar.addfile(member, fh)
    return True


def _tar_sources(new: ReleaseDir, include_erts: bool) -> list[tuple[Path, str]]:
    sources: list[tuple[Path, str]] = [(new.version_dir, f"releases/{new.version}")]
    missing = []
    for app, vsn in new.applications:
        lib = new.root / "lib" / f"{app}-{vsn}"
        if lib.is_dir():
            sources.append((lib, f"lib/{app}-{vsn}"))
        else:
            missing.append(f"lib/{app}-{vsn}")
    if missing:
        raise RelupError(f"{new.root} lacks {', '.join(missing)} of {new.name} {new.version}; "
                         "the tarball must carry every application of the release: build it "
                         "with its applications (mix and relx do by default)", bad_input=True)
    script = new.root / "bin" / f"{new.name}-{new.version}"
    if script.is_file():  # relx: the agent makes it bin/NAME when the release goes permanent
        sources.append((script, f"bin/{script.name}"))
    if include_erts:
        erts = new.root / f"erts-{new.erts_version}"
        if not erts.is_dir():
            raise RelupError(f"{erts} is missing, so it cannot go into the tarball; build the "
                             "release with its ERTS (mix: include_erts: true; relx: "
                             "{include_erts, true}) or leave it out with --no-include-erts",
                             bad_input=True)
        sources.append((erts, erts.name))
    return sources


def write_tarball(new: ReleaseDir, dest: Path, *, include_erts: bool = False) -> Tarball:
    """Pack ``new`` for `release_handler:unpack_release("NAME-VSN")` (systools layout).

    release_handler extracts with keep_old_files, so only what the running node lacks is
    written; the start scripts, RELEASES and start_erl.data of the node are never part of it.
    The same contents give the same bytes: sorted members, owner root, every member's time
    $SOURCE_DATE_EPOCH (else 0), no time in the gzip header."""
    dest = Path(os.path.abspath(dest))
    if dest.is_dir():
        raise RelupError(f"{dest} is a directory; give the tarball's file name, e.g. "
                         f"{new.name}-{new.version}.tar.gz", bad_input=True)
    sources = _tar_sources(new, include_erts)
    mtime = source_date_epoch()
    tmp = dest.with_name(f".{dest.name}.relctl-tmp")
    count = 0
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6,
                              mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            # First, as systools:make_tar puts it: what unpack_release/1 reads before the rest.
            rel = tarfile.TarInfo(f"releases/{new.name}-{new.version}.rel")
            data = new.rel_file.read_bytes()
            rel.size, rel.mode, rel.mtime = len(data), 0o644, mtime
            tar.addfile(rel, io.BytesIO(data))
            count += 1
            for top, arcname in sources:
                for path, name in _walk(top, arcname):
                    count += _add(tar, path, name, mtime)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RelupError(f"cannot make the tarball {dest}: {exc.strerror or exc} "
                         f"({exc.filename or 'while packing'}); check that the release root "
                         "is complete and readable and that the target directory is "
                         "writable") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = hashlib.sha256()
    with dest.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return Tarball(dest, dest.stat().st_size, digest.hexdigest(), count, include_erts)


# --- the whole job ---------------------------------------------------------------------

def build(old_root: Path | Sequence[Path], new_root: Path, *,
          old_version: str | Sequence[str] | None = None,
          new_version: str | None = None, tarball: Path | None = None,
          include_erts: bool | None = None, extra_paths: Sequence[Path] = (),
          restart_emulator: bool = False, erl: str = "erl",
          allow_incomplete_appup: bool = False, all_old_versions: bool = False) -> RelupResult:
    """Find the releases, write the relup into the new one and, with ``tarball``, pack it.

    Several old roots or versions give a relup with an entry from each (a node on any of
    them upgrades in one hop). ``include_erts=None`` puts the new ERTS into the tarball only
    when it differs from an old release's (release_handler then restarts the node into it)."""
    new = find_release(new_root, new_version, role="new")
    roots = [old_root] if isinstance(old_root, (str, Path)) else list(old_root)
    versions = ([old_version] if isinstance(old_version, str) else list(old_version or ()))
    olds = find_olds(roots, versions, new, every=all_old_versions)
    result = make_relup(olds, new, erl=erl, extra_paths=extra_paths,
                        restart_emulator=restart_emulator,
                        allow_incomplete_appup=allow_incomplete_appup)
    if tarball is None:
        return result
    old = next((o for o in olds if o.erts_version != new.erts_version), olds[0])
    erts_changed = old.erts_version != new.erts_version
    packed = write_tarball(new, tarball,
                           include_erts=erts_changed if include_erts is None else include_erts)
    warnings: Sequence[str] = result.warnings
    if erts_changed and not packed.erts_included:
        warnings = (*warnings, f"ERTS changes from {old.erts_version} to {new.erts_version} "
                               f"but erts-{new.erts_version} is not in the tarball: the node "
                               "must have it already")
    return dataclasses.replace(result, warnings=tuple(warnings), tarball=packed)


def appups_for(old_root: Path | Sequence[Path], new_root: Path, *,
               old_version: str | Sequence[str] | None = None,
               new_version: str | None = None, extra_paths: Sequence[Path] = (),
               erl: str = "erl", apps: Sequence[str] = (),
               all_old_versions: bool = False) -> list[AppupReport]:
    """`relctl make-appup`: the appup of each changed application, generated and checked, one
    report per application and old version (several old roots or versions, as make-relup
    takes them: an appup with an entry from each)."""
    new = find_release(new_root, new_version, role="new")
    roots = [old_root] if isinstance(old_root, (str, Path)) else list(old_root)
    versions = [old_version] if isinstance(old_version, str) else list(old_version or ())
    olds = find_olds(roots, versions, new, every=all_old_versions)
    seen = [o.version for o in olds]
    if len(set(seen)) != len(seen):
        raise RelupError(f"old version given twice ({', '.join(seen)}); give each once",
                         bad_input=True)
    for old in olds:
        if old.name != new.name or old.version == new.version:
            raise RelupError(f"the old release is {old.name} {old.version} and the new one "
                             f"{new.name} {new.version}: give two versions of one release",
                             bad_input=True)
    changed = {o.version: {app for app, _, _ in changed_applications(o, new)} for o in olds}
    unknown = sorted(set(apps) - set().union(*changed.values()))
    if unknown:
        froms = ", ".join(o.version for o in olds)
        names = sorted(set().union(*changed.values()))
        raise RelupError(f"{', '.join(unknown)}: no such application whose version changed "
                         f"between {froms} and {new.version} (changed: "
                         f"{', '.join(names) or 'none'})", bad_input=True)
    reports = []
    for old in olds:
        wanted = [a for a in apps if a in changed[old.version]]
        if apps and not wanted:
            continue  # none of the asked-for applications changed from this version
        reports += plan_appups(old, new, extra_paths=extra_paths, erl=erl, apps=wanted)
    return reports
