"""Restart truth, per release kind (issue 20, point 5; DESIGN.md section 4, "done = a cold
boot"): after every kind of operation, stopping the node and starting it with the release's
OWN start script boots the permanent release, with the application env it had before.

Three kinds, one node each, reused through the whole sequence:

* systools: examples/counter as tests/tools/release_fixture.py builds it; its bin/counter
  boots what releases/start_erl.data names;
* relx: the same sources built by Debian's rebar3 (rebar3 relup, rebar3 tar), booted with
  relx's ``bin/counter foreground``, whose version is written into the script itself, and
  whose sys.config.src / vm.args.src the script renders from the node's environment;
* mix: examples/elixir_counter (no RELEASES shipped), booted with ``bin/ex_counter start``,
  whose runtime.exs reads the node's environment at boot.

The sequence: ``--dry-run``, two refused tarballs (their .rel names an ERTS the host lacks,
or another release: refused at preflight), a failed check (a relup whose entry from 0.0.1
loads a module the release does not have: preflight's parser accepts it,
check_install_release refuses it), a rollback (a post_install hook that fails while 0.0.2 is
current), an upgrade, a downgrade.
After each: the node's state (which_releases, the app's vsn, its whole env) is read, the node
is stopped by pid and started again by its own script, and the state is read again: it must
be the same, and that of the release expected to be permanent.
"""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge import Atom, Node
from tests.conftest import current_test_failed
from tests.tools.agent_proc import AgentProc, NodeEntry, eventually, relctl, start_agent
from tests.tools.elixir_fixture import ElixirBuild, start_elixir_node
from tests.tools.elixir_fixture import make_target_copy as ex_target_copy
from tests.tools.otp_procs import EpmdProc, NodeProc, pid_exists, start_node
from tests.tools.rebar3_fixture import Rebar3Build, start_relx_node
from tests.tools.rebar3_fixture import make_target_copy as relx_target_copy
from tests.tools.release_fixture import ReleaseBuild, make_target_copy
from tests.tools.tarball_variants import rewrite_tarball

pytestmark = pytest.mark.otp

GREETING = "hello from the relx node's environment"
SOURCE = "the mix node's environment"
# A real OTP call that fails while 0.0.2 is current ({error, {already_installed, "0.0.2"}}):
# the upgrade rolls back. After the rollback it answers {ok, "0.0.1", []}, which is not ok or
# {ok, _} either, so the outcome also says the hook failed after the rollback; the node is on
# 0.0.1 all the same, which is what the restart checks. (counter_hooks, which the Erlang
# kinds have, could fail in 0.0.2 only; the mix release has no such module, and one hook for
# the three kinds keeps the sequence the same.)
FAILING_HOOK = {"name": "refuse-new", "when": "post_install",
                "call": "release_handler:check_install_release",
                "args": [{"charlist": "0.0.2"}]}


@dataclass(frozen=True)
class NodeState:
    """What the node runs, read over distribution."""

    releases: tuple[tuple[str, str], ...]  # (version, status) as which_releases lists them
    vsn: str                               # application:get_key(App, vsn)
    env: Mapping[str, Any]                 # application:get_all_env(App), by key name
    os_pid: int                            # the emulator's, which stop() signals

    @property
    def permanent(self) -> str:
        return next(v for v, s in self.releases if s == "permanent")

    def statuses(self) -> tuple[tuple[str, str], ...]:
        return tuple((v, "unpacked" if s == "old" else s) for v, s in self.releases)

    def show(self) -> str:
        env = ", ".join(f"{k}={v!r}" for k, v in sorted(self.env.items()))
        return f"vsn {self.vsn}; env {env}"


def read_state(node: NodeProc, app: str) -> NodeState:
    async def ask() -> NodeState:
        bridge = Node(cookie=node.cookie, epmd_port=node.epmd_port)
        async with bridge.connect(node.name, timeout=5.0) as conn:
            listed = await conn.call("release_handler", "which_releases", [], timeout=10.0)
            vsn = await conn.call("application", "get_key", [Atom(app), Atom("vsn")],
                                  timeout=10.0)
            env = await conn.call("application", "get_all_env", [Atom(app)], timeout=10.0)
            os_pid = await conn.call("os", "getpid", [], timeout=10.0)
        return NodeState(tuple((r[1], str(r[3])) for r in listed), str(vsn[1]),
                         {str(k): v for k, v in env}, int(os_pid))
    return asyncio.run(ask())


