"""The release engine against a scripted node (tests/agent/release/scripted.py): every outcome
of upgrade, downgrade and each single step, with the RPCs it makes in order, the steps it
reports and the Result it returns.

The engine unpacks as the agent builds it: it extracts the tarball (a real one, checked as an
upload is) into the root on tmp_path itself and has the node register it with set_unpacked.
Each flow that unpacks also runs with the fallback, unpack_release in the node
(``BOTH_UNPACKS``); a few tests are about that fallback only (``UNPACK_IN_NODE``).

The replies are release_handler's, as the e2e tests see them on a real node: which_releases
entries {Name, Vsn, Libs, Status}; {ok, OtherVsn, Descr} from check/install_release; ok or
{error, Reason} from make_permanent, set_removed and remove_release.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from agent.config import CONTINUE, POST_INSTALL, PRE_INSTALL, Hook
from agent.errors import NodeDown, NodeTimeout, ReplyTooLarge
from agent.release.values import (
    DRY_RUN,
    FAILED,
    FAILED_UNCHANGED,
    ROLLED_BACK,
    SUCCEEDED,
    UP_TO_DATE,
    Options,
    Placing,
    Probe,
    Result,
)
from agent.release.codecheck import CHECK_EXPR
from agent.release.proccheck import (
    HELD_FUN_EXPR,
    OLD_CODE_EXPR,
    STALE_FUN_EXPR,
    STUCK_EXPR,
    TREE_EXPR,
    YIELDING,
)
from agent.release import ReleaseEngine, ReleaseTarball, UnpackLedger, inspect_tarball
from bridge import Atom, BadRpc, ConnectionLost, Pid
from tests.agent.release.scripted import (
    ERROR,
    ERTS,
    NODE,
    OK,
    SYS_CONFIG,
    Expect,
    ScriptedNode,
    MemoryLedger,
    StepLog,
    answer,
    applications,
    code_check,
    code_matches,
    code_path,
    code_report,
    config_on_node,
    config_parses,
    fail,
    node_dirs,
    releases_file,
    repeatedly,
    tokens,
    which_releases,
)
from tests.tools.settings import MAX_UPLOAD

RPC_TIMEOUT = 1.0
FAST = Options(install_timeout=5.0, restart_timeout=2.0)
SLOW = Options()  # the default install_timeout: 300 s
UPDATE_PATHS = [(Atom("update_paths"), True)]
UP = (("0.0.1", "permanent"),)                           # before an upgrade to 0.0.2
UNPACKED = (("0.0.2", "unpacked"), ("0.0.1", "permanent"))
CURRENT = (("0.0.2", "current"), ("0.0.1", "permanent"))
DONE = (("0.0.2", "permanent"), ("0.0.1", "old"))
PRE = Hook("flush", PRE_INSTALL, "counter_hooks", "run", (b"flush",))
POST = Hook("warm", POST_INSTALL, "counter_hooks", "run", (b"warm",))


# How the engine unpacks a tarball. By default as the agent does: it extracts the tarball
# into the root itself (real files, on tmp_path), then has the node register it with
# set_unpacked. Its fallback (a root the agent may not write): unpack_release in the node.
BY_AGENT, IN_NODE = "by the agent", "in the node"
BOTH_UNPACKS = pytest.mark.parametrize("rig", [BY_AGENT, IN_NODE], indirect=True)
UNPACK_IN_NODE = pytest.mark.parametrize("rig", [IN_NODE], indirect=True)


class Rig:
    """A ReleaseEngine over a ScriptedNode, with the node's release root on disk."""

    def __init__(self, root: Path, unpack: str = BY_AGENT) -> None:
        self.root = root
        self.unpack = unpack
        self.node = ScriptedNode()
        self.log = StepLog()
        self.engine = self.engine_with()

    @property
    def by_agent(self) -> bool:
        return self.unpack == BY_AGENT

    def engine_with(self, ledger: UnpackLedger | None = None) -> ReleaseEngine:
        """An engine over this rig's node and log that unpacks as the rig says."""
        return ReleaseEngine(self.node, self.log, rpc_timeout=RPC_TIMEOUT, ledger=ledger,
                             agent_unpack=self.by_agent)

    def expect(self, *parts: Expect | Iterable[Expect]) -> None:
        for part in parts:
            self.node.expect(*([part] if isinstance(part, Expect) else part))

    def done(self) -> None:
        self.node.assert_done()
        assert self.log.balanced()
        assert not list(self.root.glob(".relctl-unpack-*"))  # the agent's extraction dirs go


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Rig:
    root = tmp_path.resolve() / "counter"
    for folder in ("releases", "lib", "bin"):
        (root / folder).mkdir(parents=True)
    return Rig(root, getattr(request, "param", BY_AGENT))


def relup(version: str = "0.0.2", up: str = "0.0.1", down: str = "0.0.1") -> bytes:
    """A relup's text as systools writes it, with one up and one down entry."""
    return (f'%% coding: utf-8\n{{"{version}",\n [{{"{up}",[],\n   [point_of_no_return]}}],\n'
            f' [{{"{down}",[],[point_of_no_return]}}]}}.\n').encode()


def rel_text(version: str) -> bytes:
    return (f'{{release, {{"counter", "{version}"}}, {{erts, "{ERTS}"}},\n'
            f' [{{kernel, "8.5.3"}}, {{stdlib, "4.2"}}, {{counter, "{version}"}}]}}.\n').encode()


LIB_FILES_KERNEL = "lib/kernel-8.5.3/ebin/kernel.app"
LIB_FILES = {LIB_FILES_KERNEL: b"{application, kernel, []}.\n",
             "lib/stdlib-4.2/ebin/stdlib.app": b"{application, stdlib, []}.\n"}


def tarball(rig: Rig, version: str = "0.0.2", sys_config: bytes | None = SYS_CONFIG,
            relup_text: bytes | None = b"", data: bytes | None = None) -> ReleaseTarball:
    """An uploaded tarball, as systools builds one, checked as the agent checks an upload:
    releases/counter-VSN.rel, releases/VSN/{sys.config,relup}, lib/counter-VSN with ``data``
    as its beam, kernel and stdlib. Its relup upgrades from 0.0.1 unless ``relup_text`` says
    else (None: it has none). The same arguments give the same bytes (and sha256)."""
    members = {f"releases/counter-{version}.rel": rel_text(version),
               f"releases/{version}/start.boot": b"boot",
               f"lib/counter-{version}/ebin/counter.beam":
                   f"the beam of counter {version}".encode() if data is None else data,
               **LIB_FILES}
    if sys_config is not None:
        members[f"releases/{version}/sys.config"] = sys_config
    relup_bytes = relup(version) if relup_text == b"" else relup_text
    if relup_bytes is not None:
        members[f"releases/{version}/relup"] = relup_bytes
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    packed = gzip.compress(raw.getvalue(), mtime=0)
    path = rig.root.parent / f"upload-{version}-{hashlib.sha256(packed).hexdigest()[:8]}.tar.gz"
    path.write_bytes(packed)
    return inspect_tarball(path, max_size=MAX_UPLOAD)  # as the agent checks an upload


def relup_on_node(rig: Rig, version: str = "0.0.2", text: bytes | None = None) -> None:
    """releases/VSN/relup on the node's disk (the downgrade's preflight reads it there)."""
    path = rig.root / "releases" / version / "relup"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(relup(version) if text is None else text)


def sha_on_node(rig: Rig, tar: ReleaseTarball) -> None:
    """The sha256 the agent recorded in releases/VSN when it unpacked ``tar`` there."""
    path = rig.root / "releases" / tar.version / "relctl.sha256"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tar.sha256 + "\n")


def running_libs(rig: Rig) -> list[Path]:
    """lib/kernel-8.5.3 and lib/stdlib-4.2 in the root, as the running 0.0.1 has them."""
    for name, content in LIB_FILES.items():
        (rig.root / name).parent.mkdir(parents=True, exist_ok=True)
        (rig.root / name).write_bytes(content)
    return [rig.root / "lib" / "kernel-8.5.3", rig.root / "lib" / "stdlib-4.2"]


def unpacked_files(rig: Rig, version: str = "0.0.2") -> list[Path]:
    """What an unpack writes: releases/VSN and lib/counter-VSN, new, and the libraries the
    running 0.0.1 has there already (made now; kept as they are, keep_old_files). The agent
    extracts them from the tarball; in the node, the scripted unpack_release writes them."""
    new = [rig.root / "releases" / version, rig.root / "lib" / f"counter-{version}"]
    there = running_libs(rig)

    def extract() -> None:
        for path in new:
            path.mkdir(parents=True, exist_ok=True)
            (path / "file").write_text(version)
        # release_handler deletes the tarball it unpacked
        (rig.root / "releases" / f"counter-{version}.tar.gz").unlink(missing_ok=True)
    rig.node.effects["release_handler:unpack_release"] = extract
    return new + there


# --- scripts of the node's side ------------------------------------------------------------

def facts(rig: Rig, *entries: tuple[str, str]) -> list[Expect]:
    return [which_releases(*entries), *node_dirs(rig.root)]


def preflight(rig: Rig, *entries: tuple[str, str]) -> list[Expect]:
    return [*facts(rig, *entries), releases_file(rig.root)]


def unpack_call(rig: Rig, version: str = "0.0.2") -> str:
    """The registering call as the engine names it in what it reports."""
    if rig.by_agent:
        return f"set_unpacked({str(rig.root / 'releases' / version / f'counter-{version}.rel')!r})"
    return f"unpack_release('counter-{version}')"


def unpack_reply(rig: Rig, reply: Any, version: str = "0.0.2") -> Expect:
    """The node's answer to the unpack: to set_unpacked(RelFile, Libs) after the agent's
    extraction (each library in ROOT/lib), or to unpack_release(Name)."""
    if rig.by_agent:
        libs = [(Atom(app), vsn, "lib")
                for app, vsn in (("kernel", "8.5.3"), ("stdlib", "4.2"), ("counter", version))]
        rel = str(rig.root / "releases" / version / f"counter-{version}.rel")
        return answer("release_handler:set_unpacked", [rel, libs], reply)
    return answer("release_handler:unpack_release", [f"counter-{version}"], reply)


def unpack_fails(rig: Rig, error: BaseException, version: str = "0.0.2") -> Expect:
    expected = unpack_reply(rig, None, version)
    return fail(expected.mfa, expected.args, error)


def unpack_ok(rig: Rig, version: str = "0.0.2") -> Expect:
    return unpack_reply(rig, (OK, version), version)


