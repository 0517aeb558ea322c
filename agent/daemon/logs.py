"""Logging to stderr in the form journald keeps well.

Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) each line starts with a
syslog priority prefix (`<4>`) so journald records the level, and carries no timestamp of its
own (journald adds one). Elsewhere lines carry a timestamp and the level name. Secrets, such as
cookies, are never passed to the logger in the first place.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

# A message never spans lines or moves the terminal: a newline in a request's string must not
# forge a log line of its own. Tracebacks (exc_text) keep their lines.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                  0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    return text.translate(_CONTROLS)


class EscapingFormatter(logging.Formatter):
    """A formatter whose messages hold no control characters."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(EscapingFormatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        # journald splits on newlines: give each line of a traceback the record's priority.
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stream_is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd gave us ($JOURNAL_STREAM=dev:inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def configure(level: str = "info", stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(EscapingFormatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger("relctl")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