@dataclass
class Kind:
    """One release kind: how its own script boots a root, what each version's env is."""

    name: str
    app: str
    tarball: Path
    boot: Callable[[Path], NodeProc]        # workdir -> the node, booted by its own script
    env: Mapping[str, Mapping[str, Any]]    # version -> the app env a cold boot gives
    started: list[NodeProc] = field(default_factory=list)
    table: list[str] = field(default_factory=list)

    def start(self, workdir: Path) -> NodeProc:
        node = self.boot(workdir)
        self.started.append(node)
        return node


def erts_variant(tarball: Path, dest: Path) -> Path:
    """``tarball`` whose .rel names ERTS 99.0.0, which neither the host nor the tarball has:
    preflight must refuse it (an install would restart into a missing emulator)."""
    with tarfile.open(tarball) as tar:
        rels = {m.name: tar.extractfile(m).read() for m in tar  # type: ignore[union-attr]
                if m.isfile() and m.name.endswith(".rel")}
    changed = {name: re.sub(rb'(\{erts,\s*")[^"]+"', rb'\g<1>99.0.0"', data)
               for name, data in rels.items()}
    assert changed and all(b'"99.0.0"' in d for d in changed.values()), rels
    return rewrite_tarball(tarball, dest, changed, compresslevel=1)


def renamed_variant(tarball: Path, dest: Path, name: str) -> Path:
    """``tarball`` (of release ``name``) remade as release ``other``: each .rel says so and is
    named so (releases/0.0.2/other.rel, releases/other-0.0.2.rel), the rest unchanged.
    Preflight must refuse it (release_handler would make it current, and neither verify nor the rollback
    could take that back)."""
    with tarfile.open(tarball, "r:gz") as tin, \
            tarfile.open(dest, "w:gz", compresslevel=1) as tout:
        for member in tin:
            data = tin.extractfile(member) if member.isfile() else None
            if data is None or not member.name.endswith(".rel"):
                tout.addfile(member, data)
                continue
            text = re.sub(rb'(\{release,\s*\{\s*")[^"]+"', rb'\g<1>other"', data.read())
            info = tarfile.TarInfo(re.sub(rf"(^|/){name}(-0\.0\.2)?\.rel$", r"\1other\2.rel",
                                          member.name))
            info.size, info.mode, info.mtime = len(text), member.mode, member.mtime
            tout.addfile(info, io.BytesIO(text))
    return dest


def damaged_relup_variant(tarball: Path, dest: Path, app: str) -> Path:
    """``tarball`` whose relup entry from 0.0.1 loads a module the release does not ship:
    a well-formed relup with that entry (preflight's check passes), which
    check_install_release refuses ({no_such_file, .../relctl_missing_module.beam})."""
    member = "releases/0.0.2/relup"
    with tarfile.open(tarball) as tar:
        relup = tar.extractfile(member).read()  # type: ignore[union-attr]
    pattern = rb'(\{load_object_code,\s*\{' + app.encode() + rb',\s*"0\.0\.2",\s*\[)'
    damaged, count = re.subn(pattern, rb"\g<1>relctl_missing_module,", relup, count=1)
    assert count == 1, relup
    return rewrite_tarball(tarball, dest, {member: damaged}, compresslevel=1)