def check_only(version: str = "0.0.2", over: str = "0.0.1") -> Expect:
    """check_install_release answering ok (a downgrade's or the single step's check)."""
    return answer("release_handler:check_install_release", [version], (OK, over, []))


def check_ok(version: str = "0.0.2", over: str = "0.0.1") -> list[Expect]:
    """check_install_release, then the checks that no process runs in a module the relup only
    reloads, or holds a fun of a module it replaces (agent/release/proccheck.py): none does."""
    return [answer("release_handler:check_install_release", [version], (OK, over, [])),
            *code_check([]), *code_check([])]


def install_opts(options: Options = FAST, *, update_paths: bool = True) -> list[Any]:
    """install_release/2's options: install_timeout (ms) bounds suspend and code_change too."""
    ms = int(options.install_timeout * 1000)
    return [(Atom("code_change_timeout"), ms), (Atom("suspend_timeout"), ms),
            *(UPDATE_PATHS if update_paths else [])]


def install(version: str, reply: Any, options: Options = FAST) -> Expect:
    return answer("release_handler:install_release", [version, install_opts(options)], reply)


def install_ok(version: str = "0.0.2", over: str = "0.0.1", options: Options = FAST) -> Expect:
    return install(version, (OK, over, []), options)


def verify_ok(version: str, *entries: tuple[str, str], parsed: bool = False) -> list[Expect]:
    return [which_releases(*entries), answer("application:which_applications", [],
                                             applications(version)),
            *code_matches(version, parsed=parsed)]


def permanent(version: str = "0.0.2", reply: Any = OK) -> Expect:
    return answer("release_handler:make_permanent", [version], reply)


def taken_back(rig: Rig) -> list[Expect]:
    """The one undo of a registered 0.0.2: asked first, set_removed, then what is in use read
    (the node's code path) before anything placed is deleted."""
    return [which_releases(*UNPACKED), set_removed(), code_path(rig.root)]


def set_removed(version: str = "0.0.2", reply: Any = OK) -> Expect:
    return answer("release_handler:set_removed", [version], reply)


def hook_call(hook: Hook, reply: Any) -> Expect:
    return answer(f"{hook.module}:{hook.function}", list(hook.args), reply)


def versions(result: Result) -> list[tuple[str, str]]:
    return [(r.version, r.status) for r in result.releases]


def assert_result(result: Result, outcome: str, from_version: str, to_version: str,
                  error: str = "") -> None:
    """The outcome and versions; the error is empty on success, else holds ``error``."""
    assert (result.outcome, result.from_version, result.to_version) == (
        outcome, from_version, to_version)
    if outcome in (SUCCEEDED, DRY_RUN, UP_TO_DATE):
        assert result.error == ""
    else:
        assert result.error and error in result.error, result.error


# --- upgrade: succeeded ------------------------------------------------------------------

