"""`relctl`: the thin client of relctl agents. This module is the program: the command group, the
registration of every command (the only place that does it) and :func:`main`, the only place
that turns a result into the process exit status.

The client asks one or several agents (gRPC) and prints what they say, as a table or as JSON
(`-o json`). It never talks to a BEAM node itself: it imports the stubs, grpc and click only,
so it starts fast and runs anywhere. Errors are one line on stderr and an exit code from
:class:`~agent.client.status.ExitCode`; `--debug` adds the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from .commands.audit import audit
from .commands.build import make_appup, make_relup
from .commands.journal import operation, operations
from .commands.nodes import nodes, ping, versions
from .commands.ops import downgrade, install, make_permanent, reload_config, remove, unpack, upgrade
from .common import DEFAULT_AGENT, Settings, agent_targets, shared_options
from .status import CliError, ExitCode, exit_codes_help


@click.group(epilog=exit_codes_help(), context_settings={"help_option_names": ["-h", "--help"]})
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
        selectors: tuple[str, ...], agent_port: int | None, token_file: str, ca: str, cert: str,
        key: str) -> None:
    """relctl: see and upgrade the releases of BEAM nodes through their relctl agents.

    On the agent's host, relctl talks to its Unix socket (access: the socket's group). Across
    the network it needs a token (--token-file) and, off loopback, the agent's CA (--ca).
    """
    settings = ctx.ensure_object(Settings)
    if agents_file:
        if agents:
            raise CliError("give --agent or --agents-file, not both", ExitCode.USAGE)
        from .inventory import inventory_agents  # only when a file is given

        settings.agents = inventory_agents(agents_file, selectors, agent_port)
    elif selectors or agent_port is not None:
        raise CliError("--selector and --agent-port go with --agents-file", ExitCode.USAGE)
    else:
        settings.agents = agent_targets(agents)
    settings.token_file, settings.ca, settings.cert, settings.key = token_file, ca, cert, key


# Every command of `relctl`, in the order of the modules that define them.
COMMANDS: tuple[click.Command, ...] = (
    versions, nodes, ping,                                                # commands.nodes
    upgrade, downgrade, reload_config, unpack, install, make_permanent, remove,  # commands.ops
    operations, operation,                                                # commands.journal
    audit,                                                                # commands.audit
    make_relup, make_appup,                                               # commands.build
)
for command in COMMANDS:
    cli.add_command(command)


def _print_traceback() -> None:
    import traceback  # only with --debug: keeps start-up lean

    traceback.print_exc()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `relctl` with ``argv`` (default: the process's arguments); the exit status.

    Commands return an :class:`ExitCode` and raise :class:`CliError` (which carries one);
    click runs outside its standalone mode, so that its usage errors come here too (exit 2,
    click's message) and nothing but this function decides the status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # The command's return value; or click's own code for --help and --version.
        result = cli.main(args=args, prog_name="relctl", standalone_mode=False)
    except CliError as exc:
        if debug:
            _print_traceback()
        click.echo(f"relctl: {exc}", err=True)
        return exc.code
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE if isinstance(exc, click.UsageError) else ExitCode.FAILED
    except click.exceptions.Abort:  # Ctrl-C, or end of input at a prompt
        click.echo("relctl: aborted", err=True)
        return ExitCode.FAILED
    except Exception as exc:  # a bug: still one line, unless --debug
        if debug:
            _print_traceback()
        click.echo(f"relctl: internal error: {exc!r} (run with --debug for the traceback)",
                   err=True)
        return ExitCode.FAILED
    return int(result) if isinstance(result, int) else ExitCode.OK
