"""The agent's defaults (agent/config/values.py) as keyword arguments, for the parts a test
builds by hand: they take every setting as a required keyword, so a test names only the ones
it changes and gets the rest from the one place they are written.

    NodeLink(node, **settings(LINK, connect_timeout=1.0))
"""

from __future__ import annotations

from typing import Any

from agent.config import AgentConfig, default

# The [agent] settings each part takes.
LINK = ("refresh_interval", "rpc_timeout", "connect_timeout", "reconnect_max_delay")
UPLOADS = ("max_upload_bytes", "uploads_max_bytes", "upload_idle_expiry")
METRICS = ("metrics_max_connections", "metrics_idle_timeout")


def settings(names: tuple[str, ...], **changes: Any) -> dict[str, Any]:
    """``names`` at their defaults, with ``changes`` (which must be among them) applied."""
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise TypeError(f"{unknown} are not among {names}")
    return {name: default(AgentConfig, name) for name in names} | changes


# The largest tarball the agent takes (agent.max_upload_bytes): inspect_tarball's max_size.
MAX_UPLOAD: int = default(AgentConfig, "max_upload_bytes")
