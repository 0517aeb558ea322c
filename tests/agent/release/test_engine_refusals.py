"""The release engine's early refusals (issue 14), against a scripted node: a tarball of a
version already on the node is compared by sha256 with the one it was unpacked from, and
replaced only with --replace; a relup without the entry the switch needs is refused at
preflight, before anything is staged; a downgrade needs the running release's down entry.

Every refusal is checked for what it leaves: the RPCs made (the script is strict), the steps
reported, and the files in the node's release root.
"""

from __future__ import annotations

from pathlib import Path

from agent.release.values import DRY_RUN, FAILED_UNCHANGED, SUCCEEDED, Options
from bridge import Atom
from tests.agent.release.scripted import (
    ERROR,
    NODE,
    OK,
    MemoryLedger,
    code_path,
    ScriptedNode,
    StepLog,
    answer,
    config_on_node,
    config_parses,
    which_releases,
)
from tests.agent.release.test_engine import (
    BOTH_UNPACKS,
    CURRENT,
    DOWN,
    FAST,
    UNPACKED,
    UP,
    Rig,
    assert_result,
    check_ok,
    check_only,
    facts,
    preflight,
    relup,
    relup_on_node,
    rig,
    set_removed,
    sha_on_node,
    tarball,
    unpack_ok,
)

__all__ = ["rig"]  # the fixture, imported so that pytest finds it here

OLD = ("0.0.2", "old")
SHA_FILE = "relctl.sha256"


class DictLedger(MemoryLedger):
    """The agent's journal as the engine sees it (agent.release.core.UnpackLedger), with the
    sha256 records given as version_with_underscores=sha."""

    def __init__(self, **recorded: str) -> None:
        super().__init__()
        self.sha.update({k.replace("_", "."): v for k, v in recorded.items()})

    @property
    def records(self) -> dict[str, str]:
        return self.sha


def with_ledger(rig: Rig, ledger: DictLedger) -> None:
    rig.engine = rig.engine_with(ledger)


def remove_ok(version: str = "0.0.2") -> object:
    return answer("release_handler:remove_release", [version], OK)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- same version, other bytes ----------------------------------------------------------------

