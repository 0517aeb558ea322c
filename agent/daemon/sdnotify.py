"""Telling systemd how the agent is doing: the sd_notify protocol, written here on the standard
library (one datagram per message to $NOTIFY_SOCKET, newline-separated ``KEY=VALUE`` lines).

``READY=1`` once the agent serves, ``STATUS=`` for `systemctl status`, ``STOPPING=1`` on the way
out, and ``WATCHDOG=1`` pings sent *from the event loop* every half ``WATCHDOG_USEC``: a loop
that blocks stops the pings, and systemd restarts the agent. Outside systemd (no
$NOTIFY_SOCKET) every call returns at once. A failed send never raises; it is logged once.

No ``MAINPID=``: the agent is the process systemd started (its console script runs through
its ``#!`` line, no forking), so systemd already knows its pid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, MutableMapping, Sequence
from typing import Protocol

log = logging.getLogger("relctl.agent.daemon.sdnotify")

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
# systemd reads at most a pipe buffer per datagram and drops longer ones: keep STATUS well below.
MAX_STATUS = 1024
# Seconds between checks of the STATUS text (sent only when it changed): a node that comes up
# or goes down shows in `systemctl status` within this. The watchdog is pinged as often.
STATUS_INTERVAL = 2.0
MAX_NAMED_DOWN = 5       # down nodes named in the status text; more are counted


class _NamedState(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def up(self) -> bool: ...


def nodes_status(states: Sequence[_NamedState]) -> str:
    """``"3 nodes: 1 up, 2 down: a@h, b@h"``, for `systemctl status`."""
    count = len(states)
    text = f"{count} node{'' if count == 1 else 's'}"
    if not count:
        return text
    down = [s.name for s in states if not s.up]
    text += f": {count - len(down)} up"
    if down:
        named = ", ".join(down[:MAX_NAMED_DOWN])
        more = f" and {len(down) - MAX_NAMED_DOWN} more" if len(down) > MAX_NAMED_DOWN else ""
        text += f", {len(down)} down: {named}{more}"
    return text


def _address(value: str) -> str | bytes | None:
    """The socket address of a $NOTIFY_SOCKET value: a path, or ``@name`` in the abstract
    namespace; None for forms we do not speak (such as ``vsock:``)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends sd_notify messages to one socket; does nothing when ``address`` is None."""

    def __init__(self, address: str | bytes | None, *, watchdog_usec: int | None = None,
                 label: str = "") -> None:
        self._address = address
        self._label = label or repr(address)
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._sock: socket.socket | None = None
        self._warned = False
        self._status_failed = False
        self._stopping = False
        self._last_status: str | None = None
        if address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError as exc:
                self._failed(exc)
                return
            # Never wait on systemd: a full queue is a failed send, not a stalled event loop.
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *,
                     pid: int | None = None) -> Notifier:
        """The notifier systemd asked for, or a silent one. The variables are removed from
        ``environ`` (default: ``os.environ``) so that child processes do not speak for us."""
        env = os.environ if environ is None else environ
        value = env.pop(ENV_SOCKET, "")
        usec_text = env.pop(ENV_WATCHDOG_USEC, "")
        pid_text = env.pop(ENV_WATCHDOG_PID, "")
        if not value:
            return cls(None)
        address = _address(value)
        if address is None:
            log.warning("%s=%r is neither a socket path nor an abstract name (@NAME); systemd "
                        "will not hear from the agent (with Type=notify it times out): point "
                        "%s at a Unix datagram socket, or unset it", ENV_SOCKET, value, ENV_SOCKET)
            return cls(None)
        return cls(address, watchdog_usec=_watchdog_usec(usec_text, pid_text, pid), label=value)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two pings (half the watchdog timeout), or None without a watchdog."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False when it did not go out."""
        if self._sock is None or self._address is None or not assignments:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self._send(["READY=1"], status)

    def status(self, text: str) -> bool:
        return self._send([], text)

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``; from now on :meth:`run_watchdog` pings but leaves STATUS alone."""
        self._stopping = True
        return self._send(["STOPPING=1"], status)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self, status: Callable[[], str] | None = None, *,
                           status_interval: float = STATUS_INTERVAL) -> None:
        """Until cancelled: ping the watchdog (when systemd set one) and refresh STATUS from
        ``status()`` when its text changed. Returns at once when there is nothing to send."""
        ping = self.watchdog_interval
        if not self.enabled or (ping is None and status is None):
            return
        interval = status_interval if ping is None else min(ping, status_interval)
        while True:
            text = ""
            if status is not None and not self._stopping:
                text = self._status_text(status)
            if ping is not None or text:
                self._send(["WATCHDOG=1"] if ping is not None else [], text)
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _status_text(self, status: Callable[[], str]) -> str:
        """``status()`` when it changed, else "". A failing callable costs the STATUS line,
        never the pings: the agent still works, so systemd must not restart it."""
        try:
            text = _clean(status())
        except Exception:
            if not self._status_failed:
                self._status_failed = True
                log.warning("cannot compute the systemd STATUS text (a bug: please report it "
                            "with this traceback); watchdog pings go on",
                            exc_info=True)
            return ""
        return "" if text == self._last_status else text

    def _send(self, lines: list[str], status: str) -> bool:
        text = _clean(status)
        sent = self.notify(*lines, *([f"STATUS={text}"] if text else []))
        if sent and text:
            self._last_status = text
        return sent

    def _failed(self, exc: OSError) -> None:
        if self._warned:
            log.debug("sd_notify failed again: %s", exc)
            return
        self._warned = True
        log.warning("cannot notify systemd through %s=%s: %s; systemd does not see the agent's "
                    "state or watchdog pings (a Type=notify unit times out, one with "
                    "WatchdogSec= restarts the agent): unset %s when systemd did not start the agent",
                    ENV_SOCKET, self._label, exc.strerror or exc, ENV_SOCKET)


def _clean(text: str) -> str:
    """One line (a newline would start another assignment), of a size systemd accepts."""
    return " ".join(text.split())[:MAX_STATUS]


def _watchdog_usec(usec_text: str, pid_text: str, pid: int | None) -> int | None:
    if not usec_text:
        return None
    if pid_text:
        # systemd names the process the watchdog is for; variables inherited by a child of
        # that process are not an order to the child.
        if not pid_text.isdigit() or int(pid_text) != (os.getpid() if pid is None else pid):
            log.debug("%s=%s is not this process: no watchdog pings", ENV_WATCHDOG_PID, pid_text)
            return None
    if not usec_text.isdigit() or int(usec_text) == 0:
        log.warning("%s=%r is not a positive number of microseconds: no watchdog pings, so a "
                    "unit with WatchdogSec= will restart the agent; fix the unit's WatchdogSec=",
                    ENV_WATCHDOG_USEC, usec_text)
        return None
    return int(usec_text)