@BOTH_UNPACKS
async def test_upgrade_with_a_tarball_stages_unpacks_installs_verifies_and_commits(
        rig: Rig) -> None:
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(), install_ok(),
               verify_ok("0.0.2", *CURRENT), permanent(), which_releases(*DONE))
    tar = tarball(rig)
    result = await rig.engine.upgrade("0.0.2", tar, FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert versions(result) == [("0.0.2", "permanent"), ("0.0.1", "old")]
    assert rig.log.ended() == [("preflight", "succeeded"), ("stage", "succeeded"),
                               ("unpack", "succeeded"), ("check", "succeeded"),
                               ("install", "succeeded"), ("verify", "succeeded"),
                               ("make_permanent", "succeeded")]
    assert rig.log.detail("preflight") == "releases/0.0.2/sys.config parses; running 0.0.1"
    assert rig.log.detail("check") == "relup from 0.0.1 found"
    assert rig.log.detail("install") == "0.0.1 -> 0.0.2"
    assert rig.log.detail("verify") == ("0.0.2 is current; 3 applications run; 187 modules "
                                         "match the release's beams (embedded mode); no "
                                         "process runs old code")
    assert rig.log.detail("make_permanent") == "0.0.2 is permanent"
    if rig.by_agent:
        # Extracted and placed by the agent; the node only registers it, and the sha256 of
        # the tarball is kept beside the release.
        assert re.fullmatch(rf"extracted by the agent into {rig.root}/\.relctl-unpack-\w+ \(7 "
                            rf"files written, 0 kept as the root has them; sha256 "
                            rf"{tar.sha256[:12]}\.\.\. checked again\)", rig.log.detail("stage"))
        assert rig.log.detail("unpack") == (
            "the agent unpacked it (the node decompressed nothing): placed lib/counter-0.0.2, "
            f"lib/kernel-8.5.3, lib/stdlib-4.2, releases/0.0.2; {unpack_call(rig)} -> 0.0.2")
        assert sorted(p.name for p in (rig.root / "releases" / "0.0.2").iterdir()) == [
            "counter-0.0.2.rel", "relctl.sha256", "relup", "start.boot", "sys.config"]
        assert (rig.root / "releases" / "0.0.2" / "relctl.sha256").read_text() == (
            tar.sha256 + "\n")
        assert (rig.root / "lib/counter-0.0.2/ebin/counter.beam").read_bytes() == (
            b"the beam of counter 0.0.2")
    else:
        # Staged where unpack_release looks, whole (the scripted node does not consume it).
        staged = rig.root / "releases" / "counter-0.0.2.tar.gz"
        assert staged.read_bytes() == tar.path.read_bytes()
        assert staged.stat().st_ino == tar.path.stat().st_ino
        assert rig.log.detail("stage").startswith(f"{staged} ({tar.size} bytes, sha256 ")
        assert rig.log.detail("unpack") == "unpack_release('counter-0.0.2') -> 0.0.2"
        assert sorted(p.name for p in (rig.root / "releases").iterdir()) == [
            "counter-0.0.2.tar.gz"]
    # A big relup gets the install timeout, an unpack at least two minutes.
    assert rig.node.calls_to("release_handler:install_release")[0].timeout == 5.0
    assert rig.node.calls_to(unpack_ok(rig).mfa)[0].timeout == 120.0
    assert rig.node.calls_to("release_handler:which_releases")[0].timeout == RPC_TIMEOUT
    rig.done()


async def test_upgrade_of_an_unpacked_release_checks_its_config_on_the_node(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(), verify_ok("0.0.2", *CURRENT), permanent(), which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert rig.log.ended()[:3] == [("preflight", "succeeded"), ("stage", "skipped"),
                                   ("unpack", "skipped")]
    assert rig.log.detail("stage") == "0.0.2 is already unpacked"
    assert rig.log.detail("preflight") == "releases/0.0.2/sys.config parses; running 0.0.1"
    rig.done()


async def test_a_tarball_for_a_release_already_there_is_not_uploaded_again(rig: Rig) -> None:
    sha_on_node(rig, tarball(rig))  # unpacked by the agent from these very bytes
    rig.expect(preflight(rig, *UNPACKED),
               config_on_node(rig.root, "0.0.2", (ERROR, Atom("enoent"))), check_ok(),
               install_ok(), verify_ok("0.0.2", *CURRENT), permanent(), which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert rig.log.detail("preflight") == ("0.0.2 is already unpacked; the tarball is not "
                                           "needed. no releases/0.0.2/sys.config; running 0.0.1")
    # The tarball's sys.config is not read (the one erl_scan call is verify's code check).
    assert [c.args[0] for c in rig.node.calls_to("erl_scan:string")] == [
        YIELDING + STUCK_EXPR, YIELDING + HELD_FUN_EXPR, CHECK_EXPR, YIELDING + TREE_EXPR,
        YIELDING + OLD_CODE_EXPR, YIELDING + STALE_FUN_EXPR]
    assert not (rig.root / "releases" / "counter-0.0.2.tar.gz").exists()
    rig.done()


async def test_upgrade_to_a_current_release_only_makes_it_permanent(rig: Rig) -> None:
    (rig.root / "bin" / "counter-0.0.2").write_text("#!/bin/sh\n# 0.0.2\n")
    (rig.root / "bin" / "counter").write_text("#!/bin/sh\n# 0.0.1\n")
    rig.expect(preflight(rig, *CURRENT), verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, Options(hooks=(PRE, POST)))

    assert_result(result, SUCCEEDED, "0.0.2", "0.0.2")
    # No config check, no install and no hooks: the release already runs.
    assert rig.log.ended() == [
        ("preflight", "succeeded"), ("stage", "skipped"), ("unpack", "skipped"),
        ("check", "skipped"), ("pre_install:flush", "skipped"), ("install", "skipped"),
        ("post_install:warm", "skipped"), ("verify", "succeeded"), ("make_permanent", "succeeded")]
    assert rig.log.detail("install") == "0.0.2 is already current"
    assert rig.log.detail("pre_install:flush") == ("0.0.2 is already current; hooks run only "
                                                   "when a release is installed")
    # relx's start script of the permanent release becomes bin/NAME.
    assert rig.log.detail("make_permanent") == ("0.0.2 is permanent; copied bin/counter-0.0.2 "
                                                "to bin/counter")
    assert (rig.root / "bin" / "counter").read_text() == "#!/bin/sh\n# 0.0.2\n"
    assert sorted(p.name for p in (rig.root / "bin").iterdir()) == ["counter", "counter-0.0.2"]
    rig.done()


async def test_a_start_script_that_cannot_be_copied_is_said_not_an_internal_error(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    (rig.root / "bin" / "counter-0.0.2").write_text("#!/bin/sh\n# 0.0.2\n")
    (rig.root / "bin" / "counter").write_text("#!/bin/sh\n# 0.0.1\n")

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr("shutil.copy2", read_only)
    rig.expect(preflight(rig, *CURRENT), verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, SUCCEEDED, "0.0.2", "0.0.2")
    assert rig.log.detail("make_permanent") == (
        "0.0.2 is permanent; could not copy bin/counter-0.0.2 to bin/counter (Read-only file "
        "system): copy it by hand")
    assert (rig.root / "bin" / "counter").read_text() == "#!/bin/sh\n# 0.0.1\n"
    rig.done()


async def test_upgrade_with_no_permanent_leaves_the_old_release_permanent(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(options=SLOW), verify_ok("0.0.2", *CURRENT), which_releases(*CURRENT))
    result = await rig.engine.upgrade("0.0.2", None, Options(permanent=False))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert versions(result) == [("0.0.2", "current"), ("0.0.1", "permanent")]
    assert rig.log.ended()[-1] == ("make_permanent", "skipped")
    assert rig.log.detail("make_permanent") == ("--no-permanent: the node boots the old release "
                                                "on restart until `relctl make-permanent`")
    assert "release_handler:make_permanent" not in rig.node.mfas()
    rig.done()


async def test_hooks_run_around_install_in_order(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               hook_call(PRE, OK), install_ok(options=SLOW), hook_call(POST, (OK, 3)),
               verify_ok("0.0.2", *CURRENT), permanent(), which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, Options(hooks=(PRE, POST)))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert [name for name, _ in rig.log.ended()] == [
        "preflight", "stage", "unpack", "check", "pre_install:flush", "install",
        "post_install:warm", "verify", "make_permanent"]
    assert rig.node.calls_to("counter_hooks:run")[0].timeout == PRE.timeout
    rig.done()


async def test_a_release_that_restarts_the_emulator_is_waited_for(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install("0.0.2", (Atom("continue_after_restart"), "0.0.1", [])),
               verify_ok("0.0.2", *CURRENT), permanent(), which_releases(*DONE))
    rig.node.then_restart(True)
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert rig.node.restart_waits == [(30.0, FAST.restart_timeout)]
    assert rig.log.detail("install") == "installed; the node restarted into the new emulator"
    rig.done()


async def test_probes_soak_for_the_health_soak(rig: Rig) -> None:
    options = Options(probes=(Probe("counter", "health"),), health_soak=0.05)
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(options=SLOW), verify_ok("0.0.2", *CURRENT),
               repeatedly("counter:health", [], OK), permanent(), which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, options)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    shown = re.fullmatch(r"0\.0\.2 is current; 3 applications run; 187 modules match the "
                         r"release's beams \(embedded mode\); no process runs old code; "
                         r"probes ok (\d+)x over 0\.05 s",
                         rig.log.detail("verify"))
    assert shown is not None, rig.log.detail("verify")
    rounds = int(shown.group(1))
    assert rounds >= 2 and len(rig.node.calls_to("counter:health")) == rounds
    rig.done()


# --- upgrade: failed_unchanged -----------------------------------------------------------

@pytest.mark.parametrize("with_tarball", [False, True])
async def test_upgrade_to_the_running_permanent_release_is_up_to_date(
        rig: Rig, with_tarball: bool) -> None:
    # A rerun of a deploy script: not a failure, and nothing is touched (no RELEASES check,
    # no config check, no staging of a tarball that came anyway).
    rig.expect(facts(rig, *DONE))
    result = await rig.engine.upgrade("0.0.2", tarball(rig) if with_tarball else None, FAST)

    assert_result(result, UP_TO_DATE, "0.0.2", "0.0.2")
    assert versions(result) == [("0.0.2", "permanent"), ("0.0.1", "old")]
    assert rig.log.ended() == [("preflight", "succeeded")]
    assert rig.log.detail("preflight") == (
        f"0.0.2 already runs and is permanent on {NODE}; nothing to do"
        + ("; the uploaded tarball is not needed" if with_tarball else ""))
    assert not (rig.root / "releases" / "counter-0.0.2.tar.gz").exists()
    rig.done()


async def test_upgrade_to_an_unknown_release_without_a_tarball_is_refused(rig: Rig) -> None:
    rig.expect(facts(rig, *UP), which_releases(*UP))
    result = await rig.engine.upgrade("9.9.9", None, FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "9.9.9",
                  f"release 9.9.9 is not on {NODE} (it has: 0.0.1 (permanent)); pass "
                  "--tarball FILE to upload it")
    assert rig.log.ended() == [("preflight", "failed")]
    rig.done()


@pytest.mark.parametrize(("scripted", "error"), [
    pytest.param(lambda: [
        answer("erl_scan:string", [SYS_CONFIG.decode()],
               (ERROR, (1, Atom("erl_scan"), (Atom("string"), 34, "hi}]}].\n")), 2)),
        answer("erl_scan:format_error", [(Atom("string"), 34, "hi}]}].\n")],
               ["unterminated ", "string", " starting with ", "\"hi}]}].\\n\""]),
        answer("lists:flatten",
               [["unterminated ", "string", " starting with ", "\"hi}]}].\\n\""]],
               'unterminated string starting with "hi}]}].\\n"')],
        'releases/0.0.2/sys.config in the tarball does not parse: line 1: unterminated string '
        'starting with "hi}]}].\\n"', id="scan-error"),
    pytest.param(lambda: [
        answer("erl_scan:string", [SYS_CONFIG.decode()], (OK, tokens("hi")[:-1], 1))],
        "releases/0.0.2/sys.config in the tarball does not end with '.' (a sys.config is one "
        "Erlang list and a dot)", id="no-dot"),
    pytest.param(lambda: [
        answer("erl_scan:string", [SYS_CONFIG.decode()], (OK, tokens("hi"), 2)),
        answer("erl_parse:parse_term", [tokens("hi")],
               (ERROR, (2, Atom("erl_parse"), ["syntax error before: ", "\"hello\""]))),
        answer("erl_parse:format_error", [["syntax error before: ", "\"hello\""]],
               ["syntax error before: ", "\"hello\""]),
        answer("lists:flatten", [["syntax error before: ", "\"hello\""]],
               'syntax error before: "hello"')],
        'releases/0.0.2/sys.config in the tarball does not parse: line 2: syntax error before: '
        '"hello"', id="parse-error"),
    pytest.param(lambda: [
        answer("erl_scan:string", [SYS_CONFIG.decode()], (OK, tokens("hi"), 2)),
        answer("erl_parse:parse_term", [tokens("hi")],
               (ERROR, (2, Atom("erl_parse"), ["syntax error before: ", "'}'"]))),
        fail("erl_parse:format_error", [["syntax error before: ", "'}'"]],
             BadRpc((Atom("EXIT"), Atom("undef"))))],
        "releases/0.0.2/sys.config in the tarball does not parse: "
        "{error,{2,erl_parse,[\"syntax error before: \",\"'}'\"]}}", id="unworded-error"),
    pytest.param(lambda: [
        answer("erl_scan:string", [SYS_CONFIG.decode()], (OK, tokens("hi"), 2)),
        answer("erl_parse:parse_term", [tokens("hi")], (OK, (Atom("counter"), [])))],
        "releases/0.0.2/sys.config in the tarball is not a list of {Application, [{Key, "
        "Value}]}", id="not-a-list"),
])
async def test_a_sys_config_that_release_handler_would_misread_is_refused(
        rig: Rig, scripted: Any, error: str) -> None:
    rig.expect(preflight(rig, *UP), scripted(), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == error
    assert rig.log.ended() == [("preflight", "failed")]
    assert list((rig.root / "releases").iterdir()) == []  # nothing staged
    rig.done()


async def test_a_sys_config_on_the_node_that_does_not_parse_is_refused(rig: Rig) -> None:
    reason = (2, Atom("erl_parse"), ["syntax error before: ", "c"])
    rig.expect(preflight(rig, *UNPACKED),
               config_on_node(rig.root, "0.0.2", (ERROR, reason)),
               answer("file:format_error", [reason], ["2: ", "syntax error before: c"]),
               answer("lists:flatten", [["2: ", "syntax error before: c"]],
                      "2: syntax error before: c"),
               which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == ("releases/0.0.2/sys.config does not parse: line 2: syntax error "
                            "before: c")
    assert rig.node.calls_to("file:format_error")[0].timeout == RPC_TIMEOUT
    rig.done()


@BOTH_UNPACKS
async def test_a_release_that_fails_its_check_is_taken_back(rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig),
               answer("release_handler:check_install_release", ["0.0.2"],
                      (ERROR, (Atom("no_matching_relup"), "0.0.2", "0.0.1"))),
               *taken_back(rig), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == ('check_install_release(0.0.2) refused: '
                            '{no_matching_relup,"0.0.2","0.0.1"}')
    assert rig.log.ended()[-2:] == [("check", "failed"), ("undo_unpack", "succeeded")]
    # Only what this release brought goes: the libraries 0.0.1 uses stay.
    assert rig.log.detail("undo_unpack") == ("set_removed(0.0.2); deleted lib/counter-0.0.2, "
                                             "releases/0.0.2")
    assert [p.exists() for p in made] == [False, False, True, True]
    rig.done()


@BOTH_UNPACKS
async def test_a_file_the_unpack_added_to_a_lib_dir_in_use_is_recorded_first_and_taken_back(
        rig: Rig) -> None:
    made = unpacked_files(rig)
    # The root's stdlib-4.2 lacks a file the tarball's copy has: keep_old_files adds it there.
    added = rig.root / "lib/stdlib-4.2/ebin/stdlib.app"
    added.unlink()
    ledger = MemoryLedger()
    seen: list[tuple[Path, ...]] = []
    if rig.by_agent:
        rig.node.effects["release_handler:set_unpacked"] = lambda: seen.append(ledger.added[-1])
    else:
        extract = rig.node.effects["release_handler:unpack_release"]

        def extract_too() -> None:
            seen.append(ledger.added[-1])
            extract()
            added.write_bytes(b"{application, stdlib, []}.\n")
        rig.node.effects["release_handler:unpack_release"] = extract_too
    engine = rig.engine_with(ledger)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig),
               answer("release_handler:check_install_release", ["0.0.2"],
                      (ERROR, (Atom("no_matching_relup"), "0.0.2", "0.0.1"))),
               *taken_back(rig), which_releases(*UP))
    result = await engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert seen == [(added,)]  # in the ledger before the node registered (or unpacked) it
    assert rig.log.detail("unpack").count(
        "; added inside dirs the root had: lib/stdlib-4.2/ebin/stdlib.app") == 1
    assert rig.log.detail("undo_unpack") == (
        "set_removed(0.0.2); deleted lib/stdlib-4.2/ebin/stdlib.app, lib/counter-0.0.2, "
        "releases/0.0.2")
    assert not added.exists()
    assert [p.exists() for p in made] == [False, False, True, True]
    assert (rig.root / LIB_FILES_KERNEL).read_bytes() == LIB_FILES[LIB_FILES_KERNEL]
    rig.done()


@BOTH_UNPACKS
async def test_a_failed_unpack_leaves_nothing_it_staged(rig: Rig) -> None:
    libs = running_libs(rig)
    rig.expect(preflight(rig, *UP), config_parses(),
               unpack_reply(rig, (ERROR, (Atom("existing_release"), "0.0.2"))),
               code_path(rig.root), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == f'{unpack_call(rig)} failed: {{existing_release,"0.0.2"}}'
    assert rig.log.ended() == [("preflight", "succeeded"), ("stage", "succeeded"),
                               ("unpack", "failed"), ("undo_unpack", "succeeded")]
    # The agent's extraction placed the release; unpack_release had only the tarball staged.
    assert rig.log.detail("undo_unpack") == (
        "deleted lib/counter-0.0.2, releases/0.0.2" if rig.by_agent
        else "deleted releases/counter-0.0.2.tar.gz")
    assert list((rig.root / "releases").iterdir()) == []
    assert sorted((rig.root / "lib").iterdir()) == libs
    rig.done()


def half_unpacked(rig: Rig) -> tuple[list[Path], list[Path]]:
    """A node whose unpack of 0.0.2 stopped half way: (what it left, what 0.0.1 owns)."""
    left = [rig.root / "releases" / "0.0.2", rig.root / "lib" / "counter-0.0.2"]
    owned = [rig.root / "releases" / "0.0.1", rig.root / "lib" / "counter-0.0.1",
             rig.root / "lib" / "kernel-8.5.3", rig.root / "lib" / "stdlib-4.2"]
    for path in left + owned:
        path.mkdir(parents=True)
        (path / "some.beam").write_bytes(b"half")
    return left, owned


@UNPACK_IN_NODE  # what unpack_release extracted before it failed (the agent's: the test above)
async def test_a_failed_unpack_removes_what_it_extracted_but_nothing_that_was_there(
        rig: Rig) -> None:
    owned = [rig.root / "lib" / "kernel-8.5.3", rig.root / "lib" / "stdlib-4.2"]
    for path in owned:
        path.mkdir()
    extracted = [rig.root / "releases" / "0.0.2", rig.root / "lib" / "counter-0.0.2"]

    def extract() -> None:
        for path in extracted + owned:
            path.mkdir(exist_ok=True)
            (path / "new.beam").write_bytes(b"x")
    rig.node.effects["release_handler:unpack_release"] = extract
    rig.expect(preflight(rig, *UP), config_parses(),
               answer("release_handler:unpack_release", ["counter-0.0.2"],
                      (ERROR, (Atom("EXIT"), Atom("enospc")))),
               code_path(rig.root), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  "unpack_release('counter-0.0.2') failed: {'EXIT',enospc}")
    assert rig.log.detail("undo_unpack") == ("deleted lib/counter-0.0.2, releases/0.0.2, "
                                             "releases/counter-0.0.2.tar.gz")
    assert [p.exists() for p in extracted + owned] == [False, False, True, True]
    rig.done()


@BOTH_UNPACKS
async def test_an_unpack_that_times_out_then_finished_goes_on(rig: Rig) -> None:
    unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(),
               unpack_fails(rig, NodeTimeout(NODE, "release_handler:unpack/1", 120)),
               which_releases(*UNPACKED), check_ok(), install_ok(),
               verify_ok("0.0.2", *CURRENT), permanent(), which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    rig.done()


@BOTH_UNPACKS
async def test_an_unpack_that_times_out_and_did_not_unpack_leaves_nothing(rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(),
               unpack_fails(rig, NodeTimeout(NODE, "release_handler:unpack/1", 120)),
               which_releases(*UP), code_path(rig.root), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    call = unpack_call(rig)
    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  f"{call} failed: {call} did not answer within 120 s and did not register it")
    assert rig.log.detail("undo_unpack") == "deleted lib/counter-0.0.2, releases/0.0.2"
    assert [p.exists() for p in made] == [False, False, True, True]
    rig.done()


@BOTH_UNPACKS
async def test_the_next_unpack_removes_what_an_interrupted_one_left_first(rig: Rig) -> None:
    # The node was killed mid-unpack: releases/0.0.2 and lib/counter-0.0.2 are on disk, the
    # node does not list 0.0.2, and the ledger says an operation was placing them.
    # keep_old_files would keep a truncated file: they go first, and only they.
    left, owned = half_unpacked(rig)
    ledger = MemoryLedger()
    ledger.unfinished_placings.append(Placing(7, "0.0.2", tuple(
        str(p) for p in [*left, rig.root / "lib" / "kernel-8.5.3"])))
    engine = rig.engine_with(ledger)
    seen: list[bool] = []
    rig.node.effects["release_handler:unpack_release"] = (
        lambda: seen.extend(p.exists() for p in left))
    rig.expect(facts(rig, *UP), releases_file(rig.root), config_parses(), code_path(rig.root),
               unpack_ok(rig), which_releases(*UNPACKED))
    result = await engine.unpack("0.0.2", tarball(rig))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    if rig.by_agent:  # extracted afresh: nothing of the half-written dirs is kept
        assert not [p for p in left if (p / "some.beam").exists()]
        assert (rig.root / "lib/counter-0.0.2/ebin/counter.beam").is_file()
    else:
        assert seen == [False, False]  # gone before unpack_release ran
    assert all(p.exists() for p in owned)  # kernel was in the record, but 0.0.1 runs it
    assert rig.log.detail("stage").endswith(
        "; removed what an unfinished operation left: releases/0.0.2, lib/counter-0.0.2; "
        "kept, being in use: lib/kernel-8.5.3 is in use (on the running node's code path)")
    assert ledger.unfinished_placings == []
    rig.done()


@BOTH_UNPACKS
async def test_what_an_interrupted_one_added_inside_a_dir_in_use_goes_and_only_that(
        rig: Rig) -> None:
    # It had added a file to the running release's lib/kernel-8.5.3 (its tarball's copy has
    # one the root's lacks): that file goes, though the dir is in use; what the dir had stays,
    # and a record naming the dir itself as added deletes nothing of it.
    left, owned = half_unpacked(rig)
    kernel = rig.root / "lib" / "kernel-8.5.3"
    (kernel / "priv").mkdir()
    (kernel / "priv" / "added.so").write_bytes(b"added")
    ledger = MemoryLedger()
    ledger.unfinished_placings.append(Placing(
        7, "0.0.2", tuple(str(p) for p in left), (str(kernel / "priv"), str(kernel))))
    engine = rig.engine_with(ledger)
    rig.expect(facts(rig, *UP), releases_file(rig.root), config_parses(), code_path(rig.root),
               unpack_ok(rig), which_releases(*UNPACKED))
    result = await engine.unpack("0.0.2", tarball(rig))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert not (kernel / "priv").exists()
    assert (kernel / "some.beam").read_bytes() == b"half"
    assert all(p.exists() for p in owned)
    assert rig.log.detail("stage").endswith(
        "; removed what an unfinished operation left: lib/kernel-8.5.3/priv, releases/0.0.2, "
        "lib/counter-0.0.2; kept, being in use: lib/kernel-8.5.3 is in use (on the running "
        "node's code path)")
    assert ledger.unfinished_placings == []
    rig.done()


async def test_what_is_on_disk_without_a_record_is_never_guessed_a_leftover(rig: Rig) -> None:
    # The same files, but no operation of the agent placed them: nothing is deleted, and the
    # unpack does not go into a releases/0.0.2 the node does not list (keep_old_files would
    # keep whatever it holds).
    left, owned = half_unpacked(rig)
    rig.expect(facts(rig, *UP), releases_file(rig.root), config_parses(), which_releases(*UP))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  f"{rig.root}/releases/0.0.2 exists, but {NODE} does not list 0.0.2 and no "
                  "unfinished operation of the agent placed it; relctl deletes only what it "
                  "placed. Look at what it holds, move it away, then retry")
    assert all(p.exists() for p in left + owned)
    assert "release_handler:unpack_release" not in rig.node.mfas()
    rig.done()


@BOTH_UNPACKS
async def test_a_connection_lost_during_unpack_is_failed_and_left_for_the_next_one(
        rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(),
               unpack_fails(rig, NodeDown(NODE, "connection lost (closed)")),
               fail("release_handler:which_releases", [], NodeDown(NODE, "not connected")))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2",
                  "unless the node lists 0.0.2, the next upgrade or unpack takes back what "
                  "was placed for it")
    assert all(p.exists() for p in made)  # the node may have listed it: not deleted blindly
    rig.done()


@UNPACK_IN_NODE  # the staged tarball is unpack_release's
async def test_a_tarball_that_cannot_be_put_in_place_stops_at_stage(rig: Rig) -> None:
    (rig.root / "releases" / "counter-0.0.2.tar.gz" / "in-the-way").mkdir(parents=True)
    rig.expect(preflight(rig, *UP), config_parses(), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (f"cannot write {rig.root}/releases/counter-0.0.2.tar.gz: Is a "
                            "directory; nothing was changed. The agent needs write access to "
                            f"{rig.root}/releases, then retry")
    assert rig.log.ended()[-1] == ("stage", "failed")
    assert "release_handler:unpack_release" not in rig.node.mfas()
    assert sorted(p.name for p in (rig.root / "releases").iterdir()) == ["counter-0.0.2.tar.gz"]
    rig.done()


@UNPACK_IN_NODE  # the agent declines a read-only root and stages the tarball: this
async def test_a_read_only_release_root_is_failed_unchanged_and_says_what_to_do(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(os, "link", read_only)
    monkeypatch.setattr("shutil.copyfile", read_only)
    rig.expect(preflight(rig, *UP), config_parses(), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (f"cannot write {rig.root}/releases/counter-0.0.2.tar.gz: Read-only "
                            "file system; nothing was changed. The agent needs write access to "
                            f"{rig.root}/releases (its file system is mounted read-only: "
                            "remount it read-write), then retry")
    assert "internal error" not in rig.log.detail("stage")
    rig.done()


async def test_a_releases_dir_that_is_not_a_directory_stops_at_stage(rig: Rig) -> None:
    (rig.root / "releases").rmdir()
    (rig.root / "releases").write_text("not a directory")
    rig.expect(preflight(rig, *UP), config_parses(), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  f"cannot write {rig.root}/releases/counter-0.0.2.tar.gz: ")
    rig.done()


@BOTH_UNPACKS
async def test_a_failing_pre_install_hook_stops_before_install_and_takes_the_release_back(
        rig: Rig) -> None:
    unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               hook_call(PRE, (ERROR, Atom("busy"))), *taken_back(rig),
               which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), Options(hooks=(PRE, POST)))

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  'hook flush: counter_hooks:run(<<"flush">>) returned {error,busy}, not ok or '
                  '{ok, _}; the release was not installed')
    assert rig.log.ended()[-2:] == [("pre_install:flush", "failed"), ("undo_unpack", "succeeded")]
    assert "release_handler:install_release" not in rig.node.mfas()
    rig.done()


async def test_a_pre_install_hook_that_may_fail_lets_the_upgrade_go_on(rig: Rig) -> None:
    lenient = Hook("flush", PRE_INSTALL, "counter_hooks", "run", (b"flush",),
                   on_failure=CONTINUE)
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               fail("counter_hooks:run", [b"flush"], NodeTimeout(NODE, "counter_hooks:run/1", 30)),
               install_ok(options=SLOW), verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, Options(hooks=(lenient,)))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert ("pre_install:flush", "failed") in rig.log.ended()
    assert "did not return within its timeout" in rig.log.detail("pre_install:flush")
    rig.done()


@BOTH_UNPACKS
async def test_an_install_that_fails_without_a_restart_is_taken_back(rig: Rig) -> None:
    unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               install("0.0.2", (ERROR, (Atom("bad_relup_file"), "relup"))),
               *taken_back(rig), which_releases(*UP))
    rig.node.then_restart(False)
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  'install_release(0.0.2) failed: {bad_relup_file,"relup"}')
    # The one take-back runs once the operation's own steps are over (core.guarded).
    assert rig.log.ended()[-2:] == [("install", "failed"), ("undo_unpack", "succeeded")]
    assert rig.node.restart_waits == [(5.0, FAST.restart_timeout)]
    rig.done()


