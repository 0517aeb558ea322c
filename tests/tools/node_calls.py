"""One RPC to a test node from the test's own hidden node, through relctl's bridge (an `erl`
probe, tests.tools.otp_procs.erl_rpc, would start a VM per call; that one stays the
independent reference)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bridge import Node
from tests.tools.otp_procs import NodeProc


def node_call(node: NodeProc, module: str, function: str, args: Sequence[Any] = ()) -> Any:
    """``module:function(args)`` on ``node``, over a connection made for this call."""
    async def call() -> Any:
        bridge = Node(cookie=node.cookie, epmd_port=node.epmd_port)
        async with bridge.connect(node.name, timeout=5.0) as conn:
            return await conn.call(module, function, list(args), timeout=10.0)
    return asyncio.run(call())
