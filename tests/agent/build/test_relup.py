"""`relctl make-relup` (agent/build/relup.py) without a node: finding releases, the errors a user
meets, and the relup and tarball made over a plain systools release (the counter fixture)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.client.main import main
from agent.build.erl import BuildError
from agent.build.relup import (
    RelupError,
    build,
    find_release,
    make_relup,
    read_rel,
    write_tarball,
)
from agent.client.status import ExitCode
from agent.release.tarballs.check import inspect_tarball
from tests.tools.release_fixture import ReleaseBuild, extract_tar
from tests.tools.settings import MAX_UPLOAD

REL = """%% coding: utf-8
{release, {"shop", "%s"}, {erts, "13.1.5"},
 [{kernel, "8.5.3"}, {stdlib, "4.2", permanent}, {'sasl', "4.2"},
  {shop, "%s", permanent, [inc]}]}.
"""


def fake_root(path: Path, *versions: str, layout: str = "mix", start: str | None = None) -> Path:
    """A release root with .rel files (and the lib dirs they name) but no real code."""
    for vsn in versions:
        rel = {"mix": path / "releases" / vsn / "shop.rel",
               "systools": path / "releases" / f"shop-{vsn}.rel"}[layout]
        rel.parent.mkdir(parents=True, exist_ok=True)
        rel.write_text(REL % (vsn, vsn))
        (path / "releases" / vsn).mkdir(exist_ok=True)
        for lib in ("kernel-8.5.3", "stdlib-4.2", "sasl-4.2", f"shop-{vsn}"):
            (path / "lib" / lib / "ebin").mkdir(parents=True, exist_ok=True)
    if start:
        (path / "releases" / "start_erl.data").write_text(f"13.1.5 {start}")
    return path


def test_read_rel_takes_name_version_erts_and_every_application_form(tmp_path: Path) -> None:
    rel = fake_root(tmp_path, "1.0.0") / "releases" / "1.0.0" / "shop.rel"
    got = read_rel(rel)
    assert got is not None
    assert (got.name, got.version, got.erts_version) == ("shop", "1.0.0", "13.1.5")
    assert got.applications == (("kernel", "8.5.3"), ("stdlib", "4.2"), ("sasl", "4.2"),
                                ("shop", "1.0.0"))
    (tmp_path / "other.rel").write_text("{application, shop, []}.")
    assert read_rel(tmp_path / "other.rel") is None


def test_the_version_comes_from_start_erl_data_or_the_only_release(tmp_path: Path) -> None:
    both = fake_root(tmp_path / "both", "1.0.0", "1.1.0", start="1.1.0")
    assert find_release(both).version == "1.1.0"
    assert find_release(both, "1.0.0").rel_file == both / "releases" / "1.0.0" / "shop.rel"
    single = fake_root(tmp_path / "single", "2.0.0", layout="systools")
    found = find_release(single)
    assert (found.version, found.rel_file) == ("2.0.0", single / "releases" / "shop-2.0.0.rel")


@pytest.mark.parametrize("setup, version, message", [
    (lambda p: p / "missing", None,
     "the new release: {p}/missing is not a directory; give the release's root"),
    (lambda p: (p / "lib").mkdir() or p, None,
     "the new release: {p} has no releases/ directory, so it is no release root"),
    (lambda p: fake_root(p, "1.0.0", "1.1.0"), None,
     "the new release: {p} holds releases 1.0.0, 1.1.0 and no releases/start_erl.data to "
     "choose; give --new-version"),
    (lambda p: fake_root(p, "1.0.0"), "9.9.9",
     "the new release: no .rel file of version 9.9.9 under {p}/releases (it has 1.0.0); build "
     "that version there or give --new-version"),
])
def test_a_root_that_does_not_fit_says_why_and_what_to_give(
        tmp_path: Path, setup: Callable[[Path], Path], version: str | None,
        message: str) -> None:
    root = setup(tmp_path)
    with pytest.raises(RelupError) as err:
        find_release(root, version)
    assert str(err.value).startswith(message.format(p=tmp_path))
    assert err.value.bad_input


def test_relups_go_between_two_versions_of_one_release(tmp_path: Path) -> None:
    shop = find_release(fake_root(tmp_path / "a", "1.0.0"))
    (tmp_path / "b" / "releases" / "2.0.0").mkdir(parents=True)
    (tmp_path / "b" / "releases" / "2.0.0" / "cart.rel").write_text(
        '{release, {"cart", "2.0.0"}, {erts, "13.1.5"}, [{kernel, "8.5.3"}]}.')
    cart = find_release(tmp_path / "b")
    with pytest.raises(RelupError, match="the old release is shop 1.0.0 .* and the new one "
                                         "cart 2.0.0: a relup goes between versions of one"):
        make_relup(shop, cart)
    with pytest.raises(RelupError, match="both roots give shop 1.0.0; give the versions"):
        make_relup(shop, shop)
    with pytest.raises(RelupError, match="both releases are in .*; give the version to upgrade "
                                         "from with --old-version"):
        build(tmp_path / "a", tmp_path / "a")


def test_without_erl_it_says_to_install_otp_or_pass_erl(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "1.0.0", "1.1.0")
    with pytest.raises(BuildError, match=r"erl not found \('/nonexistent/erl' is not there\); "
                                         "install Erlang/OTP .* or pass --erl"):
        build(root, root, old_version="1.0.0", new_version="1.1.0", erl="/nonexistent/erl")


def test_the_tarball_needs_every_application_and_a_file_name(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "r", "1.0.0")
    new = find_release(root)
    (root / "lib" / "shop-1.0.0" / "ebin").rmdir()
    (root / "lib" / "shop-1.0.0").rmdir()
    with pytest.raises(RelupError, match="lacks lib/shop-1.0.0 of shop 1.0.0; the tarball must "
                                         "carry every application"):
        write_tarball(new, tmp_path / "t.tar.gz")
    with pytest.raises(RelupError, match="is a directory; give the tarball's file name, e.g. "
                                         "shop-1.0.0.tar.gz"):
        write_tarball(new, tmp_path)
    (root / "lib" / "shop-1.0.0" / "ebin").mkdir(parents=True)
    with pytest.raises(RelupError, match="erts-13.1.5 is missing, so it cannot go into the "
                                         "tarball"):
        write_tarball(new, tmp_path / "t.tar.gz", include_erts=True)
    assert not list(tmp_path.glob("*.tar.gz")) and not list(tmp_path.glob(".*"))


def test_cli_errors_are_one_line_with_the_exit_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-relup", str(tmp_path / "old"), str(tmp_path / "new")]) == ExitCode.USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"relctl: the new release: {tmp_path}/new is not a directory")
    root = fake_root(tmp_path / "r", "1.0.0", "1.1.0")
    assert main(["make-relup", str(root), str(root), "--old-version", "1.0.0",
                 "--new-version", "1.1.0", "--erl", "/nonexistent/erl"]) == ExitCode.FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("relctl: erl not found")


# --- with the real systools, over the counter example built as a plain systools release -----

def unpack(tarball: Path, dest: Path) -> Path:
    return extract_tar(tarball, dest)


@pytest.fixture
def systools_roots(release_build: ReleaseBuild, tmp_path: Path) -> tuple[Path, Path]:
    """counter 0.0.1 and 0.0.2 unpacked from their systools:make_tar tarballs, the relup of
    0.0.2 removed: what a user of plain systools has before `relctl make-relup`. make_tar
    leaves the appups out; they stay in the build's ebin."""
    old = unpack(release_build.tarball("0.0.1"), tmp_path / "old")
    new = unpack(release_build.tarball("0.0.2"), tmp_path / "new")
    (new / "releases" / "0.0.2" / "relup").unlink()
    return old, new