def install_times_out(version: str = "0.0.2", options: Options = FAST) -> Expect:
    return fail("release_handler:install_release", [version, install_opts(options)],
                NodeTimeout(NODE, "release_handler:install_release/2", options.install_timeout))


@BOTH_UNPACKS
async def test_an_install_that_outlasts_its_timeout_is_waited_for_and_finished(
        rig: Rig) -> None:
    # The relup runs longer than install_timeout: nothing is taken back (no set_removed under
    # the running install); which_releases waits for release_handler, which shows 0.0.2 current.
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(), install_times_out(),
               which_releases(*CURRENT), *verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert "release_handler:set_removed" not in rig.node.mfas()
    assert all(p.exists() for p in made)
    assert rig.log.detail("install") == (
        "0.0.1 -> 0.0.2; install_release(0.0.2) did not answer within 5 s, then the node "
        "finished it (0.0.2 current, 0.0.1 permanent)")
    # The wait is bounded by install_timeout + restart_timeout, not the RPC timeout.
    wait = rig.node.calls_to("release_handler:which_releases")[1]
    assert wait.timeout is not None
    assert 6.0 < wait.timeout <= FAST.install_timeout + FAST.restart_timeout
    rig.done()


@BOTH_UNPACKS
async def test_an_install_whose_answer_is_too_large_is_read_back_from_the_node(
        rig: Rig) -> None:
    # The answer was over the decode budget: the install is over but its result unknown, so
    # nothing is taken back; which_releases says where the node is.
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               fail("release_handler:install_release", ["0.0.2", install_opts(FAST)],
                    ReplyTooLarge(NODE, "the reply to release_handler:install_release/2 is "
                                        "too large")),
               which_releases(*CURRENT), *verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert "release_handler:set_removed" not in rig.node.mfas()
    assert all(p.exists() for p in made)
    assert "the answer of install_release(0.0.2) could not be read" in rig.log.detail("install")
    assert rig.node.restart_waits == []  # still connected: no waiting for a restart
    rig.done()


