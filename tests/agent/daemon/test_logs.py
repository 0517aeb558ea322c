"""Log lines for journald (priority prefix) and for a terminal (timestamp and level)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from agent.daemon import logs


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    record = logging.LogRecord("relctl.agent", logging.WARNING, __file__, 1,
                               "node %s is down\nsecond line", ("a@h",), None)
    assert logs.JournalFormatter().format(record) == (
        "<4>relctl.agent: node a@h is down\n<4>second line")


def test_journal_stream_is_recognised_by_device_and_inode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.stream_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not logs.stream_is_journal(stream)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not logs.stream_is_journal(io.StringIO())


def test_terminal_lines_have_a_timestamp_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.configure("info", stream)
    logging.getLogger("relctl.agent").info("ready")
    logging.getLogger("relctl.agent").debug("hidden")
    [line] = stream.getvalue().splitlines()
    assert line.endswith(" INFO relctl.agent: ready") and line[:4].isdigit()
