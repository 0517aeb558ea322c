"""A relup whose script holds restart_emulator (a downgrade across an OTP change; systools'
restart_emulator option): install_release answers ok and then reboots the node into the
release, so the switch waits for that restart before it verifies and makes permanent. The
relup files are read from the node's disk; the node is scripted (tests/agent/release)."""

from __future__ import annotations

from agent.relfile import relup_versions
from agent.release.values import FAILED, FAILED_UNCHANGED, SUCCEEDED
from bridge import Atom, Pid
from tests.agent.release.scripted import Expect, answer
from tests.agent.release.test_engine import (
    DOWN,
    DOWNED,
    FAST,
    Rig,
    assert_result,
    check_only,
    config_on_node,
    install_ok,
    permanent,
    preflight,
    relup_on_node,
    rig,
    verify_ok,
    which_releases,
)

__all__ = ["rig"]  # the fixture, imported so that pytest finds it here

# What systools writes for an OTP change: the new emulator first going up, the old one last
# going down.
OTP_CHANGE = (b'%% coding: utf-8\n{"0.0.2",\n [{"0.0.1",[],[restart_new_emulator,'
              b'point_of_no_return]}],\n [{"0.0.1",[],[point_of_no_return,{apply,{m,f,'
              b'[restart_emulator]}},restart_emulator]}]}.\n')


def heart(running: bool = True) -> Expect:
    return answer("erlang:whereis", [Atom("heart")],
                  Pid(Atom("counter@localhost"), 42, 0, 1) if running else Atom("undefined"))


def test_the_relup_reader_tells_which_entries_restart_the_emulator() -> None:
    found = relup_versions(OTP_CHANGE.decode())
    assert (found.up_from, found.down_to, found.up_restart, found.down_restart) == (
        ("0.0.1",), ("0.0.1",), (), ("0.0.1",))
    # Only the bare atom at the instruction list's own level is the instruction.
    nested = OTP_CHANGE.replace(b",restart_emulator]}]}", b"]}]}")
    assert relup_versions(nested.decode()).down_restart == ()


async def test_a_downgrade_ending_in_restart_emulator_waits_for_the_restart(rig: Rig) -> None:
    relup_on_node(rig, text=OTP_CHANGE)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), heart(), install_ok("0.0.1", over="0.0.2"),
               verify_ok("0.0.1", ("0.0.2", "permanent"), ("0.0.1", "current")),
               permanent("0.0.1"), which_releases(*DOWNED))
    rig.node.then_restart(True)
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, SUCCEEDED, "0.0.2", "0.0.1")
    assert rig.node.restart_waits == [(30.0, FAST.restart_timeout)]
    assert rig.log.detail("install") == ("0.0.2 -> 0.0.1; the node restarted its emulator "
                                         "(restart_emulator)")
    rig.done()


async def test_a_restart_emulator_the_node_does_not_come_back_from_fails(rig: Rig) -> None:
    relup_on_node(rig, text=OTP_CHANGE)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), heart(), install_ok("0.0.1", over="0.0.2"),
               which_releases(*DOWN))
    rig.node.then_restart(False)
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, FAILED, "0.0.2", "0.0.1")
    assert result.error == ("the relup's script ends with restart_emulator, and the node did "
                            "not restart into 0.0.1 and come back within 2 s")
    rig.done()


async def test_a_restart_on_a_node_without_heart_is_refused_before_the_install(rig: Rig) -> None:
    relup_on_node(rig, text=OTP_CHANGE)
    rig.expect(preflight(rig, *DOWN), config_on_node(rig.root, "0.0.1"),
               check_only("0.0.1", over="0.0.2"), heart(running=False), which_releases(*DOWN))
    result = await rig.engine.downgrade("0.0.1", FAST)

    assert_result(result, FAILED_UNCHANGED, "0.0.2", "0.0.1")
    assert result.error.startswith(
        "going from 0.0.2 to 0.0.1 restarts the emulator (restart_emulator in the relup), "
        "which release_handler does through heart (heart:set_cmd, then init:reboot), but "
        "counter@localhost runs without heart: the install would crash")
    assert "release_handler:install_release" not in rig.node.mfas()
    rig.done()
