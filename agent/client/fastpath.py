"""The command lines `relctl` runs most, read without click: `versions`, `upgrade` and `downgrade`.

Why: loading click and building its commands was a tenth of `relctl versions`'s start, which a
deploy script pays on every call (issue 24). What: a reader for the plain forms of those
three command lines only (the group's options, the shared ones, the command's own options and
its VERSION), which runs the same function the click command calls
(:func:`agent.client.views.versions`, :func:`agent.client.operate.upgrade`,
:func:`agent.client.operate.downgrade`) with the same arguments, after the same
:func:`~agent.client.common.apply_group_options`.

Anything else returns None, and click reads the command line as always, with its own help and
messages: `--help`, `--version`, `--`, short options other than a lone `-o`, an unknown
option or command, a missing or extra argument, and any value click might read otherwise
than here (numbers are plain ASCII decimals, a --tarball an existing readable file). So this
reader accepts only what click accepts, with the same values: tests/agent/client/
test_fastpath.py checks the tables below against the click commands' options and runs both
readers on generated command lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .common import Settings, apply_group_options
from .status import ExitCode


class Opt(NamedTuple):
    """An option: where its value goes, how it is read (None: a flag, which takes no value;
    the reader raises ValueError for a value it leaves to click), and whether it repeats."""

    dest: str
    read: Callable[[str], Any] | None
    multiple: bool = False


def _text(value: str) -> str:
    return value


def _decimal(value: str) -> float:
    # Plain decimals only ("2", "0.5", ".5", "2."): what float() reads the same as click does.
    whole, _, fraction = value.partition(".")
    if not (whole or fraction) or not all(p.isascii() and p.isdigit() for p in (whole, fraction)
                                          if p):
        raise ValueError(value)
    return float(value)


def _at_least(low: float) -> Callable[[str], float]:
    def read(value: str) -> float:
        number = _decimal(value)
        if number < low:
            raise ValueError(value)
        return number
    return read


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def read(value: str) -> int:
        if not (value.isascii() and value.isdigit()):
            raise ValueError(value)
        number = int(value)
        if number < low or (high is not None and number > high):
            raise ValueError(value)
        return number
    return read


def _output(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError(value)
    return value


def _readable_file(value: str) -> Any:
    # click.Path(exists=True, dir_okay=False): it exists, is no directory, and can be read.
    import stat
    from pathlib import Path

    try:
        mode = os.stat(value).st_mode
    except (OSError, ValueError):
        raise ValueError(value) from None
    if stat.S_ISDIR(mode) or not os.access(value, os.R_OK):
        raise ValueError(value)
    return Path(value)


_FLAG = None

# The group's own options: before the command only (agent.client.cli).
GROUP: Mapping[str, Opt] = {
    "--agent": Opt("agents", _text, multiple=True),
    "--agents-file": Opt("agents_file", _text),
    "--selector": Opt("selectors", _text, multiple=True),
    "--agent-port": Opt("agent_port", _integer(1, 65535)),
    "--token-file": Opt("token_file", _text),
    "--token-dir": Opt("token_dir", _text),
    "--ca": Opt("ca", _text),
    "--cert": Opt("cert", _text),
    "--key": Opt("key", _text),
}
# Their environment variables, read when the option is not given (an empty one is unset).
GROUP_ENV: Mapping[str, str] = {
    "agents_file": "RELCTL_AGENTS_FILE", "token_file": "RELCTL_TOKEN_FILE",
    "token_dir": "RELCTL_TOKEN_DIR", "ca": "RELCTL_CA", "cert": "RELCTL_CERT",
    "key": "RELCTL_KEY"}

# The shared options, before or after the command (agent.client.options): Settings fields.
SHARED: Mapping[str, Opt] = {
    "-o": Opt("output", _output),
    "--output": Opt("output", _output),
    "--node": Opt("node", _text),
    "--timeout": Opt("timeout", _at_least(0.1)),
    "--host-timeout": Opt("host_timeout", _at_least(2)),
    "--debug": Opt("debug", _FLAG),
}


class Command(NamedTuple):
    """A command this reader knows: its arguments, its own options with their defaults, the
    function (``agent.client.MODULE.ATTR``) both readers run, and the click command's options
    this reader leaves to click (an old name, which warns and is merged there)."""

    arguments: tuple[str, ...]
    options: Mapping[str, Opt]
    defaults: Mapping[str, Any]
    module: str
    attr: str
    left_to_click: tuple[str, ...] = ()


_DOWNGRADE_FLAGS = ("--no-permanent", "--dry-run", "--allow-config-reset", "--allow-purge-kill")

COMMANDS: Mapping[str, Command] = {
    "versions": Command((), {}, {}, "views", "versions"),
    "downgrade": Command(
        ("version",),
        {**{name: Opt(name[2:].replace("-", "_"), _FLAG) for name in _DOWNGRADE_FLAGS},
         "--install-timeout": Opt("install_timeout", _at_least(1))},
        {"no_permanent": False, "dry_run": False, "allow_config_reset": False,
         "allow_purge_kill": False, "install_timeout": None}, "operate", "downgrade"),
    "upgrade": Command(
        ("version",),
        {**{name: Opt(name[2:].replace("-", "_"), _FLAG)
            for name in (*_DOWNGRADE_FLAGS, "--no-prestage", "--replace")},
         "--tarball": Opt("tarball", _readable_file),
         "--health-soak": Opt("health_soak", _at_least(0)),
         "--install-timeout": Opt("install_timeout", _at_least(1)),
         "--batch": Opt("batch", _integer(1)),
         "--max-failures": Opt("max_failures", _integer(0)),
         "--stage-parallel": Opt("stage_parallel", _integer(1))},
        {"tarball": None, "no_permanent": False, "dry_run": False, "health_soak": None,
         "install_timeout": None, "batch": 1, "max_failures": 0, "stage_parallel": None,
         "no_prestage": False, "allow_config_reset": False, "replace": False,
         "allow_purge_kill": False}, "operate", "upgrade", left_to_click=("--health-timeout",)),
}


class Reading(NamedTuple):
    """A command line this reader took: the shared options' values, the group's options, the
    command and its arguments."""

    shared: dict[str, Any]
    group: dict[str, Any]
    command: Command
    kwargs: dict[str, Any]

    def run(self) -> ExitCode:
        """What the click command would do: the group's options applied, then its function."""
        import importlib

        settings = Settings(**self.shared)
        apply_group_options(settings, **self.group)
        function = getattr(importlib.import_module(f"{__package__}.{self.command.module}"),
                           self.command.attr)
        code: ExitCode = function(settings, **self.kwargs)
        return code


