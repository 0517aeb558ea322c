"""`relctl versions` as a whole process, against what relx's `bin/<rel> versions` does.

    .venv/bin/python bench/versions_cli.py [--runs 10] [--rounds 5]

Builds the counter release, starts a private epmd, the node and a relctl-agent for it. Each
round then times, in turn, `runs` invocations of:
  - relx-style: bench/relx_versions.escript (start a VM, join as a hidden node, which_releases,
    print, exit), as relx's start script does for every command;
  - relctl: the installed `relctl --agent ... versions` console script (Python start-up, gRPC
    to the agent, the agent's which_releases on its open connection, print).
Both list the same node's releases in the same run. Also prints the client's import time.
Goal (issue 3): relctl at most 0.5x the escript's time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import node_and_agent  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def timed(argv: Sequence[str], env: dict[str, str], expect: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or expect not in proc.stdout:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return elapsed


def import_time_ms(runs: int = 10) -> float:
    """Median wall time of `python -c 'import agent.client.main'` minus a bare `python -c pass`."""
    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        return time.perf_counter() - started
    bare = statistics.median(run("pass") for _ in range(runs))
    full = statistics.median(run("import agent.client.main") for _ in range(runs))
    return (full - bare) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="invocations per peer per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with node_and_agent() as setup:
        target, agent = setup.target, setup.agent
        escript_env = dict(os.environ, HOME=str(target.home), ERL_EPMD_PORT=str(target.epmd_port))
        escript = ["escript", str(ROOT / "bench" / "relx_versions.escript"), target.name]
        # On the host, as an operator would: through the agent's Unix socket.
        relctl = [str(VENV_BIN / "relctl"), "--agent", agent.socket, "versions"]
        relctl_env = {k: v for k, v in os.environ.items() if k != "RELCTL_AGENT"}
        timed(escript, escript_env, "0.0.1")  # warm the page cache for both
        timed(relctl, relctl_env, "0.0.1")

        medians: dict[str, list[float]] = {"escript": [], "relctl": []}
        print(f"{'round':>5}  {'relx-style escript ms':>22}  {'relctl versions ms':>19}  ratio")
        for rnd in range(1, args.rounds + 1):
            e = [timed(escript, escript_env, "0.0.1") for _ in range(args.runs)]
            r = [timed(relctl, relctl_env, "0.0.1") for _ in range(args.runs)]
            me, mr = statistics.median(e), statistics.median(r)
            medians["escript"].append(me)
            medians["relctl"].append(mr)
            print(f"{rnd:>5}  {me * 1e3:>22.1f}  {mr * 1e3:>19.1f}  {mr / me:.2f}x")
        esc = statistics.median(medians["escript"])
        rel = statistics.median(medians["relctl"])
        print(f"\nmedian over {args.rounds} rounds of {args.runs} runs each:")
        print(f"  relx-style escript (new VM per command): {esc * 1e3:7.1f} ms")
        print(f"  relctl versions (whole process):         {rel * 1e3:7.1f} ms")
        print(f"  ratio relctl / escript: {rel / esc:.2f}x (goal: at most 0.50x)")
        print(f"  import agent.client.main: {import_time_ms():.1f} ms over a bare interpreter start")


if __name__ == "__main__":
    main()
