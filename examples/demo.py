"""The main job on the embedded sample, for now: build the counter release, start a node from
it (with a private epmd on a free port), join it as a hidden node through the bridge, then start
`relctl-agent` for that node and ask it with `relctl versions`, `relctl nodes` and `relctl ping`.
Everything it started is stopped by pid at the end.

    bash examples/run-demo
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge import Atom, Node  # noqa: E402
from tests.tools.agent_proc import NodeEntry, relctl, start_agent  # noqa: E402
from tests.tools.otp_procs import NodeProc, start_epmd, start_node  # noqa: E402
from tests.tools.release_fixture import build_release, make_target_copy  # noqa: E402


async def show(target: NodeProc) -> None:
    node = Node(cookie=target.cookie, epmd_port=target.epmd_port)
    async with node.connect(target.name, timeout=5.0) as conn:
        hidden = Atom(node.name) in await conn.call("erlang", "nodes", [Atom("hidden")])
        print(f"connected to {conn.peer} as hidden node {node.name} (listed in nodes(hidden): {hidden})")
        releases = await conn.call("release_handler", "which_releases", [], timeout=30.0)
        print(f"\n{'RELEASE':10} {'VERSION':8} STATUS")
        for name, version, _libs, status in releases:
            print(f"{name:10} {version:8} {status}")
        await conn.call("counter", "incr", [])
        print(f"\ncounter:incr() -> {await conn.call('counter', 'get', [])} "
              f"(state {await conn.call('sys', 'get_state', [Atom('counter')])!r})")


def ask_agent(work: Path, target: NodeProc) -> None:
    agent = start_agent(work / "agent", [NodeEntry(target.name, target.cookie, target.epmd_port)])
    with agent:
        print(f"\nrelctl-agent running (pid {agent.pid}), gRPC on {agent.address}, "
              f"metrics on http://127.0.0.1:{agent.metrics_port}/metrics")
        for command in (["versions"], ["nodes"], ["ping"], ["versions", "-o", "json"]):
            print(f"\n$ relctl --agent {agent.address} {' '.join(command)}")
            result = relctl(*command, agents=[agent.address])
            print(result.stdout + result.stderr, end="")
        up = [line for line in agent.metrics_text().splitlines() if line.startswith("beam_")]
        print("\n$ curl /metrics | grep ^beam_\n" + "\n".join(up))
    print(f"\nrelctl-agent stopped (exit {agent.returncode})")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="relctl-demo-") as tmp:
        work = Path(tmp)
        print("building the counter release (0.0.1 and 0.0.2, relup, tarballs) ...")
        build = build_release(work / "build")
        root = make_target_copy(build, work / "target")
        with start_epmd(log_dir=work) as epmd:
            print(f"private epmd on 127.0.0.1:{epmd.port} (pid {epmd.pid})")
            with start_node(root, epmd_port=epmd.port, workdir=work / "node") as target:
                print(f"node {target.name} running from {root} (pid {target.pid})")
                asyncio.run(show(target))
                ask_agent(work, target)
        print("node and epmd stopped")


if __name__ == "__main__":
    main()
