"""The hot-upgrade cycle 0.0.1 -> 0.0.2 -> 0.0.1, same tarballs, same node, three ways per round:

    .venv/bin/python bench/upgrade.py [--rounds 5]

  - relctl: `relctl upgrade 0.0.2 --tarball T` then `relctl downgrade 0.0.1`, whole processes;
  - relx-style: bench/relx_upgrade.escript, the driver relx's start script runs (a new VM per
    command: copy, unpack, check, install, make permanent; then install, make permanent);
  - release_handler's own time: the same release_handler calls, each timed by timer:tc inside
    the node.
The agent's overhead is its operations' durations (from the journal; the upload is a separate
RPC, excluded) minus release_handler's own time; the agent's time is also printed by step (the
journal's step durations, medians; release_handler's calls inside them marked). Also measured: `relctl upgrade` of a release
unpacked ahead with `relctl unpack`. Between cycles `relctl remove 0.0.2` resets the node
(not timed). Goals (issue 4): relctl <= 0.75x the escript; agent overhead <= 10 ms.
And the node's own time to make the release unpacked (issue 16), each timed by timer:tc inside
the node: unpack_release of the staged tarball, against set_unpacked of the same tarball that
the agent's code extracted and placed (goal: at most 0.1x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import node_and_agent  # noqa: E402
from agent.release.tarballs.check import inspect_tarball  # noqa: E402
from agent.release.tarballs.extract import extract, place  # noqa: E402
from tests.tools.otp_procs import NodeProc, erl_eval  # noqa: E402
from tests.tools.settings import MAX_UPLOAD  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ESCRIPT = ROOT / "bench" / "relx_upgrade.escript"


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout


def op_seconds(op: dict[str, Any]) -> float:
    start = datetime.fromisoformat(op["started_at"])
    end = datetime.fromisoformat(op["finished_at"])
    return (end - start).total_seconds()


# Steps that are one release_handler call each (as the agent timed them, RPC included).
RH_STEPS = {"unpack", "check", "install", "make_permanent"}


def own_seconds(op: dict[str, Any]) -> float:
    """The agent's time in an operation outside its release_handler calls."""
    rh = sum(s["duration_ms"] or 0.0 for s in op["steps"] if s["name"] in RH_STEPS) / 1e3
    return op_seconds(op) - rh


