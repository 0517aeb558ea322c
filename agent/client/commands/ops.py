"""The `relctl` commands that change a node: `upgrade`, `downgrade`, `reload-config` and the
single steps `unpack`, `install`, `make-permanent`, `remove` (what they do:
:mod:`agent.client.operate`, which each calls with its parameters as they are).

One agent per command, except `upgrade` with several agents, which hands over to the rolling
upgrade of :mod:`agent.client.fleet`. Each command returns the exit code of the operation's
outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import operate
from ..common import Settings
from ..options import shared_options
from ..output import warning
from ..status import ExitCode, worst_first_text


def _old_name(new: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """The callback of an option kept under its old name: a warning on stderr when it is used
    (the old name still works; scripts have time to change)."""
    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            warning(f"{param.opts[0]} is the old name of {new}; use {new} (the old name will "
                    "go away)")
        return value
    return warn


def _allow_config_reset(f: Callable[..., Any]) -> Callable[..., Any]:
    """--allow-config-reset, of the commands that install a release (upgrade, install)."""
    return click.option("--allow-config-reset", is_flag=True,
                        help="Install even when the release's runtime config (mix config "
                             "providers, relx ${VAR}s) cannot be reproduced on the node; those "
                             "keys fall back.")(f)


def _install_timeout(f: Callable[..., Any]) -> Callable[..., Any]:
    """--install-timeout, of every command whose request has install_timeout (upgrade,
    downgrade, install): given or not sent at all (absent: the node's config decides)."""
    return click.option("--install-timeout", type=click.FloatRange(min=1), default=None,
                        metavar="S", help="Time limit of install_release, the relup script "
                        "with its code_change calls (default: the node's install_timeout in "
                        "the agent's config).")(f)


_UPGRADE_HELP = f"""\
Upgrade the node to VERSION live: upload, unpack, check, install, verify, make permanent.
A node that already runs VERSION as permanent is up_to_date (exit 0): the tarball is not
sent, so a deploy script can run again.

With several --agent options it is a rolling upgrade. With --tarball it first stages:
every agent uploads and unpacks VERSION (--stage-parallel at a time, default all); a
failed stage on any agent stops the rollout before any node is switched (the others keep
VERSION unpacked, not installed: relctl remove VERSION takes it back). Then it switches
(--no-prestage: uploads too) --batch agents at a time, in the
order given, each upgrading its node (the --node given, else its only node); a node that
already runs VERSION as permanent is left alone (up_to_date). After each batch, if more
than --max-failures agents failed (any result but succeeded, dry_run or up_to_date, so
also an agent that could not be reached or refused), the rollout stops and the agents of
later batches are reported as skipped. It ends with one row per agent; the exit code is
the worst row's, in this order: {worst_first_text()} (0 when none failed).

An agent silent for --host-timeout during its switch (a cut link, a frozen host) is
reported at once and marked unknown (a failure; exit 6 unless its real outcome is read back
once it answers again). Ctrl-C or SIGTERM prints the table of what is known and exits 130;
operations already started go on on their agents.
"""


@click.command(help=_UPGRADE_HELP)
@click.argument("version")
@click.option("--tarball", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Release tarball to upload first (not needed for an unpacked or old release).")
@click.option("--no-permanent", is_flag=True, help="Install but do not make permanent.")
@click.option("--dry-run", is_flag=True, help="Stop after check_install_release; change nothing.")
@click.option("--health-soak", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Seconds the health probes must keep passing after the install; 0: no "
                   "soak, the probes run once (default: the node's health_soak in the agent's "
                   "config).")
@click.option("--health-timeout", type=click.FloatRange(min=0), default=None, hidden=True,
              callback=_old_name("--health-soak"))
@_install_timeout
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With several agents: how many agents upgrade at once.")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="K", help="With several agents: stop before the next batch once more "
                                "than K agents failed.")
@click.option("--stage-parallel", type=click.IntRange(min=1), default=None, metavar="N",
              help="With several agents: how many agents upload and unpack at once before "
                   "the switch (default: all).")
@click.option("--no-prestage", is_flag=True,
              help="With several agents: no staging phase; each agent uploads in its batch.")
@click.option("--replace", is_flag=True,
              help="VERSION is already on the node (unpacked or old) from other bytes: remove "
                   "it and unpack --tarball instead (never the running or permanent release).")
@_allow_config_reset
@click.option("--allow-purge-kill", is_flag=True,
              help="Processes still running old code when the release is made permanent are "
                   "killed by its purge, and each is reported (default: they fail the "
                   "verification, and the node is rolled back).")
@shared_options
@click.pass_obj
def upgrade(settings: Settings, version: str, tarball: Path | None, no_permanent: bool,
            dry_run: bool, health_soak: float | None, health_timeout: float | None,
            install_timeout: float | None,
            batch: int, max_failures: int, stage_parallel: int | None,
            no_prestage: bool, allow_config_reset: bool, replace: bool,
            allow_purge_kill: bool) -> ExitCode:
    # The help is _UPGRADE_HELP: it quotes the worst-first order from agent.client.status.
    if health_soak is not None and health_timeout is not None:
        raise click.UsageError("--health-timeout is the old name of --health-soak: give one")
    soak = health_soak if health_soak is not None else health_timeout
    return operate.upgrade(settings, version, tarball, no_permanent, dry_run, soak,
                           install_timeout, batch, max_failures, stage_parallel, no_prestage,
                           allow_config_reset, replace, allow_purge_kill)


@click.command()
@click.argument("version")
@click.option("--no-permanent", is_flag=True, help="Install but do not make permanent.")
@click.option("--dry-run", is_flag=True, help="Stop after check_install_release; change nothing.")
@_install_timeout
@_allow_config_reset
@click.option("--allow-purge-kill", is_flag=True,
              help="Processes still running old code when the release is made permanent are "
                   "killed by its purge, and each is reported (default: they fail the "
                   "verification; a downgrade is not rolled back).")
@shared_options
@click.pass_obj
def downgrade(settings: Settings, version: str, no_permanent: bool, dry_run: bool,
              install_timeout: float | None, allow_config_reset: bool,
              allow_purge_kill: bool) -> ExitCode:
    """Go back to an old VERSION through the running release's relup (its down script)."""
    return operate.downgrade(settings, version, no_permanent, dry_run, allow_config_reset,
                             allow_purge_kill, install_timeout)


@click.command("reload-config")
@click.option("--dry-run", is_flag=True, help="Show what would change; apply nothing.")
@click.option("--show-values", is_flag=True,
              help="Print old and new values too (they may be secrets; keys only by default).")
@shared_options
@click.pass_obj
def reload_config(settings: Settings, dry_run: bool, show_values: bool) -> ExitCode:
    """Re-read the running release's sys.config and apply what changed, calling each
    application's config_change/3, as a release upgrade does."""
    return operate.reload_config(settings, dry_run, show_values)


@click.command()
@click.argument("version")
@click.option("--tarball", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True,
              help="VERSION is already on the node (unpacked or old) from other bytes: remove "
                   "it and unpack --tarball instead (never the running or permanent release).")
@shared_options
@click.pass_obj
def unpack(settings: Settings, version: str, tarball: Path, replace: bool) -> ExitCode:
    """Upload and unpack VERSION ahead of time (the upgrade then takes milliseconds)."""
    return operate.unpack(settings, version, tarball, replace)


@click.command()
@click.argument("version")
@_install_timeout
@shared_options
@click.pass_obj
def install(settings: Settings, version: str, install_timeout: float | None) -> ExitCode:
    """Install an unpacked VERSION (not made permanent)."""
    return operate.install(settings, version, install_timeout)


@click.command("make-permanent")
@click.argument("version")
@shared_options
@click.pass_obj
def make_permanent(settings: Settings, version: str) -> ExitCode:
    """Make the running VERSION the one the node boots."""
    return operate.make_permanent(settings, version)


@click.command()
@click.argument("version")
@shared_options
@click.pass_obj
def remove(settings: Settings, version: str) -> ExitCode:
    """Remove an old or unpacked VERSION (never the running or permanent one)."""
    return operate.remove(settings, version)
