"""The /metrics endpoint, served on the agent's event loop with bounded resources.

prometheus_client's own server takes a thread per connection with no idle timeout: a thousand
idle connections took every file descriptor of the agent (issue 13). Here a connection is
closed when it sends no complete request within ``idle_timeout`` seconds, at most
``max_connections`` are open at once (more are answered 503 and closed), a request head is at
most ``MAX_HEAD`` bytes, and every response closes its connection (Prometheus reconnects for
each scrape anyway). No prometheus_client here: the exposition is a callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("relctl.agent.metrics")

MAX_HEAD = 8192
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsHttp:
    """Serves ``exposition()`` at GET /metrics (and /) on ``host``:``port``."""

    def __init__(self, exposition: Callable[[], bytes], *, metrics_max_connections: int,
                 metrics_idle_timeout: float) -> None:
        self._exposition = exposition
        self._max = metrics_max_connections
        self._idle = metrics_idle_timeout
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self, host: str, port: int) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=MAX_HEAD, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max:
            # Said, not just dropped: a scraper then reports why its target is failing.
            writer.write(_response(503, b"too many connections to /metrics\n"))
            await _close(writer)
            return
        self._open.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._idle)
            writer.write(self._answer(head))
            await asyncio.wait_for(writer.drain(), self._idle)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # idle, cut short or oversized: the connection just ends
        finally:
            self._open.discard(writer)
            await _close(writer)

    def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
        if target not in (b"/metrics", b"/"):
            return _response(404, b"see /metrics\n")
        try:
            body = self._exposition()
        except Exception:  # a collector's bug must not take the endpoint down with it
            log.exception("cannot build the /metrics exposition")
            return _response(500, b"the agent could not collect its metrics; see its log\n")
        response = _response(200, body, content_type=CONTENT_TYPE)
        return response[:response.index(b"\r\n\r\n") + 4] if method == b"HEAD" else response


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
              extra: bytes = b"") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra + b"\r\n"
    return head + body


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
