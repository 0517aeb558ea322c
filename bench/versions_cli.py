"""`relctl versions` as a whole process, against what relx's `bin/<rel> versions` does.

    .venv/bin/python bench/versions_cli.py [--runs 10] [--rounds 5]

Builds the counter release, starts a private epmd, the node and a relctl-agent for it. Each
round then times, in turn, `runs` invocations of:
  - relx-style: bench/relx_versions.escript (start a VM, join as a hidden node, which_releases,
    print, exit), as relx's start script does for every command;
  - relctl: the installed `relctl --agent ... versions` console script (Python start-up, gRPC
    to the agent, the agent's which_releases on its open connection, print).
  - relx (with --relx-release DIR): a rebar3/relx release's own `bin/NAME versions` against
    its own node, started with `bin/NAME daemon` (and stopped) by this script.
The escript and relctl list the same node's releases in the same run. Also prints the
client's import time. Goals (issue 16): relctl at most 0.75x the escript, 0.5x relx's script.

    python3 -m venv /tmp/relctl-bench-venv && /tmp/relctl-bench-venv/bin/pip install .
    .venv/bin/python bench/versions_cli.py --relctl /tmp/relctl-bench-venv/bin/relctl
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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


def import_time_ms(python: Path, runs: int = 10) -> float:
    """Median wall time of `python -c 'import agent.client.main'` minus a bare `python -c pass`,
    outside the source tree (so that an installed relctl is what is imported)."""
    def run(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([str(python), "-c", code], cwd="/", check=True)
        return time.perf_counter() - started
    bare = statistics.median(run("pass") for _ in range(runs))
    full = statistics.median(run("import agent.client.main") for _ in range(runs))
    return (full - bare) * 1e3


@contextlib.contextmanager
def relx_node(root: Path | None) -> Iterator[list[str] | None]:
    """A relx release started with its own script (`bin/NAME daemon`), and the argv of its
    `bin/NAME versions`; stopped with `bin/NAME stop` at the end. None without ``root``."""
    if root is None:
        yield None
        return
    script = root / "bin" / root.name  # relx's layout: _build/default/rel/NAME/bin/NAME
    subprocess.run([str(script), "daemon"], check=True, timeout=60)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(script), "ping"], capture_output=True,
                             timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"{script} daemon: the node did not answer ping")
            time.sleep(0.2)
        yield [str(script), "versions"]
    finally:
        subprocess.run([str(script), "stop"], capture_output=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="invocations per peer per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--relctl", type=Path, default=VENV_BIN / "relctl",
                        help="the relctl to time (default: this venv's); a regular (non-editable) "
                             "install, as users get it, e.g. /tmp/relctl-bench-venv/bin/relctl")
    parser.add_argument("--relx-release", type=Path, default=None, metavar="DIR",
                        help="a release built by rebar3/relx (_build/default/rel/NAME): also time its "
                             "`bin/NAME versions` against its own running node")
    args = parser.parse_args()

    with node_and_agent() as setup, relx_node(args.relx_release) as relx:
        target, agent = setup.target, setup.agent
        escript_env = dict(os.environ, HOME=str(target.home), ERL_EPMD_PORT=str(target.epmd_port))
        # On the host, as an operator would: through the agent's Unix socket.
        relctl_env = {k: v for k, v in os.environ.items() if k != "RELCTL_AGENT"}
        peers: dict[str, tuple[list[str], dict[str, str]]] = {
            "escript": (["escript", str(ROOT / "bench" / "relx_versions.escript"), target.name],
                        escript_env),
            "relctl": ([str(args.relctl), "--agent", agent.socket, "versions"], relctl_env)}
        if relx is not None:
            peers["relx"] = (relx, dict(os.environ))
        for argv, env in peers.values():  # warm the page cache for each
            timed(argv, env, "0.0.1")

        medians: dict[str, list[float]] = {name: [] for name in peers}
        print(f"{'round':>5}" + "".join(f"  {name + ' ms':>11}" for name in peers)
              + "  relctl/escript" + ("  relctl/relx" if relx else ""))
        for rnd in range(1, args.rounds + 1):
            line = f"{rnd:>5}"
            for name, (argv, env) in peers.items():
                medians[name].append(statistics.median(timed(argv, env, "0.0.1")
                                                       for _ in range(args.runs)))
                line += f"  {medians[name][-1] * 1e3:>11.1f}"
            line += f"  {medians['relctl'][-1] / medians['escript'][-1]:>14.2f}"
            if relx:
                line += f"  {medians['relctl'][-1] / medians['relx'][-1]:>11.2f}"
            print(line)
        m = {name: statistics.median(values) for name, values in medians.items()}
        print(f"\nmedian over {args.rounds} rounds of {args.runs} runs each:")
        print(f"  relx-style escript (new VM per command): {m['escript'] * 1e3:7.1f} ms")
        if relx:
            print(f"  relx's bin/NAME versions:                {m['relx'] * 1e3:7.1f} ms")
        print(f"  relctl versions (whole process):         {m['relctl'] * 1e3:7.1f} ms")
        print(f"  ratio relctl / escript: {m['relctl'] / m['escript']:.2f}x (goal: at most 0.75x)")
        if relx:
            print(f"  ratio relctl / relx:    {m['relctl'] / m['relx']:.2f}x (goal: at most 0.50x)")
        print(f"  import agent.client.main: {import_time_ms(args.relctl.parent / 'python'):.1f} "
              "ms over a bare interpreter start")


if __name__ == "__main__":
    main()
