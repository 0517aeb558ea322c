"""Never worse, over sequences of operations (issue 20, point 6): a hypothesis state machine
drives a REAL agent against a REAL node through upgrades, dry runs, a relup that fails
check_install_release, a post-install hook that fails (rollback), removes, ``--replace``,
downgrades, config reloads and an agent SIGKILLed while an upgrade streams, on the systools
release (examples/counter) and on the mix release without RELEASES (examples/elixir_counter).

After each step: the invariants of DESIGN.md section 4 hold (tests.tools.invariants checks them
around every relctl call; the kill step calls the check itself), the exit code is the one the
model predicts for that state, and relctl's report (its ``-o json`` outcome and
``releases_after``) is what the node answers when it is read back (which_releases through the
bridge), which is also the model's state.

Each example starts one node and one agent and stops both by pid in ``teardown()``. Examples
are few and derandomized (CI repeats the same sequences) and shrinking is off: a failure
prints its steps as they ran, and the node's start-up is what an example costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    rule,
    run_state_machine_as_test,
)

from bridge import Atom, Node
from tests.tools import invariants, otp_select
from tests.tools.agent_proc import (
    ROOT,
    AgentProc,
    NodeEntry,
    eventually,
    relctl,
    relctl_env,
    start_agent,
)
from tests.tools.elixir_fixture import ElixirBuild, start_elixir_node
from tests.tools.elixir_fixture import make_target_copy as make_ex_target
from tests.tools.otp_procs import EpmdProc, NodeProc, free_port, start_node
from tests.tools.release_fixture import ReleaseBuild, erl_env
from tests.tools.release_fixture import make_target_copy as make_counter_target
from tests.tools.tarball_variants import rewrite_tarball

pytestmark = pytest.mark.otp

OLD, NEW = "0.0.1", "0.0.2"
# The post-install hook of every example: persistent_term:get(GATE, ok) returns ok until a
# step puts another answer there (the same hook works on both releases, and its failure
# after the install is what rolls an upgrade back).
GATE = "relctl-property-gate"
HOOK = {"name": "gate", "when": "post_install", "call": "persistent_term:get",
        "args": [GATE, {"atom": "ok"}]}
# The exit codes of README's table the model predicts.
OK, FAILED, UNAVAILABLE, ROLLED_BACK, FAILED_CHANGED = 0, 1, 3, 5, 6
OUTCOME_CODES = {"succeeded": OK, "dry_run": OK, "up_to_date": OK, "failed_unchanged": FAILED,
                 "rolled_back": ROLLED_BACK, "interrupted": FAILED_CHANGED}
# Sized for CI (issue 20: the file within 3 minutes on 2 cores; an example costs a node and
# an agent start, about 2.5 s, and a step about 1.5 s). To explore further by hand:
# RELCTL_PROPERTY_EXAMPLES=30 RELCTL_PROPERTY_RANDOM=1 (new sequences on every run).
EXAMPLES = int(os.environ.get("RELCTL_PROPERTY_EXAMPLES", "4"))
STEPS = 6
RANDOM = bool(os.environ.get("RELCTL_PROPERTY_RANDOM"))


@dataclass(frozen=True)
class Tarballs:
    good: Path     # the real 0.0.2 upgrade tarball
    other: Path    # the same members, other bytes (a rebuild): refused unless --replace
    broken: Path   # a relup whose up script loads a module the tarball lacks


@dataclass(frozen=True)
class Kind:
    """One release kind: how to start a fresh 0.0.1 node of it, and its tarballs."""
    name: str
    app: str
    tarballs: Tarballs
    start: Callable[[Path], NodeProc]  # a fresh node, its files under the given dir
    # A mix release boots with -pa releases/VSN/consolidated (its protocols) and a hot upgrade
    # leaves that on the code path: the release it booted stays in use until it restarts.
    booted_in_use: bool


def _relup_member(tarball: Path) -> str:
    with tarfile.open(tarball, "r:gz") as tar:
        [member] = [m.name for m in tar if m.name.lstrip("./") == f"releases/{NEW}/relup"]
    return member


def broken_check_tarball(good: Path, app: str, workdir: Path) -> Path:
    """``good`` with a relup whose up script first loads ``relctl_no_such_module`` of ``app``:
    the relup has its entry from 0.0.1 (preflight passes) but check_install_release fails
    ({no_such_file, ...}) before anything changes."""
    workdir.mkdir(parents=True, exist_ok=True)
    member = _relup_member(good)
    with tarfile.open(good, "r:gz") as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        (workdir / "relup").write_bytes(extracted.read())
    expr = ('{ok, [{V, Up, Down}]} = file:consult("relup"), '
            f'Load = {{load_object_code, {{{app}, "{NEW}", [relctl_no_such_module]}}}}, '
            "Up2 = [{From, D, [Load | I]} || {From, D, I} <- Up], "
            'ok = file:write_file("relup", io_lib:format("~p.~n", [{V, Up2, Down}])), halt().')
    made = subprocess.run([otp_select.erl(), "-boot", "no_dot_erlang", "-noshell", "-noinput",
                           "-eval", expr], cwd=workdir, env=erl_env(), capture_output=True,
                          text=True, timeout=60)
    text = (workdir / "relup").read_text()
    assert made.returncode == 0 and "relctl_no_such_module" in text, made.stdout + made.stderr
    return rewrite_tarball(good, workdir / "broken-check.tar.gz",
                           {member: text.encode()})


def tarballs_for(good: Path, app: str, workdir: Path) -> Tarballs:
    workdir.mkdir(parents=True, exist_ok=True)
    other = rewrite_tarball(good, workdir / "other-bytes.tar.gz", {})
    assert other.read_bytes() != good.read_bytes()
    return Tarballs(good, other, broken_check_tarball(good, app, workdir / "broken"))


def node_releases(node: NodeProc) -> dict[str, str]:
    """release_handler:which_releases() of the node, read back through the bridge."""
    async def call() -> Any:
        bridge = Node(cookie=node.cookie, epmd_port=node.epmd_port)
        async with bridge.connect(node.name, timeout=5.0) as conn:
            return await conn.call("release_handler", "which_releases", [], timeout=10.0)
    return {vsn: str(status) for _, vsn, _, status in asyncio.run(call())}


def node_put(node: NodeProc, key: str, value: Any) -> None:
    async def call() -> Any:
        bridge = Node(cookie=node.cookie, epmd_port=node.epmd_port)
        async with bridge.connect(node.name, timeout=5.0) as conn:
            return await conn.call("persistent_term", "put", [key.encode(), value], timeout=10.0)
    assert asyncio.run(call()) == Atom("ok")


class NeverWorse(RuleBasedStateMachine):
    """The model: ``releases`` is what which_releases must answer (version -> status),
    ``sha`` which tarball 0.0.2 on the node was unpacked from, ``left`` what a killed agent's
    unfinished placing left on disk (the next stage takes it back)."""

    kind: Kind
    base: Path
    stats: dict[str, int]
    sequences: list[list[str]]
    counter = 0

    def __init__(self) -> None:
        super().__init__()
        self.node: NodeProc | None = None
        self.agent: AgentProc | None = None
        self.steps_run: list[str] = []
        self.releases: dict[str, str] = {OLD: "permanent"}
        self.sha: Path | None = None
        self.left: list[str] = []  # what a killed agent left for the next stage to take back
        self.done: list[str] = []  # the steps of this example so far, by name
        self.listen = ""

    def _up(self) -> NodeProc:
        """The example's node and agent, started by its first step (hypothesis also makes
        machines for draws it rejects before any step: those start nothing)."""
        if self.node is None:
            cls = type(self)
            cls.counter += 1
            started = time.monotonic()
            self.node = cls.kind.start(cls.base / f"example-{cls.counter}")
            self.listen = f"127.0.0.1:{free_port()}"
            self.agent = self._start_agent()
            cls.stats["startup_ms"] += int((time.monotonic() - started) * 1000)
            cls.stats["examples"] += 1
            self._agree("the start", None)
        return self.node

    # -- helpers ---------------------------------------------------------------------------

    def _start_agent(self) -> AgentProc:
        """The example's agent; started again (after a kill) on the same state dir and the
        same address, as systemd restarts it, so that the relctl that lost it finds it."""
        assert self.node is not None
        return start_agent(self.node.workdir.parent / "agent",
                           [NodeEntry(self.node.name, self.node.cookie, self.node.epmd_port)],
                           metrics=False, node_extra={"hooks": [HOOK]},
                           extra_agent={"listen": self.listen})

    @property
    def tar(self) -> Tarballs:
        return type(self).kind.tarballs

    def _run(self, *args: str) -> tuple[int, dict[str, Any]]:
        self._up()
        assert self.agent is not None
        type(self).stats["steps"] += 1
        self.steps_run.append(" ".join(Path(a).name if a.startswith("/") else a for a in args))
        result = relctl(*args, "-o", "json", agents=[self.agent.address], timeout=180)
        try:
            op: dict[str, Any] = result.json()["operation"]
        except (ValueError, KeyError) as exc:
            raise AssertionError(f"relctl {' '.join(args)} exited {result.returncode} without "
                                 f"a JSON operation: {result.stdout}{result.stderr}") from exc
        assert OUTCOME_CODES.get(op["outcome"]) == result.returncode, (result.returncode, op)
        return result.returncode, op

    def _agree(self, what: str, op: dict[str, Any] | None) -> None:
        """The node, the model and relctl's report say the same."""
        assert self.node is not None
        on_node = node_releases(self.node)
        assert on_node == self.releases, (
            f"after {what}: the node lists {on_node}, the model {self.releases}; "
            f"steps so far: {self.steps_run}")
        if op is not None:
            reported = {r["version"]: r["status"] for r in op["releases_after"]}
            assert reported == on_node, (
                f"after {what}: relctl reports {reported}, the node lists {on_node}")
        if NEW not in self.releases:
            self.sha = None

    def _nothing_left(self, op: dict[str, Any]) -> None:
        """After an operation that staged: no extraction dir is left; when 0.0.2 is not on
        the node afterwards, neither is releases/0.0.2 nor the app's 0.0.2 lib dir; and what a
        killed agent left was taken back by this stage, which says so."""
        assert self.node is not None
        root = self.node.root
        [stage] = [s for s in op["steps"] if s["name"] == "stage"] or [None]
        if stage is None or stage["state"] != "succeeded":
            return
        assert not list(root.glob(".relctl-unpack-*")), list(root.glob(".relctl-unpack-*"))
        # An upload's extraction is moved by the stage, or removed (in the agent's background)
        # with the upload when the stage could not use it.
        eventually(lambda: not list(root.glob(".relctl-upload-*")), timeout=10,
                   what="no .relctl-upload-* left")
        if NEW not in self.releases:
            left = [p for p in (root / "releases" / NEW, root / "lib" / f"{self.kind.app}-{NEW}")
                    if p.exists()]
            assert not left, f"{op['kind']} left {left}: {op['steps']}"
        if self.left:
            assert "removed what an unfinished operation left: " in stage["detail"], (
                f"a killed agent left {self.left}; the next stage says: {stage['detail']}")
            self.left = []

    def _upgrade(self, tarball: Path, *extra: str) -> None:
        """upgrade 0.0.2 from ``tarball``: what the model expects in this state."""
        dry, replace = "--dry-run" in extra, "--replace" in extra
        code, op = self._run("upgrade", NEW, "--tarball", str(tarball), *extra)
        if self.releases.get(NEW) == "permanent":
            expected = ("up_to_date", OK)
        elif NEW in self.releases and self.sha != tarball and not replace:
            expected = ("failed_unchanged", FAILED)  # same version, other bytes
        elif tarball == self.tar.broken:
            expected = ("failed_unchanged", FAILED)
        elif dry:
            expected = ("dry_run", OK)
        else:
            expected = ("succeeded", OK)
        assert (op["outcome"], code) == expected, (op["error"], op["steps"], self.steps_run)
        if tarball == self.tar.broken and NEW not in self.releases:
            assert [s["name"] for s in op["steps"] if s["state"] == "failed"] == ["check"], \
                op["steps"]
        if expected[0] == "succeeded":
            self.releases = {NEW: "permanent", OLD: "old"}
            self.sha = tarball
        self._agree(self.steps_run[-1], op)
        self._nothing_left(op)

    # -- the steps -------------------------------------------------------------------------
    # One hypothesis rule draws the next step among those the model allows in this state,
    # preferring those this example has not run yet (then any but the last one): with a
    # handful of examples, hypothesis' own rule choice (which switches rules off per example,
    # and rejects a draw whose rules are all switched off or refused) spent an example on one
    # or two rules.

    def upgrade(self, data: st.DataObject) -> None:
        self._upgrade(self.tar.good)

    def dry_run(self, data: st.DataObject) -> None:
        self._upgrade(self.tar.good, "--dry-run")

    def relup_fails_check(self, data: st.DataObject) -> None:
        self._upgrade(self.tar.broken)

    def replace(self, data: st.DataObject) -> None:
        self._upgrade(self.tar.other, "--replace")

    def hook_fails_after_install(self, data: st.DataObject) -> None:
        node = self._up()
        node_put(node, GATE, Atom("refused"))
        try:
            code, op = self._run("upgrade", NEW, "--tarball", str(self.tar.good))
        finally:
            node_put(node, GATE, Atom("ok"))
        self.steps_run[-1] += " (post_install hook refuses)"
        assert (op["outcome"], code) == ("rolled_back", ROLLED_BACK), (op, self.steps_run)
        assert op["error"].startswith("hook gate: "), op["error"]
        # The rollback installs 0.0.1 again: 0.0.2 stays on the node as an old release.
        self.releases = {OLD: "permanent", NEW: "old"}
        self.sha = self.tar.good
        self._agree(self.steps_run[-1], op)
        self._nothing_left(op)

    def downgrade(self, data: st.DataObject) -> None:
        code, op = self._run("downgrade", OLD)
        assert (op["outcome"], code) == ("succeeded", OK), (op, self.steps_run)
        self.releases = {OLD: "permanent", NEW: "old"}
        self._agree(self.steps_run[-1], op)

    def remove(self, data: st.DataObject) -> None:
        version = data.draw(st.sampled_from(sorted(self.releases)), label="remove")
        code, op = self._run("remove", version)
        if self.releases[version] in ("permanent", "current"):
            assert (op["outcome"], code) == ("failed_unchanged", FAILED), (op, self.steps_run)
        elif version == OLD and self.kind.booted_in_use:
            assert (op["outcome"], code) == ("failed_unchanged", FAILED), (op, self.steps_run)
            assert f"releases/{OLD} is in use (on the running node's code path)" in op["error"]
            assert "restart the node" in op["error"], op["error"]
        else:
            assert (op["outcome"], code) == ("succeeded", OK), (op, self.steps_run)
            del self.releases[version]
        self._agree(self.steps_run[-1], op)

    def reload_config(self, data: st.DataObject) -> None:
        code, op = self._run("reload-config")
        assert (op["outcome"], code) == ("succeeded", OK), (op, self.steps_run)
        self._agree(self.steps_run[-1], op)

    def agent_killed_mid_upgrade(self, data: st.DataObject) -> None:
        """SIGKILL the agent while an upgrade streams (``extracting``: the upload's extraction
        dir exists, which it makes as the upload arrives; ``placed``: the app's 0.0.2 lib dir
        is in the root) and start an agent on the same state dir and address: the relctl that
        lost it follows the operation to its end (interrupted, exit 6) and reports the node as
        it is (0.0.1 runs, as before), or, killed before the operation started (during the
        upload), says the agent was lost (exit 3); and the next stage takes back what the
        journal says the killed one was placing (the upload's extraction too)."""
        # The derandomized examples draw the first: each release kind starts with another.
        points = ["placed", "extracting"] if self.kind.name == "systools" else [
            "extracting", "placed"]
        when = data.draw(st.sampled_from(points), label="kill when")
        node = self._up()
        assert self.agent is not None
        root = node.root
        type(self).stats["steps"] += 1
        self.steps_run.append(f"upgrade {NEW} --tarball {self.tar.good.name} (agent SIGKILLed "
                              f"when {when})")
        argv = ["upgrade", NEW, "--tarball", str(self.tar.good), "-o", "json"]
        taken = invariants.before_command()  # relctl() checks around its call; this is Popen
        client = subprocess.Popen(
            [sys.executable, "-m", "agent.client", "--agent", self.agent.address, *argv],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=relctl_env({"RELCTL_AGENT_RETURN_WAIT": "60"}))
        target = root / "lib" / f"{self.kind.app}-{NEW}"
        try:
            deadline = time.monotonic() + 120
            while not (any(root.glob(".relctl-upload-*")) if when == "extracting"
                       else target.exists()):
                assert client.poll() is None, client.communicate()
                assert time.monotonic() < deadline, f"the upgrade never got to {when}"
                time.sleep(0.001)
            os.kill(self.agent.pid, signal.SIGKILL)
            self.agent.stop()
            self.agent = self._start_agent()
            out, err = client.communicate(timeout=90)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
        invariants.after_command(taken, argv)
        # Where the kill landed decides whether the node registered 0.0.2 (set_unpacked);
        # nothing was installed either way.
        on_node = node_releases(node)
        assert on_node in ({OLD: "permanent"}, {OLD: "permanent", NEW: "unpacked"}), on_node
        self.releases = on_node
        self.sha = self.tar.good if NEW in on_node else None
        self.left = [] if NEW in on_node else [
            p.name for p in [*root.glob(".relctl-unpack-*"), *root.glob(".relctl-upload-*"),
                             target, root / "releases" / NEW] if p.exists()]
        self.steps_run[-1] += f" -> node {on_node}, left {self.left}"
        if client.returncode == UNAVAILABLE:  # killed during the upload: no operation began
            assert when == "extracting" and on_node == {OLD: "permanent"}, (on_node, out, err)
            assert "upload" in err or "upload" in out, (out, err)
            return
        assert client.returncode == FAILED_CHANGED, (client.returncode, out, err)
        op = json.loads(out)["operation"]
        assert op["outcome"] == "interrupted", op
        self._agree(self.steps_run[-1], op)

    # The first example hypothesis runs takes the first allowed step each time: this order
    # makes it a kill, then an upgrade and the way back, and on through the list.
    STEPS: dict[str, Callable[[NeverWorse], bool]] = {
        "agent_killed_mid_upgrade": lambda m: m.releases == {OLD: "permanent"},
        "upgrade": lambda m: True,
        "downgrade": lambda m: m.releases.get(NEW) == "permanent" and OLD in m.releases,
        "dry_run": lambda m: True,
        "hook_fails_after_install": lambda m: m.releases.get(OLD) == "permanent"
        and m.sha in (None, m.tar.good),
        "relup_fails_check": lambda m: m.releases.get(OLD) == "permanent",
        "replace": lambda m: m.releases.get(OLD) == "permanent",
        "remove": lambda m: True,
        "reload_config": lambda m: True,
    }

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        allowed = [name for name, valid in self.STEPS.items() if valid(self)]
        fresh = ([name for name in allowed if name not in self.done]
                 or [name for name in allowed if name != self.done[-1]] or allowed)
        self.done.append(data.draw(st.sampled_from(fresh), label="step"))
        getattr(self, self.done[-1])(data)

    def teardown(self) -> None:
        type(self).sequences.append(list(self.steps_run))
        for proc in (self.agent, self.node):
            if proc is not None:
                proc.stop()


