"""The main job on the embedded sample: build the counter release (0.0.1, and 0.0.2 whose
gen_server state changes shape), start a node from it (with a private epmd on a free port),
start `relctl-agent` for that node, show `relctl versions`, then upgrade the node live with
`relctl upgrade 0.0.2 --tarball ...` while a client keeps calling `counter:incr/0`, show that no
call failed and the count carried over into the new state, and downgrade again. Everything it
started is stopped by pid at the end.

    bash examples/run-demo
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge import Atom, BridgeError, Node, format_term  # noqa: E402
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


async def incr_while(target: NodeProc, stop: asyncio.Event) -> tuple[int, list[str], int, object]:
    """Call counter:incr() back to back until ``stop``; return (ok, errors, last count, state)."""
    node = Node(cookie=target.cookie, epmd_port=target.epmd_port)
    async with node.connect(target.name, timeout=5.0) as conn:
        ok, errors = 0, []
        while not stop.is_set():
            try:
                await conn.call("counter", "incr", [], timeout=10.0)
                ok += 1
            except BridgeError as exc:
                errors.append(str(exc))
        return ok, errors, await conn.call("counter", "get", []), await conn.call(
            "sys", "get_state", [Atom("counter")])


async def upgrade_under_load(target: NodeProc, agent_address: str, command: list[str]) -> None:
    before = await _count(target)
    stop = asyncio.Event()
    calls = asyncio.create_task(incr_while(target, stop))
    await asyncio.sleep(0.3)
    print(f"\n$ relctl --agent {agent_address} {' '.join(command)}   "
          "(while a client calls counter:incr() in a loop)")
    result = await asyncio.to_thread(relctl, *command, agents=[agent_address], timeout=300)
    print(result.stdout + result.stderr, end="")
    await asyncio.sleep(0.3)
    stop.set()
    ok, errors, count, state = await calls
    print(f"\n{ok} counter:incr() calls during the {command[0]}, {len(errors)} failed; "
          f"count {before} -> {count} ({'nothing lost' if count == before + ok else 'MISMATCH'}); "
          f"state now {format_term(state)}")
    for error in errors[:3]:
        print(f"  failed call: {error}")
    if result.returncode != 0 or errors or count != before + ok:
        raise SystemExit(f"demo: the live {command[0]} did not go as it should")


async def _count(target: NodeProc) -> int:
    node = Node(cookie=target.cookie, epmd_port=target.epmd_port)
    async with node.connect(target.name, timeout=5.0) as conn:
        count: int = await conn.call("counter", "get", [])
        return count


def ask_agent(work: Path, target: NodeProc, tarball: Path) -> None:
    # As on a production host: relctl reaches the agent through its Unix socket (here in the
    # demo's directory instead of /run/relctl), with no token; TCP would need one.
    socket = f"unix:{work / 'agent.sock'}"
    agent = start_agent(work / "agent", [NodeEntry(target.name, target.cookie, target.epmd_port)],
                        extra_agent={"listen": socket})
    with agent:
        print(f"\nrelctl-agent running (pid {agent.pid}), gRPC on {socket}, "
              f"metrics on http://127.0.0.1:{agent.metrics_port}/metrics")
        for command in (["versions"], ["nodes"], ["ping"], ["versions", "-o", "json"]):
            print(f"\n$ relctl --agent {socket} {' '.join(command)}")
            result = relctl(*command, agents=[socket])
            print(result.stdout + result.stderr, end="")
        up = [line for line in agent.metrics_text().splitlines() if line.startswith("beam_")]
        print("\n$ curl /metrics | grep ^beam_\n" + "\n".join(up))
        asyncio.run(upgrade_under_load(target, socket,
                                       ["upgrade", "0.0.2", "--tarball", str(tarball)]))
        asyncio.run(upgrade_under_load(target, socket, ["downgrade", "0.0.1"]))
        print(f"\n$ relctl --agent {socket} operations")
        print(relctl("operations", agents=[socket]).stdout, end="")
        print(f"\n$ relctl --agent {socket} audit")
        print(relctl("audit", agents=[socket]).stdout, end="")
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
                ask_agent(work, target, build.tarball("0.0.2"))
        print("node and epmd stopped")


if __name__ == "__main__":
    main()