@pytest.fixture(params=["systools", "relx", "mix"])
def kind(request: pytest.FixtureRequest, epmd: EpmdProc, node_cookie: str,
         tmp_path: Path) -> Iterator[Kind]:
    """One kind's installed 0.0.1 target and how to boot it; every node it started is
    stopped by pid at teardown, and the table of what booted is printed."""
    port, target = epmd.port, tmp_path / "target"
    made: Kind
    if request.param == "systools":
        systools: ReleaseBuild = request.getfixturevalue("release_build")
        root = make_target_copy(systools, target)
        made = Kind("systools", "counter", systools.tarball("0.0.2"),
                    lambda wdir: start_node(root, "counter@localhost", cookie=node_cookie,
                                            epmd_port=port, workdir=wdir), {
                        "0.0.1": {"greeting": "hello"},
                        "0.0.2": {"greeting": "hello from 0.0.2", "mode": Atom("normal")}})
    elif request.param == "relx":
        relx: Rebar3Build = request.getfixturevalue("rebar3_build")
        root = relx_target_copy(relx, target)
        made = Kind("relx", "counter", relx.tarball,
                    lambda wdir: start_relx_node(root, "relx_counter@localhost",
                                                 cookie=node_cookie, epmd_port=port,
                                                 workdir=wdir, node_env={"GREETING": GREETING}), {
                        "0.0.1": {"greeting": GREETING},
                        "0.0.2": {"greeting": f"{GREETING} (0.0.2)", "mode": Atom("normal")}})
    else:
        mix: ElixirBuild = request.getfixturevalue("elixir_build")
        root = ex_target_copy(mix, target)
        made = Kind("mix", "ex_counter", mix.tarball,
                    lambda wdir: start_elixir_node(root, "ex_counter@localhost",
                                                   cookie=node_cookie, epmd_port=port,
                                                   workdir=wdir,
                                                   node_env={"EX_COUNTER_SOURCE": SOURCE}), {
                        "0.0.1": {"greeting": b"hello from 0.0.1", "source": SOURCE.encode()},
                        "0.0.2": {"greeting": b"hello from 0.0.2", "source": SOURCE.encode()}})
    yield made
    for node in made.started:
        node.stop()
        if current_test_failed(request):
            print(f"===== log of {node.name} (pid {node.pid}, root {node.root}) =====")
            print(node.log_text())
    print(f"===== {made.name}: what the release's own script booted after each operation =====")
    print("\n".join(made.table))
    survivors = [n.pid for n in made.started if pid_exists(n.pid)]
    assert not survivors, f"node pids survived stop(): {survivors}"


class Sequence:
    """The node of one kind through the operations, restarted by its script after each."""

    def __init__(self, kind: Kind, agents: list[AgentProc], tmp_path: Path) -> None:
        self.kind, self.agents, self.tmp_path = kind, agents, tmp_path
        self.node = kind.start(tmp_path / "node-0")
        self.agent: AgentProc | None = None

    def use_agent(self, hooks: list[dict[str, Any]]) -> None:
        """(Re)start the agent, with these hooks; the same state dir (journal) every time."""
        if self.agent is not None:
            self.agent.stop()
        self.agent = start_agent(self.tmp_path / "agent",
                                 [NodeEntry(self.node.name, self.node.cookie,
                                            self.node.epmd_port)],
                                 metrics=False, node_extra={"hooks": hooks},
                                 extra_agent={"reconnect_max_delay": 1, "refresh_interval": 1})
        self.agents.append(self.agent)

    def run(self, *args: str) -> tuple[int, dict[str, Any]]:
        assert self.agent is not None
        result = relctl(*args, "-o", "json", agents=[self.agent.address], timeout=180)
        assert result.stdout, result.stderr
        op: dict[str, Any] = result.json()["operation"]
        return result.returncode, op

    def restart(self, label: str, op: dict[str, Any], permanent: str) -> None:
        """Stop the node by pid, boot it with its own script, and compare what it runs."""
        kind = self.kind
        assert self.agent is not None
        agent, up_line = self.agent, f"node {self.node.name} is up"
        ups = agent.log_text().count(up_line)
        before = read_state(self.node, kind.app)
        self.node.stop()
        self.node = kind.start(self.tmp_path / f"node-{len(kind.started)}")
        after = read_state(self.node, kind.app)
        kind.table.append(f"{label:<24} {op['outcome']:<16} -> booted {after.permanent} "
                          f"({', '.join(f'{v} {s}' for v, s in after.releases)}); "
                          f"{after.show()}")
        # The start script exec'd down to the emulator: stop() signals the node itself.
        assert after.os_pid == self.node.pid != before.os_pid, (label, before, after)
        assert (before.permanent, before.vsn) == (permanent, permanent), (label, before)
        assert before.env == kind.env[permanent], (label, "before the restart", before)
        assert (after.permanent, after.vsn) == (permanent, permanent), (label, after)
        assert after.env == kind.env[permanent], (label, "after the restart", after)
        # Each release and its status, read back from RELEASES at boot. A release left by
        # going back to the permanent one is "old" in release_handler's memory but stays
        # "unpacked" in RELEASES (plain OTP 25 does the same: unpack, install 0.0.2, install
        # 0.0.1), so those two count as one here.
        assert after.statuses() == before.statuses(), (label, before, after)
        # The agent finds the node again before the next operation (its log says so).
        eventually(lambda: agent.log_text().count(up_line) > ups, timeout=20,
                   what=f"the agent sees {self.node.name} again")


def step_states(op: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["state"] for s in op["steps"]}


def detail(op: dict[str, Any], name: str) -> str:
    return str(next(s["detail"] for s in op["steps"] if s["name"] == name))


