"""What the relup script release_handler is about to run says of the node's emulator.

A relup whose script holds ``restart_emulator`` (a downgrade across an OTP change, or one made
with systools' ``restart_emulator`` option) makes ``install_release`` answer ``{ok, ...}``
and then reboot the node into the release (release_handler's ``restart_emulator`` case:
``gen_server:reply`` then ``init:reboot()``): the install is not over when the answer comes,
and a verification at that moment meets a node going down. The switch waits for that restart,
as it does for ``continue_after_restart``, when this says the script restarts.

The script is picked as release_handler picks it: the target's relup up from the running
version, else the running version's relup down to the target. The files are read on this host
(the agent runs beside the node), as the preflight reads them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.errors import RequestError
from agent.relfile import RelupVersions, relup_versions


async def _read(path: Path) -> RelupVersions | None:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        return await asyncio.to_thread(relup_versions, text)
    except RequestError:  # RelSyntaxError: check_install_release reports a bad relup
        return None


async def restarts_emulator(releases_dir: str, running: str, version: str) -> bool:
    """Whether going from ``running`` to ``version`` runs a script holding restart_emulator."""
    up = await _read(Path(releases_dir) / version / "relup")
    if up is not None and up.version == version and running in up.up_from:
        return running in up.up_restart
    down = await _read(Path(releases_dir) / running / "relup")
    return down is not None and down.version == running and version in down.down_restart
