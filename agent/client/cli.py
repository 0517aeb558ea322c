"""The click side of `relctl`: the command group, its options and its help, with the commands of
:data:`agent.client.main.COMMANDS` loaded on demand.

Loaded for every command line that :mod:`agent.client.fastpath` does not read itself: help,
version, usage errors, and every command but the plain forms of `versions`, `upgrade` and
`downgrade`. What the group's options do is :func:`agent.client.common.apply_group_options`,
which the fast path calls as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click

from .common import DEFAULT_AGENT, Settings, apply_group_options
from .options import shared_options
from .status import exit_codes_help

if TYPE_CHECKING:
    from .main import CommandEntry


class LazyGroup(click.Group):
    """click's group whose commands are loaded when one runs (click's "lazy group" pattern):
    ``commands`` gives each one's help line, ``load`` the command itself."""

    def __init__(self, *args: Any, commands: Mapping[str, CommandEntry],
                 load: Callable[[str], click.Command], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = commands
        self.load = load

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.table)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.load(cmd_name) if cmd_name in self.table else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own would import every command for its help line; the table has them, cut
        # to the width the way click cuts a command's help.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        # A stand-in Command cuts it as the real one would (click's helper for it is private).
        rows = [(n, click.Command(n, help=self.table[n].short_help).get_short_help_str(limit))
                for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _group(ctx: click.Context, agents: tuple[str, ...], agents_file: str,
           selectors: tuple[str, ...], agent_port: int | None, token_file: str, token_dir: str,
           ca: str, cert: str, key: str) -> None:
    """relctl: see and upgrade the releases of BEAM nodes through their relctl agents.

    On the agent's host, relctl talks to its Unix socket (access: the socket's group). Across
    the network it needs a token (--token-file) and, off loopback, the agent's CA (--ca).
    """
    apply_group_options(ctx.ensure_object(Settings), agents=agents, agents_file=agents_file,
                        selectors=selectors, agent_port=agent_port, token_file=token_file,
                        token_dir=token_dir, ca=ca, cert=cert, key=key)


def make_group(commands: Mapping[str, CommandEntry],
               load: Callable[[str], click.Command]) -> click.Group:
    """The `relctl` group over ``commands``, each loaded by ``load`` when it runs."""
    f: Callable[..., Any] = click.pass_context(_group)
    f = click.version_option(package_name="relctl", prog_name="relctl")(f)
    f = shared_options(f)
    for decorate in reversed(_GROUP_OPTIONS):
        f = decorate(f)
    group = click.group("relctl", cls=LazyGroup, commands=commands, load=load, epilog=exit_codes_help(),
                        context_settings={"help_option_names": ["-h", "--help"]})(f)
    return group


# The group's own options, in the order --help lists them.
_GROUP_OPTIONS: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...] = (
    click.option("--agent", "agents", multiple=True, metavar="HOST:PORT|unix:PATH",
                 help="Agent to ask; repeat for several. Default: $RELCTL_AGENT, then "
                      f"{DEFAULT_AGENT}."),
    click.option("--agents-file", envvar="RELCTL_AGENTS_FILE", default="", metavar="FILE",
                 help="The agents of a Prometheus file_sd targets file (JSON or YAML), in its "
                      "order: the list Prometheus scrapes is the list a rollout walks."),
    click.option("--selector", "selectors", multiple=True, metavar="LABEL=VALUE",
                 help="With --agents-file: only the groups with this label; repeat to narrow."),
    click.option("--agent-port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
                 help="With --agents-file: the agents' gRPC port on each target's host (or a "
                      "relctl_agent label per group)."),
    click.option("--token-file", envvar="RELCTL_TOKEN_FILE", default="", metavar="FILE",
                 help="Bearer token for agents on TCP (default: $RELCTL_TOKEN_FILE)."),
    click.option("--token-dir", envvar="RELCTL_TOKEN_DIR", default="", metavar="DIR",
                 help="One token file per agent, named by its address (DIR/HOST:PORT or "
                      "DIR/HOST), so that each agent has its own token; --token-file is the "
                      "fallback. An inventory group's relctl_token_file label wins over both."),
    click.option("--ca", envvar="RELCTL_CA", default="", metavar="FILE",
                 help="CA certificate of the agents: talk TLS (default: $RELCTL_CA)."),
    click.option("--cert", envvar="RELCTL_CERT", default="", metavar="FILE",
                 help="Client certificate, for agents that verify clients (mTLS)."),
    click.option("--key", envvar="RELCTL_KEY", default="", metavar="FILE",
                 help="Private key of --cert."),
)
