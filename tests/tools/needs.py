"""Tests that need a tool or a privilege this machine may lack: elsewhere they skip with the
reason; under CI (``CI`` set) they fail with it, since .ci/setup installs every tool and CI runs
as root, so a skip there would only hide that the test never ran.

Every such skip goes through :func:`unavailable`: called in a test or fixture, or through the
``needs`` mark (:func:`needs_tool`, :func:`needs_root`) that tests/conftest.py checks before
each test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return bool(os.environ.get("CI"))


def unavailable(reason: str) -> NoReturn:
    """Skip the running test for ``reason``; under CI, fail it."""
    if under_ci():
        pytest.fail(f"{reason}; under CI this fails instead of skipping (.ci/setup installs "
                    "every tool, and CI runs as root)", pytrace=False)
    pytest.skip(reason)


def missing_tools(*tools: str, hint: str = "run .ci/setup") -> str | None:
    """Why the commands ``tools`` cannot run here (not on PATH), or None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return f"needs {', '.join(missing)} on PATH ({hint})" if missing else None


def not_root(what: str) -> str | None:
    """Why ``what`` cannot be done here (it needs root), or None."""
    return f"{what} needs root" if os.geteuid() != 0 else None


def needs_tool(*tools: str, hint: str = "run .ci/setup") -> pytest.MarkDecorator:
    """Mark: the test runs ``tools`` (skipped without them, failed under CI)."""
    return pytest.mark.needs(missing_tools(*tools, hint=hint))


def needs_root(what: str) -> pytest.MarkDecorator:
    """Mark: the test does ``what``, which needs root (skipped otherwise, failed under CI)."""
    return pytest.mark.needs(not_root(what))


def require_root(what: str) -> None:
    """In a test: stop here unless running as root (skip, or fail under CI)."""
    reason = not_root(what)
    if reason is not None:
        unavailable(reason)


def check_marks(item: pytest.Item) -> None:
    """What tests/conftest.py runs before each test: the reason of a ``needs`` mark that has
    one stops the test."""
    for mark in item.iter_markers("needs"):
        if mark.args and mark.args[0] is not None:
            unavailable(str(mark.args[0]))