class _LeaveToClick(Exception):
    """This command line is click's to read."""


def _option(args: Sequence[str], i: int, table: Mapping[str, Opt], into: dict[str, Any]
            ) -> int:
    """Read the option at ``args[i]`` into ``into``; the index after it."""
    name, eq, value = args[i].partition("=") if args[i].startswith("--") else (args[i], "", "")
    opt = table.get(name)
    if opt is None:
        raise _LeaveToClick
    if opt.read is None:  # a flag
        if eq:
            raise _LeaveToClick  # click: "does not take a value"
        into[opt.dest] = True
        return i + 1
    if not eq:
        if i + 1 >= len(args):
            raise _LeaveToClick  # click: "requires an argument"
        value, i = args[i + 1], i + 1
    try:
        read = opt.read(value)
    except ValueError:
        raise _LeaveToClick from None
    if opt.multiple:
        into.setdefault(opt.dest, []).append(read)
    else:
        into[opt.dest] = read
    return i + 1


def _is_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "-"


def read(args: Sequence[str], environ: Mapping[str, str] | None = None) -> Reading | None:
    """The :class:`Reading` of ``args`` (without the program name), or None when click is to
    read them. ``environ``: the environment the group's options fall back on (default: this
    process's)."""
    env = os.environ if environ is None else environ
    try:
        shared: dict[str, Any] = {}
        given: dict[str, Any] = {}
        i = 0
        while i < len(args) and _is_option(args[i]):
            i = _option(args, i, {**GROUP, **SHARED}, given)
        if i >= len(args) or args[i] not in COMMANDS:
            return None
        command = COMMANDS[args[i]]
        shared.update((k, v) for k, v in given.items() if k in _SHARED_DESTS)
        options: dict[str, Any] = {}
        positional: list[str] = []
        i += 1
        while i < len(args):
            if args[i] == "--":
                return None
            if _is_option(args[i]):
                i = _option(args, i, {**command.options, **SHARED}, options)
            else:
                positional.append(args[i])
                i += 1
        if len(positional) != len(command.arguments):
            return None
    except _LeaveToClick:
        return None
    shared.update((k, v) for k, v in options.items() if k in _SHARED_DESTS)
    group = {"agents": given.get("agents", []), "selectors": given.get("selectors", []),
             "agent_port": given.get("agent_port"),
             **{dest: given.get(dest, env.get(var) or "") for dest, var in GROUP_ENV.items()}}
    kwargs = {**command.defaults, **{k: v for k, v in options.items() if k not in _SHARED_DESTS},
              **dict(zip(command.arguments, positional))}
    return Reading(shared, group, command, kwargs)


_SHARED_DESTS = frozenset(opt.dest for opt in SHARED.values())