async def test_a_hook_whose_reply_is_too_large_fails_as_a_hook(rig: Rig) -> None:
    lenient = Hook("flush", PRE_INSTALL, "counter_hooks", "run", (b"flush",),
                   on_failure=CONTINUE)
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               fail("counter_hooks:run", [b"flush"],
                    ReplyTooLarge(NODE, "it decodes to more than 3000000 elements")),
               install_ok(options=SLOW), verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, Options(hooks=(lenient,)))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert "returned a reply too large to read" in rig.log.detail("pre_install:flush")
    rig.done()


@BOTH_UNPACKS
async def test_an_install_still_running_after_the_wait_is_reported_so_and_not_undone(
        rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(), install_times_out(),
               fail("release_handler:which_releases", [],
                    NodeTimeout(NODE, "release_handler:which_releases/0", 7.0)),
               fail("release_handler:which_releases", [],
                    NodeTimeout(NODE, "release_handler:which_releases/0", 1.0)))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2")
    assert result.error == (
        "install_release(0.0.2) did not answer within 5 s, and the node still had not answered "
        "7 s later: the install may be still running on the node. Nothing was undone; "
        "`relctl versions` shows where the node ends")
    assert "connection lost" not in result.error and "unchanged" not in result.error
    assert "release_handler:set_removed" not in rig.node.mfas()
    assert all(p.exists() for p in made)
    rig.done()


async def test_an_install_that_timed_out_and_did_not_take_effect_is_unchanged_as_observed(
        rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_times_out(), which_releases(*UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == ("install_release(0.0.2) did not answer within 5 s; when it ended "
                            "the node still ran 0.0.1 and 0.0.2 was not installed (the node "
                            "has: 0.0.2 unpacked, 0.0.1 permanent)")
    assert "release_handler:set_removed" not in rig.node.mfas()
    rig.done()


async def test_a_timeout_then_a_node_restart_is_a_rollback_seen_on_the_node(rig: Rig) -> None:
    # code_change outlasted its timeout: release_handler restarts the node on 0.0.1.
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_times_out(),
               fail("release_handler:which_releases", [], NodeDown(NODE, "connection lost")),
               fail("release_handler:which_releases", [], NodeDown(NODE, "not connected")),
               which_releases(*UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, ROLLED_BACK, "0.0.1", "0.0.2", "rolled back by node restart")
    assert result.error.startswith("install_release(0.0.2) did not answer within 5 s; the node "
                                   "restarted on its permanent release 0.0.1")
    rig.done()


@BOTH_UNPACKS
@pytest.mark.parametrize("status", ["current", "permanent"])
async def test_a_release_the_node_reports_current_is_never_taken_back(
        rig: Rig, status: str) -> None:
    # A pre-install hook failed, yet the node lists 0.0.2 current (e.g. an install by hand in
    # between): no set_removed, no file deleted.
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               hook_call(PRE, (ERROR, Atom("busy"))),
               which_releases(("0.0.2", status), ("0.0.1", "old")),
               which_releases(("0.0.2", status), ("0.0.1", "old")))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), Options(hooks=(PRE,)))

    assert_result(result, FAILED, "0.0.1", "0.0.2",
                  f"0.0.2 is {status} on the node: it was not taken back and none of its "
                  "files were deleted")
    assert "release_handler:set_removed" not in rig.node.mfas()
    assert all(p.exists() for p in made)
    rig.done()


async def test_install_release_bounds_code_change_and_suspend_by_install_timeout(
        rig: Rig) -> None:
    options = Options(install_timeout=30.0)
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(options=options), verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    result = await rig.engine.upgrade("0.0.2", None, options)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    call = rig.node.calls_to("release_handler:install_release")[0]
    assert call.args == ["0.0.2", [(Atom("code_change_timeout"), 30000),
                                   (Atom("suspend_timeout"), 30000),
                                   (Atom("update_paths"), True)]]
    assert call.timeout == 30.0
    rig.done()


# --- upgrade: dry_run --------------------------------------------------------------------

@BOTH_UNPACKS
async def test_a_dry_run_unpacks_checks_and_takes_everything_back(rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               *taken_back(rig), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), Options(dry_run=True))

    assert_result(result, DRY_RUN, "0.0.1", "0.0.2")
    assert result.detail == "checks passed; nothing was changed"
    assert versions(result) == [("0.0.1", "permanent")]
    # The one undo runs once the operation's own steps are over (core.guarded).
    assert rig.log.ended() == [
        ("preflight", "succeeded"), ("stage", "succeeded"), ("unpack", "succeeded"),
        ("check", "succeeded"), ("install", "skipped"), ("verify", "skipped"),
        ("make_permanent", "skipped"), ("undo_unpack", "succeeded")]
    assert [p.exists() for p in made] == [False, False, True, True]
    rig.done()


async def test_a_dry_run_of_an_unpacked_release_leaves_it_unpacked(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok())
    result = await rig.engine.upgrade("0.0.2", None, Options(dry_run=True, hooks=(PRE,)))

    assert_result(result, DRY_RUN, "0.0.1", "0.0.2")
    assert rig.log.ended()[-4:] == [("pre_install:flush", "skipped"), ("install", "skipped"),
                                    ("verify", "skipped"), ("make_permanent", "skipped")]
    assert "release_handler:set_removed" not in rig.node.mfas()
    rig.done()


# --- upgrade: rolled_back ----------------------------------------------------------------

@BOTH_UNPACKS
async def test_a_crashing_relup_is_rolled_back_by_node_restart(rig: Rig) -> None:
    unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               install("0.0.2", (ERROR, (Atom("EXIT"), Atom("migration_bug")))),
               which_releases(("0.0.2", "unpacked"), ("0.0.1", "permanent")))
    rig.node.then_restart(True)
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, ROLLED_BACK, "0.0.1", "0.0.2")
    assert result.error == ("install of 0.0.2 failed ({'EXIT',migration_bug}); the node "
                            "restarted on its permanent release (rolled back by node restart)")
    assert rig.node.restart_waits == [(5.0, FAST.restart_timeout)]
    assert "release_handler:set_removed" not in rig.node.mfas()  # the retry needs it unpacked
    assert rig.log.ended()[-1] == ("install", "failed")
    rig.done()


async def test_a_connection_lost_during_install_then_a_restart_is_a_rollback(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               fail("release_handler:install_release", ["0.0.2", install_opts()],
                    NodeDown(NODE, "connection lost (closed)")),
               which_releases(*UNPACKED), which_releases(*UNPACKED))
    rig.node.then_restart(True)
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, ROLLED_BACK, "0.0.1", "0.0.2",
                  "the connection was lost during install_release(0.0.2) (node "
                  f"{NODE} is down: connection lost (closed)); the node restarted on its "
                  "permanent release 0.0.1 (rolled back by node restart; the node has: 0.0.2 "
                  "unpacked, 0.0.1 permanent)")
    rig.done()


@BOTH_UNPACKS
async def test_a_connection_lost_during_install_and_no_node_back_is_unknown_not_undone(
        rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), check_ok(),
               fail("release_handler:install_release", ["0.0.2", install_opts()],
                    NodeDown(NODE, "connection lost (closed)")),
               fail("release_handler:which_releases", [], NodeDown(NODE, "not connected")))
    rig.node.then_restart(False)
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2",
                  "and the node was not back within 2 s: where the install ended is unknown. "
                  "Nothing was undone")
    assert "release_handler:set_removed" not in rig.node.mfas()
    assert all(p.exists() for p in made)
    rig.done()