def build_ebin(release_build: ReleaseBuild) -> Path:
    return release_build.out_dir / "lib" / "counter-0.0.2" / "ebin"


@pytest.mark.otp
def test_systools_release_gets_its_relup_and_a_tarball_release_handler_takes(
        systools_roots: tuple[Path, Path], release_build: ReleaseBuild, tmp_path: Path) -> None:
    old, new = systools_roots
    made = build(old, new, tarball=tmp_path / "counter-0.0.2.tar.gz",
                 extra_paths=[build_ebin(release_build)])
    assert (made.old.version, made.new.version, made.warnings) == ("0.0.1", "0.0.2", ())
    assert made.new.rel_file == new / "releases" / "0.0.2" / "counter-0.0.2.rel"
    relup = (new / "releases" / "0.0.2" / "relup").read_text()
    assert relup.count("{code_change,up,[{counter,[]}]}") == 1
    assert relup.count("{code_change,down,[{counter,[]}]}") == 1
    assert made.tarball is not None
    checked = inspect_tarball(made.tarball.path, expected_version="0.0.2", max_size=MAX_UPLOAD)
    assert (checked.unpack_name, checked.sha256) == ("counter-0.0.2", made.tarball.sha256)
    with tarfile.open(made.tarball.path) as tar:
        names = tar.getnames()
    assert names[0] == "releases/counter-0.0.2.rel"  # what unpack_release reads first
    assert {n.split("/")[0] for n in names} == {"releases", "lib"}  # no ERTS, no bin/
    assert not {"releases/RELEASES", "releases/start_erl.data"} & set(names)
    assert {f"lib/{app}-{vsn}" for app, vsn in checked.applications} <= set(names)
    # Reproducible: the same files give the same bytes.
    again = write_tarball(made.new, tmp_path / "again.tar.gz")
    assert (again.sha256, again.size) == (made.tarball.sha256, made.tarball.size)


