"""Log lines for journald (priority prefix) and for a terminal (timestamp and level)."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import pytest

from agent.daemon import logs


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("relctl.agent", logging.WARNING, __file__, 1,
                                   "node %s is down", ("a@h",), sys.exc_info())
    lines = logs.JournalFormatter().format(record).splitlines()
    assert lines[0] == "<4>relctl.agent: node a@h is down"
    assert lines[1] == "<4>Traceback (most recent call last):"
    assert len(lines) > 3 and all(line.startswith("<4>") for line in lines)


@pytest.mark.parametrize("journal", [True, False])
def test_a_message_cannot_forge_a_log_line(journal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newline (or any control character) in a request's string stays on its line."""
    forged = "0.0.2\n2026-01-01T00:00:00+0000 INFO relctl.agent: ready\x1b[2J"
    record = logging.LogRecord("relctl.agent", logging.INFO, __file__, 1,
                               "upgrade to %s refused", (forged,), None)
    formatter = logs.JournalFormatter() if journal else logs.EscapingFormatter("%(message)s")
    [line] = formatter.format(record).splitlines()
    assert line.endswith("upgrade to 0.0.2\\n2026-01-01T00:00:00+0000 INFO relctl.agent: "
                         "ready\\x1b[2J refused")


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