async def test_a_connection_lost_during_an_install_that_finished_goes_on(rig: Rig) -> None:
    # The link dropped and came back, but the node had finished the install: not a rollback.
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               fail("release_handler:install_release", ["0.0.2", install_opts()],
                    NodeDown(NODE, "connection lost (closed)")),
               which_releases(*CURRENT), *verify_ok("0.0.2", *CURRENT), permanent(),
               which_releases(*DONE))
    rig.node.then_restart(True)
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert "then the node finished it" in rig.log.detail("install")
    rig.done()


def rolled_back_to_0_0_1(*, hooks: Iterable[Expect] = (), options: Options = FAST,
                         parsed: bool = False) -> list[Expect]:
    """The rollback after a failed verify: install 0.0.1 again (the relup's down script), the
    post-install hooks, verify 0.0.1, and the releases as they end (``parsed``: the failed
    verify got as far as the process checks, whose forms the node parsed then)."""
    return [answer("release_handler:install_release",
                   ["0.0.1", install_opts(options, update_paths=False)], (OK, "0.0.2", [])),
            *hooks, *verify_ok("0.0.1", ("0.0.2", "unpacked"), ("0.0.1", "permanent"),
                               parsed=parsed),
            which_releases(("0.0.2", "unpacked"), ("0.0.1", "permanent"))]


@pytest.mark.parametrize(("after_install", "options", "error"), [
    pytest.param([which_releases(*UNPACKED)], FAST,
                 "after install, 0.0.2 is unpacked, not running", id="not-running"),
    pytest.param([which_releases(("0.0.1", "permanent"))], FAST,
                 "after install, 0.0.2 is not listed, not running", id="gone"),
    pytest.param([which_releases(*CURRENT),
                  answer("application:which_applications", [], applications("0.0.1"))], FAST,
                 "applications not switched: counter runs 0.0.1, release has 0.0.2",
                 id="not-switched"),
    pytest.param([which_releases(*CURRENT),
                  answer("application:which_applications", [], applications("0.0.2")),
                  *code_check(code_report(
                      "0.0.2", ("counter", "differs", "/srv/counter/lib/counter-0.0.1/ebin/"
                                                      "counter.beam"),
                      ("counter_extra", "not_loaded", "embedded"))),
                  answer("file:consult", ["/srv/counter/lib/counter-0.0.2/ebin/counter.appup"],
                         (OK, [("0.0.2", [("0.0.1", [(Atom("load_module"), Atom("counter_app"))])],
                                [])]))], FAST,
                 "0.0.2 does not run all of its code: counter changed but the appup has no "
                 "instruction for it (the node still runs /srv/counter/lib/counter-0.0.1/ebin/"
                 "counter.beam); counter_extra is not loaded (embedded mode): the appup lacks "
                 "{add_module, counter_extra}. Fix the appups (`relctl make-relup` checks them "
                 "against the beams) and build the release again", id="code-not-switched"),
    pytest.param([*verify_ok("0.0.2", *CURRENT),
                  answer("counter:health", [], (ERROR, Atom("unhealthy")))],
                 Options(probes=(Probe("counter", "health"),)),
                 "health probe counter:health() returned {error,unhealthy}", id="probe"),
    pytest.param([*verify_ok("0.0.2", *CURRENT),
                  fail("counter:health", [], BadRpc((Atom("EXIT"), Atom("undef"))))],
                 Options(probes=(Probe("counter", "health"),)),
                 "health probe counter:health() returned {'EXIT',undef}", id="probe-crash"),
])
async def test_a_release_that_fails_verify_is_rolled_back(
        rig: Rig, after_install: list[Expect], options: Options, error: str) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(options=options), after_install,
               # Failed by a probe, the verify had run the process checks already.
               rolled_back_to_0_0_1(options=options, parsed=bool(options.probes)))
    result = await rig.engine.upgrade("0.0.2", None, options)

    assert_result(result, ROLLED_BACK, "0.0.1", "0.0.2")
    assert result.error == error
    assert result.detail == "back on 0.0.1"
    assert versions(result) == [("0.0.2", "unpacked"), ("0.0.1", "permanent")]
    assert rig.log.ended()[-3:] == [("verify", "failed"), ("rollback", "succeeded"),
                                    ("verify", "succeeded")]
    assert rig.log.detail("rollback") == "installed 0.0.1 again (relup down script)"
    # The way back: install_release(FROM) with the install timeout (code_change bounded by it
    # too), no update_paths.
    back = rig.node.calls_to("release_handler:install_release")[-1]
    assert (back.args, back.timeout) == (["0.0.1", install_opts(options, update_paths=False)],
                                         options.install_timeout)
    assert "release_handler:make_permanent" not in rig.node.mfas()
    rig.done()


async def test_a_failing_post_install_hook_rolls_back_and_runs_again_after(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(options=SLOW), hook_call(POST, (ERROR, Atom("cold"))),
               rolled_back_to_0_0_1(hooks=[hook_call(POST, (ERROR, Atom("still_cold")))],
                                    options=SLOW))
    result = await rig.engine.upgrade("0.0.2", None, Options(hooks=(POST,)))

    assert_result(result, ROLLED_BACK, "0.0.1", "0.0.2")
    assert result.error == (
        'hook warm: counter_hooks:run(<<"warm">>) returned {error,cold}, not ok or {ok, _}; '
        'after the rollback, hook warm: counter_hooks:run(<<"warm">>) returned '
        '{error,still_cold}, not ok or {ok, _}')
    assert rig.log.ended()[-5:] == [
        ("install", "succeeded"), ("post_install:warm", "failed"), ("rollback", "succeeded"),
        ("post_install:warm", "failed"), ("verify", "succeeded")]
    rig.done()


# --- upgrade: failed ---------------------------------------------------------------------

async def test_a_rollback_whose_install_fails_is_failed(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(), which_releases(*UNPACKED),
               answer("release_handler:install_release",
                      ["0.0.1", install_opts(update_paths=False)],
                      (ERROR, (Atom("no_such_release"), "0.0.1"))),
               which_releases(*CURRENT))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2")
    assert result.error == ("after install, 0.0.2 is unpacked, not running; rollback to 0.0.1 "
                            'failed too: {error,{no_such_release,"0.0.1"}}')
    assert versions(result) == [("0.0.2", "current"), ("0.0.1", "permanent")]
    assert rig.log.ended()[-2:] == [("verify", "failed"), ("rollback", "failed")]
    rig.done()


async def test_make_permanent_that_fails_after_a_good_install_is_failed(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install_ok(), verify_ok("0.0.2", *CURRENT),
               permanent("0.0.2", (ERROR, (Atom("bad_status"), Atom("current")))),
               which_releases(*CURRENT))
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2")
    assert result.error == ("make_permanent(0.0.2) failed: {bad_status,current}; 0.0.2 runs "
                            "but the node would boot the old release")
    assert rig.log.ended()[-2:] == [("verify", "succeeded"), ("make_permanent", "failed")]
    assert len(rig.node.calls_to("release_handler:install_release")) == 1  # no rollback
    rig.done()


@BOTH_UNPACKS
async def test_a_set_removed_that_fails_while_taking_an_unpack_back_is_failed(rig: Rig) -> None:
    made = unpacked_files(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig),
               answer("release_handler:check_install_release", ["0.0.2"],
                      (ERROR, (Atom("no_matching_relup"), "0.0.2", "0.0.1"))),
               which_releases(*UNPACKED),
               set_removed("0.0.2", (ERROR, (Atom("no_such_release"), "0.0.2"))),
               which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2")
    assert result.error == ('check_install_release(0.0.2) refused: {no_matching_relup,"0.0.2",'
                            '"0.0.1"}; then taking back the unpack failed: set_removed(0.0.2) '
                            'failed: {error,{no_such_release,"0.0.2"}}; 0.0.2 stays unpacked')
    assert rig.log.ended()[-2:] == [("check", "failed"), ("undo_unpack", "failed")]
    assert all(p.exists() for p in made)  # nothing deleted behind release_handler's back
    rig.done()


async def test_a_new_emulator_that_does_not_come_back_is_failed(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), check_ok(),
               install("0.0.2", (Atom("continue_after_restart"), "0.0.1", [])),
               fail("release_handler:which_releases", [], NodeDown(NODE, "not connected")))
    rig.node.then_restart(False)
    result = await rig.engine.upgrade("0.0.2", None, FAST)

    # With the node away, the result has no releases rather than an exception.
    assert_result(result, FAILED, "0.0.1", "0.0.2",
                  "the node restarted into a new emulator for 0.0.2 and did not come back "
                  "within 2 s")
    assert result.releases == ()
    assert rig.log.ended()[-1] == ("install", "failed")
    rig.done()


# --- upgrade: what the engine does not turn into a Result --------------------------------

async def test_a_node_down_in_preflight_is_raised_to_the_caller(rig: Rig) -> None:
    rig.expect(fail("release_handler:which_releases", [], NodeDown(NODE, "not connected")))
    with pytest.raises(NodeDown):
        await rig.engine.upgrade("0.0.2", None, FAST)
    assert [(r.name, r.state, r.detail) for r in rig.log.records[1:]] == [
        ("preflight", "failed", f"node {NODE} is down: not connected")]
    rig.done()


async def test_a_bridge_error_that_escapes_the_caller_is_an_internal_error(rig: Rig) -> None:
    rig.expect(which_releases(*UP),
               fail("code:root_dir", [], ConnectionLost("socket closed")))
    with pytest.raises(ConnectionLost):
        await rig.engine.upgrade("0.0.2", None, FAST)
    assert rig.log.records[-1].state == "failed"
    assert rig.log.records[-1].detail == "internal error: ConnectionLost('socket closed')"
    rig.done()


# --- the RELEASES file -------------------------------------------------------------------

async def test_a_missing_RELEASES_file_is_created_from_the_running_rel(rig: Rig) -> None:
    releases_dir = rig.root / "releases"
    rel = str(releases_dir / "0.0.1" / "counter.rel")
    child = [Atom("sasl_sup"), Atom("release_handler")]
    rig.expect(facts(rig, *UP), releases_file(rig.root, exists=False),
               answer("filelib:is_regular", [str(releases_dir / "0.0.1" / "counter-0.0.1.rel")],
                      False),
               answer("filelib:is_regular", [rel], True),
               answer("release_handler:create_RELEASES",
                      [str(rig.root), str(releases_dir), rel, []], OK),
               answer("supervisor:terminate_child", child, OK),
               answer("supervisor:restart_child", child,
                      (OK, Pid(Atom(NODE), 90, 0, 1))),
               config_parses(), unpack_ok(rig), which_releases(*UNPACKED))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert rig.log.detail("preflight") == (f"created {releases_dir}/RELEASES from {rel}; "
                                           "releases/0.0.2/sys.config parses")
    rig.done()


