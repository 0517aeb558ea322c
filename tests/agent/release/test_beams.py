"""beams.py: beam_lib:md5 computed in the agent, checked against OTP's own beam_lib:md5 on every
beam of the OTP the tests run, and its cache, which follows a file's identity."""

from __future__ import annotations

import functools
import gzip
import os
import subprocess
from pathlib import Path

import pytest

from agent.release.beams import Md5Cache, beam_md5
from tests.tools import otp_select


@functools.cache
def otp_lib() -> Path:
    """The lib dir of the OTP the tests run (the host's, or the OTP 27 root's), as the host
    sees it."""
    root = subprocess.run([otp_select.erl(), "-noshell", "-noinput", "-eval",
                           'io:format("~s", [code:root_dir()]), halt().'],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    return otp_select.host_view(Path(root)) / "lib"


@pytest.mark.otp
def test_the_md5_of_every_beam_of_the_otp_is_what_beam_lib_computes() -> None:
    expr = ('[io:format("~s ~s~n", [F, binary:encode_hex(M)]) || F <- filelib:wildcard('
            '"lib/*/ebin/*.beam", code:root_dir()), {ok, {_, M}} <- [beam_lib:md5('
            'filename:join(code:root_dir(), F))]], halt().')
    out = subprocess.run([otp_select.erl(), "-noshell", "-noinput", "-eval", expr],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    root = otp_lib().parent
    lines = [line.split() for line in out.splitlines()]
    assert len(lines) > 300  # every application's beams, not a handful
    wrong = [name for name, md5 in lines
             if (beam_md5((root / name).read_bytes()) or b"").hex().upper() != md5]
    assert wrong == []


def lists_beam() -> bytes:
    [path] = otp_lib().glob("stdlib-*/ebin/lists.beam")
    return path.read_bytes()


@pytest.mark.otp
def test_a_compressed_beam_has_the_md5_of_the_beam_and_damage_gives_none() -> None:
    beam = lists_beam()
    md5 = beam_md5(beam)
    assert md5 is not None and beam_md5(gzip.compress(beam)) == md5
    assert beam_md5(beam[:-3]) is None  # a chunk cut short
    assert beam_md5(beam + b"\0\0\0") is None  # a partial chunk header
    assert beam_md5(b"FOR1\0\0\0\4BEAM") is None  # no chunks: no Code, no atoms
    assert beam_md5(b"not a beam") is None


@pytest.mark.otp
def test_the_cache_follows_the_file_not_its_name(tmp_path: Path) -> None:
    cache = Md5Cache()
    beam = lists_beam()
    ebin = tmp_path / "a" / "ebin"
    ebin.mkdir(parents=True)
    (ebin / "lists.beam").write_bytes(beam)
    (ebin / "notes.txt").write_text("not a beam")
    assert cache.ebin(ebin) == {"lists": beam_md5(beam)}
    os.rename(tmp_path / "a", tmp_path / "b")  # as a release's dir is moved into place
    assert cache.ebin(tmp_path / "b" / "ebin") == {"lists": beam_md5(beam)}
    other = (otp_lib().glob("stdlib-*/ebin/maps.beam")).__next__().read_bytes()
    (tmp_path / "b" / "ebin" / "lists.beam").write_bytes(other)  # rewritten in place
    assert cache.md5(tmp_path / "b" / "ebin" / "lists.beam") == beam_md5(other) != beam_md5(beam)
    assert cache.ebin(tmp_path / "missing") is None
    assert cache.md5(tmp_path / "missing.beam") is None
