"""The invariant check of tests.tools.invariants can fail: each rule on a root made here."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.operations.journal import Journal
from tests.tools.invariants import (
    NodeView,
    agree,
    compare,
    snapshot,
    unsettled_additions,
    unwatch_journal,
    watch_journal,
)

RELEASES = """%% coding: utf-8
[{release,"counter","0.0.2","13.1.5",
  [{kernel,"8.5.3","ROOT/lib/kernel-8.5.3"},{counter,"0.0.2","ROOT/lib/counter-0.0.2"}],
  permanent},
 {release,"counter","0.0.1","13.1.5",
  [{kernel,"8.5.3","ROOT/lib/kernel-8.5.3"},{counter,"0.0.1","ROOT/lib/counter-0.0.1"}],
  old}].
"""


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for lib in ("kernel-8.5.3", "counter-0.0.1", "counter-0.0.2"):
        (root / "lib" / lib / "ebin").mkdir(parents=True)
        (root / "lib" / lib / "ebin" / "m.beam").write_bytes(lib.encode())
    for vsn in ("0.0.1", "0.0.2"):
        (root / "releases" / vsn).mkdir(parents=True)
        (root / "releases" / vsn / "start.boot").write_bytes(vsn.encode())
    (root / "releases" / "RELEASES").write_text(RELEASES.replace("ROOT", str(root)))
    (root / "releases" / "start_erl.data").write_text("13.1.5 0.0.2\n")
    return root


def test_a_file_of_a_release_still_there_that_goes_or_changes_is_named(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    (root / "lib" / "counter-0.0.1" / "ebin" / "m.beam").unlink()
    (root / "releases" / "0.0.2" / "start.boot").write_bytes(b"other")
    assert sorted(compare(before, snapshot(root), None)) == [
        "lib/counter-0.0.1/ebin/m.beam of release 0.0.1 was deleted",
        "releases/0.0.2/start.boot of release 0.0.2 was changed"]


def test_a_removed_release_may_lose_its_own_files_but_not_shared_ones(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    text = (root / "releases" / "RELEASES").read_text()
    (root / "releases" / "RELEASES").write_text(text[:text.index(",\n {release")] + "].\n")
    for gone in ("lib/counter-0.0.1/ebin/m.beam", "releases/0.0.1/start.boot"):
        (root / gone).unlink()
    assert compare(before, snapshot(root), None) == []
    (root / "lib" / "kernel-8.5.3" / "ebin" / "m.beam").unlink()  # 0.0.2 uses it too
    assert compare(before, snapshot(root), None) == [
        "lib/kernel-8.5.3/ebin/m.beam of release 0.0.2 was deleted"]


def test_releases_start_erl_data_and_the_code_path_mustagree_with_the_node(
        tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert agree(root, NodeView("0.0.2", (str(root / "lib" / "kernel-8.5.3" / "ebin"),))) == []
    assert agree(root, NodeView("0.0.1", (str(root / "lib" / "gone-1" / "ebin"),))) == [
        f"{root}/lib/gone-1/ebin is on the node's code path but is gone",
        "releases/RELEASES says permanent ['0.0.2'], which_releases 0.0.1",
        "releases/start_erl.data boots 0.0.2, which_releases says 0.0.1 is permanent"]


def test_only_what_an_unfinished_operation_recorded_as_added_may_go_from_a_release_dir(
        tmp_path: Path) -> None:
    root = make_root(tmp_path)
    added = root / "lib" / "kernel-8.5.3" / "priv"
    (added / "sub").mkdir(parents=True)
    (added / "sub" / "new.so").write_bytes(b"added")
    journal_path = tmp_path / "state" / "journal.sqlite3"
    journal_path.parent.mkdir()
    with Journal.open(journal_path) as journal:
        op = journal.start("n@h", "upgrade", "0.0.1", "0.0.2", "killed")
        journal.record_placing("n@h", op, "0.0.2", [], added=[str(added)])
    watch_journal(journal_path)
    try:
        before = snapshot(root, unsettled_additions())
    finally:
        unwatch_journal(journal_path)
    shutil.rmtree(added)
    (root / "lib" / "kernel-8.5.3" / "ebin" / "m.beam").unlink()
    assert compare(before, snapshot(root), None) == [
        "lib/kernel-8.5.3/ebin/m.beam of release 0.0.1, 0.0.2 was deleted"]
