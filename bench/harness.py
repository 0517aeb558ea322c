"""What the benchmarks share: the counter release built, a private epmd, a node from the
0.0.1 target and a relctl-agent for it, all stopped by pid when the block ends.

The agent listens where production agents do: on a Unix socket (``agent.socket``, what
`relctl` uses on the host) and on loopback TCP with a bearer token (``agent.address``; the
token is in :func:`tests.tools.agent_proc.relctl_env`)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tools.agent_proc import AgentProc, NodeEntry, start_agent  # noqa: E402
from tests.tools.otp_procs import NodeProc, free_port, start_epmd, start_node  # noqa: E402
from tests.tools.release_fixture import ReleaseBuild, build_release, make_target_copy  # noqa: E402


@dataclass(frozen=True)
class Setup:
    build: ReleaseBuild
    target: NodeProc
    agent: AgentProc


@contextlib.contextmanager
def node_and_agent() -> Iterator[Setup]:
    with tempfile.TemporaryDirectory(prefix="relctl-bench-") as tmp:
        work = Path(tmp)
        build = build_release(work / "build")
        root = make_target_copy(build, work / "target")
        with start_epmd(log_dir=work) as epmd, \
                start_node(root, epmd_port=epmd.port, workdir=work / "node") as target, \
                start_agent(work / "agent", [NodeEntry(target.name, target.cookie, epmd.port)],
                            metrics=False,
                            extra_agent={"listen": [f"unix:{work / 'agent.sock'}",
                                                    f"127.0.0.1:{free_port()}"]}) as agent:
            yield Setup(build, target, agent)
