"""Fixtures the agent's unit tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A release root as a node has it before an unpack: releases/, and lib/kernel-8.5.3 whose
    kernel.app holds b"the node's own" (a tarball's copy must never replace it)."""
    root = tmp_path / "root"
    (root / "releases").mkdir(parents=True)
    (root / "lib" / "kernel-8.5.3" / "ebin").mkdir(parents=True)
    (root / "lib" / "kernel-8.5.3" / "ebin" / "kernel.app").write_bytes(b"the node's own")
    return root
