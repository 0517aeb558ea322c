"""An operation's options, built in one place from the node's config and what the request
asks: the API calls :func:`operation_options` for every operation that takes options, so an
option added to :class:`Requested` reaches the engine without a second copy to keep in step.

A request states only what it overrides; the node's config ([[nodes]] in agent.toml, or the
defaults in agent/config/values.py) gives the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import RESTART_TIMEOUT, NodeConfig

from .values import Options, Probe


@dataclass(frozen=True)
class Requested:
    """What a request may set of an operation's options. The API fills it from the request
    message by field name (agent/api/messages.py), so a field here is named as in the proto."""

    permanent: bool = True
    dry_run: bool = False
    install_timeout: float | None = None  # None: the node's install_timeout
    health_soak: float | None = None      # None: the node's health_soak
    allow_config_reset: bool = False
    replace: bool = False
    allow_purge_kill: bool = False


def operation_options(node: NodeConfig, requested: Requested) -> Options:
    """The options of one operation on ``node``: the request's overrides over its config."""
    return Options(
        permanent=requested.permanent,
        dry_run=requested.dry_run,
        install_timeout=(requested.install_timeout if requested.install_timeout is not None
                         else node.install_timeout),
        health_soak=(requested.health_soak if requested.health_soak is not None
                     else node.health_soak),
        probes=tuple(Probe(module, function) for module, function in node.health_probes),
        restart_timeout=RESTART_TIMEOUT,
        hooks=node.hooks,
        replace=requested.replace,
        allow_config_reset=requested.allow_config_reset,
        allow_purge_kill=requested.allow_purge_kill,
    )