class Bench:
    def __init__(self, target: NodeProc, agent_address: str, tarball: Path, unpack_name: str,
                 ) -> None:
        self.relctl = [str(VENV_BIN / "relctl"), "--agent", agent_address]
        self.env = {k: v for k, v in os.environ.items() if k != "RELCTL_AGENT"}
        self.escript_env = dict(os.environ, HOME=str(target.home),
                                ERL_EPMD_PORT=str(target.epmd_port))
        self.target = target
        self.tarball = tarball
        self.unpack_name = unpack_name

    def reset(self) -> None:
        run([*self.relctl, "remove", "0.0.2"], self.env)

    def last_ops(self, n: int) -> list[dict[str, Any]]:
        _, out = run([*self.relctl, "operations", "--limit", str(n), "-o", "json"], self.env)
        ops: list[dict[str, Any]] = json.loads(out)["operations"]
        return ops

    def relctl_cycle(self) -> tuple[float, float, float, list[dict[str, Any]]]:
        up, _ = run([*self.relctl, "upgrade", "0.0.2", "--tarball", str(self.tarball)], self.env)
        down, _ = run([*self.relctl, "downgrade", "0.0.1"], self.env)
        ops = self.last_ops(2)
        self.reset()
        return (up + down, sum(op_seconds(o) for o in ops), sum(own_seconds(o) for o in ops),
                ops)

    def escript(self, mode: str) -> tuple[float, str]:
        up = run(["escript", str(ESCRIPT), self.target.name, mode, "upgrade", "0.0.2",
                  str(self.tarball), self.unpack_name], self.escript_env)
        down = run(["escript", str(ESCRIPT), self.target.name, mode, "downgrade", "0.0.1"],
                   self.escript_env)
        self.reset()
        return up[0] + down[0], up[1] + down[1]

    def release_handler_seconds(self) -> float:
        _, out = self.escript("tc")
        return sum(json.loads(line)["release_handler_us"] for line in out.splitlines()) / 1e6

    def node_unpack_us(self) -> tuple[int, int, float]:
        """The node's own time for unpack_release, then for set_unpacked after the agent's
        extraction (µs, timer:tc in the node), and the agent's extract + place (s)."""
        root = self.target.root
        shutil.copyfile(self.tarball, root / "releases" / f"{self.unpack_name}.tar.gz")
        rh = self._tc(f'release_handler, unpack_release, ["{self.unpack_name}"]')
        self.reset()
        started = time.perf_counter()
        tarball = inspect_tarball(self.tarball, max_size=MAX_UPLOAD)
        extracted = extract(tarball, root)
        place(extracted, root, tarball.version)
        agent_s = time.perf_counter() - started
        libs = ",".join(f'{{{app},"{vsn}","lib"}}' for app, vsn in tarball.applications)
        su = self._tc(f'release_handler, set_unpacked, ["{extracted.rel_file}", [{libs}]]')
        shutil.rmtree(extracted.tmp)
        self.reset()
        return rh, su, agent_s

    def _tc(self, mfa: str) -> int:
        out = erl_eval(self.target, f"timer:tc({mfa})")
        us, _, result = out.strip("{}").partition(",")
        if not result.startswith("{ok,"):
            raise SystemExit(f"timer:tc({mfa}) -> {out}")
        return int(us)

    def unpacked_ahead(self) -> tuple[float, float]:
        run([*self.relctl, "unpack", "0.0.2", "--tarball", str(self.tarball)], self.env)
        up, _ = run([*self.relctl, "upgrade", "0.0.2"], self.env)
        [op] = self.last_ops(1)
        run([*self.relctl, "downgrade", "0.0.1"], self.env)
        self.reset()
        return up, op_seconds(op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with node_and_agent() as setup:
        build, target, agent = setup.build, setup.target, setup.agent
        # On the host, as an operator would: through the agent's Unix socket.
        bench = Bench(target, agent.socket, build.tarball("0.0.2"), build.unpack_name("0.0.2"))
        bench.relctl_cycle()  # warm up both paths once
        bench.escript("relx")
        rows: list[dict[str, float]] = []
        by_step: dict[tuple[str, str], list[float]] = defaultdict(list)
        print(f"{'round':>5} {'relctl s':>9} {'escript s':>10} {'ratio':>6} "
              f"{'agent ops ms':>13} {'rh own ms':>10} {'ops-rh ms':>10} {'own ms':>7} "
              f"{'ahead: relctl ms':>17} {'op ms':>7} {'node: unp ms':>10} {'set ms':>8} "
              f"{'agent ms':>8}")
        for rnd in range(1, args.rounds + 1):
            r_total, r_ops, own, ops = bench.relctl_cycle()
            for op in ops:
                for s in op["steps"]:
                    if s["duration_ms"] is not None:
                        by_step[(op["kind"], s["name"])].append(s["duration_ms"])
                by_step[(op["kind"], "(outside the steps)")].append(
                    op_seconds(op) * 1e3 - sum(s["duration_ms"] or 0.0 for s in op["steps"]))
            e_total, _ = bench.escript("relx")
            rh = bench.release_handler_seconds()
            ahead_total, ahead_op = bench.unpacked_ahead()
            unpack_us, set_us, agent_s = bench.node_unpack_us()
            row = {"relctl": r_total, "escript": e_total, "ops": r_ops, "rh": rh,
                   "overhead": r_ops - rh, "own": own, "ahead": ahead_total,
                   "ahead_op": ahead_op, "unpack_release": unpack_us / 1e6,
                   "set_unpacked": set_us / 1e6, "agent_extract": agent_s}
            rows.append(row)
            print(f"{rnd:>5} {r_total:>9.3f} {e_total:>10.3f} {r_total / e_total:>5.2f}x "
                  f"{r_ops * 1e3:>13.1f} {rh * 1e3:>10.1f} {(r_ops - rh) * 1e3:>10.1f} "
                  f"{own * 1e3:>7.1f} "
                  f"{ahead_total * 1e3:>17.1f} {ahead_op * 1e3:>7.1f} "
                  f"{unpack_us / 1e3:>10.1f} {set_us / 1e3:>8.1f} {agent_s * 1e3:>8.1f}")
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"\nmedians over {args.rounds} rounds (one cycle = upgrade + downgrade):")
        print(f"  relctl, whole processes:          {med['relctl'] * 1e3:8.1f} ms")
        print(f"  relx-style escript driver:        {med['escript'] * 1e3:8.1f} ms")
        print(f"  ratio relctl / escript:           {med['relctl'] / med['escript']:8.2f}x "
              "(goal: at most 0.75x)")
        print(f"  release_handler's own time:       {med['rh'] * 1e3:8.1f} ms")
        print(f"  the agent's operations:           {med['ops'] * 1e3:8.1f} ms")
        print(f"  agent ops minus release_handler:  {med['overhead'] * 1e3:8.1f} ms "
              "(across runs: release_handler's own time varies run to run)")
        print(f"  agent's own time per cycle:       {med['own'] * 1e3:8.1f} ms "
              "(same operations, outside their release_handler calls; goal: at most 10 ms)")
        print(f"  upgrade of a release unpacked ahead: relctl {med['ahead'] * 1e3:.1f} ms "
              f"whole process, operation {med['ahead_op'] * 1e3:.1f} ms")
        print(f"  node's own time, unpack_release:  {med['unpack_release'] * 1e3:8.1f} ms")
        print(f"  node's own time, set_unpacked:    {med['set_unpacked'] * 1e3:8.1f} ms "
              f"({med['set_unpacked'] / med['unpack_release']:.3f}x; goal: at most 0.1x)")
        print(f"  the agent's extract + place:      {med['agent_extract'] * 1e3:8.1f} ms "
              "(the same tarball, in the agent, off the node)")
        print_steps(by_step)


def print_steps(by_step: dict[tuple[str, str], list[float]]) -> None:
    """The agent's time by step of relctl's upgrade and downgrade (journal, medians): a step
    marked * is one release_handler call, whose own time is most of it."""
    outside = "(outside the steps)"
    names = [name for kind in ("upgrade", "downgrade") for k, name in by_step
             if k == kind and name != outside]
    names = [*dict.fromkeys(names), outside]
    print("\nthe agent's time by step (median ms; * = one release_handler call inside):")
    print(f"  {'step':<22} {'upgrade':>9} {'downgrade':>10}")
    for name in names:
        cells = [f"{statistics.median(by_step[(kind, name)]):9.1f}"
                 if by_step.get((kind, name)) else f"{'-':>9}"
                 for kind in ("upgrade", "downgrade")]
        mark = "*" if name in RH_STEPS else " "
        print(f"  {name + mark:<22} {cells[0]} {cells[1]:>10}")


if __name__ == "__main__":
    main()
