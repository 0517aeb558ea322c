"""Upgrade hooks ([[nodes.hooks]]) through a real agent on a real node: they run in order
around install_release, each as a step of its own, and their failures stop or roll back the
operation. The hooks are counter_hooks:run/1,2 of the example release, which record each call
with the release running at that moment and fail on demand (see counter_hooks.erl)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge import Atom
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.node_calls import node_call
from tests.tools.otp_procs import NodeProc
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp


def hook(name: str, when: str, *args: Any, **extra: Any) -> dict[str, Any]:
    """A [[nodes.hooks]] table calling counter_hooks:run(Name, ...)."""
    return {"name": name, "when": when, "call": "counter_hooks:run", "args": [name, *args],
            **extra}


def start_with_hooks(agents: list[AgentProc], node: NodeProc, workdir: Path,
                     hooks: Sequence[dict[str, Any]]) -> AgentProc:
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        metrics=False, node_extra={"hooks": list(hooks)})
    agents.append(agent)
    return agent



def flag(node: NodeProc, name: str, behaviour: Any) -> None:
    """Make hook ``name`` misbehave (counter_hooks reads this from persistent_term)."""
    assert node_call(node, "persistent_term", "put",
                     [(Atom("counter_hooks"), name.encode()), behaviour]) == Atom("ok")


def hook_calls(node: NodeProc) -> list[tuple[str, str]]:
    """The hooks that ran, oldest first, as (name, release running then)."""
    return [(name.decode(), vsn) for name, vsn in node_call(node, "counter_hooks", "calls")]


def steps(op: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["state"]) for s in op["steps"]]


def detail(op: dict[str, Any], name: str) -> str:
    [found] = [s["detail"] for s in op["steps"] if s["name"] == name]
    return str(found)


def versions(agent: AgentProc) -> list[tuple[str, str]]:
    result = relctl("versions", "-o", "json", agents=[agent.address])
    return [(r["version"], r["status"]) for r in result.json()["nodes"][0]["releases"]]


def test_hooks_run_in_order_around_install_as_steps_for_upgrade_and_downgrade(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_with_hooks(agents, counter_node, tmp_path / "agent", [
        hook("pre-a", "pre_install"),
        hook("pre-b", "pre_install", {"charlist": "tag"}),  # run/2 returns {ok, Tag}
        hook("post-a", "post_install", timeout=5),
        hook("optional", "post_install", on_failure="continue"),
        hook("post-b", "post_install")])
    flag(counter_node, "optional", (Atom("error"), Atom("busy")))
    tarball = str(release_build.tarball("0.0.2"))

    dry = relctl("upgrade", "0.0.2", "--tarball", tarball, "--dry-run", "-o", "json",
                 agents=[agent.address], timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    dry_op = dry.json()["operation"]
    # The steps a real run would take are shown skipped; then the one undo takes back the
    # unpack (core.guarded).
    assert steps(dry_op)[4:] == [
        ("pre_install:pre-a", "skipped"),
        ("pre_install:pre-b", "skipped"), ("install", "skipped"),
        ("post_install:post-a", "skipped"), ("post_install:optional", "skipped"),
        ("post_install:post-b", "skipped"), ("verify", "skipped"), ("make_permanent", "skipped"),
        ("undo_unpack", "succeeded")]
    assert detail(dry_op, "pre_install:pre-a") == \
        "--dry-run; hooks run only when a release is installed"
    assert hook_calls(counter_node) == []

    up = relctl("upgrade", "0.0.2", "--tarball", tarball, "-o", "json",
                agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    op = up.json()["operation"]
    assert op["outcome"] == "succeeded"
    expected = [
        ("preflight", "succeeded"), ("stage", "succeeded"), ("unpack", "succeeded"),
        ("check", "succeeded"), ("pre_install:pre-a", "succeeded"),
        ("pre_install:pre-b", "succeeded"), ("install", "succeeded"),
        ("post_install:post-a", "succeeded"), ("post_install:optional", "failed"),
        ("post_install:post-b", "succeeded"), ("verify", "succeeded"),
        ("make_permanent", "succeeded")]
    assert steps(op) == expected
    assert detail(op, "pre_install:pre-a") == \
        'counter_hooks:run(<<"pre-a">>) returned ok'
    assert detail(op, "pre_install:pre-b") == \
        'counter_hooks:run(<<"pre-b">>, "tag") returned {ok,"tag"}'
    assert detail(op, "post_install:optional") == (
        'hook optional: counter_hooks:run(<<"optional">>) returned {error,busy}, not ok '
        'or {ok, _}; on_failure = "continue": the operation goes on')
    # Pre-install hooks ran on the old release, post-install hooks on the new one.
    assert hook_calls(counter_node) == [
        ("pre-a", "0.0.1"), ("pre-b", "0.0.1"), ("post-a", "0.0.2"), ("optional", "0.0.2"),
        ("post-b", "0.0.2")]

    # The journal tells the same story, in the text a person reads.
    shown = relctl("operation", str(op["id"]), agents=[agent.address])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines() if line.startswith("  ")]
    assert [(words[0], words[1]) for words in lines[:len(expected)]] == [
        (name, {"succeeded": "ok", "failed": "FAILED"}[state]) for name, state in expected]

    assert node_call(counter_node, "counter_hooks", "reset") == Atom("ok")
    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, _ in steps(down.json()["operation"])] == [
        "preflight", "check", "pre_install:pre-a", "pre_install:pre-b", "install",
        "post_install:post-a", "post_install:optional", "post_install:post-b", "verify",
        "make_permanent"]
    assert hook_calls(counter_node) == [
        ("pre-a", "0.0.2"), ("pre-b", "0.0.2"), ("post-a", "0.0.1"), ("optional", "0.0.1"),
        ("post-b", "0.0.1")]


def test_a_failing_pre_install_hook_stops_before_any_change(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_with_hooks(agents, counter_node, tmp_path / "agent", [
        hook("first", "pre_install"), hook("gate", "pre_install", timeout=0.5),
        hook("after", "post_install")])
    tarball = str(release_build.tarball("0.0.2"))

    def files() -> list[str]:
        return sorted(str(p.relative_to(counter_node.root))
                      for d in ("releases", "lib") for p in (counter_node.root / d).rglob("*"))
    before = files()

    flag(counter_node, "gate", (Atom("error"), Atom("not_now")))
    result = relctl("upgrade", "0.0.2", "--tarball", tarball, "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert op["error"] == ('hook gate: counter_hooks:run(<<"gate">>) returned '
                           '{error,not_now}, not ok or {ok, _}; the release was not installed')
    # The unpack this upgrade made is taken back, as after a failed check.
    assert steps(op)[3:] == [
        ("check", "succeeded"), ("pre_install:first", "succeeded"),
        ("pre_install:gate", "failed"), ("undo_unpack", "succeeded")]
    assert files() == before
    assert versions(agent) == [("0.0.1", "permanent")]
    assert hook_calls(counter_node) == [("first", "0.0.1"), ("gate", "0.0.1")]

    # A hook that does not answer in time fails too; the retry found nothing left in its way.
    flag(counter_node, "gate", (Atom("sleep"), 2000))
    slow = relctl("upgrade", "0.0.2", "--tarball", tarball, "-o", "json",
                  agents=[agent.address], timeout=180)
    assert slow.returncode == 1, slow.stdout + slow.stderr
    slow_op = slow.json()["operation"]
    assert slow_op["outcome"] == "failed_unchanged"
    assert slow_op["error"] == (
        'hook gate: counter_hooks:run(<<"gate">>) did not return within its timeout of '
        "0.5 s (it may still be running on the node; raise the hook's timeout if it needs "
        "longer); the release was not installed")
    assert steps(slow_op)[-2:] == [("pre_install:gate", "failed"), ("undo_unpack", "succeeded")]
    assert files() == before
    assert versions(agent) == [("0.0.1", "permanent")]


def test_a_failing_post_install_hook_rolls_back_with_the_state_intact(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_with_hooks(agents, counter_node, tmp_path / "agent", [
        hook("clear", "post_install"), hook("last", "post_install")])
    for _ in range(3):
        node_call(counter_node, "counter", "incr")
    pid = node_call(counter_node, "erlang", "whereis", [Atom("counter")])
    # Broken in the new release only: after the rollback the same hook works again.
    flag(counter_node, "clear", (Atom("on"), "0.0.2", Atom("crash")))

    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "-o", "json", agents=[agent.address], timeout=180)
    assert result.returncode == 5, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "rolled_back"
    assert op["error"].startswith('hook clear: counter_hooks:run(<<"clear">>) failed on '
                                  "the node: {'EXIT',{{hook_crashed,<<\"clear\">>},")
    assert "after the rollback" not in op["error"]
    assert steps(op)[4:] == [
        ("install", "succeeded"), ("post_install:clear", "failed"),
        ("post_install:last", "skipped"), ("rollback", "succeeded"),
        ("post_install:clear", "succeeded"), ("post_install:last", "succeeded"),
        ("verify", "succeeded")]
    # After the rollback the post-install hooks ran again, on the old release.
    assert hook_calls(counter_node) == [("clear", "0.0.2"), ("clear", "0.0.1"), ("last", "0.0.1")]
    assert node_call(counter_node, "sys", "get_state", [Atom("counter")]) == 3
    assert node_call(counter_node, "erlang", "whereis", [Atom("counter")]) == pid
    assert {r["version"]: r["status"] for r in op["releases_after"]}["0.0.1"] == "permanent"
