"""The nodes an agent manages: one :class:`NodeLink` each, looked up by name, and a snapshot
of all their states for the metrics and the API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from agent.config import AgentConfig, NodeConfig, client_context
from agent.errors import UnknownNode
from bridge import DecodeBudget

from .link import NodeLink, NodeState, PingResult, RpcObserver, ignore_rpc


class NodeManager:
    def __init__(self, links: Sequence[NodeLink],
                 new_link: Callable[[NodeConfig], NodeLink] | None = None) -> None:
        self._links = {link.name: link for link in links}
        self._new_link = new_link
        self._started = False

    @classmethod
    def from_config(cls, config: AgentConfig,
                    observe_rpc: RpcObserver = ignore_rpc) -> NodeManager:
        dist_tls = config.distribution_tls
        # One context for every link, discovered ones included ([distribution_tls] applies
        # to all nodes, as -ssl_dist_optfile does to all connections of a node).
        tls = client_context(dist_tls) if dist_tls is not None else None
        server_name = dist_tls.server_name if dist_tls is not None else None

        budget = DecodeBudget(max_elements=config.max_term_elements, max_bytes=config.max_term_bytes,
                              elements_setting="[agent] max_term_elements",
                              bytes_setting="[agent] max_term_bytes")

        def new_link(node: NodeConfig) -> NodeLink:
            return NodeLink(node, refresh_interval=config.refresh_interval,
                            rpc_timeout=config.rpc_timeout, connect_timeout=config.connect_timeout,
                            reconnect_max_delay=config.reconnect_max_delay, observe_rpc=observe_rpc,
                            tls=tls, tls_server_name=server_name, decode_budget=budget)
        return cls([new_link(node) for node in config.nodes], new_link)

    def add(self, node: NodeConfig) -> NodeLink:
        """Manage one more node (found by discovery); started at once if the others are."""
        if self._new_link is None:
            raise RuntimeError("this NodeManager was built without a link factory")
        if node.name in self._links:
            raise ValueError(f"{node.name} is already managed")
        link = self._links[node.name] = self._new_link(node)
        if self._started:
            link.start()
        return link

    @property
    def names(self) -> list[str]:
        return list(self._links)

    def config(self, name: str) -> NodeConfig:
        return self.get(name).config

    def get(self, name: str) -> NodeLink:
        try:
            return self._links[name]
        except KeyError:
            raise UnknownNode(name, self.names) from None

    def select(self, name: str) -> list[NodeLink]:
        """The named node, or every node for an empty name."""
        return [self.get(name)] if name else list(self._links.values())

    def snapshot(self) -> tuple[NodeState, ...]:
        """Every node's last known state; safe to call from another thread (one read per link
        of an immutable value)."""
        return tuple(link.state for link in list(self._links.values()))

    def reload_cookies(self) -> list[str]:
        """Re-read every node's cookie file (on SIGHUP); the names of the nodes whose cookie
        changed. Those that are down are tried again at once with it."""
        changed = []
        for link in list(self._links.values()):
            if link.reload_cookie():
                changed.append(link.name)
                link.retry_now()
        return changed

    def credential_cookies(self) -> dict[str, str]:
        """Node -> the systemd credential its cookie comes from, for the nodes whose cookie a
        reload cannot refresh (systemd copies credentials at start only)."""
        return {link.name: link.cookie_credential for link in self._links.values()
                if link.cookie_credential}

    def start(self) -> None:
        self._started = True
        for link in self._links.values():
            link.start()

    async def tried(self, timeout: float) -> None:
        """Wait (bounded) until every node had its first connection attempt."""
        waits = [asyncio.ensure_future(link.tried()) for link in self._links.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in list(self._links.values())))

    async def refresh(self, name: str, timeout: float | None = None) -> list[NodeState]:
        links = self.select(name)
        return list(await asyncio.gather(*(link.refresh(timeout) for link in links)))

    async def ping(self, name: str, timeout: float | None = None) -> list[PingResult]:
        links = self.select(name)
        return list(await asyncio.gather(*(link.ping(timeout) for link in links)))
