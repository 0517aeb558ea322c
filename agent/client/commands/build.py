"""`relctl` commands that run in the user's build rather than against an agent: `make-relup` and
`make-appup`.
The work is done by :mod:`agent.build`, imported only when the command runs so that
every other command starts without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..common import Settings
from ..options import local_options
from ..output import emit, warning
from ..status import CliError, ExitCode

if TYPE_CHECKING:  # the build tool is loaded only when a build command runs
    from agent.build import AppupReport


@contextlib.contextmanager
def build_errors() -> Iterator[None]:
    """The build tool's errors as the client's: input that does not fit is a usage error
    (exit 2), anything else a failure (exit 1; nothing on a node was touched)."""
    from agent.build import BuildError  # only here: loading it costs every other command

    try:
        yield
    except BuildError as exc:
        raise CliError(str(exc), ExitCode.USAGE if exc.bad_input else ExitCode.FAILED) from None


@click.command("make-relup")
@click.argument("old_roots", metavar="OLD_ROOT... NEW_ROOT", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.argument("new_root", metavar="", type=click.Path(path_type=Path))
@click.option("--tarball", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also pack the new release into this .tar.gz, for "
                   "`relctl upgrade VSN --tarball FILE`.")
@click.option("--old-version", "old_versions", metavar="VSN", multiple=True,
              help="Version to upgrade from, looked for in the OLD_ROOTs (repeatable: one "
                   "relup entry each; default: the one each OLD_ROOT boots, from "
                   "releases/start_erl.data).")
@click.option("--all-old-versions", is_flag=True, default=False,
              help="An entry from every version of the release found in the OLD_ROOTs.")
@click.option("--new-version", metavar="VSN", default=None,
              help="Version to upgrade to (default: the one NEW_ROOT boots).")
@click.option("--include-erts/--no-include-erts", default=None,
              help="Put the new release's erts-VSN into the tarball (default: only when the "
                   "ERTS version changes).")
@click.option("--path", "extra_paths", multiple=True, metavar="DIR",
              type=click.Path(path_type=Path),
              help="Look for .app and .appup files in DIR first (repeatable), e.g. the ebin "
                   "of a systools build, since systools:make_tar leaves appups out.")
@click.option("--restart-emulator", is_flag=True, default=False,
              help="Make the relup restart the emulator (systools' restart_emulator).")
@click.option("--erl", default="erl", metavar="PATH", show_default=True,
              help="The erl whose systools makes the relup: the OTP the release was built with.")
@click.option("--allow-incomplete-appup", is_flag=True, default=False,
              help="Warn, instead of failing, when a given appup lacks instructions for "
                   "modules the beams show changed, added or deleted.")
@local_options
@click.pass_obj
def make_relup(settings: Settings, old_roots: tuple[Path, ...], new_root: Path,
               tarball: Path | None, old_versions: tuple[str, ...], all_old_versions: bool,
               new_version: str | None, include_erts: bool | None,
               extra_paths: tuple[Path, ...], restart_emulator: bool, erl: str,
               allow_incomplete_appup: bool) -> ExitCode:
    """Write the relup of NEW_ROOT (up from each old version and down to it), and a tarball.

    \b
    OLD_ROOT and NEW_ROOT are release roots (the directories holding lib/ and releases/):
      mix release:       _build/prod/rel/NAME
      rebar3 release:    _build/prod/rel/NAME
      systools:          a directory the release tarball was unpacked into
    They may be the same directory holding both versions (then give --old-version).
    Several old roots, --old-version repeated or --all-old-versions give one relup with an
    entry from each old version: a node on any of them upgrades in one hop.
    Every application whose version changed and ships no .appup (in lib/APP-VSN/ebin of the
    new release or a --path DIR) gets one generated from the beams; a given one is checked
    against them. The tarball is reproducible (member times: $SOURCE_DATE_EPOCH, else 0).
    Runs the local erl; needs no agent. See docs/preparing-releases.md.
    """
    from agent.build import build  # only here: the other commands need none of it

    with build_errors():
        made = build(old_roots, new_root, old_version=old_versions, new_version=new_version,
                     tarball=tarball, include_erts=include_erts, extra_paths=extra_paths,
                     restart_emulator=restart_emulator, erl=erl,
                     allow_incomplete_appup=allow_incomplete_appup,
                     all_old_versions=all_old_versions)

    data: dict[str, Any] = {
        "release": made.new.name, "from_version": made.old.version,
        "from_versions": list(made.old_versions),
        "to_version": made.new.version, "relup": str(made.relup),
        "warnings": list(made.warnings), "tarball": None,
        "appups": [{"application": r.app, "from_version": r.old_vsn, "to_version": r.new_vsn,
                    "source": r.source, "path": None if r.path is None else str(r.path),
                    "problems": list(r.problems)} for r in made.appups]}
    if made.tarball is not None:
        data["tarball"] = {"path": str(made.tarball.path), "size": made.tarball.size,
                           "sha256": made.tarball.sha256, "members": made.tarball.members,
                           "erts_included": made.tarball.erts_included}

    def text() -> str:
        lines = [f"appup: {r.app} {r.old_vsn} -> {r.new_vsn}: {r.source}"
                 + (f" ({r.path})" if r.path is not None else "") for r in made.appups]
        lines.append(f"relup: {made.relup} ({made.new.name} {', '.join(made.old_versions)} "
                     f"-> {made.new.version}, and back)")
        if made.tarball is not None:
            lines.append(f"tarball: {made.tarball.path} ({made.tarball.size} bytes, sha256 "
                         f"{made.tarball.sha256})")
            lines.append(f"next: relctl upgrade {made.new.version} --tarball "
                         f"{made.tarball.path}")
        return "\n".join(lines)

    for said in made.warnings:
        warning(said)
    emit(settings, data, text)
    return ExitCode.OK


@click.command("make-appup")
@click.argument("old_roots", metavar="OLD_ROOT... NEW_ROOT", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.argument("new_root", metavar="", type=click.Path(path_type=Path))
@click.option("--app", "apps", multiple=True, metavar="APP",
              help="Only this application (repeatable); default: every one whose version "
                   "changed.")
@click.option("--write", "write_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, metavar="DIR", help="Write DIR/APP.appup instead of printing.")
@click.option("--old-version", "old_versions", metavar="VSN", multiple=True,
              help="Version to upgrade from, looked for in the OLD_ROOTs (repeatable: one "
                   "entry each; default: the one each OLD_ROOT boots).")
@click.option("--all-old-versions", is_flag=True, default=False,
              help="An entry from every version of the release found in the OLD_ROOTs.")
@click.option("--new-version", metavar="VSN", default=None,
              help="Version to upgrade to (default: the one NEW_ROOT boots).")
@click.option("--path", "extra_paths", multiple=True, metavar="DIR",
              type=click.Path(path_type=Path),
              help="Look for given .appup files in DIR first (repeatable), as make-relup does.")
@click.option("--erl", default="erl", metavar="PATH", show_default=True,
              help="The erl that reads the beams.")
@local_options
@click.pass_obj
def make_appup(settings: Settings, old_roots: tuple[Path, ...], new_root: Path,
               apps: tuple[str, ...], write_dir: Path | None, old_versions: tuple[str, ...],
               all_old_versions: bool, new_version: str | None,
               extra_paths: tuple[Path, ...], erl: str) -> ExitCode:
    """Print (or --write) the appups generated from the beams of the OLD_ROOTs and NEW_ROOT.

    One per application whose version changed, with an entry (up and down) from each old
    version, to read, edit and commit; a given appup is also checked, and what it lacks is
    said. Old versions are chosen as in make-relup. Runs the local erl; needs no agent.
    """
    from agent.build import appup_text, appups_for  # only here

    with build_errors():
        reports = appups_for(old_roots, new_root, old_version=old_versions,
                             new_version=new_version, extra_paths=extra_paths, erl=erl,
                             apps=apps, all_old_versions=all_old_versions)
    # One appup per application, its entries in the order of the old versions.
    by_app: dict[str, list[AppupReport]] = {}
    for r in reports:
        by_app.setdefault(r.app, []).append(r)
    several = len({r.old_vsn for r in reports}) > 1

    def problems(group: list[AppupReport]) -> list[str]:
        return [(f"from {r.old_vsn}: " if several else "") + p for r in group for p in r.problems]

    def generated(group: list[AppupReport]) -> str | None:
        made = [r.generated for r in group if r.generated is not None]
        return appup_text(made) if made else None

    def warnings(group: list[AppupReport]) -> list[str]:
        return list(dict.fromkeys(w for r in group if r.generated is not None
                                  for w in r.generated.warnings))

    written: dict[str, str] = {}
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
        for app, group in by_app.items():
            made = generated(group)
            if made is not None:
                target = write_dir / f"{app}.appup"
                target.write_text(made, "utf-8")
                written[app] = str(target)
    data: dict[str, Any] = {"appups": [
        {"application": app, "from_version": group[0].old_vsn,
         "from_versions": [r.old_vsn for r in group], "to_version": group[0].new_vsn,
         "given": next((str(r.path) for r in group if r.path is not None), None),
         "given_status": group[0].source if len(group) == 1 else
         ", ".join(f"{r.source} from {r.old_vsn}" for r in group),
         "problems": problems(group), "written": written.get(app),
         "appup": generated(group), "warnings": warnings(group)}
        for app, group in by_app.items()]}

    def text() -> str:
        out = []
        for app, group in by_app.items():
            head = (f"%% {app} {', '.join(r.old_vsn for r in group)} -> {group[0].new_vsn}")
            given = next((r.path for r in group if r.path is not None), None)
            if given is not None:
                head += f": given {given}, " + ("; ".join(problems(group)) or "complete")
            body = generated(group)
            if app in written:
                out.append(f"{head}\n%% written to {written[app]}")
            elif body is not None:
                out.append(f"{head}\n{body.rstrip()}")
            else:
                out.append(head)
        return "\n".join(out) or "no application changed its version"

    for group in by_app.values():
        for said in warnings(group):
            warning(said)
    emit(settings, data, text)
    return ExitCode.OK