def nothing_staged_left(root: Path) -> None:
    """No extraction of an upload (issue 24: made as it arrived) nor of an operation is left
    in the root once the command ended: used and moved, taken back, or removed with the
    unused upload (that removal runs in the agent's background: waited for)."""
    def clean() -> bool:
        return not [p for p in root.iterdir() if p.name.startswith((".relctl-upload-",
                                                                    ".relctl-unpack-"))]
    eventually(clean, timeout=10, what=f"no .relctl-upload-* or .relctl-unpack-* in {root}")


ONE_PASS = " as the upload arrived ("  # stage: the extraction made as the upload arrived, moved
MD5S = "md5s compared in the agent)"  # verify: loaded code compared with the beams in the agent


def test_after_every_operation_the_releases_own_script_boots_the_permanent_release(
        kind: Kind, agents: list[AgentProc], tmp_path: Path) -> None:
    seq = Sequence(kind, agents, tmp_path)
    assert read_state(seq.node, kind.app).env == kind.env["0.0.1"]
    seq.use_agent([])
    tarball = str(kind.tarball)

    code, op = seq.run("upgrade", "0.0.2", "--tarball", tarball, "--dry-run")
    assert (code, op["outcome"]) == (0, "dry_run"), op
    assert ONE_PASS in detail(op, "stage"), detail(op, "stage")
    nothing_staged_left(seq.node.root)
    seq.restart("--dry-run", op, "0.0.1")

    refused = erts_variant(kind.tarball, tmp_path / "erts-99.tar.gz")
    code, op = seq.run("upgrade", "0.0.2", "--tarball", str(refused))
    assert (code, op["outcome"]) == (1, "failed_unchanged"), op
    assert "ERTS 99.0.0" in op["error"], op["error"]
    assert [s["name"] for s in op["steps"]] == ["preflight"], op["steps"]
    nothing_staged_left(seq.node.root)  # extracted as it arrived, never used: removed
    seq.restart("refused (ERTS 99.0.0)", op, "0.0.1")

    other = renamed_variant(kind.tarball, tmp_path / "other.tar.gz", kind.app)
    code, op = seq.run("upgrade", "0.0.2", "--tarball", str(other))
    assert (code, op["outcome"]) == (1, "failed_unchanged"), op
    assert op["error"].startswith("the tarball holds release other 0.0.2"), op["error"]
    assert [s["name"] for s in op["steps"]] == ["preflight"], op["steps"]
    seq.restart("refused (release other)", op, "0.0.1")

    damaged = damaged_relup_variant(kind.tarball, tmp_path / "damaged.tar.gz", kind.app)
    code, op = seq.run("upgrade", "0.0.2", "--tarball", str(damaged))
    assert (code, op["outcome"]) == (1, "failed_unchanged"), op
    assert step_states(op)["preflight"] == "succeeded" and step_states(op)["check"] == \
        "failed", op["steps"]
    assert "relctl_missing_module" in op["error"], op["error"]
    assert ONE_PASS in detail(op, "stage"), detail(op, "stage")
    nothing_staged_left(seq.node.root)
    seq.restart("failed check", op, "0.0.1")

    seq.use_agent([FAILING_HOOK])
    code, op = seq.run("upgrade", "0.0.2", "--tarball", tarball)
    assert (code, op["outcome"]) == (5, "rolled_back"), op
    # In the node's language: {error,{already_installed,"0.0.2"}} or Elixir's inspect of it.
    assert op["error"].startswith("hook refuse-new: ") and \
        "already_installed" in op["error"].partition(";")[0], op["error"]
    seq.restart("rollback (post_install)", op, "0.0.1")

    seq.use_agent([])
    code, op = seq.run("upgrade", "0.0.2", "--tarball", tarball)
    assert (code, op["outcome"]) == (0, "succeeded"), op
    # The rollback left 0.0.2 unpacked: the upload (extracted as it arrived) is not needed.
    assert detail(op, "stage") == "0.0.2 is already unpacked", detail(op, "stage")
    assert detail(op, "verify").split("; ")[2].endswith(MD5S), detail(op, "verify")
    nothing_staged_left(seq.node.root)
    seq.restart("upgrade", op, "0.0.2")

    code, op = seq.run("downgrade", "0.0.1")
    assert (code, op["outcome"]) == (0, "succeeded"), op
    assert detail(op, "verify").split("; ")[2].endswith(MD5S), detail(op, "verify")
    seq.restart("downgrade", op, "0.0.1")
