"""`relctl`: the thin client of relctl agents. This module is the program: the table of every
command (the only place that registers them) and :func:`main`, the only place that turns a
result into the process exit status.

The client asks one or several agents (gRPC) and prints what they say, as a table or as JSON
(`-o json`). It never talks to a BEAM node itself: it imports the stubs, grpc and click only,
so it starts fast and runs anywhere. Errors are one line on stderr and an exit code from
:class:`~agent.client.status.ExitCode`; `--debug` adds the traceback.

Start-up: the plain forms of the command lines run most (`versions`, `upgrade`, `downgrade`)
are read by :mod:`agent.client.fastpath` and run without loading click; every other one
(help and usage errors included) goes to the click group of :mod:`agent.client.cli`. This
module loads neither grpc nor click itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from . import fastpath
from .status import CliError, ExitCode

if TYPE_CHECKING:
    import click


class CommandEntry(NamedTuple):
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
                               "from the beams of the OLD_ROOTs and NEW_ROOT."),
}


def load_command(name: str) -> click.Command:
    """The command ``name`` of :data:`COMMANDS`, importing its module now."""
    entry = COMMANDS[name]
    module = importlib.import_module(f"{__package__}.commands.{entry.module}")
    command: click.Command = getattr(module, entry.attr)
    return command


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


def main(argv: Sequence[str] | None = None, *, fast_path: bool = True) -> int:
    """Run `relctl` with ``argv`` (default: the process's arguments); the exit status.

    Commands return an :class:`ExitCode` and raise :class:`CliError` (which carries one);
    click runs outside its standalone mode, so that its usage errors come here too (exit 2,
    click's message) and nothing but this function decides the status. ``fast_path=False``
    reads every command line with click (the tests compare both readers).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    restore = _sigterm_interrupts()
    try:
        return _run(args, debug, fast_path)
    finally:
        restore()


def _with_click(args: list[str]) -> object:
    """The command line read and run by click (the command's return value; or click's own
    code for --help and --version); click's usage errors shown and made exit 2."""
    import click

    from .cli import make_group

    try:
        return make_group(COMMANDS, load_command).main(args=args, prog_name="relctl",
                                                       standalone_mode=False)
    except click.ClickException as exc:  # the command line's: usage errors, unreadable files
        exc.show()
        return ExitCode.USAGE
    except click.exceptions.Abort:  # end of input at a prompt: as Ctrl-C
        raise KeyboardInterrupt from None


def _error(message: str) -> None:
    from .output import error  # what main prints goes through output, loaded when needed

    error(message)


def _run(args: list[str], debug: bool, fast_path: bool) -> int:
    try:
        reading = fastpath.read(args) if fast_path else None
        result = reading.run() if reading is not None else _with_click(args)
    except CliError as exc:
        if debug:
            _print_traceback()
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        _error("interrupted; an operation already started on an agent goes on there (relctl "
              "operations shows it)")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: still one line, unless --debug; not 1 (work may go on)
        if debug:
            _print_traceback()
        _error(f"internal error: {exc!r}; an operation already started on an agent may go on "
              "there (relctl operations shows it); run with --debug for the traceback")
        return ExitCode.INTERNAL
    return int(result) if isinstance(result, int) else ExitCode.OK
