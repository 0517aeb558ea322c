"""inspect_tarball: what a release tarball holds, and every way one is refused.

The archives are built here with tarfile and gzip; no Erlang is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import RequestError
from agent.release.tarballs import check as tarball
from agent.release.tarballs.check import ReleaseTarball, TarballError, inspect_tarball
from tests.tools.settings import MAX_UPLOAD

Member = tuple[tarfile.TarInfo, bytes]

REL = """%% counter.rel, as systools writes it (plus some comments)
{release,   {"counter", "0.0.2"},
    {erts, "13.2.2"},   % the runtime
 [{kernel, "8.5.4"},
  {stdlib, "4.3.1"},
  {sasl, "4.2", load},          % loaded, not started
  {'counter', "0.0.2", [kernel]},
  {extra, "1.0", permanent, []}]
}.
"""
APPS = (("kernel", "8.5.4"), ("stdlib", "4.3.1"), ("sasl", "4.2"), ("counter", "0.0.2"),
        ("extra", "1.0"))


def rel(name: str = "counter", vsn: str = "0.0.2") -> bytes:
    return REL.replace('"counter", "0.0.2"', f'"{name}", "{vsn}"').encode()


def file(name: str, data: bytes = b"") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def directory(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, b""


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, b""


def tar_bytes(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def write(path: Path, members: list[Member]) -> Path:
    path.write_bytes(gzip.compress(tar_bytes(members)))
    return path


def systools_members(vsn: str = "0.0.2") -> list[Member]:
    # systools:make_tar also stores the .rel under releases/VSN/, by its own file name.
    return [
        directory("lib/counter-" + vsn),
        file(f"lib/counter-{vsn}/ebin/counter.app", b"{application, counter, []}."),
        file(f"releases/counter-{vsn}.rel", rel(vsn=vsn)),
        file(f"releases/{vsn}/counter-{vsn}.rel", rel(vsn=vsn)),
        file(f"releases/{vsn}/start.boot", b"\x83boot"),
        file(f"releases/{vsn}/sys.config", b"[{counter, [{step, 2}]}]."),
        file(f"releases/{vsn}/relup", b'{"0.0.2", [], []}.'),
    ]


def relx_members() -> list[Member]:
    # relx hands releases/VSN/NAME.rel to systools, which also stores releases/NAME.rel.
    return [
        file("bin/counter", b"#!/bin/sh\n"),
        file("releases/counter.rel", rel()),
        file("releases/0.0.2/counter.rel", rel()),
        file("releases/0.0.2/sys.config", b"[]."),
        file("releases/0.0.2/vm.args", b"-name counter@localhost\n"),
        file("releases/start_erl.data", b"13.2.2 0.0.2\n"),
    ]


def refused(path: Path, **options: Any) -> str:
    with pytest.raises(TarballError) as caught:
        inspect_tarball(path, **({"max_size": MAX_UPLOAD} | options))
    return str(caught.value)


# --- Accepted -----------------------------------------------------------------------------

def test_a_systools_tarball(tmp_path: Path) -> None:
    path = write(tmp_path / "counter-0.0.2.tar.gz", systools_members())
    data = path.read_bytes()
    assert inspect_tarball(path, expected_version="0.0.2", max_size=MAX_UPLOAD) == ReleaseTarball(
        path=path, release_name="counter", version="0.0.2", erts_version="13.2.2",
        unpack_name="counter-0.0.2", rel_member="releases/counter-0.0.2.rel",
        applications=APPS, sys_config=b"[{counter, [{step, 2}]}].",
        relup=b'{"0.0.2", [], []}.', size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        tops=frozenset({"releases", "releases/0.0.2", "releases/counter-0.0.2.rel", "lib",
                        "lib/counter-0.0.2"}))


def test_a_relx_tarball(tmp_path: Path) -> None:
    found = inspect_tarball(write(tmp_path / "counter.tar.gz", relx_members()), max_size=MAX_UPLOAD)
    assert (found.unpack_name, found.rel_member) == ("0.0.2/counter", "releases/0.0.2/counter.rel")
    assert (found.release_name, found.version, found.applications) == ("counter", "0.0.2", APPS)
    assert (found.sys_config, found.relup) == (b"[].", None)


@pytest.mark.parametrize("names", [("./", "./releases/0.0.2/counter.rel"),
                                   ("releases", "releases/./0.0.2/counter.rel")])
def test_dot_member_names_are_refused_with_how_to_repack(
        tmp_path: Path, names: tuple[str, str]) -> None:
    # release_handler:unpack_release looks the .rel up by its exact name (erl_tar's files
    # option): with "./" names it never finds it (checked on OTP 25, tests/e2e).
    message = refused(write(tmp_path / "t.tar.gz", [directory(names[0]), file(names[1], rel())]))
    first = "'.'" if names[0] == "./" else repr(names[1])  # tarfile drops a dir's final /
    assert f"member {first} has a '.' component" in message
    assert "`tar -C DIR -czf FILE releases lib`" in message


def test_a_rel_without_final_dot_and_with_escapes_and_quoted_atoms(tmp_path: Path) -> None:
    text = b'{release,{"my\\"rel","1"},{erts,"14"},[{\'my-app\',"1.0"}]} % done\n'
    found = inspect_tarball(write(tmp_path / "t.tar.gz", [file('releases/my"rel-1.rel', text)]),
                            max_size=MAX_UPLOAD)
    assert (found.release_name, found.unpack_name) == ('my"rel', 'my"rel-1')
    assert found.applications == (("my-app", "1.0"),)


def test_a_symlink_inside_the_root_is_accepted(tmp_path: Path) -> None:
    members = relx_members() + [link("bin/current", "../releases/0.0.2"),
                                link("lib/counter/priv/self", "."),
                                link("releases/latest", "0.0.2/counter.rel")]
    found = inspect_tarball(write(tmp_path / "t.tar.gz", members), max_size=MAX_UPLOAD)
    assert found.version == "0.0.2"


def test_of_several_releases_the_expected_version_is_chosen(tmp_path: Path) -> None:
    members = systools_members("0.0.1") + systools_members("0.0.2")
    path = write(tmp_path / "t.tar.gz", members)
    found = inspect_tarball(path, expected_version="0.0.1", max_size=MAX_UPLOAD)
    assert found.unpack_name == "counter-0.0.1"
    message = refused(path)
    assert "holds more than one release (counter 0.0.1, counter 0.0.2)" in message
    assert "give the expected version" in message
    assert "tarball holds releases counter 0.0.1, counter 0.0.2, not 0.0.3" in refused(
        path, expected_version="0.0.3")


def test_with_both_layouts_the_systools_one_is_named(tmp_path: Path) -> None:
    members = relx_members() + [file("releases/counter-0.0.2.rel", rel())]
    found = inspect_tarball(write(tmp_path / "t.tar.gz", members), max_size=MAX_UPLOAD)
    assert (found.unpack_name, found.rel_member) == ("counter-0.0.2", "releases/counter-0.0.2.rel")


def test_tarball_error_is_the_callers_fault() -> None:
    assert issubclass(TarballError, RequestError)


# --- The file and its compression ---------------------------------------------------------

def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.tar.gz"
    assert refused(path) == f"{path}: no such file; check the path the tarball was uploaded to"


def test_a_directory(tmp_path: Path) -> None:
    assert refused(tmp_path).startswith(f"{tmp_path}: not a regular file")


def test_an_oversized_file(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tar.gz", systools_members())
    size = path.stat().st_size
    message = refused(path, max_size=100)
    assert message.startswith(f"{path}: {size} bytes, more than the 100-byte limit")


def test_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.tar.gz"
    path.write_bytes(b"PK\x03\x04 a zip file")
    message = refused(path)
    assert message.startswith(f"{path}: not a gzip file (it starts with 50 4b 03 04)")
    assert "systools:make_tar" in message


def test_an_uncompressed_tar_is_not_gzip_either(tmp_path: Path) -> None:
    path = tmp_path / "t.tar.gz"
    path.write_bytes(tar_bytes(systools_members()))
    message = refused(path)
    assert "not a gzip file" in message and "it looks like an uncompressed tar: gzip it" in message


@pytest.mark.parametrize("content", [b"hello world\n" * 100, b"", b"x" * 100])
def test_gzip_but_not_tar(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(content))
    assert refused(path).startswith(f"{path}: gzip, but not a tar archive (")


def big_release(tmp_path: Path) -> bytes:
    noise = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB that gzip cannot shrink much
    members = systools_members() + [file("lib/counter-0.0.2/priv/noise", noise)]
    return gzip.compress(tar_bytes(members))


CUTS: dict[str, Callable[[int], int]] = {
    "half": lambda n: n // 2, "the gzip trailer": lambda n: n - 4,
    "the tail": lambda n: n - 20, "all but the gzip header": lambda n: 12,
}


@pytest.mark.parametrize("cut", CUTS)
def test_truncated(tmp_path: Path, cut: str) -> None:
    data = big_release(tmp_path)
    path = tmp_path / "t.tar.gz"
    path.write_bytes(data[:CUTS[cut](len(data))])
    assert refused(path).startswith(f"{path}: corrupt or truncated (")


def test_corrupt_compressed_data(tmp_path: Path) -> None:
    data = bytearray(big_release(tmp_path))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "t.tar.gz"
    path.write_bytes(bytes(data))
    assert "corrupt or truncated" in refused(path)


@pytest.mark.parametrize("cut, reason", [
    (1024 + 100, "unexpected end of data"),             # inside the data of the second member
    (1536 + 100, "damaged or partial tar header at byte 1536"),    # inside the third header
])
def test_a_tar_cut_before_it_was_gzipped(tmp_path: Path, cut: int, reason: str) -> None:
    raw = tar_bytes(systools_members())
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(raw[:cut]))
    assert refused(path).startswith(f"{path}: corrupt or truncated ({reason}")


def test_garbage_between_members_is_not_taken_for_the_end(tmp_path: Path) -> None:
    raw = tar_bytes(relx_members())
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(raw[:1024] + b"\x01" * 512 + raw[1024:]))
    assert "damaged or partial tar header at byte 1024" in refused(path)


def test_too_much_data_after_the_end_of_the_archive(tmp_path: Path) -> None:
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes(relx_members()) + bytes(2 * 1024**2)))
    assert "bytes follow the end of the tar archive" in refused(path)


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def test_a_header_asking_for_a_huge_read(tmp_path: Path) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 10 * 1024**3
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + bytes(4096)))
    assert "a tar header asks to read 10737418240 bytes at once" in refused(path)


def test_a_member_with_a_negative_size(tmp_path: Path) -> None:
    header = bytearray(tar_bytes([file("lib/x", b"")])[:512])
    header[124:136] = b"\xff" * 12    # base-256: -1
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(with_checksum(header) + bytes(1024)))
    assert "member 'lib/x' has a size or position that makes no sense" in refused(path)


def test_a_chain_of_pax_headers(tmp_path: Path) -> None:
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    chain = pax.tobuf(tarfile.GNU_FORMAT) * 5000
    path = tmp_path / "t.tar.gz"
    path.write_bytes(gzip.compress(chain + tar_bytes(relx_members())))
    assert "corrupt or truncated" in refused(path)


# --- Members ------------------------------------------------------------------------------

def refused_member(tmp_path: Path, *extra: Member) -> str:
    return refused(write(tmp_path / "t.tar.gz", relx_members() + list(extra)))


def test_an_absolute_path(tmp_path: Path) -> None:
    message = refused_member(tmp_path, file("/etc/cron.d/evil", b"x"))
    assert "member '/etc/cron.d/evil' has an absolute path;" in message


@pytest.mark.parametrize("name", ["../evil", "releases/../../evil", "lib/a/.."])
def test_a_dotdot_component(tmp_path: Path, name: str) -> None:
    message = refused_member(tmp_path, file(name, b"x"))
    assert f"member {name!r} has a '..' component" in message


@pytest.mark.parametrize("name, problem", [
    ("C:evil", "Windows drive or backslash"),
    ("lib\\..\\..\\evil", "Windows drive or backslash"),
])
def test_windows_style_names(tmp_path: Path, name: str, problem: str) -> None:
    assert f"member {name!r} has a {problem}" in refused_member(tmp_path, file(name, b"x"))


def test_a_nul_in_a_name(tmp_path: Path) -> None:
    info, data = file("lib/x", b"x")
    info.pax_headers = {"path": "lib/x\0y"}
    message = refused_member(tmp_path, (info, data))
    assert "member 'lib/x\\x00y' has a NUL byte in its name" in message


@pytest.mark.parametrize("name, target, problem", [
    ("lib/etc", "/etc", "an absolute path"),
    ("lib/etc", "../../etc", "which is outside the release root"),
    ("bin/up", "..", None),
    ("top", "..", "which is outside the release root"),
    ("lib/x", "a/../../..", "which is outside the release root"),
    ("lib/x", "a/../b", "whose '..' after a name cannot be checked"),
])
def test_symlinks_out_of_the_root(tmp_path: Path, name: str, target: str,
                                  problem: str | None) -> None:
    path = write(tmp_path / "t.tar.gz", relx_members() + [link(name, target)])
    if problem is None:
        assert inspect_tarball(path, max_size=MAX_UPLOAD).version == "0.0.2"
    else:
        assert f"member {name!r} is a symlink to {target!r}, {problem}" in refused(path)


def test_a_member_under_a_symlink(tmp_path: Path) -> None:
    # "s" points at the root: "s/l" -> "../x" looks inside lexically but is not.
    message = refused_member(tmp_path, link("s", "."), link("s/l", "../x"))
    assert "member 's/l' lies under the symlink 's'" in message


@pytest.mark.parametrize("target, problem", [
    ("/etc/passwd", "an absolute path"),
    ("../etc/passwd", "which is outside the release root"),
    ("lib/../../etc/passwd", "which is outside the release root"),
    ("bin/../bin/counter", "whose '..' after a name cannot be checked"),
])
def test_hard_links_out_of_the_root(tmp_path: Path, target: str, problem: str) -> None:
    message = refused_member(tmp_path, link("lib/pw", target, tarfile.LNKTYPE))
    assert f"member 'lib/pw' is a hard link to {target!r}, {problem}" in message


def test_a_hard_link_inside_the_root_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tar.gz",
                 relx_members() + [link("bin/counter2", "bin/counter", tarfile.LNKTYPE)])
    assert inspect_tarball(path, max_size=MAX_UPLOAD).version == "0.0.2"


@pytest.mark.parametrize("kind, called", [
    (tarfile.CHRTYPE, "a character device"),
    (tarfile.BLKTYPE, "a block device"),
    (tarfile.FIFOTYPE, "a FIFO"),
])
def test_devices_and_fifos(tmp_path: Path, kind: bytes, called: str) -> None:
    message = refused_member(tmp_path, special("lib/dev", kind))
    assert f"member 'lib/dev' is {called}; a release tarball holds only files" in message


def test_too_many_members(tmp_path: Path) -> None:
    message = refused(write(tmp_path / "t.tar.gz", relx_members()), max_members=3)
    assert "more than 3 members; refused as a possible archive bomb" in message


def test_too_large_unpacked(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tar.gz", relx_members() + [file("lib/big", bytes(2000))])
    message = refused(path, max_unpacked=1000)
    assert "members add up to more than 1000 bytes unpacked (at member 'lib/big')" in message


# --- The release --------------------------------------------------------------------------

def test_no_rel_file(tmp_path: Path) -> None:
    message = refused(write(tmp_path / "t.tar.gz", [file("lib/a/ebin/a.app", b"x"),
                                                    file("releases/RELEASES", b"[].")]))
    assert "no release file found" in message
    assert "releases/NAME-VSN.rel (systools layout)" in message
    assert "releases/VSN/NAME.rel (relx layout)" in message
    assert "may not be a release tarball" in message and "mix release" in message


@pytest.mark.parametrize("text, reason", [
    (b'{release, {"counter", "0.0.2"}, {erts, "13"}, [{kernel, "8"}]]}', "expected ',' or '}'"),
    (b'{release, {"counter", "0.0.2"}, {erts, "13"}, []}. extra.', "expected the end of the file"),
    (b'{release, {"counter", "0.0.2"}, {erts, "13"}, [{kernel, 8}]}.', "unexpected '8' at line 1"),
    (b'{rel, {"counter", "0.0.2"}, {erts, "13"}, []}.', "not a {release, ...} tuple"),
    (b'{release, {counter, "0.0.2"}, {erts, "13"}, []}.', 'not named as {"Name", "Vsn"}'),
    (b'{release, {"counter", "0.0.2"}, "13", []}.', "erts entry is not"),
    (b'{release, {"counter", "0.0.2"}, {erts, "13"}, [kernel]}.', "application 1 is not"),
    (b'{release, {"counter", "0.0.2"}, {erts, "13"}, {kernel}}.', "applications are not a list"),
    (b"[" * 100, "terms nest too deep"),
    (b'{release, {"a\\x41"', "unsupported escape"),
    (b"", "the file ends in the middle of the term"),
])
def test_a_rel_that_does_not_parse(tmp_path: Path, text: bytes, reason: str) -> None:
    message = refused(write(tmp_path / "t.tar.gz", [file("releases/counter-0.0.2.rel", text)]))
    assert "member 'releases/counter-0.0.2.rel' is not a .rel file it can read (" in message
    assert reason in message


def test_a_rel_that_is_a_link(tmp_path: Path) -> None:
    members = relx_members() + [link("releases/0.0.3/counter.rel", "../0.0.2/counter.rel")]
    message = refused(write(tmp_path / "t.tar.gz", members))
    assert "member 'releases/0.0.3/counter.rel' is not a .rel file it can read (it is a symlink" \
        in message


@pytest.mark.parametrize("member", ["releases/counter-0.0.3.rel", "releases/0.0.3/counter.rel",
                                    "releases/0.0.2/other.rel"])
def test_a_rel_whose_path_disagrees_with_its_content(tmp_path: Path, member: str) -> None:
    message = refused(write(tmp_path / "t.tar.gz", [file(member, rel())]))
    assert "no release file found" in message
    assert f"{member} holds counter 0.0.2, which its path does not name" in message


def test_a_version_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tar.gz", systools_members())
    assert refused(path, expected_version="0.0.3").startswith(
        f"{path}: tarball holds release counter 0.0.2, not 0.0.3; upload the tarball of 0.0.3")


def test_an_oversized_sys_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarball, "EXTRA_MAX", 10)
    message = refused(write(tmp_path / "t.tar.gz", systools_members()))
    assert "member 'releases/0.0.2/sys.config' is 25 bytes, more than the 10 allowed" in message


def test_a_sys_config_that_is_a_link(tmp_path: Path) -> None:
    members = [file("releases/0.0.2/counter.rel", rel()), file("config/sys.config", b"[]."),
               link("releases/0.0.2/sys.config", "../../config/sys.config")]
    message = refused(write(tmp_path / "t.tar.gz", members))
    assert "member 'releases/0.0.2/sys.config' is a symlink, not a regular file" in message


# --- Hostile input never escapes as anything but TarballError ----------------------------

VALID_TAR = tar_bytes(systools_members() + [link("bin/x", "../lib"),
                                             link("bin/y", "bin/x", tarfile.LNKTYPE)])
VALID_GZ = gzip.compress(VALID_TAR, mtime=0)
with tarfile.open(fileobj=io.BytesIO(VALID_TAR)) as _tar:
    HEADER_BYTES = [m.offset + i for m in _tar.getmembers() for i in range(512)]

Flips = list[tuple[int, int]]   # (position, xor mask)
anywhere = st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), max_size=8)
in_headers = st.lists(st.tuples(st.sampled_from(HEADER_BYTES), st.integers(1, 255)),
                      min_size=1, max_size=8)
keeps = st.one_of(st.just(1.0), st.floats(0, 1))


def mutate(data: bytes, changes: Flips, keep: float) -> bytes:
    out = bytearray(data)
    for where, xor in changes:
        out[where % len(out)] ^= xor
    return bytes(out[:int(keep * len(out))])


def survives(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        inspect_tarball(path, max_size=MAX_UPLOAD)
    except TarballError:
        pass


REL_ALPHABET = '{}[],."\\%\' \nabcerls0.1'
HOSTILE = settings(max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


@HOSTILE
@given(data=st.binary(max_size=4096), gzip_magic=st.booleans())
def test_arbitrary_bytes(tmp_path: Path, data: bytes, gzip_magic: bool) -> None:
    survives(tmp_path / "t.tar.gz", (b"\x1f\x8b" if gzip_magic else b"") + data)


@HOSTILE
@given(text=st.one_of(st.text(max_size=300), st.text(alphabet=REL_ALPHABET, max_size=300)))
def test_arbitrary_rel_content(tmp_path: Path, text: str) -> None:
    tar = tar_bytes([file("releases/counter-0.0.2.rel", ("{release," + text).encode())])
    survives(tmp_path / "t.tar.gz", gzip.compress(tar))


@HOSTILE
@given(changes=anywhere, keep=keeps)
def test_mutated_compressed_bytes(tmp_path: Path, changes: Flips, keep: float) -> None:
    survives(tmp_path / "t.tar.gz", mutate(VALID_GZ, changes, keep))


@HOSTILE
@given(changes=st.one_of(anywhere, in_headers), keep=keeps)
def test_mutated_tar_bytes_in_valid_gzip(tmp_path: Path, changes: Flips, keep: float) -> None:
    survives(tmp_path / "t.tar.gz", gzip.compress(mutate(VALID_TAR, changes, keep)))
