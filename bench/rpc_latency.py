"""RPC latency and throughput: the bridge against a native Erlang hidden node, same node, one run.

    .venv/bin/python bench/rpc_latency.py [--calls 3000] [--callers 64] [--per-caller 200] [--rounds 3]

Builds the counter release, starts a private epmd and a node, then for each round measures, in
turn: the native peer (bench/native_rpc.escript: rpc:call from a hidden node, which OTP 25
makes through erpc), the bridge on asyncio's default loop and on bridge.eventloop's
busy-polling loop (both through spawn_request, as erpc), and the bridge through rex. Rounds are
interleaved because a shared machine drifts; the medians over rounds are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge import Node  # noqa: E402
from bridge.eventloop import busy_poll_loop_factory  # noqa: E402
from tests.tools.otp_procs import NodeProc, start_epmd, start_node  # noqa: E402
from tests.tools.release_fixture import build_release, make_target_copy  # noqa: E402

Result = dict[str, float]


def native(target: NodeProc, args: argparse.Namespace) -> Result:
    env = dict(os.environ, HOME=str(target.home), ERL_EPMD_PORT=str(target.epmd_port))
    out = subprocess.run(
        ["escript", str(ROOT / "bench" / "native_rpc.escript"), target.name, str(args.calls), str(args.callers),
         str(args.per_caller)], env=env, capture_output=True, text=True, timeout=300, check=True)
    result: Result = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def _bridge(target: NodeProc, args: argparse.Namespace, spawn_calls: bool) -> Result:
    node = Node(cookie=target.cookie, epmd_port=target.epmd_port, spawn_calls=spawn_calls)
    async with node.connect(target.name) as conn:
        expected = await conn.call("erlang", "node", [])
        for _ in range(300):
            await conn.call("erlang", "node", [])
        latencies = []
        for _ in range(args.calls):
            started = time.perf_counter_ns()
            assert await conn.call("erlang", "node", []) == expected
            latencies.append((time.perf_counter_ns() - started) / 1000)
        latencies.sort()

        async def caller() -> None:
            for _ in range(args.per_caller):
                assert await conn.call("erlang", "node", []) == expected

        started = time.perf_counter_ns()
        await asyncio.gather(*(caller() for _ in range(args.callers)))
        elapsed = (time.perf_counter_ns() - started) / 1e9
    return {"p50_us": percentile(latencies, 0.50), "p99_us": percentile(latencies, 0.99),
            "calls_per_s": args.callers * args.per_caller / elapsed}


def percentile(ordered: list[float], p: float) -> float:
    return ordered[max(0, round(p * len(ordered)) - 1)]


def bridge_on(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, *,
              spawn_calls: bool = True) -> Callable[[NodeProc, argparse.Namespace], Result]:
    def run(target: NodeProc, args: argparse.Namespace) -> Result:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_bridge(target, args, spawn_calls))
    return run


PEERS: dict[str, Callable[[NodeProc, argparse.Namespace], Result]] = {
    "native erlang (rpc:call)": native,
    "bridge, default asyncio loop": bridge_on(None),
    "bridge, busy-poll loop": bridge_on(busy_poll_loop_factory()),
    # The fallback for a node without DFLAG_SPAWN, measured in the same run for comparison.
    "bridge through rex (fallback)": bridge_on(None, spawn_calls=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per round")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--per-caller", type=int, default=200, help="calls per concurrent caller")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="relctl-bench-") as tmp:
        build = build_release(Path(tmp) / "build")
        root = make_target_copy(build, Path(tmp) / "target")
        with start_epmd(log_dir=Path(tmp)) as epmd, start_node(root, epmd_port=epmd.port, workdir=Path(tmp) / "node") as target:
            runs: dict[str, list[Result]] = {name: [] for name in PEERS}
            for round_no in range(1, args.rounds + 1):
                for name, measure in PEERS.items():
                    result = measure(target, args)
                    runs[name].append(result)
                    print(f"round {round_no}: {name:32} p50 {result['p50_us']:7.1f} us  "
                          f"{result['calls_per_s']:8.0f} calls/s")

    median = {name: {key: statistics.median(r[key] for r in results) for key in ("p50_us", "p99_us", "calls_per_s")}
              for name, results in runs.items()}
    base = median["native erlang (rpc:call)"]
    print(f"\nrpc_latency: erlang:node/0 on one node, {args.calls} sequential calls, {args.callers} callers x "
          f"{args.per_caller} calls; median of {args.rounds} interleaved rounds")
    print(f"{'peer':32} {'p50 us':>9} {'p99 us':>9} {'calls/s':>10} {'p50 ratio':>10} {'tput ratio':>11}")
    for name, m in median.items():
        print(f"{name:32} {m['p50_us']:9.1f} {m['p99_us']:9.1f} {m['calls_per_s']:10.0f} "
              f"{m['p50_us'] / base['p50_us']:9.2f}x {m['calls_per_s'] / base['calls_per_s']:10.2f}x")
    rex = statistics.median(r["rex_p50_us"] for r in runs["native erlang (rpc:call)"])
    print(f"(native through rex, the bridge's fallback path: p50 {rex:.1f} us)")
    print("goals (issue 16): p50 ratio <= 1.00x, throughput ratio >= 1.00x")


if __name__ == "__main__":
    main()
