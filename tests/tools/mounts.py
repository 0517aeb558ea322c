"""Read-only bind mounts for e2e tests (root with CAP_SYS_ADMIN only; skipped otherwise, failed
under CI). The ``read_only`` fixture of tests/e2e/conftest.py unmounts them after the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.tools.needs import unavailable


def mount_read_only(mounted: list[Path], path: Path) -> None:
    """Bind-mount ``path`` on itself read-only; ``mounted`` gets it, for the unmount."""
    bind = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True,
                          timeout=30)
    if bind.returncode != 0:
        unavailable(f"cannot bind-mount (needs root): {bind.stderr.decode().strip()}")
    mounted.append(path)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True,
                   capture_output=True, timeout=30)


def unmount_all(mounted: list[Path]) -> None:
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=30)
