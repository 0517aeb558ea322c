"""Hosts as network namespaces, for the multi-host e2e (tests/e2e/test_multihost_live.py).

A hub namespace holds a bridge; each host namespace gets one end of a veth pair whose other
end is a port of the bridge. Every address lives only inside these namespaces (10.X.Y.0/24,
chosen at random per run), there is no default route and nothing is created in the root
namespace, so no packet can leave the machine. :meth:`Lab.cut` and :meth:`Lab.mend` take a
host's link down and up (`ip link set ... down`), as a switch failure would.

Processes are started inside a namespace by switching the calling thread into it
(:func:`inside`): a child forked by that thread is born there, so the ordinary helpers
(start_epmd, start_node, start_agent, erl_eval, relctl) work unchanged. :meth:`Lab.close`
deletes every namespace made (with their links), even after a failure.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """The calling thread (and the processes it starts) in ``namespace`` meanwhile."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def cannot_make_namespaces() -> str | None:
    """Why this process cannot make the lab (no `ip`, no privilege), or None."""
    name = f"relctl-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except FileNotFoundError:
        return "the ip command (iproute2) is not installed"
    except OSError as exc:
        return f"cannot create a network namespace (needs root or CAP_SYS_ADMIN): {exc}"
    try:
        _ip("-n", name, "link", "add", "probe0", "type", "bridge")
    except OSError as exc:
        return f"cannot create links in a network namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    return None


@dataclass
class Lab:
    """A hub and ``hosts`` host namespaces on one bridge."""

    hosts: int
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = field(default_factory=lambda: f"10.{secrets.randbelow(200) + 50}."
                                                f"{secrets.randbelow(250) + 1}")
    made: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"relctl-{self.tag}-hub"

    def host(self, i: int) -> str:
        """The namespace of host ``i`` (1-based)."""
        return f"relctl-{self.tag}-h{i}"

    def address(self, i: int) -> str:
        """Host ``i``'s address; the hub is .1."""
        return f"{self.subnet}.{10 + i}"

    def _port(self, i: int) -> str:
        return f"veth-h{i}"

    def build(self) -> None:
        _ip("netns", "add", self.hub)
        self.made.append(self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i in range(1, self.hosts + 1):
            ns = self.host(i)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # Both ends made where they live: nothing ever appears in the root namespace.
            _ip("-n", self.hub, "link", "add", self._port(i), "type", "veth", "peer", "name",
                "eth0", "netns", ns)
            _ip("-n", self.hub, "link", "set", self._port(i), "master", "br0")
            _ip("-n", self.hub, "link", "set", self._port(i), "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, i: int) -> None:
        """Host ``i``'s link down: its packets go nowhere, and nobody is told."""
        _ip("-n", self.hub, "link", "set", self._port(i), "down")

    def mend(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", self._port(i), "up")

    def close(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.made.clear()