@pytest.mark.parametrize("case", ["no-rel", "create-fails", "nothing-runs"])
async def test_a_RELEASES_file_that_cannot_be_made_stops_the_operation(
        rig: Rig, case: str) -> None:
    releases_dir = rig.root / "releases"
    candidates = [str(releases_dir / "0.0.1" / "counter-0.0.1.rel"),
                  str(releases_dir / "0.0.1" / "counter.rel"),
                  str(releases_dir / "counter-0.0.1.rel")]
    entries = () if case == "nothing-runs" else UP
    rig.expect(facts(rig, *entries), releases_file(rig.root, exists=False))
    if case == "no-rel":
        rig.expect([answer("filelib:is_regular", [c], False) for c in candidates])
        error = (f"{releases_dir}/RELEASES is missing and no .rel file of the running release "
                 f"was found ({' or '.join(candidates)})")
    elif case == "create-fails":
        rig.expect(answer("filelib:is_regular", [candidates[0]], True),
                   answer("release_handler:create_RELEASES",
                          [str(rig.root), str(releases_dir), candidates[0], []],
                          (ERROR, Atom("eacces"))))
        error = f"creating {releases_dir}/RELEASES failed: {{error,eacces}}"
    else:
        error = f"{releases_dir}/RELEASES is missing and the node runs no known release"
    rig.expect(which_releases(*entries))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, FAILED_UNCHANGED, "" if case == "nothing-runs" else "0.0.1", "0.0.2")
    assert result.error == error
    assert rig.log.ended() == [("preflight", "failed")]
    assert "supervisor:terminate_child" not in rig.node.mfas()
    rig.done()


# --- downgrade -----------------------------------------------------------------------------

DOWN = (("0.0.2", "permanent"), ("0.0.1", "old"))
DOWNED = (("0.0.2", "old"), ("0.0.1", "permanent"))


async def test_downgrade_installs_the_old_release_and_makes_it_permanent(rig: Rig) -> None:
    relup_on_node(rig)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), install_ok("0.0.1", over="0.0.2"),
               verify_ok("0.0.1", ("0.0.2", "permanent"), ("0.0.1", "current")),
               permanent("0.0.1"), which_releases(*DOWNED))
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, SUCCEEDED, "0.0.2", "0.0.1")
    assert versions(result) == [("0.0.2", "old"), ("0.0.1", "permanent")]
    assert rig.log.ended() == [("preflight", "succeeded"), ("check", "succeeded"),
                               ("install", "succeeded"), ("verify", "succeeded"),
                               ("make_permanent", "succeeded")]
    assert rig.log.detail("preflight") == ("releases/0.0.1/sys.config parses; relup of 0.0.2 "
                                           "goes down to 0.0.1; running 0.0.2")
    assert rig.log.detail("check") == "relup of 0.0.2 goes down to 0.0.1"
    rig.done()


@pytest.mark.parametrize(("entries", "version", "error"), [
    (DOWN, "0.0.0", f"release 0.0.0 is not on {NODE} (it has: 0.0.2 (permanent), 0.0.1 (old))"),
    (DOWN, "0.0.2", f"0.0.2 already runs on {NODE}"),
    ((("0.0.3", "unpacked"), *DOWN), "0.0.3",
     f"0.0.3 was never installed on {NODE}; use `relctl upgrade 0.0.3` to install it"),
])
async def test_downgrade_refuses_what_it_cannot_go_down_to(
        rig: Rig, entries: tuple[tuple[str, str], ...], version: str, error: str) -> None:
    rig.expect(facts(rig, *entries), which_releases(*entries))
    result = await rig.engine.downgrade(version, FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.2", version)
    assert result.error == error
    assert rig.log.ended() == [("preflight", "failed")]
    rig.done()


async def test_a_downgrade_to_an_erts_the_root_lacks_is_refused_at_preflight(rig: Rig) -> None:
    relup_on_node(rig)
    (rig.root / "releases" / "RELEASES").write_text(
        '[{release,"counter","0.0.2","13.1.5",[],permanent},'
        ' {release,"counter","0.0.1","12.3.2",[],permanent}].\n')
    rig.expect(facts(rig, *DOWN), which_releases(*DOWN))
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.2", "0.0.1",
                  f"0.0.1 runs on ERTS 12.3.2, which is not in {rig.root} (erts-12.3.2 is "
                  "missing); the node runs ERTS 13.1.5, and the relup's restart_emulator "
                  "would boot nothing")
    assert rig.log.ended() == [("preflight", "failed")]
    rig.done()


async def test_downgrade_without_a_relup_down_is_refused_at_check(rig: Rig) -> None:
    relup_on_node(rig)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               answer("release_handler:check_install_release", ["0.0.1"],
                      (ERROR, (Atom("no_matching_relup"), "0.0.1", "0.0.2"))),
               which_releases(*DOWN))
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.2", "0.0.1")
    assert result.error == ("the running release cannot go down to 0.0.1: "
                            '{error,{no_matching_relup,"0.0.1","0.0.2"}}')
    assert rig.log.ended()[-1] == ("check", "failed")
    rig.done()


async def test_a_downgrade_dry_run_stops_after_check(rig: Rig) -> None:
    relup_on_node(rig)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), which_releases(*DOWN))
    result = await rig.engine.downgrade("0.0.1", Options(dry_run=True))

    assert_result(result, DRY_RUN, "0.0.2", "0.0.1")
    assert result.detail == ""
    assert rig.log.ended()[-3:] == [("install", "skipped"), ("verify", "skipped"),
                                    ("make_permanent", "skipped")]
    assert "release_handler:install_release" not in rig.node.mfas()
    rig.done()


async def test_a_downgrade_that_fails_verify_is_not_rolled_back(rig: Rig) -> None:
    relup_on_node(rig)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), install_ok("0.0.1", over="0.0.2"),
               which_releases(("0.0.2", "permanent"), ("0.0.1", "current")),
               answer("application:which_applications", [], applications("0.0.2")),
               which_releases(("0.0.2", "permanent"), ("0.0.1", "current")))
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, FAILED, "0.0.2", "0.0.1",
                  "applications not switched: counter runs 0.0.2, release has 0.0.1")
    assert "rollback" not in [name for name, _ in rig.log.ended()]
    assert len(rig.node.calls_to("release_handler:install_release")) == 1
    rig.done()


async def test_a_downgrade_whose_make_permanent_fails_is_failed(rig: Rig) -> None:
    relup_on_node(rig)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), install_ok("0.0.1", over="0.0.2"),
               verify_ok("0.0.1", ("0.0.2", "permanent"), ("0.0.1", "current")),
               permanent("0.0.1", (ERROR, Atom("enospc"))),
               which_releases(("0.0.2", "permanent"), ("0.0.1", "current")))
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, FAILED, "0.0.2", "0.0.1",
                  "make_permanent(0.0.1) failed: enospc; 0.0.1 runs but the node would boot "
                  "the old release")
    rig.done()


# --- single steps: unpack, check ---------------------------------------------------------

@BOTH_UNPACKS
async def test_unpack_stages_and_unpacks_only(rig: Rig) -> None:
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), which_releases(*UNPACKED))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert versions(result) == [("0.0.2", "unpacked"), ("0.0.1", "permanent")]
    assert rig.log.ended() == [("preflight", "succeeded"), ("stage", "succeeded"),
                               ("unpack", "succeeded")]
    assert rig.log.detail("preflight") == "releases/0.0.2/sys.config parses"
    rig.done()