def run_machine(kind: Kind, base: Path) -> None:
    """Run the examples on ``kind``, then print what ran (pytest -s shows it): the figures the
    CI budget is sized by, and each example's steps."""
    record = {"examples": 0, "steps": 0, "startup_ms": 0}
    sequences: list[list[str]] = []
    machine = type(f"NeverWorse_{kind.name}", (NeverWorse,),
                   {"kind": kind, "base": base, "stats": record, "sequences": sequences})
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=not RANDOM,
            database=None, phases=(Phase.explicit, Phase.generate),
            suppress_health_check=list(HealthCheck), print_blob=False))
    finally:
        print(f"never-worse property, {kind.name}: {record['examples']} examples, "
              f"{record['steps']} steps in {time.monotonic() - started:.1f} s (node + agent "
              f"start-up {record['startup_ms'] / 1000:.1f} s)")
        for i, steps in enumerate(sequences, 1):
            print(f"  example {i}: " + "; ".join(steps))
    assert record["steps"] >= record["examples"] >= 1


def test_never_worse_on_the_systools_release(release_build: ReleaseBuild, epmd: EpmdProc,
                                             node_cookie: str, tmp_path: Path) -> None:
    def start(workdir: Path) -> NodeProc:
        target = make_counter_target(release_build, workdir / "target", erl=otp_select.erl())
        return start_node(target, "counter@localhost", cookie=node_cookie,
                          epmd_port=epmd.port, workdir=workdir / "node")
    run_machine(Kind("systools", "counter", tarballs_for(
        release_build.tarball(NEW), "counter", tmp_path / "tarballs"), start, False),
        tmp_path / "examples")