@pytest.mark.otp
def test_a_missing_appup_is_generated_like_the_hand_written_one_and_reported(
        systools_roots: tuple[Path, Path], release_build: ReleaseBuild, tmp_path: Path) -> None:
    old, new = systools_roots
    assert not (new / "lib" / "counter-0.0.2" / "ebin" / "counter.appup").exists()
    made = build(old, new)
    [report] = made.appups
    assert (report.app, report.source, report.path) == ("counter", "generated", None)
    assert report.generated is not None
    terms = {i.term() for i in report.generated.up}
    # examples/counter/0.0.2/ebin/counter.appup, written by hand, says the same.
    assert terms == {"{load_module, counter_app}", "{update, counter, {advanced, []}}"}
    assert {i.term() for i in report.generated.down} == terms
    relup = (new / "releases" / "0.0.2" / "relup").read_text()
    assert relup.count("{code_change,up,[{counter,[]}]}") == 1
    assert relup.count("{code_change,down,[{counter,[]}]}") == 1
    assert not list(new.rglob("*.appup"))  # the release root is left as it was


@pytest.mark.otp
def test_the_hand_written_appup_is_given_and_checked(
        systools_roots: tuple[Path, Path], release_build: ReleaseBuild) -> None:
    old, new = systools_roots
    made = build(old, new, extra_paths=[build_ebin(release_build)])
    assert [(r.app, r.source, r.problems) for r in made.appups] == [
        ("counter", "given and checked", ())]


@pytest.mark.otp
def test_an_appup_without_the_old_version_fails_naming_it_or_warns_when_allowed(
        systools_roots: tuple[Path, Path]) -> None:
    old, new = systools_roots
    appup = new / "lib" / "counter-0.0.2" / "ebin" / "counter.appup"
    appup.write_text('{"0.0.2", [{"0.0.0", []}], [{"0.0.0", []}]}.\n')
    with pytest.raises(RelupError) as err:
        build(old, new)
    assert str(err.value) == (
        f"counter 0.0.1 -> 0.0.2: the appup {appup} is incomplete: no up entry from 0.0.1 (it "
        'has "0.0.0"): {"0.0.1", [...]} is needed; no down entry to 0.0.1 (it has "0.0.0"): '
        '{"0.0.1", [...]} is needed (add the instructions, e.g. from `relctl make-appup`, or '
        "pass --allow-incomplete-appup)")
    assert "\n" not in str(err.value)
    # Allowed, it is systools' turn, which cannot use it either (its words, with the hint).
    with pytest.raises(RelupError, match=r"failed: No release upgrade script entry for "
                                         r"counter-0.0.2 to counter-0.0.1 in file .*counter.appup "
                                         r"\(hint: the .appup has no entry for going from 0.0.1"):
        build(old, new, allow_incomplete_appup=True)


@pytest.mark.otp
def test_an_appup_missing_a_changed_gen_server_fails_or_warns_when_allowed(
        systools_roots: tuple[Path, Path]) -> None:
    old, new = systools_roots
    appup = new / "lib" / "counter-0.0.2" / "ebin" / "counter.appup"
    appup.write_text('{"0.0.2", [{"0.0.1", [{load_module, counter_app}]}],\n'
                     ' [{"0.0.1", [{load_module, counter_app}]}]}.\n')
    with pytest.raises(RelupError, match=r"incomplete: counter needs \{update, counter, "
                                         r"\{advanced, \[\]\}\} \(up\); counter needs .* \(down\)"):
        build(old, new)
    made = build(old, new, allow_incomplete_appup=True)
    assert made.appups[0].source == "given"
    assert any("counter needs {update, counter, {advanced, []}} (up)" in w
               for w in made.warnings)


@pytest.mark.otp
def test_make_relup_twice_gives_the_same_tarball_bytes(
        systools_roots: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = systools_roots
    first = build(old, new, tarball=tmp_path / "a.tar.gz")
    (new / "releases" / "0.0.2" / "relup").unlink()
    second = build(old, new, tarball=tmp_path / "b.tar.gz")
    assert first.tarball is not None and second.tarball is not None
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(first.tarball.path) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    third = build(old, new, tarball=tmp_path / "c.tar.gz")
    assert third.tarball is not None
    with tarfile.open(third.tarball.path) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(RelupError, match="SOURCE_DATE_EPOCH='yesterday' is no number"):
        build(old, new, tarball=tmp_path / "d.tar.gz")


@pytest.mark.otp
def test_make_appup_prints_or_writes_the_generated_appup(
        systools_roots: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    old, new = systools_roots
    assert main(["make-appup", str(old), str(new)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out.startswith("%% counter 0.0.1 -> 0.0.2\n%% counter.appup, generated by relctl")
    assert '{"0.0.2",\n [{"0.0.1",\n   [{update, counter, {advanced, []}},' in out
    assert main(["make-appup", str(old), str(new), "--write", str(tmp_path / "w")]) == 0
    capsys.readouterr()
    assert (tmp_path / "w" / "counter.appup").read_text() in out
    assert main(["make-appup", str(old), str(new), "--app", "nope"]) == ExitCode.USAGE
    assert "nope: no such application whose version changed" in capsys.readouterr().err


def test_the_client_loads_relup_only_when_make_relup_runs() -> None:
    code = ("import sys, agent.client.main; "
            "print('agent.build.relup' in sys.modules, 'tarfile' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.split() == ["False", "False"]
