"""`relctl-agent`: reads the config, keeps a connection to each node, serves the gRPC API and
/metrics, and shuts down cleanly (exit 0) on SIGTERM or SIGINT.

Exit codes: 0 clean shutdown, 78 configuration error (EX_CONFIG, so systemd need not retry),
1 any other failure to start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from agent import __version__
from agent.api.audit import FILE_NAME as AUDIT_FILE
from agent.api.audit import AuditLog
from agent.api.auth import Authenticator
from agent.api.interceptor import AccessInterceptor
from agent.api.service import AgentService, ApiServer
from agent.api.unix_front import SocketError, UnixFront
from agent.config.access import UnixAddress
from agent.config.parse import AgentConfig, load_config
from agent.errors import ConfigError
from agent.nodes.discovery import Discovery
from agent.nodes.manager import NodeManager
from agent.operations.journal import FILE_NAME as JOURNAL_FILE
from agent.operations.journal import Journal, JournalError, OperationRecord
from agent.operations.runner import Operations
from agent.operations.uploads import UploadStore
from agent.release.upgrade import Options, Probe
from bridge import Node

from . import logs
from .metrics import AgentMetrics, MetricsServer
from .sdnotify import Notifier, nodes_status

log = logging.getLogger("relctl.agent")

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_CONFIG = 78
DEFAULT_CONFIG = "/etc/relctl/agent.toml"
# How long start-up waits for the first connection attempt to each node before saying ready.
FIRST_ATTEMPT_WAIT = 10.0


class StartupError(Exception):
    """The agent cannot start; the message says what to fix."""


def _prepare_state_dir(config: AgentConfig) -> None:
    try:
        config.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{config.path}: agent.state_dir: cannot create {config.state_dir}: "
                           f"{exc.strerror or exc}") from None
    if not os.access(config.state_dir, os.W_OK | os.X_OK):
        raise StartupError(f"{config.path}: agent.state_dir: {config.state_dir} is not writable "
                           "by this user")


def _discovery(config: AgentConfig, nodes: NodeManager) -> Discovery | None:
    cfg = config.discovery
    if cfg is None:
        return None
    # Only EPMD's names are asked here; no connection is made, so no cookie is used.
    epmd = Node(cookie="unused", epmd_port=cfg.epmd_port)
    log.info("no [[nodes]] configured: managing the nodes registered with epmd on port %d "
             "(as NAME@%s)", cfg.epmd_port, cfg.host)
    if cfg.cookie is None and cfg.cookie_dir is None:
        log.warning("discovery has no cookie (no ~/.erlang.cookie, no discovery.cookie_file or "
                    "cookie_dir): it will manage no node; configure [[nodes]] or a cookie")
    return Discovery(cfg, nodes, lambda: epmd.names("localhost", timeout=config.connect_timeout))


def _bind(server: ApiServer, config: AgentConfig, fronts: list[UnixFront]) -> None:
    inner = iter(fronts)
    for address in config.listen:
        target = next(inner).inner_address if isinstance(address, UnixAddress) else str(address)
        try:
            server.bind(target, None if isinstance(address, UnixAddress) else config.tls)
        except OSError as exc:
            raise StartupError(f"{config.path}: agent.listen: cannot listen on {address} "
                               f"({exc}); is another agent running there?") from None
        if not isinstance(address, UnixAddress) and config.insecure_no_auth:
            log.warning("insecure_no_auth = true: calls to %s without a token are accepted as "
                        "operator \"anonymous\"; for tests and demos only", address)


async def serve(config: AgentConfig) -> int:
    _prepare_state_dir(config)
    metrics: AgentMetrics | None = None

    def observe_rpc(function: str, seconds: float) -> None:
        if metrics is not None:
            metrics.observe_rpc(function, seconds)

    nodes = NodeManager.from_config(config, observe_rpc)
    metrics = AgentMetrics(nodes.snapshot)
    try:
        journal = Journal.open(config.state_dir / JOURNAL_FILE)
    except JournalError as exc:
        raise StartupError(f"{config.path}: agent.state_dir: {exc}") from None
    def operation_finished(record: OperationRecord) -> None:
        if metrics is not None and record.finished_at is not None:
            metrics.observe_operation(record.node, record.kind, record.outcome,
                                      record.finished_at - record.started_at)

    operations = Operations(journal, nodes, rpc_timeout=config.rpc_timeout,
                            on_finished=operation_finished)
    uploads = UploadStore(config.state_dir / "uploads", max_size=config.max_upload_bytes)
    def node_options(name: str) -> Options:
        node = nodes.config(name)
        return Options(install_timeout=node.install_timeout, health_timeout=node.health_soak,
                       probes=tuple(Probe(m, f) for m, f in node.health_probes),
                       hooks=node.hooks)

    try:
        audit = AuditLog(config.state_dir / AUDIT_FILE)
    except OSError as exc:
        raise StartupError(f"{config.path}: agent.state_dir: cannot open the audit trail "
                           f"{config.state_dir / AUDIT_FILE}: {exc.strerror or exc}") from None
    fronts = [UnixFront(a.path, mode=config.socket_mode, gid=config.socket_gid)
              for a in config.listen if isinstance(a, UnixAddress)]

    def unix_caller(peer: str) -> tuple[int, str] | None:
        return next((found for f in fronts if (found := f.caller(peer)) is not None), None)

    access = AccessInterceptor(Authenticator(config.tokens,
                                             insecure_no_auth=config.insecure_no_auth),
                               audit, unix_caller)
    server = ApiServer(AgentService(nodes, operations, uploads, rpc_timeout=config.rpc_timeout,
                                    node_options=node_options, audit=audit), [access])
    discovery = _discovery(config, nodes)
    metrics_server: MetricsServer | None = None
    stop = asyncio.Event()
    notifier = Notifier.from_environ()
    watchdog: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        _bind(server, config, fronts)
        if config.metrics_listen is not None:
            try:
                metrics_server = metrics.serve(config.metrics_listen)
            except OSError as exc:
                raise StartupError(f"{config.path}: agent.metrics_listen: cannot listen on "
                                   f"{config.metrics_listen} ({exc.strerror or exc})") from None
        await server.start()
        for front in fronts:
            try:
                await front.start()
            except SocketError as exc:
                raise StartupError(f"{config.path}: agent.listen: {exc}") from None
        if discovery is not None:
            await discovery.scan()
            discovery.start()
        nodes.start()
        await nodes.tried(FIRST_ATTEMPT_WAIT)
        operations.reconcile()
        states = nodes.snapshot()
        summary = ", ".join(f"{s.name} {'up' if s.up else 'down'}" for s in states) or "none"
        log.info("ready: gRPC on %s, metrics %s, nodes: %s",
                 ", ".join(str(a) for a in config.listen),
                 f"on http://{config.metrics_listen}/metrics" if metrics_server else "disabled",
                 summary)
        notifier.ready(nodes_status(states))
        watchdog = asyncio.create_task(
            notifier.run_watchdog(lambda: nodes_status(nodes.snapshot())))
        await stop.wait()
        notifier.stopping("stopping: letting running calls and operations finish")
        log.info("stopping: letting running calls finish (up to %g s)", config.shutdown_grace)
    finally:
        # No new requests first; then running upgrades may finish (a half-done install is
        # worse than a late exit); what is still running after the grace is journaled as
        # interrupted.
        for front in fronts:
            front.stop_accepting()
        await server.stop(config.shutdown_grace)
        for front in fronts:
            await front.stop()
        audit.close()
        await operations.stop(config.operations_grace)
        if discovery is not None:
            await discovery.stop()
        await nodes.stop()
        journal.close()
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        # Pings went on through the grace: a slow but live shutdown must not look hung.
        if watchdog is not None:
            watchdog.cancel()
        notifier.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relctl-agent",
        description="relctl's on-host agent: manages the BEAM nodes of this host.")
    parser.add_argument("--config", "-c", metavar="PATH",
                        default=os.environ.get("RELCTL_AGENT_CONFIG", DEFAULT_CONFIG),
                        help=f"TOML config file (default: $RELCTL_AGENT_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"relctl-agent {__version__}")
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    try:
        return asyncio.run(serve(config))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