async def test_a_tarball_of_a_version_unpacked_without_a_record_is_refused(rig: Rig) -> None:
    rig.expect(facts(rig, *UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (
        f"0.0.2 is already unpacked on {NODE}, and no sha256 was recorded when it was "
        "unpacked, so relctl cannot tell whether it is the release of this tarball; pass "
        "--replace to remove it and unpack this tarball in its place, or leave out --tarball "
        "to use the release already there")
    assert rig.log.ended() == [("preflight", "failed")]
    rig.done()


async def test_a_tarball_with_other_bytes_than_the_unpacked_release_is_refused(
        rig: Rig) -> None:
    stale = tarball(rig, data=b"the broken build of 0.0.2")
    sha_on_node(rig, stale)
    fixed = tarball(rig, data=b"the fixed build of 0.0.2")
    rig.expect(facts(rig, *UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.unpack("0.0.2", fixed)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    where = rig.root / "releases" / "0.0.2" / SHA_FILE
    assert (f"0.0.2 is already unpacked on {NODE}, unpacked from other bytes (sha256 "
            f"{stale.sha256[:12]}... per {where}; this tarball: {fixed.sha256[:12]}...); pass "
            "--replace") in result.error
    rig.done()


async def test_the_journal_answers_when_the_release_dir_has_no_record(rig: Rig) -> None:
    stale = tarball(rig, data=b"the broken build of 0.0.2")
    with_ledger(rig, DictLedger(**{"0_0_2": stale.sha256}))
    rig.expect(facts(rig, *UNPACKED), which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", tarball(rig, data=b"fixed"), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  f"(sha256 {stale.sha256[:12]}... per the agent's journal; this tarball: ")
    rig.done()


async def test_the_same_bytes_per_the_journal_are_not_unpacked_again(rig: Rig) -> None:
    same = tarball(rig)
    with_ledger(rig, DictLedger(**{"0_0_2": same.sha256}))
    rig.expect(preflight(rig, *UNPACKED), config_on_node(rig.root, "0.0.2"),
               answer("release_handler:check_install_release", ["0.0.2"],
                      (ERROR, Atom("stop_here"))), which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", same, FAST)

    # Past preflight without staging anything: it stops at the check the script refuses.
    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2", "stop_here")
    assert rig.log.ended()[:3] == [("preflight", "succeeded"), ("stage", "skipped"),
                                   ("unpack", "skipped")]
    assert rig.log.detail("preflight").startswith("0.0.2 is already unpacked; the tarball is "
                                                  "not needed.")
    assert "release_handler:set_removed" not in rig.node.mfas()  # not ours to take back
    rig.done()


@BOTH_UNPACKS
async def test_replace_removes_the_stale_release_then_unpacks_and_records_the_tarball(
        rig: Rig) -> None:
    ledger = DictLedger(**{"0_0_2": "0" * 64})
    with_ledger(rig, ledger)
    fixed = tarball(rig, data=b"the fixed build of 0.0.2")
    rig.expect(preflight(rig, *UNPACKED), config_parses(), which_releases(*UNPACKED), remove_ok(),
               which_releases(*UP),
               unpack_ok(rig), which_releases(*UNPACKED))
    # unpack_release makes releases/0.0.2 on a real node; the record is written into it.
    rig.node.effects["release_handler:unpack_release"] = (
        lambda: (rig.root / "releases" / "0.0.2").mkdir())
    result = await rig.engine.unpack("0.0.2", fixed, replace=True)

    assert_result(result, SUCCEEDED, "0.0.1", "0.0.2")
    assert rig.log.ended() == [("preflight", "succeeded"), ("replace", "succeeded"),
                               ("stage", "succeeded"), ("unpack", "succeeded")]
    assert rig.log.detail("replace") == ("removed 0.0.2 (it was unpacked) and its files, to "
                                         "unpack the given tarball in its place")
    record = rig.root / "releases" / "0.0.2" / SHA_FILE
    assert record.read_text() == fixed.sha256 + "\n"
    assert ledger.records == {"0.0.2": fixed.sha256}
    rig.done()


@BOTH_UNPACKS
async def test_replace_in_an_upgrade_goes_on_to_check_and_a_failed_check_takes_it_back(
        rig: Rig) -> None:
    fixed = tarball(rig, data=b"fixed")
    rig.expect(preflight(rig, *(OLD, ("0.0.1", "permanent"))), config_parses(),
               which_releases(*(OLD, ("0.0.1", "permanent"))), remove_ok(),
               which_releases(*UP), unpack_ok(rig),
               answer("release_handler:check_install_release", ["0.0.2"],
                      (ERROR, Atom("bad_relup"))),
               which_releases(*UNPACKED), set_removed(), code_path(rig.root),
               which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", fixed, Options(replace=True))

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2", "bad_relup")
    assert [name for name, _ in rig.log.ended()] == [
        "preflight", "replace", "stage", "unpack", "check", "undo_unpack"]
    rig.done()


async def test_replace_with_dry_run_removes_nothing(rig: Rig) -> None:
    rig.expect(preflight(rig, *UNPACKED), config_parses(), which_releases(*UNPACKED),
               which_releases(*UNPACKED))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), Options(replace=True, dry_run=True))

    assert_result(result, DRY_RUN, "0.0.1", "0.0.2")
    assert result.detail == ("preflight passed; 0.0.2 (unpacked) would be removed and the "
                             "tarball unpacked in its place; nothing was changed; not run: "
                             "stage, unpack and check_install_release (they need 0.0.2 "
                             "replaced first)")
    assert ("replace", "skipped") in rig.log.ended()
    rig.done()


async def test_the_running_or_permanent_release_is_never_replaced(rig: Rig) -> None:
    rig.expect(facts(rig, *CURRENT), which_releases(*CURRENT))
    result = await rig.engine.upgrade("0.0.2", tarball(rig), Options(replace=True))

    assert_result(result, FAILED_UNCHANGED, "0.0.2", "0.0.2")  # current: it runs
    assert result.error == (f"0.0.2 is current on {NODE}: the running or permanent release "
                            "cannot be replaced; install another release first, or give the "
                            "fixed release a new version")
    rig.done()


# --- relups that cannot work ------------------------------------------------------------------

async def test_a_tarball_without_a_relup_is_refused_before_anything_is_staged(
        rig: Rig) -> None:
    rig.expect(facts(rig, *UP), which_releases(*UP))
    result = await rig.engine.upgrade("0.0.2", tarball(rig, relup_text=None), FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (
        "the tarball of 0.0.2 has no releases/0.0.2/relup, so release_handler has no script "
        "to go from 0.0.1 to 0.0.2; build it with `rebar3 relup` or `relctl make-relup OLD "
        "NEW`, and put it into the tarball")
    assert rig.log.ended() == [("preflight", "failed")]
    assert files(rig.root) == ["bin", "lib", "releases"]
    rig.done()


async def test_a_relup_without_an_entry_from_the_running_version_is_refused(
        rig: Rig) -> None:
    rig.expect(facts(rig, *UP), which_releases(*UP))
    result = await rig.engine.unpack("0.0.2", tarball(rig, relup_text=relup(up="0.0.0")))

    assert_result(result, FAILED_UNCHANGED, "0.0.1", "0.0.2")
    assert result.error == (
        "releases/0.0.2/relup in the tarball has no entry from the running 0.0.1 (it upgrades "
        "from: 0.0.0); upgrade to 0.0.0 first (with a relup from 0.0.1), then to 0.0.2; or "
        "build it with `rebar3 relup` or `relctl make-relup OLD NEW` with 0.0.1 as OLD "
        "(make-relup takes several OLDs: an entry from each)")
    assert files(rig.root) == ["bin", "lib", "releases"]
    rig.done()


async def test_a_relup_of_another_version_or_that_does_not_parse_is_refused(
        rig: Rig) -> None:
    rig.expect(facts(rig, *UP), which_releases(*UP), facts(rig, *UP), which_releases(*UP))
    other = await rig.engine.upgrade("0.0.2", tarball(rig, relup_text=relup("0.0.3")), FAST)
    broken = await rig.engine.upgrade("0.0.2", tarball(rig, relup_text=b'{"0.0.2", [{'), FAST)

    assert_result(other, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  "releases/0.0.2/relup in the tarball is the relup of 0.0.3, not of 0.0.2")
    assert_result(broken, FAILED_UNCHANGED, "0.0.1", "0.0.2",
                  "releases/0.0.2/relup in the tarball does not parse as a relup (the file "
                  "ends where a version string was expected)")
    rig.done()


async def test_a_downgrade_without_a_down_entry_is_refused_at_preflight(rig: Rig) -> None:
    rig.expect(facts(rig, *DOWN), which_releases(*DOWN), facts(rig, *DOWN), which_releases(*DOWN))
    missing = await rig.engine.downgrade("0.0.1", FAST)
    relup_on_node(rig, "0.0.2", relup(down="0.0.0"))
    no_entry = await rig.engine.downgrade("0.0.1", FAST)

    path = rig.root / "releases" / "0.0.2" / "relup"
    assert_result(missing, FAILED_UNCHANGED, "0.0.2", "0.0.1")
    assert missing.error == (
        f"{path} is missing, so release_handler has no script to go down from 0.0.2 to 0.0.1; "
        "a live downgrade needs a relup of 0.0.2 with a down entry to 0.0.1 (build it with "
        "`rebar3 relup` or `relctl make-relup OLD NEW`); without one, restart the node on "
        "0.0.1 instead")
    assert_result(no_entry, FAILED_UNCHANGED, "0.0.2", "0.0.1",
                  f"{path} has no down entry to 0.0.1 (it goes down to: 0.0.0); a live ")
    assert "release_handler:check_install_release" not in rig.node.mfas()
    rig.done()


async def test_a_downgrade_through_the_targets_relup_up_entry_passes_preflight(
        rig: Rig) -> None:
    # release_handler tries the target's relup (an entry up from the running version) first.
    relup_on_node(rig, "0.0.1", relup("0.0.1", up="0.0.2"))
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), which_releases(*DOWN))
    result = await rig.engine.downgrade("0.0.1", Options(dry_run=True))

    assert_result(result, DRY_RUN, "0.0.2", "0.0.1")
    assert "relup of 0.0.1 goes up from 0.0.2" in rig.log.detail("preflight")
    rig.done()
