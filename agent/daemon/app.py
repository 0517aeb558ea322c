"""The composition root of `relctl-agent`: builds the node links, journal, operations, gRPC
service and /metrics from a loaded config, runs them until SIGTERM or SIGINT, and stops them
in the order that loses nothing (no new calls, running operations finish, then the links).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field

from agent.api import (
    AUDIT_FILE,
    AccessInterceptor,
    AgentService,
    ApiServer,
    AuditLog,
    Authenticator,
    SocketError,
    TcpFront,
    UnixFront,
    connection_caps,
    descriptor_limit,
)
from agent.config import AgentConfig, UnixAddress
from agent.errors import HostError
from agent.nodes import Discovery, NodeManager
from agent.operations import JOURNAL_FILE, Journal, JournalError, OperationRecord, Operations
from agent.operations import JournalPlaces, UploadStore
from bridge import Node

from .metrics import AgentMetrics
from .metrics_http import MetricsHttp
from .sdnotify import Notifier, nodes_status

log = logging.getLogger("relctl.agent")

# How long start-up waits for the first connection attempt to each node before saying ready.
FIRST_ATTEMPT_WAIT = 10.0
# How often journal writes that failed (a full state_dir) are tried again.
JOURNAL_RETRY_INTERVAL = 5.0


class StartupError(HostError):
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


def _bind(server: ApiServer, config: AgentConfig, fronts: list[UnixFront | TcpFront]) -> None:
    # One front per listen address, in order: grpc listens only on the fronts' private sockets.
    for address, front in zip(config.listen, fronts):
        try:
            server.bind(front.inner_address,
                        None if isinstance(address, UnixAddress) else config.tls)
        except OSError as exc:
            raise StartupError(f"{config.path}: agent.listen: cannot listen on {address} "
                               f"({exc}); is another agent running there?") from None
        if not isinstance(address, UnixAddress) and config.insecure_no_auth:
            log.warning("insecure_no_auth = true: calls to %s without a token are accepted as "
                        "operator \"anonymous\"; for tests and demos only", address)


def _fronts(config: AgentConfig) -> list[UnixFront | TcpFront]:
    """The public side of each listen address: the Unix socket (the caller's uid) or a TCP
    listener with connection caps that fit the descriptors (agent.api.tcp_front)."""
    tcp = [a for a in config.listen if not isinstance(a, UnixAddress)]
    caps = connection_caps(descriptor_limit(), len(tcp))
    if tcp and caps.warning:
        log.warning("%s", caps.warning)
    return [UnixFront(a.path, mode=config.socket_mode, gid=config.socket_gid)
            if isinstance(a, UnixAddress) else TcpFront(a.host, a.port, caps)
            for a in config.listen]


@dataclass
class Parts:
    """What one running agent is made of, built from its config."""

    config: AgentConfig
    nodes: NodeManager
    metrics: AgentMetrics
    journal: Journal
    operations: Operations
    audit: AuditLog
    fronts: list[UnixFront | TcpFront]
    server: ApiServer
    discovery: Discovery | None
    uploads: UploadStore
    notifier: Notifier = field(default_factory=Notifier.from_environ)
    metrics_server: MetricsHttp | None = None
    watchdog: asyncio.Task[None] | None = None
    upload_sweeper: asyncio.Task[None] | None = None
    journal_retry: asyncio.Task[None] | None = None
    access: AccessInterceptor | None = None


def build(config: AgentConfig) -> Parts:
    """Every part of the agent, wired; nothing listens or connects yet."""
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

    # Uploads are checked and extracted as they arrive where the agent may write the node's
    # release root; what they extract is in the journal's placing records meanwhile.
    places = JournalPlaces(nodes, journal, rpc_timeout=config.rpc_timeout)
    operations = Operations(journal, nodes, rpc_timeout=config.rpc_timeout,
                            on_finished=operation_finished, busy_placings=places.busy)
    uploads = UploadStore(config.state_dir / "uploads", max_upload_bytes=config.max_upload_bytes,
                          uploads_max_bytes=config.uploads_max_bytes,
                          upload_idle_expiry=config.upload_idle_expiry, places=places)

    try:
        audit = AuditLog(config.state_dir / AUDIT_FILE)
    except OSError as exc:
        raise StartupError(f"{config.path}: agent.state_dir: cannot open the audit trail "
                           f"{config.state_dir / AUDIT_FILE}: {exc.strerror or exc}") from None
    fronts = _fronts(config)

    def unix_caller(peer: str) -> tuple[int, str] | None:
        return next((found for f in fronts if isinstance(f, UnixFront)
                     and (found := f.caller(peer)) is not None), None)

    def tcp_peer(peer: str) -> str | None:
        return next((found for f in fronts if isinstance(f, TcpFront)
                     and (found := f.peer(peer)) is not None), None)

    access = AccessInterceptor(Authenticator(config.tokens,
                                             insecure_no_auth=config.insecure_no_auth),
                               audit, unix_caller, tcp_peer)
    # Each operation's options come from its node's config and the request
    # (agent.release.options, called by the service): nothing to hand over here.
    server = ApiServer(AgentService(nodes, operations, uploads, rpc_timeout=config.rpc_timeout,
                                    audit=audit), [access])
    return Parts(config, nodes, metrics, journal, operations, audit, fronts, server,
                 _discovery(config, nodes), uploads, access=access)


async def start(parts: Parts) -> None:
    """Listen, connect to the nodes, and tell systemd the agent is ready."""
    config = parts.config
    _bind(parts.server, config, parts.fronts)
    if config.metrics_listen is not None:
        try:
            parts.metrics_server = await parts.metrics.serve(
                config.metrics_listen, metrics_max_connections=config.metrics_max_connections,
                metrics_idle_timeout=config.metrics_idle_timeout)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"{config.path}: agent.metrics_listen: cannot listen on "
                               f"{config.metrics_listen} ({reason})") from None
    await parts.server.start()
    for front in parts.fronts:
        try:
            await front.start()
        except SocketError as exc:
            raise StartupError(f"{config.path}: agent.listen: {exc}") from None
    if parts.discovery is not None:
        await parts.discovery.scan()
        parts.discovery.start()
    parts.nodes.start()
    await parts.nodes.tried(FIRST_ATTEMPT_WAIT)
    parts.operations.reconcile()
    states = parts.nodes.snapshot()
    summary = ", ".join(f"{s.name} {'up' if s.up else 'down'}" for s in states) or "none"
    log.info("ready: gRPC on %s, metrics %s, nodes: %s",
             ", ".join(str(a) for a in config.listen),
             f"on http://{config.metrics_listen}/metrics" if parts.metrics_server else "disabled",
             summary)
    parts.notifier.ready(nodes_status(states))
    parts.watchdog = asyncio.create_task(
        parts.notifier.run_watchdog(lambda: nodes_status(parts.nodes.snapshot())))
    parts.journal_retry = asyncio.create_task(_retry_journal(parts.operations),
                                              name="relctl journal retry")
    parts.upload_sweeper = asyncio.create_task(parts.uploads.sweep_forever(),
                                               name="relctl upload expiry")


async def _retry_journal(operations: Operations) -> None:
    """Write what a full state_dir kept out of the journal, once there is room again."""
    while True:
        await asyncio.sleep(JOURNAL_RETRY_INTERVAL)
        try:
            operations.flush_journal()
        except Exception:
            log.exception("retrying the journal's writes failed")


async def stop(parts: Parts) -> None:
    """Stop in the order that loses nothing: no new calls; running operations finish (up to
    operations_grace, the rest is journaled as interrupted); the calls that follow them get
    their last event, every other call up to shutdown_grace; then the links; the audit trail
    last, so that every call's record, written as it ends, is in it."""
    config = parts.config
    for front in parts.fronts:
        front.stop_accepting()
    if parts.access is not None:
        parts.access.stopping = True
    # From here grpc refuses new calls; running ones go on: a stream that follows an
    # operation must not be cut before the operation ends (the client would see a lost agent
    # for an upgrade that succeeds a moment later).
    server_stopped = asyncio.create_task(
        parts.server.stop(config.operations_grace + config.shutdown_grace),
        name="relctl gRPC server stop")
    await parts.operations.stop(config.operations_grace)
    _, pending = await asyncio.wait({server_stopped}, timeout=config.shutdown_grace)
    if pending:
        log.warning("stopping: calls still running %g s after the operations ended are cut",
                    config.shutdown_grace)
        await parts.server.stop(0)  # a second stop cancels what is left at once
        await server_stopped
    for front in parts.fronts:
        await front.stop()
    if parts.journal_retry is not None:
        parts.journal_retry.cancel()
    parts.operations.close()
    if parts.discovery is not None:
        await parts.discovery.stop()
    await parts.nodes.stop()
    parts.uploads.close()  # their extractions leave the release roots, with their records
    parts.journal.close()
    if parts.metrics_server is not None:
        await parts.metrics_server.close()
    # Pings went on through the grace: a slow but live shutdown must not look hung.
    if parts.watchdog is not None:
        parts.watchdog.cancel()
    if parts.upload_sweeper is not None:
        parts.upload_sweeper.cancel()
    parts.audit.close()
    parts.notifier.close()


def reload_cookies(parts: Parts) -> None:
    """SIGHUP: re-read every node's cookie file (the links also do before each connection
    attempt); a changed cookie is used from the next connection on, at once for a node down."""
    changed = parts.nodes.reload_cookies()
    log.info("SIGHUP: re-read the cookie files of %d node(s); changed: %s",
             len(parts.nodes.names), ", ".join(changed) or "none")
    for node, credential in parts.nodes.credential_cookies().items():
        # systemd copied it at start (systemd 252 does not refresh credentials on reload).
        log.warning("SIGHUP: the cookie of %s is the systemd credential %r, copied when the "
                    "agent started: restart the agent (systemctl restart relctl-agent) to "
                    "pick up a new credential, or give it as a cookie_file the agent may read",
                    node, credential)


async def serve(config: AgentConfig) -> None:
    """Run the agent for ``config`` until SIGTERM or SIGINT (SIGHUP re-reads the nodes'
    cookies); raises StartupError."""
    parts = build(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload_cookies, parts)
    try:
        await start(parts)
        await stopping.wait()
        parts.notifier.stopping("stopping: letting running calls and operations finish")
        log.info("stopping: no new calls; running operations may finish (up to %g s), other "
                 "calls up to %g s", config.operations_grace, config.shutdown_grace)
    finally:
        await stop(parts)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped")
