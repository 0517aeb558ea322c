"""Releases as release_handler reports them, turned into plain values.

`release_handler:which_releases/0` answers `[{Name, Vsn, Libs, Status}]` with charlists
and an atom status; this module checks that shape (the node is not trusted to keep it)
and says which release runs now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import NodeFault
from bridge import Atom

STATUSES = ("permanent", "current", "old", "unpacked")


class UnexpectedReply(NodeFault, ValueError):
    """The node answered with a shape release_handler never sends."""


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    status: str  # one of STATUSES
    applications: tuple[str, ...] = ()
    running: bool = False


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    # A charlist with code points above 255 arrives as a list of integers.
    if isinstance(value, list) and all(isinstance(c, int) and 0 <= c <= 0x10FFFF for c in value):
        return "".join(map(chr, value))
    raise UnexpectedReply(f"{what} is not a string: {value!r}")


def parse_which_releases(reply: Any) -> tuple[Release, ...]:
    """Releases from which_releases' reply, newest-installed first as the node lists them,
    with ``running`` set on the one the node runs now."""
    if not isinstance(reply, list):
        raise UnexpectedReply(f"which_releases did not return a list: {reply!r}")
    parsed: list[Release] = []
    for entry in reply:
        if not (isinstance(entry, tuple) and len(entry) == 4):
            raise UnexpectedReply(f"unexpected release entry: {entry!r}")
        name, vsn, libs, status = entry
        if not isinstance(status, Atom) or status.name not in STATUSES:
            raise UnexpectedReply(f"unexpected release status: {status!r}")
        apps = tuple(_text(lib, "library") for lib in libs) if isinstance(libs, list) else ()
        parsed.append(Release(_text(name, "release name"), _text(vsn, "release version"),
                              status.name, apps))
    return mark_running(parsed)


def mark_running(releases: Sequence[Release]) -> tuple[Release, ...]:
    """The running release is the `current` one; with none current, the `permanent` one."""
    running = next((r for r in releases if r.status == "current"), None)
    if running is None:
        running = next((r for r in releases if r.status == "permanent"), None)
    return tuple(
        Release(r.name, r.version, r.status, r.applications, running=r is running)
        for r in releases
    )
