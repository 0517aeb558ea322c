"""One managed node: a bridge connection kept open, re-opened with capped backoff when the
node goes away, and the node's state (up/down, releases) published as an immutable value.

Everything that talks to the node goes through :meth:`NodeLink.call`, which times each RPC
for the metrics and turns the bridge's transport errors into the agent's own. Remote
failures (``BadRpc``) pass through untouched: the caller knows what the reason means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent.config import NodeConfig, read_cookie
from agent.config import hint as tls_hint
from agent.errors import ConfigError, NodeDown, NodeTimeout, ReplyTooLarge
from agent.release import Release, UnexpectedReply, parse_which_releases
from bridge import (
    Atom,
    BadRpc,
    BridgeError,
    BridgeTimeout,
    Connection,
    ConnectionLost,
    CookieRejected,
    DecodeBudget,
    Node,
    TermTooLarge,
    TlsHandshakeFailed,
)

log = logging.getLogger("relctl.agent.nodes.link")

RpcObserver = Callable[[str, float], None]  # ("module:function", seconds)


@dataclass(frozen=True)
class NodeState:
    name: str
    up: bool
    since: float                      # wall clock of the last up/down change
    error: str = ""                   # why it is down, or why the last refresh failed
    releases: tuple[Release, ...] = ()
    refreshed_at: float | None = None  # wall clock of the last successful which_releases


@dataclass(frozen=True)
class PingResult:
    name: str
    up: bool
    round_trip: float | None  # seconds, None when the node could not be reached
    error: str = ""


def ignore_rpc(function: str, seconds: float) -> None:
    pass


class NodeLink:
    """Owns the connection to one node. ``start()`` it inside the event loop; ``stop()`` it
    before the loop ends. ``tls``: the [distribution_tls] context, for nodes started with
    ``-proto_dist inet_tls``."""

    MIN_DELAY = 0.25

    def __init__(self, config: NodeConfig, *, refresh_interval: float, rpc_timeout: float,
                 connect_timeout: float, reconnect_max_delay: float,
                 observe_rpc: RpcObserver = ignore_rpc,
                 tls: ssl.SSLContext | None = None, tls_server_name: str | None = None,
                 decode_budget: DecodeBudget | None = None) -> None:
        self.name = config.name
        self.config = config
        self._bridge = Node(cookie=config.cookie, epmd_port=config.epmd_port, tls=tls,
                            tls_server_name=tls_server_name,
                            decode_budget=decode_budget or DecodeBudget())
        self._refresh_interval = refresh_interval
        self._rpc_timeout = rpc_timeout
        self._connect_timeout = connect_timeout
        self._max_delay = max(reconnect_max_delay, self.MIN_DELAY)
        self._observe = observe_rpc
        self._state = NodeState(self.name, up=False, since=time.time(), error="not connected yet")
        self._conn: Connection | None = None
        self._kick = asyncio.Event()
        self._attempt_done = asyncio.Event()  # set when the connect attempt in flight ends
        self._tried = asyncio.Event()  # set once the first attempt ended, either way
        self._cookie_problem = ""  # why the cookie file could not be re-read, once logged
        self._task: asyncio.Task[None] | None = None
        # Whether the node runs Elixir, asked once per connection (a restart may boot another
        # release); release.present formats the node's terms by it.
        self._elixir: tuple[Connection, bool] | None = None

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def bridge_node(self) -> Node:
        """The bridge node this link connects with: the config's cookie, TLS context, server
        name and decode budget (a new one once the cookie file changed)."""
        return self._bridge

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"relctl link {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except (TimeoutError, BridgeError, OSError):
                conn.abort()

    async def tried(self) -> None:
        """Wait until the first connection attempt has ended (up or down)."""
        await self._tried.wait()

    @property
    def cookie_credential(self) -> str:
        """The systemd credential the cookie comes from ("" for a cookie file): a copy made
        at the agent's start, which no reload can refresh."""
        ref = self.config.cookie_ref
        return (ref.credential or "") if ref is not None else ""

    def reload_cookie(self) -> bool:
        """Re-read the node's cookie file (done before each connection attempt, and on SIGHUP):
        a rotated cookie is used from the next connection on; a connection that is up stays up.
        True when the cookie changed. A file that cannot be read now (missing, readable by
        every user, empty) keeps the cookie in use, with a warning."""
        file = self.config.cookie_file
        if file is None:
            return False
        try:
            cookie = read_cookie(file, path=str(file), key="cookie_file")
        except ConfigError as exc:
            if exc.reason != self._cookie_problem:
                log.warning("node %s: cannot re-read its cookie: %s; keeping the cookie in use",
                            self.name, exc.reason)
            self._cookie_problem = exc.reason
            return False
        self._cookie_problem = ""
        if cookie == self.config.cookie:
            return False
        self.config = replace(self.config, cookie=cookie)
        old = self._bridge
        self._bridge = Node(cookie=cookie, name=old.name, epmd_port=old.epmd_port,
                            tick_time=old.tick_time, tls=old.tls,
                            tls_server_name=old.tls_server_name,
                            decode_budget=old.decode_budget)
        log.info("node %s: its cookie changed (re-read %s); used from the next connection on",
                 self.name, file)
        return True

    def retry_now(self) -> None:
        """A node that is down is tried again now rather than after its backoff."""
        if not self._connected():
            self._kick.set()

    # --- talking to the node ----------------------------------------------------------

    async def call(self, module: str, function: str, args: Sequence[Any] = (), *,
                   timeout: float | None = None) -> Any:
        """One RPC to the node. Raises NodeDown, NodeTimeout, or the bridge's BadRpc."""
        conn = self._conn
        if conn is None or conn.is_closed:
            raise NodeDown(self.name, self._state.error or "not connected")
        limit = self._rpc_timeout if timeout is None else timeout
        started = time.perf_counter()
        try:
            return await conn.call(module, function, args, timeout=limit)
        except BridgeTimeout:
            raise NodeTimeout(self.name, f"{module}:{function}/{len(args)}", limit) from None
        except ConnectionLost as exc:
            raise NodeDown(self.name, f"connection lost ({exc})") from None
        except TermTooLarge as exc:
            raise ReplyTooLarge(self.name, str(exc)) from None
        finally:
            self._observe(f"{module}:{function}", time.perf_counter() - started)

    async def runs_elixir(self, timeout: float) -> bool:
        """True when the node runs Elixir: its ``elixir`` application is loaded, as on every
        mix release. Asked once per connection; raises as :meth:`call` does."""
        conn = self._conn
        if self._elixir is not None and self._elixir[0] is conn:
            return self._elixir[1]
        # get_key reads application_controller's table, not its (maybe busy) process.
        vsn = await self.call("application", "get_key", [Atom("elixir"), Atom("vsn")],
                              timeout=timeout)
        answer = isinstance(vsn, tuple)  # {ok, Vsn}, or undefined
        if conn is not None:
            self._elixir = (conn, answer)
        return answer

    async def refresh(self, timeout: float | None = None) -> NodeState:
        """Read the node's releases now; when it is down, try to connect once first."""
        limit = self._rpc_timeout if timeout is None else timeout
        if not self._connected():
            await self._connect_now(min(limit, self._connect_timeout + 1.0))
        if self._connected():
            await self._read_releases(limit)
        return self._state

    async def ping(self, timeout: float | None = None) -> PingResult:
        limit = self._rpc_timeout if timeout is None else timeout
        if not self._connected():
            await self._connect_now(min(limit, self._connect_timeout + 1.0))
        started = time.perf_counter()
        try:
            await self.call("erlang", "node", [], timeout=limit)
        except (NodeDown, NodeTimeout, BadRpc) as exc:
            return PingResult(self.name, self._connected(), None, str(exc))
        return PingResult(self.name, True, time.perf_counter() - started)

    async def wait_for_restart(self, *, down_within: float, up_within: float) -> bool:
        """True when the node dropped us within ``down_within`` s and we were connected again
        within ``up_within`` s more (release_handler restarts a node whose relup crashed)."""
        old = self._conn
        if old is not None and not old.is_closed:
            try:
                await asyncio.wait_for(old.wait_closed(), down_within)
            except TimeoutError:
                return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + up_within
        while (remaining := deadline - loop.time()) > 0:
            if self._connected() and self._conn is not old:
                return True
            await self._connect_now(min(remaining, self._connect_timeout + 1.0))
            if not (self._connected() and self._conn is not old):
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        return self._connected() and self._conn is not old

    # --- internals --------------------------------------------------------------------

    def _connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed

    async def _connect_now(self, timeout: float) -> None:
        """Wake the supervisor for an attempt now and wait (bounded) for its outcome."""
        done = self._attempt_done
        self._kick.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)

    async def _read_releases(self, timeout: float) -> None:
        try:
            releases = parse_which_releases(
                await self.call("release_handler", "which_releases", [], timeout=timeout))
        except NodeDown as exc:
            self._set_down(exc.reason)
        except (NodeTimeout, BadRpc, UnexpectedReply, ReplyTooLarge) as exc:
            # Still connected: keep the last releases we saw and say why they may be stale.
            self._state = replace(self._state, error=str(exc))
            log.warning("node %s: reading releases failed: %s", self.name, exc)
        else:
            self._state = replace(self._state, error="", releases=releases,
                                  refreshed_at=time.time())

    def _set_up(self) -> None:
        self._state = NodeState(self.name, up=True, since=time.time())
        log.info("node %s is up", self.name)

    def _set_down(self, reason: str, retry_in: float | None = None) -> None:
        was = self._state
        if was.up:
            self._state = NodeState(self.name, up=False, since=time.time(), error=reason)
        else:
            self._state = replace(was, error=reason)
        retry = f"; retrying in {retry_in:.2g} s" if retry_in else ""
        if was.up or was.error != reason:
            log.warning("node %s is down: %s%s", self.name, reason, retry)
        else:
            log.debug("node %s still down: %s%s", self.name, reason, retry)

    async def _sleep_or_kick(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)
        self._kick.clear()

    async def _supervise(self) -> None:
        delay = 0.0
        while True:
            if delay:
                await self._sleep_or_kick(delay)
            self._kick.clear()
            done = self._attempt_done
            try:
                self.reload_cookie()  # a node restarted with a new cookie: use the new one
                conn = await self._bridge.connect(self.name, timeout=self._connect_timeout)
            except (BridgeError, OSError) as exc:
                delay = min(max(delay * 2, self.MIN_DELAY), self._max_delay)
                reason = str(exc)
                if isinstance(exc, TlsHandshakeFailed):  # name the setting to change
                    reason = f"{reason}; {tls_hint(exc.cause)}"
                elif isinstance(exc, CookieRejected) and self.cookie_credential:
                    reason = (f"{reason}; its cookie is the systemd credential "
                              f"{self.cookie_credential!r}, which systemd copies when the agent "
                              "starts: after changing its file, restart the agent (systemctl "
                              "restart relctl-agent) to pick up the new credential")
                elif isinstance(exc, CookieRejected) and self.config.cookie_file is not None:
                    reason = (f"{reason}; the agent re-reads {self.config.cookie_file} before "
                              "each attempt (SIGHUP: at once), no restart needed")
                self._set_down(reason, retry_in=delay)
                self._tried.set()
                continue
            finally:
                self._attempt_done = asyncio.Event()
                done.set()
            self._conn = conn
            self._set_up()
            await self._read_releases(self._rpc_timeout)
            self._tried.set()
            reason = await self._watch(conn)
            self._conn = None
            # A node that drops us right after the handshake must not make us spin.
            delay = self.MIN_DELAY
            self._set_down(f"connection lost ({reason})", retry_in=delay)

    async def _watch(self, conn: Connection) -> str:
        """Refresh periodically until the connection closes; return why it closed."""
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            while not closed.done():
                await asyncio.wait({closed}, timeout=self._refresh_interval)
                if not closed.done():
                    await self._read_releases(self._rpc_timeout)
            return closed.result()
        finally:
            if not closed.done():
                closed.cancel()
