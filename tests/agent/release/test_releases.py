"""which_releases replies, as release_handler sends them, into Release values."""

from __future__ import annotations

from typing import Any

import pytest

from agent.release.releases import Release, UnexpectedReply, parse_which_releases
from bridge import Atom


def entry(version: str, status: str) -> tuple[Any, ...]:
    return ("counter", version, ["kernel-8.5.3", "counter-" + version], Atom(status))


def test_the_permanent_release_runs_when_none_is_current() -> None:
    releases = parse_which_releases([entry("0.0.2", "unpacked"), entry("0.0.1", "permanent")])
    assert releases == (
        Release("counter", "0.0.2", "unpacked", ("kernel-8.5.3", "counter-0.0.2"), running=False),
        Release("counter", "0.0.1", "permanent", ("kernel-8.5.3", "counter-0.0.1"), running=True),
    )


def test_a_current_release_runs_before_the_permanent_one_is_switched() -> None:
    releases = parse_which_releases([entry("0.0.2", "current"), entry("0.0.1", "permanent")])
    assert [(r.version, r.running) for r in releases] == [("0.0.2", True), ("0.0.1", False)]


def test_charlists_beyond_latin1_arrive_as_int_lists() -> None:
    [rel] = parse_which_releases([([0x441, 0x447], "1", [], Atom("permanent"))])
    assert rel.name == "\u0441\u0447"


@pytest.mark.parametrize("reply", [
    "not a list",
    [("counter", "0.0.1", [], "permanent")],          # status not an atom
    [("counter", "0.0.1", [], Atom("weird"))],         # unknown status
    [("counter", "0.0.1", Atom("permanent"))],         # wrong arity
    [(Atom("counter"), "0.0.1", [], Atom("old"))],     # name not a string
])
def test_unexpected_shapes_are_refused(reply: Any) -> None:
    with pytest.raises(UnexpectedReply):
        parse_which_releases(reply)