def test_never_worse_on_the_mix_release(elixir_build: ElixirBuild, epmd: EpmdProc,
                                        node_cookie: str, tmp_path: Path) -> None:
    def start(workdir: Path) -> NodeProc:
        target = make_ex_target(elixir_build, workdir / "target")
        return start_elixir_node(target, "ex_counter@localhost", cookie=node_cookie,
                                 epmd_port=epmd.port, workdir=workdir / "node")
    run_machine(Kind("mix", "ex_counter", tarballs_for(
        elixir_build.tarball, "ex_counter", tmp_path / "tarballs"), start, True),
        tmp_path / "examples")


def test_a_mix_release_keeps_the_release_it_booted_until_it_restarts(
        agents: list[AgentProc], ex_node: NodeProc, start_ex_node: Callable[[Path | None],
                                                                            NodeProc],
        elixir_build: ElixirBuild, tmp_path: Path) -> None:
    """What the property test found on the mix release: after a hot upgrade its code path
    still holds releases/0.0.1/consolidated (mix boots with -pa of the booted release's
    protocols), so removing 0.0.1 is refused, and the error says to restart, not to check
    RELEASES; once the node booted 0.0.2, 0.0.1 goes."""
    entry = [NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)]
    agent = start_agent(tmp_path / "agent", entry, metrics=False)
    agents.append(agent)
    up = relctl("upgrade", NEW, "--tarball", str(elixir_build.tarball), agents=[agent.address],
                timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr

    refused = relctl("remove", OLD, "-o", "json", agents=[agent.address], timeout=60)
    assert refused.returncode == FAILED, refused.stdout + refused.stderr
    assert refused.json()["operation"]["error"] == (
        f"removing {OLD} would delete what is in use: releases/{OLD} is in use (on the running "
        "node's code path); nothing was changed. restart the node (it boots the permanent "
        "release, which frees what the running code holds), then retry")
    assert node_releases(ex_node) == {NEW: "permanent", OLD: "old"}

    ex_node.stop()
    again = start_ex_node(ex_node.root)
    assert node_releases(again) == {NEW: "permanent", OLD: "old"}

    def seen() -> bool:
        shown = relctl("versions", "-o", "json", agents=[agent.address])
        return shown.returncode == 0 and bool(shown.json()["nodes"][0]["up"])
    eventually(seen, what="the agent sees the restarted node")
    removed = relctl("remove", OLD, "-o", "json", agents=[agent.address], timeout=60)
    assert removed.returncode == OK, removed.stdout + removed.stderr
    assert node_releases(again) == {NEW: "permanent"}
    assert not (again.root / "releases" / OLD).exists()
