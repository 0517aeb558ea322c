"""A whole rollout over many agents against the upgrade of one node by one agent:

    .venv/bin/python bench/fleet_rollout.py [--agents 10] [--rounds 2]

N counter nodes (0.0.1) on one epmd, each with its own relctl-agent on loopback TCP, all on
this host. Per round, each a whole `relctl` process, as a user runs it:

  - one:      `relctl --agent A1 upgrade 0.0.2 --tarball T` (upload, unpack, switch);
  - one, switch only: `relctl --agent A1 unpack ...` (not timed), then `relctl upgrade 0.0.2`;
  - fleet:    `relctl --agent A1 ... --agent AN upgrade 0.0.2 --tarball T --batch N` (staging
              on all N at once, then one batch of N); its switch phase is the whole process
              minus the staging phase its JSON reports (process start and tarball digest
              count in the switch, as they do in "one, switch only");
  - fleet, --no-prestage: the same command in the old order (upload in the batch).

Between runs every node goes back to 0.0.1 (downgrade, remove 0.0.2; not timed). Goals
(issue 16): fleet / one <= 2x, fleet switch / one switch <= 1.5x. All N agents and nodes share
this host's cores, so the ratio also measures that contention: on a host with fewer cores than
agents, N concurrent unpacks cannot take the time of one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent  # noqa: E402
from tests.tools.otp_procs import NodeProc, start_epmd, start_node  # noqa: E402
from tests.tools.release_fixture import build_release, make_target_copy  # noqa: E402

TIMEOUT = 600.0


def timed(*args: str, agents: Sequence[str]) -> tuple[float, Any]:
    """Run `relctl`; (seconds, parsed JSON if -o json else None); exit on a failure."""
    started = time.perf_counter()
    result = relctl(*args, agents=agents, timeout=TIMEOUT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"relctl {' '.join(args[:3])} ... on {len(agents)} agent(s) failed "
                         f"({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed, result.json() if "json" in args else None


@contextlib.contextmanager
def fleet(size: int) -> Iterator[tuple[Path, list[NodeProc], list[AgentProc]]]:
    """``size`` nodes and agents; everything stopped by pid when the block ends."""
    with tempfile.TemporaryDirectory(prefix="relctl-bench-fleet-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        build = build_release(work / "build")
        epmd = stack.enter_context(start_epmd(log_dir=work))
        nodes: list[NodeProc] = []
        agents: list[AgentProc] = []
        for i in range(size):
            root = make_target_copy(build, work / f"target{i}")
            node = stack.enter_context(start_node(root, name=f"counter{i}@localhost",
                                                  epmd_port=epmd.port,
                                                  workdir=work / f"node{i}"))
            nodes.append(node)
        for i, node in enumerate(nodes):
            agents.append(stack.enter_context(start_agent(
                work / f"agent{i}", [NodeEntry(node.name, node.cookie, epmd.port)],
                metrics=False)))
        yield build.tarball("0.0.2"), nodes, agents


def reset(agents: Sequence[AgentProc]) -> None:
    """Every node back on 0.0.1 alone (as the nodes started), in parallel."""
    def one(agent: AgentProc) -> None:
        _, data = timed("versions", "-o", "json", agents=[agent.address])
        status = {r["version"]: r["status"] for n in data["nodes"] for r in n["releases"]}
        if "0.0.2" not in status:
            return
        if status["0.0.2"] in ("permanent", "current"):
            timed("downgrade", "0.0.1", agents=[agent.address])
        timed("remove", "0.0.2", agents=[agent.address])

    with ThreadPoolExecutor(len(agents)) as pool:
        list(pool.map(one, agents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with fleet(args.agents) as (tarball, _nodes, agents):
        addresses = [a.address for a in agents]
        one_agent = addresses[:1]
        T = str(tarball)
        n = str(args.agents)
        rows: list[dict[str, float]] = []
        print(f"{args.agents} agents, {args.agents} nodes; times in s (whole relctl processes)")
        print(f"{'round':>5} {'one':>6} {'one sw':>7} {'fleet':>6} {'stage':>6} {'fleet sw':>9} "
              f"{'no-pre':>7} {'ratio':>6} {'sw ratio':>9}")
        for rnd in range(1, args.rounds + 1):
            one, _ = timed("upgrade", "0.0.2", "--tarball", T, agents=one_agent)
            reset(agents[:1])
            timed("unpack", "0.0.2", "--tarball", T, agents=one_agent)
            one_switch, _ = timed("upgrade", "0.0.2", agents=one_agent)
            reset(agents[:1])
            whole, data = timed("upgrade", "0.0.2", "--tarball", T, "--batch", n, "-o", "json",
                                agents=addresses)
            assert all(r["result"] == "succeeded" for r in data["nodes"]), data
            stage = data["staging"]["duration_s"]
            reset(agents)
            legacy, _ = timed("upgrade", "0.0.2", "--tarball", T, "--batch", n, "--no-prestage",
                              agents=addresses)
            reset(agents)
            row = {"one": one, "one_switch": one_switch, "fleet": whole, "stage": stage,
                   "fleet_switch": whole - stage, "in_process_switch":
                   data["rollout"]["switch_duration_s"], "legacy": legacy}
            rows.append(row)
            print(f"{rnd:>5} {one:>6.2f} {one_switch:>7.2f} {whole:>6.2f} {stage:>6.2f} "
                  f"{whole - stage:>9.2f} {legacy:>7.2f} {whole / one:>5.2f}x "
                  f"{(whole - stage) / one_switch:>8.2f}x")
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"\nmedians over {args.rounds} round(s):")
        print(f"  one node, one agent, upload + upgrade:   {med['one']:7.2f} s")
        print(f"  one node, switch of a release unpacked:  {med['one_switch']:7.2f} s")
        print(f"  {n + ' agents, --batch ' + n + ', pre-staged:':<41}{med['fleet']:7.2f} s "
              f"(staging {med['stage']:.2f} s, switch {med['fleet_switch']:.2f} s; in-process "
              f"switch phase {med['in_process_switch']:.2f} s)")
        print(f"  {n + ' agents, --batch ' + n + ', --no-prestage:':<41}{med['legacy']:7.2f} s")
        print(f"  ratio fleet / one:                       {med['fleet'] / med['one']:7.2f}x "
              "(goal: at most 2x)")
        print(f"  ratio fleet switch / one switch:         "
              f"{med['fleet_switch'] / med['one_switch']:7.2f}x (goal: at most 1.5x)")


if __name__ == "__main__":
    main()
