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
from agent.relfile import RelupVersions, decode, relup_versions


async def _read(path: Path) -> RelupVersions | None:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        return None
    try:
        return await asyncio.to_thread(relup_versions, decode(data))
    except RequestError:  # RelSyntaxError: check_install_release reports a bad relup
        return None


RESTART_EMULATOR = "restart_emulator"
RESTART_NEW_EMULATOR = "restart_new_emulator"


async def restart_kind(releases_dir: str, running: str, version: str) -> str:
    """How going from ``running`` to ``version`` restarts the emulator: RESTART_NEW_EMULATOR
    (the script starts with it: install answers continue_after_restart), RESTART_EMULATOR
    (the script holds it: install answers ok, then reboots), or "" (no restart)."""
    up = await _read(Path(releases_dir) / version / "relup")
    if up is not None and up.version == version and running in up.up_from:
        return (RESTART_NEW_EMULATOR if running in up.new_emulator_from else
                RESTART_EMULATOR if running in up.up_restart else "")
    down = await _read(Path(releases_dir) / running / "relup")
    if down is not None and down.version == running and version in down.down_restart:
        return RESTART_EMULATOR
    return ""


def heart_needed(restart: str, running: str, version: str, node: str) -> str:
    """The refusal when the node runs without heart: release_handler restarts the emulator
    through it (heart:set_cmd of its start program, then init:reboot), and without heart
    set_cmd fails, the install crashes and release_handler restarts the node on its
    permanent release."""
    return (f"going from {running} to {version} restarts the emulator ({restart} in the "
            f"relup), which release_handler does through heart (heart:set_cmd, then "
            f"init:reboot), but {node} runs without heart: the install would crash and the "
            "node restart on its permanent release. Start the node with -heart (in its vm.args: "
            "relx's and mix's start scripts then set HEART_COMMAND), or build the relup "
            "without the restart")
