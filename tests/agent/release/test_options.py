"""An operation's options come from one function: the node's config, with what the request
overrides. Every field a request may set reaches the options; nothing is dropped on the way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent.config import POST_INSTALL, RESTART_TIMEOUT, Hook, NodeConfig
from agent.release import Probe, Requested, operation_options

NODE = NodeConfig("a@h", Path("/c"), "cookie", health_probes=(("app", "health"),),
                  health_soak=7.0, install_timeout=120.0,
                  hooks=(Hook("warm", POST_INSTALL, "app", "warm"),))


def test_without_overrides_the_options_are_the_nodes_config() -> None:
    options = operation_options(NODE, Requested())
    assert (options.install_timeout, options.health_soak) == (120.0, 7.0)
    assert options.probes == (Probe("app", "health"),) and options.hooks == NODE.hooks
    assert options.restart_timeout == RESTART_TIMEOUT
    assert options.permanent and not (options.dry_run or options.replace
                                      or options.allow_config_reset or options.allow_purge_kill)


def test_a_request_overrides_the_timeouts_zero_soak_included() -> None:
    options = operation_options(NODE, Requested(install_timeout=30.0, health_soak=0.0))
    assert (options.install_timeout, options.health_soak) == (30.0, 0.0)


def _other(value: Any) -> Any:
    """A value unlike ``value`` (a field's default) of the field's kind."""
    return (not value) if isinstance(value, bool) else 1234.5


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Requested)])
def test_every_field_a_request_sets_reaches_the_options(name: str) -> None:
    plain = operation_options(NODE, Requested())
    changed = operation_options(NODE, Requested(**{name: _other(getattr(Requested(), name))}))
    assert changed != plain, f"Requested.{name} is dropped by operation_options"
