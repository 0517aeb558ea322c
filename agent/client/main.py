"""`relctl`: the thin client of relctl agents. This module is the program: the command group, the
registration of every command (the only place that does it) and :func:`main`, the only place
that turns a result into the process exit status.

The client asks one or several agents (gRPC) and prints what they say, as a table or as JSON
(`-o json`). It never talks to a BEAM node itself: it imports the stubs, grpc and click only,
so it starts fast and runs anywhere. Errors are one line on stderr and an exit code from
:class:`~agent.client.status.ExitCode`; `--debug` adds the traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import click

from .common import DEFAULT_AGENT, Settings, agent_targets, shared_options
from .status import CliError, ExitCode, exit_codes_help


@dataclass(frozen=True)
class CommandEntry:
    """Where a command lives (``agent.client.commands.MODULE``, attribute ``attr``) and its
    one-line help, which `relctl --help` shows without importing the module."""

    module: str
    attr: str
    short_help: str


# Every command of `relctl` (main.py is the only place that registers them). A command's module
# is imported only when that command runs, so that `relctl versions` loads neither the
# rollout, the upload nor the relup code (tests/agent/client/test_main.py checks each
# short_help against the command's own docstring).
COMMANDS: Mapping[str, CommandEntry] = {
    "versions": CommandEntry("nodes", "versions", "Releases of each node and their status; * "
                             "marks the release running now."),
    "nodes": CommandEntry("nodes", "nodes", "The nodes each agent manages, up or down, and the "
                          "release they run."),
    "ping": CommandEntry("nodes", "ping", "Check that each agent answers and that it reaches "
                         "its nodes (one RPC each)."),
    "upgrade": CommandEntry("ops", "upgrade", "Upgrade the node to VERSION live: upload, "
                            "unpack, check, install, verify, make permanent."),
    "downgrade": CommandEntry("ops", "downgrade", "Go back to an old VERSION through the "
                              "running release's relup (its down script)."),
    "reload-config": CommandEntry("ops", "reload_config", "Re-read the running release's "
                                  "sys.config and apply what changed, calling each "
                                  "application's config_change/3, as a release upgrade does."),
    "unpack": CommandEntry("ops", "unpack", "Upload and unpack VERSION ahead of time (the "
                           "upgrade then takes milliseconds)."),
    "install": CommandEntry("ops", "install", "Install an unpacked VERSION (not made "
                            "permanent)."),
    "make-permanent": CommandEntry("ops", "make_permanent", "Make the running VERSION the one "
                                   "the node boots."),
    "remove": CommandEntry("ops", "remove", "Remove an old or unpacked VERSION (never the "
                           "running or permanent one)."),
    "operations": CommandEntry("journal", "operations", "The operation journal, newest first."),
    "operation": CommandEntry("journal", "operation", "One operation of the journal, with its "
                              "steps."),
    "audit": CommandEntry("audit", "audit", "The audit trail: every mutating call and every "
                          "refused call, who made it, from where, and its result (needs the "
                          "operator role)."),
    "verify": CommandEntry("verify", "verify", "Check that the node runs its release's code: "
                           "every module of every application loaded with the md5 of the "
                           "release's beam."),
    "make-relup": CommandEntry("build", "make_relup", "Write the relup of NEW_ROOT (up from "
                               "each old version and down to it), and a tarball."),
    "make-appup": CommandEntry("build", "make_appup", "Print (or --write) the appups generated "
                               "from the beams of OLD_ROOT and NEW_ROOT."),
}


def load_command(name: str) -> click.Command:
    """The command ``name`` of :data:`COMMANDS`, importing its module now."""
    entry = COMMANDS[name]
    module = importlib.import_module(f"{__package__}.commands.{entry.module}")
    command: click.Command = getattr(module, entry.attr)
    return command


class _LazyGroup(click.Group):
    """click's group, with the commands of :data:`COMMANDS` loaded on demand (click's "lazy
    group" pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own would import every command for its help line; the table has them, cut
        # to the width the way click cuts a command's help.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        # A stand-in Command cuts it as the real one would (click's helper for it is private).
        rows = [(n, click.Command(n, help=COMMANDS[n].short_help).get_short_help_str(limit))
                for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, epilog=exit_codes_help(),
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--agent", "agents", multiple=True, metavar="HOST:PORT|unix:PATH",
              help=f"Agent to ask; repeat for several. Default: $RELCTL_AGENT, then {DEFAULT_AGENT}.")
