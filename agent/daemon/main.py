"""`relctl-agent`: the command line of the agent daemon.

Exit codes: 0 clean shutdown (or a config that checks), 78 configuration error (EX_CONFIG, so
systemd need not retry), 1 any other failure to start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.config import (
    DEFAULT_CONFIG,
    AgentConfig,
    SecretRef,
    UnixAddress,
    load_config,
    load_secrets,
    read_config,
)
from agent.errors import ConfigError

from . import logs
from .app import StartupError, serve

log = logging.getLogger("relctl.agent")

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_CONFIG = 78


def summary(config: AgentConfig) -> str:
    """One line on what a checked config sets up, for --check-config."""
    listen = ", ".join(str(a) for a in config.listen)
    if config.nodes:
        nodes = ", ".join(n.name for n in config.nodes)
    else:
        assert config.discovery is not None
        nodes = f"discovered through epmd on port {config.discovery.epmd_port}"
    tcp = [a for a in config.listen if not isinstance(a, UnixAddress)]
    auth = (f"{len(config.tokens)} token(s)" if config.tokens
            else "no tokens" if not tcp else "insecure_no_auth")
    return f"{config.path}: ok; listen {listen} ({auth}); nodes: {nodes}"


def check_config(path: str) -> int:
    """--check-config: everything the config names is read and checked, except secrets given
    as systemd credentials when run outside the unit (no $CREDENTIALS_DIRECTORY): systemd
    copies those at start, so they are named in a warning, not failed."""
    left: list[SecretRef] = []
    try:
        config = load_secrets(read_config(path), unit_credentials=left)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    for ref in left:
        print(f"warning: {config.path}: {ref.key}: credential {ref.credential!r} is given by "
              f"the unit at start (LoadCredential={ref.credential}:FILE); not checked here",
              file=sys.stderr)
    print(summary(config))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relctl-agent",
        description="relctl's on-host agent: manages the BEAM nodes of this host.")
    parser.add_argument("--config", "-c", metavar="PATH",
                        default=os.environ.get("RELCTL_AGENT_CONFIG", DEFAULT_CONFIG),
                        help=f"TOML config file (default: $RELCTL_AGENT_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--check-config", metavar="PATH", nargs="?", const="", default=None,
                        help="check a config file (default: --config's) and its secrets, then "
                             "exit: 0 when it is valid, 78 with the reason; touches no node")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"relctl-agent {__version__}")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    if args.check_config is not None:
        return check_config(args.check_config or args.config)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
