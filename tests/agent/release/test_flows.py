"""The flow table (agent/release/flows.py): what each operation may report, and the skip lists
cut from it."""

from __future__ import annotations

import pytest

from agent.config import POST_INSTALL, PRE_INSTALL, Hook
from agent.release.flows import FLOWS, Flow, UndeclaredStep
from agent.release.core import Steps
from tests.agent.release.scripted import StepLog

PRE = Hook("flush", PRE_INSTALL, "m", "f", ())
POST = Hook("warm", POST_INSTALL, "m", "f", ())


def test_the_skip_list_of_a_dry_run_is_cut_from_the_table_with_the_hooks_in_place() -> None:
    upgrade = Flow.of("upgrade")
    assert upgrade.between(f"{PRE_INSTALL}:*", "make_permanent", (PRE, POST)) == [
        "pre_install:flush", "install", "post_install:warm", "verify", "make_permanent"]
    # Steps that run only when they have work (write_config, runtime_config, replace) are
    # never shown skipped.
    assert upgrade.between("preflight", "check") == ["preflight", "stage", "unpack", "check"]


def test_each_flow_declares_its_steps_and_the_one_way_back() -> None:
    upgrade, reload = Flow.of("upgrade"), Flow.of("reload")
    assert upgrade.declares("undo_unpack") and upgrade.declares("rollback")
    assert upgrade.declares("pre_install:anything") and upgrade.declares("write_config")
    assert not upgrade.declares("read_config") and not reload.declares("install")
    assert set(FLOWS) == {"upgrade", "downgrade", "unpack", "check", "install",
                          "make_permanent", "remove", "reload"}


async def test_a_step_its_flow_does_not_declare_is_refused_before_it_runs() -> None:
    log = StepLog()
    steps = Steps(log)
    steps.follow("remove")
    ran = False
    with pytest.raises(UndeclaredStep, match="'install' is not declared in the remove flow"):
        async with steps.step("install"):
            ran = True
    assert not ran and log.records == []
    with pytest.raises(UndeclaredStep):
        steps.skip("stage", "no")
