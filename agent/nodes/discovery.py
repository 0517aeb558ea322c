"""Node discovery: without ``[[nodes]]`` in its config, the agent manages the nodes registered
with the host's EPMD for which it has a cookie.

Each scan asks EPMD for its names (NAMES_REQ), leaves out the excluded ones (remote shells,
rpc and erl_call helpers are short-lived nodes, not services), and adds a link for each new
name: ``ALIVE@HOST``, with the cookie from ``cookie_dir/ALIVE`` if that file exists, else the
default cookie. A node that stops stays listed, as down: an operator should see that it went
away, and a restart brings it back under the same name.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.config import DiscoveryConfig, NodeConfig, read_cookie
from agent.errors import ConfigError
from bridge import BridgeError

from .manager import NodeManager

log = logging.getLogger("relctl.agent.nodes.discovery")

NamesSource = Callable[[], Awaitable[dict[str, int]]]


class Discovery:
    def __init__(self, config: DiscoveryConfig, nodes: NodeManager, names: NamesSource) -> None:
        self._config = config
        self._nodes = nodes
        self._names = names
        self._skipped: set[str] = set()   # names already logged as not managed
        self._epmd_error = ""
        self._task: asyncio.Task[None] | None = None

    def excluded(self, alive: str) -> bool:
        return any(fnmatch.fnmatchcase(alive, pattern) for pattern in self._config.exclude)

    def _cookie(self, alive: str) -> tuple[str, Path] | str:
        """(cookie, where it came from) for ``alive``, or why the agent has none."""
        cfg = self._config
        if cfg.cookie_dir is not None:
            own = cfg.cookie_dir / alive
            if own.is_file():
                try:
                    return read_cookie(own, path=str(cfg.path), key="discovery.cookie_dir"), own
                except ConfigError as exc:
                    return str(exc)
        if cfg.cookie is not None and cfg.cookie_file is not None:
            return cfg.cookie, cfg.cookie_file
        return (f"no cookie for it (add {cfg.cookie_dir or 'COOKIE_DIR'}/{alive} or a default "
                "discovery.cookie_file)")

    async def scan(self) -> list[str]:
        """One look at EPMD; returns the names of the nodes added."""
        cfg = self._config
        try:
            names = await self._names()
        except (BridgeError, OSError) as exc:
            if str(exc) != self._epmd_error:
                log.warning("discovery: %s", exc)
                self._epmd_error = str(exc)
            return []
        self._epmd_error = ""
        added = []
        for alive in sorted(names):
            name = f"{alive}@{cfg.host}"
            if name in self._nodes.names or name in self._skipped:
                continue
            if self.excluded(alive):
                self._skipped.add(name)
                log.debug("discovery: %s is excluded", name)
                continue
            cookie = self._cookie(alive)
            if isinstance(cookie, str):
                self._skipped.add(name)
                log.info("discovery: not managing %s: %s", name, cookie)
                continue
            self._nodes.add(NodeConfig(name=name, cookie_file=cookie[1], cookie=cookie[0],
                                       epmd_port=cfg.epmd_port))
            log.info("discovery: managing %s (cookie from %s)", name, cookie[1])
            added.append(name)
        return added

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relctl discovery")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval)
            await self.scan()
