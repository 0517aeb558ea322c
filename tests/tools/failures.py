"""What a test must not leave unnoticed: an asyncio exception nobody handled in this process
(a task's exception never retrieved, a failing callback), and a traceback in the log of an
agent the test started. conftest.py fails the test with what was found.

The agents' logs are read from the offset each had when it started, so a restarted agent's
earlier life (appended to the same file) is not read twice. A test that provokes a traceback
on purpose says so with ``@pytest.mark.agent_traceback_expected``.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

# In the agent's log: log.exception() output, and asyncio's own reports.
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "exception was never retrieved",
                     "Exception in callback", "Task was destroyed but it is pending")

_loop_errors: list[str] = []
_agent_logs: list[tuple[Path, int]] = []
_installed = False


def install() -> None:
    """Record every context asyncio's loops pass to their exception handler, whatever handler
    the loop has (the default one logs and moves on, so a test would pass)."""
    global _installed
    if _installed:
        return
    original = asyncio.BaseEventLoop.call_exception_handler

    def recording(loop: asyncio.BaseEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        _loop_errors.append(f"{context.get('message', 'asyncio error')}: {exc!r}")
        original(loop, context)

    setattr(asyncio.BaseEventLoop, "call_exception_handler", recording)  # noqa: B010 - a patch
    _installed = True


def agent_started(log_path: Path, offset: int) -> None:
    _agent_logs.append((log_path, offset))


def take_loop_errors() -> list[str]:
    gc.collect()  # a task whose exception nobody read reports it when it is collected
    found = list(_loop_errors)
    _loop_errors.clear()
    return found


def take_agent_tracebacks() -> list[str]:
    """The log excerpts (from each traceback marker on) of agents started since the last call."""
    found = []
    for path, offset in _agent_logs:
        try:
            text = path.read_text(errors="replace")[offset:]
        except FileNotFoundError:
            continue
        for marker in TRACEBACK_MARKERS:
            at = text.find(marker)
            if at >= 0:
                start = text.rfind("\n", 0, max(at - 300, 0)) + 1
                found.append(f"{path}:\n{text[start:at + 2500]}")
                break
    _agent_logs.clear()
    return found
