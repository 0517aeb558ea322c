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
agent's own steps of relctl's upgrade (from its -o json), medians over the rounds, and what the
application notices: a process in the node calls `counter:incr()` every 1 ms throughout, and
the latencies of the calls made during each timed command give its p99 and max, beside those
of an idle second. Goals (issue 24): upgrade <= 0.75x relx, downgrade <= 0.9x, the app's p99
during relctl's upgrade <= 3x idle.
"""

from __future__ import annotations

import argparse
import json
import re
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
from tests.tools.otp_procs import clean_env, erl_eval, start_epmd  # noqa: E402
from tests.tools.rebar3_fixture import (  # noqa: E402
    build_rebar3_release,
    make_target_copy,
    start_relx_node,
)

GREETING = "hello from the bench"

# The load loop, in the node: counter:incr() every 1 ms, each call's latency (us) kept until
# taken. An erl_eval fun: interpreted code of no module of the release, so the upgrades under
# test never replace it (its few us of interpretation are in every figure alike).
LOAD_START = """
Loop = fun Loop(Acc) ->
           receive {take, From} -> From ! {latencies, Acc}, Loop([])
           after 1 ->
               T0 = erlang:monotonic_time(microsecond),
               _ = (catch counter:incr()),
               Loop([erlang:monotonic_time(microsecond) - T0 | Acc])
           end
       end,
register(relctl_bench_load, spawn(fun() -> Loop([]) end)), ok.
"""
LOAD_TAKE = ("relctl_bench_load ! {take, self()}, "
             "receive {latencies, L} -> L after 5000 -> timeout end.")


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
            calls: dict[str, list[int]] = defaultdict(list)  # the app's latencies (us)
            erl_eval(node, LOAD_START)

            def load(name: str | None) -> None:
                """The latencies since the last take, kept under ``name`` (None: dropped)."""
                taken = re.findall(r"\d+", erl_eval(node, LOAD_TAKE))
                if name is not None:
                    calls[name] += [int(t) for t in taken]

            def app(name: str, argv: list[str], env: dict[str, str]
                    ) -> tuple[float, subprocess.CompletedProcess[str]]:
                load(None)
                result = timed(argv, env)
                load(name)
                return result

            def reset() -> None:
                timed([*relctl, "remove", "0.0.2"], renv)

            def with_relctl() -> None:
                up, done = app("relctl upgrade", [*relctl, "upgrade", "0.0.2", "--tarball",
                                                  str(build.tarball), "-o", "json"], renv)
                for step in json.loads(done.stdout)["operation"]["steps"]:
                    if step.get("duration_ms") is not None:
                        steps[step["name"]].append(float(step["duration_ms"]))
                down, _ = app("relctl downgrade", [*relctl, "downgrade", "0.0.1"], renv)
                times["relctl upgrade"].append(up)
                times["relctl downgrade"].append(down)

            def with_relx() -> None:
                started = time.perf_counter()
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(build.tarball, staged)
                copy = time.perf_counter() - started
                up, _ = app("relx upgrade", [script, "upgrade", "0.0.2"], xenv)
                down, _ = app("relx downgrade", [script, "downgrade", "0.0.1"], xenv)
                times["relx upgrade"].append(copy + up)
                times["relx downgrade"].append(down)

            for i in range(rounds):
                for run in ((with_relctl, with_relx) if i % 2 == 0 else (with_relx, with_relctl)):
                    run()
                    reset()
                load(None)
                time.sleep(1.0)
                load("idle")

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

    def p99(name: str) -> float:
        return statistics.quantiles(calls[name], n=100)[98] / 1000

    print("the app's counter:incr() every 1 ms, p99 / max (ms), over all rounds: " + "; ".join(
        f"{name} {p99(name):.2f} / {max(calls[name]) / 1000:.2f} ({len(calls[name])} calls)"
        for name in ("idle", "relctl upgrade", "relx upgrade", "relctl downgrade",
                     "relx downgrade")))
    print(f"app p99 during relctl's upgrade: {p99('relctl upgrade') / p99('idle'):.1f}x idle "
          "(goal <= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
