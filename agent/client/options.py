"""The click options every `relctl` command shares: the ones accepted before and after the
command name (`relctl versions -o json`), each storing the value given in the
:class:`~agent.client.common.Settings` of the invocation.

Loaded by the click commands only: the common command lines that
:mod:`agent.client.fastpath` reads run without click. That reader's tables of these options
are checked against the ones here (tests/agent/client/test_fastpath.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .common import DEFAULT_HOST_TIMEOUT, DEFAULT_TIMEOUT, Settings


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    # A shared option given after the command must not reset the value given before it, so
    # only a value actually given is stored.
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(Settings), name, value)
    return callback


def _output_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-o", "--output", type=click.Choice(["text", "json"]), default=None,
                        expose_value=False, callback=_store("output"),
                        help="Output format (default: text).")(f)


def _debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--debug", is_flag=True, default=None, expose_value=False,
                        callback=_store("debug"), help="Show tracebacks of errors.")(f)


def shared_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options accepted before and after the command (`relctl versions -o json`)."""
    f = _output_option(f)
    f = click.option("--node", metavar="NAME", default=None, expose_value=False,
                     callback=_store("node"), help="Only this node (name@host).")(f)
    f = click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     expose_value=False, callback=_store("timeout"),
                     help=f"Seconds to wait for each agent (default: {DEFAULT_TIMEOUT:g}).")(f)
    f = click.option("--host-timeout", type=click.FloatRange(min=2), default=None,
                     expose_value=False, callback=_store("host_timeout"), metavar="S",
                     help="Seconds an agent may stay silent during a call (no answer, not "
                          "even to keepalive pings) before it is given up; a rollout marks it "
                          f"unknown (default: {DEFAULT_HOST_TIMEOUT:g}).")(f)
    return _debug_option(f)


def local_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The shared options that mean something without an agent (`-o`, `--debug`)."""
    return _debug_option(_output_option(f))