@click.option("--agents-file", envvar="RELCTL_AGENTS_FILE", default="", metavar="FILE",
              help="The agents of a Prometheus file_sd targets file (JSON or YAML), in its "
                   "order: the list Prometheus scrapes is the list a rollout walks.")
@click.option("--selector", "selectors", multiple=True, metavar="LABEL=VALUE",
              help="With --agents-file: only the groups with this label; repeat to narrow.")
@click.option("--agent-port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="With --agents-file: the agents' gRPC port on each target's host (or a "
                   "relctl_agent label per group).")
@click.option("--token-file", envvar="RELCTL_TOKEN_FILE", default="", metavar="FILE",
              help="Bearer token for agents on TCP (default: $RELCTL_TOKEN_FILE).")
@click.option("--token-dir", envvar="RELCTL_TOKEN_DIR", default="", metavar="DIR",
              help="One token file per agent, named by its address (DIR/HOST:PORT or "
                   "DIR/HOST), so that each agent has its own token; --token-file is the "
                   "fallback. An inventory group's relctl_token_file label wins over both.")
@click.option("--ca", envvar="RELCTL_CA", default="", metavar="FILE",
              help="CA certificate of the agents: talk TLS (default: $RELCTL_CA).")
@click.option("--cert", envvar="RELCTL_CERT", default="", metavar="FILE",
              help="Client certificate, for agents that verify clients (mTLS).")
@click.option("--key", envvar="RELCTL_KEY", default="", metavar="FILE",
              help="Private key of --cert.")
@shared_options
@click.version_option(package_name="relctl", prog_name="relctl")
@click.pass_context
def cli(ctx: click.Context, agents: tuple[str, ...], agents_file: str,
        selectors: tuple[str, ...], agent_port: int | None, token_file: str, token_dir: str,
        ca: str, cert: str, key: str) -> None:
    """relctl: see and upgrade the releases of BEAM nodes through their relctl agents.

    On the agent's host, relctl talks to its Unix socket (access: the socket's group). Across
    the network it needs a token (--token-file) and, off loopback, the agent's CA (--ca).
    """
    settings = ctx.ensure_object(Settings)
    if agents_file:
        if agents:
            raise CliError("give --agent or --agents-file, not both", ExitCode.USAGE)
        from .inventory import inventory_targets  # only when a file is given

        settings.per_agent = inventory_targets(agents_file, selectors, agent_port)
        settings.agents = list(settings.per_agent)
    elif selectors or agent_port is not None:
        raise CliError("--selector and --agent-port go with --agents-file", ExitCode.USAGE)
    else:
        settings.agents = agent_targets(agents)
    settings.token_file, settings.ca, settings.cert, settings.key = token_file, ca, cert, key
    settings.token_dir = token_dir



def _print_traceback() -> None:
    import traceback  # only with --debug: keeps start-up lean

    traceback.print_exc()


def _sigterm_interrupts() -> Callable[[], None]:
    """SIGTERM (a CI job cancelled, systemd stopping a deploy unit) ends relctl the way Ctrl-C
    does: with what is known printed and exit 130, not killed mid-line. Returns what puts the
    previous handler back (main() may run inside another program, a test for one)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal() works only there
        return lambda: None
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run `relctl` with ``argv`` (default: the process's arguments); the exit status.

    Commands return an :class:`ExitCode` and raise :class:`CliError` (which carries one);
    click runs outside its standalone mode, so that its usage errors come here too (exit 2,
    click's message) and nothing but this function decides the status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    restore = _sigterm_interrupts()
    try:
        return _run(args, debug)
    finally:
        restore()


def _run(args: list[str], debug: bool) -> int:
    try:
        # The command's return value; or click's own code for --help and --version.
        result = cli.main(args=args, prog_name="relctl", standalone_mode=False)
    except CliError as exc:
        if debug:
            _print_traceback()
        click.echo(f"relctl: {exc}", err=True)
        return exc.code
    except click.ClickException as exc:  # the command line's: usage errors, unreadable files
        exc.show()
        return ExitCode.USAGE
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C/SIGTERM, or end of input
        click.echo("relctl: interrupted; an operation already started on an agent goes on "
                   "there (relctl operations shows it)", err=True)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: still one line, unless --debug; not 1 (work may go on)
        if debug:
            _print_traceback()
        click.echo(f"relctl: internal error: {exc!r}; an operation already started on an agent "
                   "may go on there (relctl operations shows it); run with --debug for the "
                   "traceback", err=True)
        return ExitCode.INTERNAL
    return int(result) if isinstance(result, int) else ExitCode.OK
