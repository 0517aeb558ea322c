"""What under a release root is in use (agent/release/inuse.py), on roots made here."""

from __future__ import annotations

from pathlib import Path

from agent.release.inuse import compute

REL = '{release,{"app","%s"},{erts,"13.1.5"},[{kernel,"8.5.3"},{app,"%s"}]}.\n'


def root_with(tmp_path: Path, *versions: str, releases_file: str | None = None) -> Path:
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    for vsn in versions:
        (root / "releases" / vsn).mkdir(parents=True)
        (root / "releases" / vsn / "app.rel").write_text(REL % (vsn, vsn))
        (root / "lib" / f"app-{vsn}").mkdir()
    (root / "lib" / "kernel-8.5.3").mkdir()
    (root / "releases").mkdir(exist_ok=True)
    if releases_file is not None:
        (root / "releases" / "RELEASES").write_text(releases_file)
    return root


def test_a_mix_root_without_releases_is_protected_by_its_rel_files_and_code_path(
        tmp_path: Path) -> None:
    root = root_with(tmp_path, "1.0")
    (root / "lib" / "elixir-1.14.0").mkdir()
    used = compute(root, root / "releases", erts_version="13.1.5",
                   code_path=[str(root / "lib" / "elixir-1.14.0" / "ebin"), "/usr/lib/x"])
    assert used.holds(root / "lib" / "kernel-8.5.3") == \
        "lib/kernel-8.5.3 is in use (release app 1.0, releases/1.0/app.rel)"
    assert used.holds(root / "lib" / "elixir-1.14.0") == \
        "lib/elixir-1.14.0 is in use (on the running node's code path)"
    assert used.holds(root / "lib" / "app-1.0" / "ebin" / "app.beam") is not None  # inside
    assert used.holds(root / "lib") is not None                                  # holds some
    assert used.holds(root / "erts-13.1.5") is not None
    assert used.holds(root / "lib" / "app-2.0") is None
    assert used.holds(tmp_path / "elsewhere") is not None  # never outside the root


def test_what_an_unfinished_operation_placed_is_not_in_use_by_its_own_rel(
        tmp_path: Path) -> None:
    root = root_with(tmp_path, "1.0", "2.0")
    placing = compute(root, root / "releases", placing={"2.0"})
    assert placing.holds(root / "lib" / "app-2.0") is None
    assert placing.holds(root / "releases" / "2.0") is None
    assert placing.holds(root / "lib" / "kernel-8.5.3") is not None  # 1.0 uses it too
    # Unless RELEASES lists it: then it was registered, and is a release like any other.
    listed = root_with(tmp_path / "b", "1.0", "2.0", releases_file=(
        '[{release,"app","2.0","13.1.5",[{app,"2.0","%s/lib/app-2.0"}],unpacked}].\n'
        % (tmp_path / "b" / "root")))
    assert compute(listed, listed / "releases", placing={"2.0"}).holds(
        listed / "lib" / "app-2.0") is not None


def test_a_release_being_removed_leaves_only_what_others_use(tmp_path: Path) -> None:
    root = root_with(tmp_path, "1.0", "2.0")
    used = compute(root, root / "releases", removing={"1.0"})
    assert used.split([root / "lib" / "app-1.0", root / "releases" / "1.0",
                       root / "lib" / "kernel-8.5.3"]) == (
        [root / "lib" / "app-1.0", root / "releases" / "1.0"],
        ["lib/kernel-8.5.3 is in use (release app 2.0, releases/2.0/app.rel)"])


def test_a_releases_file_that_cannot_be_read_keeps_everything(tmp_path: Path) -> None:
    root = root_with(tmp_path, "1.0", releases_file="[{release, oops")
    used = compute(root, root / "releases")
    assert used.problems and used.holds(root / "lib" / "app-9.9") is not None
    assert "does not parse" in (used.holds(root / "lib" / "app-9.9") or "")
