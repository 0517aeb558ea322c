"""relctl against relx's own upgrade, on one relx release built by Debian's rebar3 (issue 24):

    .venv/bin/python bench/vs_relx.py [--rounds 10]

The counter app as a rebar3/relx release (tests/tools/rebar3_fixture.py: `rebar3 release`,
`rebar3 relup`, `rebar3 tar`; include_erts false; .src config), one node started with relx's
own `bin/counter foreground` on a private epmd, one relctl-agent on a Unix socket. Each round,
interleaved and in alternating order, times as whole processes:

  - relctl: `relctl upgrade 0.0.2 --tarball T`, then `relctl downgrade 0.0.1`;
  - relx: `cp T releases/0.0.2/counter.tar.gz` + `bin/counter upgrade 0.0.2`, then
    `bin/counter downgrade 0.0.1` (what the relx documentation tells its users to run).

Between two timed cycles `relctl remove 0.0.2` resets the node (not timed). Also printed: the
agent's own steps of relctl's upgrade (from its -o json), medians over the rounds. Goals
(issue 24): upgrade <= 0.75x relx, downgrade <= 0.9x.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tools.agent_proc import NodeEntry, relctl_env, start_agent  # noqa: E402
from tests.tools.otp_procs import clean_env, start_epmd  # noqa: E402
from tests.tools.rebar3_fixture import (  # noqa: E402
    build_rebar3_release,
    make_target_copy,
    start_relx_node,
)

GREETING = "hello from the bench"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="relctl-vs-relx-") as tmp:
        work = Path(tmp)
        build = build_rebar3_release(work / "build")
        root = make_target_copy(build, work / "target")
        cookie = secrets.token_hex(16)
        socket = work / "agent.sock"
        with start_epmd(log_dir=work) as epmd, \
                start_relx_node(root, cookie=cookie, epmd_port=epmd.port, workdir=work / "node",
                                node_env={"GREETING": GREETING}) as node, \
                start_agent(work / "agent", [NodeEntry(node.name, cookie, epmd.port)],
                            metrics=False, extra_agent={"listen": f"unix:{socket}"}):
            relctl = [sys.executable, "-m", "agent.client", "--agent", f"unix:{socket}"]
            renv = relctl_env()
            xenv = clean_env({"HOME": str(work / "node" / "home"),
                              "ERL_EPMD_PORT": str(epmd.port), "RELX_TEST_NODE": node.name,
                              "GREETING": GREETING})
            script = str(root / "bin" / "counter")
            staged = root / "releases" / "0.0.2" / "counter.tar.gz"
            times: dict[str, list[float]] = defaultdict(list)
            steps: dict[str, list[float]] = defaultdict(list)

            def reset() -> None:
                timed([*relctl, "remove", "0.0.2"], renv)

            def with_relctl() -> None:
                up, done = timed([*relctl, "upgrade", "0.0.2", "--tarball", str(build.tarball),
                                  "-o", "json"], renv)
                for step in json.loads(done.stdout)["operation"]["steps"]:
                    if step.get("duration_ms") is not None:
                        steps[step["name"]].append(float(step["duration_ms"]))
                down, _ = timed([*relctl, "downgrade", "0.0.1"], renv)
                times["relctl upgrade"].append(up)
                times["relctl downgrade"].append(down)

            def with_relx() -> None:
                started = time.perf_counter()
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(build.tarball, staged)
                copy = time.perf_counter() - started
                up, _ = timed([script, "upgrade", "0.0.2"], xenv)
                down, _ = timed([script, "downgrade", "0.0.1"], xenv)
                times["relx upgrade"].append(copy + up)
                times["relx downgrade"].append(down)

            for i in range(rounds):
                for run in ((with_relctl, with_relx) if i % 2 == 0 else (with_relx, with_relctl)):
                    run()
                    reset()

    def median(name: str) -> float:
        return statistics.median(times[name]) * 1000

    print(f"relx release built by rebar3 ({build.build_seconds:.1f} s), {rounds} rounds, "
          "interleaved; medians, whole processes")
    print(f"{'':12} {'relctl':>10} {'relx':>10} {'ratio':>7}  goal")
    for op, goal in (("upgrade", 0.75), ("downgrade", 0.9)):
        a, b = median(f"relctl {op}"), median(f"relx {op}")
        print(f"{op:12} {a:8.1f} ms {b:8.1f} ms {a / b:6.2f}x  <= {goal}x")
    print("relctl upgrade, the agent's steps (median ms): " + ", ".join(
        f"{name} {statistics.median(v):.1f}" for name, v in steps.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
