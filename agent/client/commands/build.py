"""`relctl` commands that run in the user's build rather than against an agent: `make-relup`.
The work is done by :mod:`agent.client.relup`, imported only when the command runs so that
every other command starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..common import Settings, local_options
from ..output import emit
from ..status import ExitCode


@click.command("make-relup")
@click.argument("old_root", type=click.Path(path_type=Path))
@click.argument("new_root", type=click.Path(path_type=Path))
@click.option("--tarball", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also pack the new release into this .tar.gz, for "
                   "`relctl upgrade VSN --tarball FILE`.")
@click.option("--old-version", metavar="VSN", default=None,
              help="Version to upgrade from (default: the one OLD_ROOT boots, from "
                   "releases/start_erl.data).")
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
@local_options
@click.pass_obj
def make_relup(settings: Settings, old_root: Path, new_root: Path, tarball: Path | None,
               old_version: str | None, new_version: str | None, include_erts: bool | None,
               extra_paths: tuple[Path, ...], restart_emulator: bool, erl: str) -> ExitCode:
    """Write the relup of NEW_ROOT (up from OLD_ROOT's version and down to it), and a tarball.

    \b
    OLD_ROOT and NEW_ROOT are release roots (the directories holding lib/ and releases/):
      mix release:       _build/prod/rel/NAME
      rebar3 release:    _build/prod/rel/NAME
      systools:          a directory the release tarball was unpacked into
    They may be the same directory holding both versions (then give --old-version).
    Every application whose version changed needs its .appup in lib/APP-VSN/ebin of the new
    release (or in a --path DIR). Runs the local erl; needs no agent. See
    docs/preparing-releases.md.
    """
    from ..relup import build  # only here: the other commands need none of it

    # A RelupError is a CliError with its exit code: main() reports it.
    made = build(old_root, new_root, old_version=old_version, new_version=new_version,
                 tarball=tarball, include_erts=include_erts, extra_paths=extra_paths,
                 restart_emulator=restart_emulator, erl=erl)

    data: dict[str, Any] = {
        "release": made.new.name, "from_version": made.old.version,
        "to_version": made.new.version, "relup": str(made.relup),
        "warnings": list(made.warnings), "tarball": None}
    if made.tarball is not None:
        data["tarball"] = {"path": str(made.tarball.path), "size": made.tarball.size,
                           "sha256": made.tarball.sha256, "members": made.tarball.members,
                           "erts_included": made.tarball.erts_included}

    def text() -> str:
        lines = [f"relup: {made.relup} ({made.new.name} {made.old.version} -> "
                 f"{made.new.version}, and back)"]
        if made.tarball is not None:
            lines.append(f"tarball: {made.tarball.path} ({made.tarball.size} bytes, sha256 "
                         f"{made.tarball.sha256})")
            lines.append(f"next: relctl upgrade {made.new.version} --tarball "
                         f"{made.tarball.path}")
        return "\n".join(lines)

    for warning in made.warnings:
        click.echo(f"relctl: warning: {warning}", err=True)
    emit(settings, data, text)
    return ExitCode.OK
