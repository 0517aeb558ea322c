"""The read-only `relctl` commands that ask every agent given at once: `versions`, `nodes` and
`ping` (what they do: :mod:`agent.client.views`).
"""

from __future__ import annotations

import click

from .. import views
from ..common import Settings
from ..options import shared_options
from ..status import ExitCode


@click.command()
@shared_options
@click.pass_obj
def versions(settings: Settings) -> ExitCode:
    """Releases of each node and their status; * marks the release running now."""
    return views.versions(settings)


@click.command()
@shared_options
@click.pass_obj
def nodes(settings: Settings) -> ExitCode:
    """The nodes each agent manages, up or down, and the release they run."""
    return views.nodes(settings)


@click.command()
@shared_options
@click.pass_obj
def ping(settings: Settings) -> ExitCode:
    """Check that each agent answers and that it reaches its nodes (one RPC each)."""
    return views.ping(settings)