@UNPACK_IN_NODE  # staged for unpack_release (the agent itself refuses another file system)
async def test_a_tarball_on_another_file_system_is_copied(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", cross_device)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), which_releases(*UNPACKED))
    tar = tarball(rig)
    result = await rig.engine.unpack("0.0.2", tar)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    staged = rig.root / "releases" / "counter-0.0.2.tar.gz"
    assert staged.read_bytes() == tar.path.read_bytes()
    assert staged.stat().st_ino != tar.path.stat().st_ino
    rig.done()


async def test_the_agent_keeps_the_libraries_the_root_has_and_registers_them_in_lib(
        rig: Rig) -> None:
    running_libs(rig)
    (rig.root / LIB_FILES_KERNEL).write_bytes(b"the node's own kernel.app")
    rig.expect(preflight(rig, *UP), config_parses(), unpack_ok(rig), which_releases(*UNPACKED))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    # As unpack_release with keep_old_files: what the root has is not written over.
    assert (rig.root / LIB_FILES_KERNEL).read_bytes() == b"the node's own kernel.app"
    assert rig.log.detail("unpack") == (
        "the agent unpacked it (the node decompressed nothing): placed lib/counter-0.0.2, "
        "releases/0.0.2; kept as they were: lib/kernel-8.5.3, lib/stdlib-4.2; "
        f"{unpack_call(rig)} -> 0.0.2")
    assert "2 kept as the root has them" in rig.log.detail("stage")
    rig.done()


async def test_a_tarball_changed_after_its_check_is_not_extracted(rig: Rig) -> None:
    checked = tarball(rig)
    checked.path.write_bytes(tarball(rig, data=b"other bytes").path.read_bytes())
    rig.expect(preflight(rig, *UP), config_parses(), which_releases(*UP))
    result = await rig.engine.unpack("0.0.2", checked)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2", "changed since it was checked")
    assert result.error.endswith("; nothing was changed")
    assert rig.log.ended() == [("preflight", "succeeded"), ("stage", "failed")]
    assert files_under(rig.root) == ["bin", "lib", "releases"]
    rig.done()


async def test_a_file_where_the_tarball_has_a_directory_stops_before_registering(
        rig: Rig) -> None:
    running_libs(rig)
    (rig.root / "lib" / "stdlib-4.2" / "ebin").rename(rig.root / "stdlib-ebin")
    (rig.root / "lib" / "stdlib-4.2" / "ebin").write_text("a file, not a directory")
    rig.expect(preflight(rig, *UP), config_parses(), which_releases(*UP))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (f"{rig.root}/lib/stdlib-4.2/ebin is not a directory on the node, "
                            "and the tarball has files below it; nothing was changed: rebuild "
                            "the tarball without what it has below ebin")
    # Refused before anything was moved into place: nothing to take back.
    assert rig.log.ended()[-1] == ("unpack", "failed")
    assert "release_handler:set_unpacked" not in rig.node.mfas()
    assert not (rig.root / "releases" / "0.0.2").exists()
    assert not (rig.root / "lib" / "counter-0.0.2").exists()
    rig.done()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_a_latin1_sys_config_is_read_as_erlang_reads_it(rig: Rig) -> None:
    config = '[{counter, [{greeting, "h\u00e9"}]}].\n'.encode("latin-1")  # not UTF-8
    scanned = tokens("h\u00e9")
    rig.expect(preflight(rig, *UP),
               answer("erl_scan:string", ['[{counter, [{greeting, "h\u00e9"}]}].\n'],
                      (OK, scanned, 2)),
               answer("erl_parse:parse_term", [scanned],
                      (OK, [(Atom("counter"), [(Atom("greeting"), "h\u00e9")])])),
               unpack_ok(rig), which_releases(*UNPACKED))
    result = await rig.engine.unpack("0.0.2", tarball(rig, sys_config=config))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    rig.done()


async def test_unpack_of_a_release_already_there_is_refused(rig: Rig) -> None:
    sha_on_node(rig, tarball(rig))
    rig.expect(facts(rig, *UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (f"0.0.2 is already unpacked on {NODE}, from this tarball (same "
                            "sha256); nothing to unpack")
    rig.done()


@BOTH_UNPACKS
async def test_unpack_that_release_handler_refuses_is_failed_unchanged(rig: Rig) -> None:
    libs = running_libs(rig)
    rig.expect(preflight(rig, *UP), config_parses(), unpack_reply(rig, (ERROR, Atom("enoent"))),
               code_path(rig.root), which_releases(*UP))
    result = await rig.engine.unpack("0.0.2", tarball(rig))

    # What the stage placed (the tarball, or the extracted release) is taken back; nothing
    # had been registered.
    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2", f"{unpack_call(rig)} failed: enoent")
    assert "release_handler:set_removed" not in rig.node.mfas()
    assert list((rig.root / "releases").iterdir()) == []
    assert sorted((rig.root / "lib").iterdir()) == libs
    rig.done()


async def test_check_reports_what_the_release_can_be_installed_over(rig: Rig) -> None:
    rig.expect(facts(rig, *UNPACKED), check_only())
    result = await rig.engine.check("0.0.2")

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    # The releases read at the start: check changes nothing, so nothing is read again.
    assert versions(result) == [("0.0.2", "unpacked"), ("0.0.1", "permanent")]
    assert rig.log.ended() == [("check", "succeeded")]
    assert rig.log.detail("check") == "can be installed over 0.0.1"
    rig.done()


async def test_check_that_release_handler_refuses_is_failed_unchanged(rig: Rig) -> None:
    rig.expect(facts(rig, *UNPACKED),
               answer("release_handler:check_install_release", ["0.0.2"],
                      (ERROR, (Atom("no_matching_relup"), "0.0.2", "0.0.1"))),
               which_releases(*UNPACKED))
    result = await rig.engine.check("0.0.2")

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == ('check_install_release(0.0.2) refused: '
                            '{error,{no_matching_relup,"0.0.2","0.0.1"}}')
    assert rig.log.ended() == [("check", "failed")]
    rig.done()


# --- single steps: install -----------------------------------------------------------------

async def test_install_installs_and_verifies_but_does_not_make_permanent(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"),
               hook_call(PRE, OK), install_ok(options=SLOW), hook_call(POST, OK),
               verify_ok("0.0.2", *CURRENT), which_releases(*CURRENT))
    result = await rig.engine.install("0.0.2", Options(hooks=(PRE, POST)))

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert rig.log.ended() == [("preflight", "succeeded"), ("pre_install:flush", "succeeded"),
                               ("install", "succeeded"), ("post_install:warm", "succeeded"),
                               ("verify", "succeeded")]
    assert "release_handler:make_permanent" not in rig.node.mfas()
    rig.done()


@pytest.mark.parametrize(("version", "error"), [
    ("0.0.3", f"release 0.0.3 is not on {NODE} (it has: 0.0.2 (unpacked), 0.0.1 (permanent)); "
              "unpack it first"),
    ("0.0.1", f"0.0.1 already runs on {NODE}"),
])
async def test_install_refuses_a_release_it_cannot_install(
        rig: Rig, version: str, error: str) -> None:
    rig.expect(facts(rig, *UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.install(version, FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", version)
    assert result.error == error
    rig.done()


async def test_install_that_release_handler_refuses_is_failed_unchanged(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"),
               install("0.0.2", (ERROR, (Atom("no_such_release"), "0.0.2"))),
               which_releases(*UNPACKED))
    rig.node.then_restart(False)
    result = await rig.engine.install("0.0.2", FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  'install_release(0.0.2) failed: {no_such_release,"0.0.2"}')
    assert "release_handler:set_removed" not in rig.node.mfas()
    rig.done()


async def test_install_that_fails_verify_is_failed_and_not_rolled_back(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"), install_ok(),
               which_releases(*UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.install("0.0.2", FAST)

    assert_result(result, FAILED, "0.0.1", "0.0.2",
                  "after install, 0.0.2 is unpacked, not running")
    assert rig.log.ended()[-1] == ("verify", "failed")
    rig.done()


async def test_install_with_a_failing_post_install_hook_is_failed(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"),
               install_ok(options=SLOW), hook_call(POST, (ERROR, Atom("cold"))),
               which_releases(*CURRENT))
    result = await rig.engine.install("0.0.2", Options(hooks=(POST,)))

    assert_result(result, FAILED, "0.0.1", "0.0.2", "hook warm: ")
    assert rig.log.ended()[-1] == ("post_install:warm", "failed")
    assert "application:which_applications" not in rig.node.mfas()  # no verify after it
    rig.done()


# --- single steps: make_permanent, remove --------------------------------------------------

async def test_make_permanent_of_the_running_release(rig: Rig) -> None:
    rig.expect(facts(rig, *CURRENT), permanent(), which_releases(*DONE))
    result = await rig.engine.make_permanent("0.0.2")

    assert_result(result, SUCCEEDED, "0.0.2", "0.0.2")
    assert versions(result) == [("0.0.2", "permanent"), ("0.0.1", "old")]
    assert rig.log.ended() == [("preflight", "succeeded"), ("make_permanent", "succeeded")]
    assert rig.log.detail("preflight") == "0.0.2 is current"
    assert rig.log.detail("make_permanent") == "0.0.2 is permanent"  # no bin/counter-0.0.2
    rig.done()


@pytest.mark.parametrize(("entries", "error"), [
    (UNPACKED, "0.0.2 is unpacked; only the running release can be made permanent"),
    (UP, "0.0.2 is not on the node; only the running release can be made permanent"),
])
async def test_make_permanent_refuses_a_release_that_does_not_run(
        rig: Rig, entries: tuple[tuple[str, str], ...], error: str) -> None:
    rig.expect(facts(rig, *entries), which_releases(*entries))
    result = await rig.engine.make_permanent("0.0.2")

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == error
    rig.done()


async def test_make_permanent_that_release_handler_refuses_is_failed(rig: Rig) -> None:
    rig.expect(facts(rig, *CURRENT),
               permanent("0.0.2", (ERROR, (Atom("no_such_release"), "0.0.2"))),
               which_releases(*CURRENT))
    result = await rig.engine.make_permanent("0.0.2")

    assert_result(result, FAILED, "0.0.2", "0.0.2",
                  'make_permanent(0.0.2) failed: {no_such_release,"0.0.2"}; 0.0.2 runs but '
                  "the node would boot the old release")
    assert rig.log.ended()[-1] == ("make_permanent", "failed")
    rig.done()


async def test_remove_removes_an_old_release(rig: Rig) -> None:
    rig.expect(preflight(rig, *DONE), which_releases(*DONE),
               answer("release_handler:remove_release", ["0.0.1"], OK),
               which_releases(("0.0.2", "permanent")))
    result = await rig.engine.remove("0.0.1")

    assert_result(result, SUCCEEDED, "0.0.2", "0.0.1")
    assert versions(result) == [("0.0.2", "permanent")]
    assert rig.log.ended() == [("preflight", "succeeded"), ("remove", "succeeded")]
    assert rig.log.detail("preflight") == "0.0.1 is old"
    assert rig.log.detail("remove") == "0.0.1 removed"
    rig.done()


@pytest.mark.parametrize(("entries", "version", "error"), [
    (DONE, "0.0.3", f"release 0.0.3 is not on {NODE} (it has: 0.0.2 (permanent), 0.0.1 (old))"),
    (DONE, "0.0.2", f"0.0.2 is permanent on {NODE}; the running or permanent release cannot "
                    "be removed"),
    (CURRENT, "0.0.1", f"0.0.1 is permanent on {NODE}; the running or permanent release "
                       "cannot be removed"),
    (CURRENT, "0.0.2", f"0.0.2 is current on {NODE}; the running or permanent release cannot "
                       "be removed"),
])
async def test_remove_refuses_the_running_or_permanent_release(
        rig: Rig, entries: tuple[tuple[str, str], ...], version: str, error: str) -> None:
    rig.expect(facts(rig, *entries), which_releases(*entries))
    result = await rig.engine.remove(version)

    assert result.outcome == FAILED_UNCHANGED
    assert result.error == error
    assert "release_handler:remove_release" not in rig.node.mfas()
    rig.done()


async def test_remove_that_release_handler_refuses_is_failed(rig: Rig) -> None:
    rig.expect(preflight(rig, *DONE), which_releases(*DONE),
               answer("release_handler:remove_release", ["0.0.1"],
                      (ERROR, (Atom("permanent"), "0.0.1"))),
               which_releases(*DONE))
    result = await rig.engine.remove("0.0.1")

    assert_result(result, FAILED, "0.0.2", "0.0.1",
                  'remove_release(0.0.1) failed: {error,{permanent,"0.0.1"}}')
    assert rig.log.ended()[-1] == ("remove", "failed")
    rig.done()


# --- what runs beside an operation ---------------------------------------------------------

async def test_the_engine_shares_its_node_steps_and_timeout_and_reads_releases(
        rig: Rig) -> None:
    # A config reload runs on the engine's node, steps and RPC timeout (agent/api/service.py).
    assert rig.engine.node is rig.node
    assert rig.engine.rpc_timeout == RPC_TIMEOUT
    rig.engine.steps.skip("reload", "shown through the same sink")
    assert rig.log.ended() == [("reload", "skipped")]
    rig.expect(which_releases(*CURRENT))
    assert [r.version for r in await rig.engine.releases() if r.running] == ["0.0.2"]
    rig.done()
