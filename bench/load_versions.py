"""Load: many concurrent `relctl versions` clients on one relctl-agent, against native Erlang
doing the same work concurrently, in the same run.

    .venv/bin/python bench/load_versions.py [--clients 50] [--requests 1000] [--workers N] [--rounds 1]
                                            [--via tcp|unix]

Builds the counter release, starts a private epmd, the node and a relctl-agent for it
(bench/harness.py), then measures, in turn:
  - native: a hidden Erlang node whose `clients` processes each make `requests` calls of
    rpc:call(Node, release_handler, which_releases, []), back to back;
  - relctl: `clients` gRPC clients, each on its own HTTP/2 connection (as separate `relctl`
    processes would be), each sending `requests` GetReleases calls back to back. That is what
    `relctl versions` sends, and the agent answers each one with a fresh which_releases RPC to
    the node, so both sides do the same work on the node.
Every answer is checked (the node is up, its running release is listed); any error or wrong
answer, warm-up requests included, is counted, printed, and makes the exit status 1. Latency
is per request as the client sees it; throughput is requests over the wall time of the
measured phase (after a warm-up of 5 requests per client).

`--via tcp` (the default) goes to the agent's loopback TCP listener, which wants a bearer token:
the clients send the one that every agent started by tests/tools/agent_proc.py accepts, and the
agent checks it on every call. `--via unix` goes through the agent's Unix socket, as `relctl` on
the agent's host does (no token; the agent relays each connection to grpc and names the caller
by uid). `connect()` is the one place that knows how a
client reaches the agent (address, credentials, metadata).

Where the clients run. The clients are asyncio coroutines on grpc.aio channels (the C core
does the I/O), spread over `--workers` processes. What matters is that the agent, not the
clients' GIL, sets the figure. Measured on a 2-core machine, 50 clients x 200 requests, two
rounds each (CPU as a share of one core during the measured phase):
    workers   req/s         agent CPU    client CPU (all workers)
    1         2,650 2,580   108% 103%    53% 57%
    2         2,290 2,380   101% 102%    59% 58%
    5         2,240 2,250    97%  97%    60% 61%
    10        2,450 2,310    97%  96%    64% 62%
With every setting the agent is saturated (its Python thread, at one core) while one client
process needs only about half a core, so a single client process already gives the agent all
the load it can take; more processes only compete with the agent and the node for the two
cores. Hence the default of one worker. The bench prints both CPU shares and warns when a
client process nears a full core (then raise --workers, e.g. against a faster agent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.harness import node_and_agent  # noqa: E402
from relctl.v1 import agent_pb2 as pb  # noqa: E402
from relctl.v1 import agent_pb2_grpc  # noqa: E402
from tests.tools.agent_proc import operator_token_file  # noqa: E402

TIMEOUT = 30.0  # per request: generous, so that a slow answer is a latency, not an error
WARMUP = 5      # requests per client before measuring (connection set-up, first calls)
Metadata = tuple[tuple[str, str], ...]


def connect(address: str, token: str) -> tuple[grpc.aio.Channel, Metadata]:
    """One client's channel and the metadata of its calls: the one place to change when the
    agent's listener changes. A unix socket is an address "unix:PATH" (and needs no token).
    Its own subchannel pool gives each client its own connection, as separate processes have."""
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return channel, metadata


# --- the relctl side: worker processes of asyncio clients -----------------------------------


@dataclass
class WorkerResult:
    started: float = 0.0  # time.monotonic(): one clock for every process on the host
    ended: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: list[str] = field(default_factory=list)
    cpu: float = 0.0  # seconds of CPU this worker used while measuring


def answer_problem(reply: Any, node: str, version: str) -> str:
    """What is wrong with a GetReleases answer ("" if nothing), judged as `relctl versions`."""
    nodes = list(reply.nodes)
    if len(nodes) != 1 or nodes[0].node != node or not nodes[0].up or nodes[0].error:
        return f"unexpected nodes in the answer: {reply}"
    if not any(r.version == version and r.running for r in nodes[0].releases):
        return f"{version} is not listed as running: {reply}"
    return ""


async def one_client(stub: Any, metadata: Metadata, count: int, node: str, version: str,
                     result: WorkerResult, measure: bool) -> None:
    request = pb.GetReleasesRequest()
    for _ in range(count):
        started = time.perf_counter()
        try:
            reply = await stub.GetReleases(request, timeout=TIMEOUT, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            result.errors.append(f"{exc.code().name}: {exc.details()}")
            continue
        elapsed = time.perf_counter() - started
        problem = answer_problem(reply, node, version)
        if problem:
            result.errors.append(problem)
        elif measure:
            result.latencies.append(elapsed)


async def run_clients(address: str, token: str, clients: int, requests: int, node: str, version: str,
                      ready: Any, go: Any) -> WorkerResult:
    result = WorkerResult()
    connections = [connect(address, token) for _ in range(clients)]
    stubs = [(agent_pb2_grpc.AgentStub(channel), metadata) for channel, metadata in connections]
    try:
        await asyncio.gather(*(one_client(stub, md, WARMUP, node, version, result, False) for stub, md in stubs))
        ready.put("")
        await asyncio.get_running_loop().run_in_executor(None, go.wait)  # every worker starts at once
        cpu = time.process_time()
        result.started = time.monotonic()
        await asyncio.gather(*(one_client(stub, md, requests, node, version, result, True) for stub, md in stubs))
        result.ended = time.monotonic()
        result.cpu = time.process_time() - cpu
    finally:
        await asyncio.gather(*(channel.close() for channel, _ in connections))
    return result


def worker(address: str, token: str, clients: int, requests: int, node: str, version: str, ready: Any, go: Any,
           results: Any) -> None:
    try:
        results.put(asyncio.run(run_clients(address, token, clients, requests, node, version, ready, go)))
    except BaseException as exc:  # the parent must hear of it
        ready.put(f"client process failed: {exc!r}")
        results.put(WorkerResult(errors=[f"client process failed: {exc!r}"]))


def receive(queue: Any, procs: list[Any], count: int, missing: Any) -> list[Any]:
    """`count` items the workers put on `queue`; `missing` for each that a dead worker never sent."""
    items: list[Any] = []
    while len(items) < count:
        try:
            items.append(queue.get(timeout=1.0))
        except Empty:
            if not any(proc.is_alive() for proc in procs):
                try:  # what a worker put just before exiting may still be in the pipe
                    items.append(queue.get(timeout=2.0))
                except Empty:
                    codes = [proc.exitcode for proc in procs]
                    items += [missing] * (count - len(items))
                    print(f"client processes exited early (exit codes {codes})", file=sys.stderr)
    return items


@dataclass(frozen=True)
class Measured:
    requests: int
    errors: list[str]
    seconds: float
    latencies: list[float]  # sorted, seconds
    note: str = ""

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        return self.latencies[min(len(self.latencies) - 1, max(0, round(p * len(self.latencies)) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_relctl(address: str, token: str, agent_pid: int, args: argparse.Namespace, node: str,
                   version: str) -> Measured:
    workers = max(1, min(args.workers, args.clients))
    shares = [args.clients // workers + (1 if i < args.clients % workers else 0) for i in range(workers)]
    context = mp.get_context("spawn")  # no fork of a process that has imported grpc
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    procs = [context.Process(target=worker, args=(address, token, share, args.requests, node, version, ready, go,
                                                  results), daemon=True) for share in shares]
    for proc in procs:
        proc.start()
    try:
        lost = WorkerResult(errors=["a client process exited without its results"])
        receive(ready, procs, workers, "")
        agent_cpu = cpu_seconds(agent_pid)
        go.set()
        collected: list[WorkerResult] = receive(results, procs, workers, lost)
        agent_cpu = cpu_seconds(agent_pid) - agent_cpu
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()  # by its own Process handle, i.e. by pid
                proc.join()
    latencies = sorted(x for r in collected for x in r.latencies)
    errors = [e for r in collected for e in r.errors]
    started = min((r.started for r in collected if r.started), default=0.0)
    seconds = max((r.ended for r in collected), default=0.0) - started if started else 0.0
    client_cpu = sum(r.cpu for r in collected)
    note = (f"{workers} client process(es); during the run the agent used {agent_cpu / seconds:.0%} of a core, "
            f"the clients {client_cpu / seconds:.0%}") if seconds else ""
    if seconds and max(r.cpu for r in collected) > 0.9 * seconds:
        note += " (a client process near a full core: it may limit the figure; raise --workers)"
    return Measured(args.clients * args.requests, errors, seconds, latencies, note)


# --- the native side: a hidden Erlang node ------------------------------------------------------

NATIVE_ESCRIPT = r"""%% -*- erlang -*-
%%! -hidden
%% The peer of bench/load_versions.py: Clients processes, each making Requests calls of
%% rpc:call(Node, release_handler, which_releases, []). Prints one line of JSON.
main([Target, Clients, Requests]) ->
    {ok, _} = net_kernel:start([list_to_atom("bench_load_" ++ os:getpid() ++ "@localhost"), shortnames]),
    Node = list_to_atom(Target),
    pong = net_adm:ping(Node),
    N = list_to_integer(Clients), M = list_to_integer(Requests),
    Call = fun() ->
               T0 = erlang:monotonic_time(nanosecond),
               Reply = rpc:call(Node, release_handler, which_releases, []),
               Elapsed = erlang:monotonic_time(nanosecond) - T0,
               case Reply of
                   [_ | _] -> Elapsed;
                   Other -> {error, lists:flatten(io_lib:format("~0p", [Other]))}
               end
           end,
    [Call() || _ <- lists:seq(1, 5 * N)],
    Self = self(),
    T0 = erlang:monotonic_time(nanosecond),
    Pids = [spawn_link(fun() -> Self ! {done, self(), [Call() || _ <- lists:seq(1, M)]} end)
            || _ <- lists:seq(1, N)],
    All = lists:append([receive {done, P, Rs} -> Rs end || P <- Pids]),
    Seconds = (erlang:monotonic_time(nanosecond) - T0) / 1.0e9,
    Errors = [list_to_binary(E) || {error, E} <- All],
    Latencies = [T || T <- All, is_integer(T)],
    io:format("~s~n", [json(Seconds, Errors, Latencies)]).

json(Seconds, Errors, Latencies) ->
    Quoted = [[$", binary:replace(binary:replace(E, <<"\\">>, <<"\\\\">>, [global]), <<"\"">>, <<"\\\"">>,
                                  [global]), $"] || E <- Errors],
    io_lib:format("{\"seconds\": ~f, \"errors\": [~s], \"latencies_ns\": [~s]}",
                  [Seconds, lists:join(",", Quoted), lists:join(",", [integer_to_list(T) || T <- Latencies])]).
"""


def measure_native(target: Any, args: argparse.Namespace, workdir: Path) -> Measured:
    script = workdir / "native_load.escript"
    script.write_text(NATIVE_ESCRIPT)
    env = dict(os.environ, HOME=str(target.home), ERL_EPMD_PORT=str(target.epmd_port))
    out = subprocess.run(["escript", str(script), target.name, str(args.clients), str(args.requests)], env=env,
                         capture_output=True, text=True, timeout=args.requests * TIMEOUT + 300)
    if out.returncode != 0:
        return Measured(args.clients * args.requests, [f"escript failed ({out.returncode}): {out.stderr[-2000:]}"],
                        0.0, [])
    data = json.loads(out.stdout.strip().splitlines()[-1])
    latencies = sorted(ns / 1e9 for ns in data["latencies_ns"])
    return Measured(args.clients * args.requests, list(data["errors"]), data["seconds"], latencies)


# --- main -------------------------------------------------------------------------------------


def row(name: str, m: Measured) -> str:
    ms = [m.percentile(p) * 1e3 for p in (0.50, 0.90, 0.99)] + [(m.latencies[-1] if m.latencies else 0) * 1e3]
    return (f"{name:28} {m.requests:9d} {len(m.errors):7d} {m.per_second:9.0f} "
            + " ".join(f"{v:8.2f}" for v in ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per client (default 1000)")
    parser.add_argument("--workers", type=int, default=1, help="processes the relctl clients run in (default 1)")
    parser.add_argument("--via", choices=["tcp", "unix"], default="tcp",
                        help="the agent's loopback TCP listener with a token (default), or its Unix socket")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of both peers; the round of median throughput is reported")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.rounds < 1:
        parser.error("--clients, --requests and --rounds must be at least 1")

    runs: dict[str, list[Measured]] = {"native erlang (rpc:call)": [], "relctl agent (GetReleases)": []}
    with node_and_agent() as setup, tempfile.TemporaryDirectory(prefix="relctl-bench-load-") as tmp:
        node, version = setup.target.name, setup.build.base_vsn
        address = setup.agent.address if args.via == "tcp" else setup.agent.socket
        token = operator_token_file().read_text().strip() if args.via == "tcp" else ""
        for round_no in range(1, args.rounds + 1):
            native = measure_native(setup.target, args, Path(tmp))
            relctl = measure_relctl(address, token, setup.agent.pid, args, node, version)
            runs["native erlang (rpc:call)"].append(native)
            runs["relctl agent (GetReleases)"].append(relctl)
            print(f"round {round_no}: native {native.per_second:.0f} req/s, relctl {relctl.per_second:.0f} req/s"
                  f" ({relctl.note})", flush=True)

    cores = os.cpu_count() or 0
    print(f"\nload_versions (via {args.via}): {args.clients} clients x {args.requests} requests, what `relctl versions` asks "
          f"(which_releases on the node), {cores} CPU cores; of {args.rounds} round(s), the one of median throughput")
    print(f"{'peer':28} {'requests':>9} {'errors':>7} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}")
    chosen: dict[str, Measured] = {}
    for name, measured in runs.items():
        # The round of median throughput stands for the peer (its latencies come with it).
        chosen[name] = sorted(measured, key=lambda m: m.per_second)[len(measured) // 2]
        print(row(name, chosen[name]))
    native, relctl = chosen["native erlang (rpc:call)"], chosen["relctl agent (GetReleases)"]
    if native.latencies and relctl.latencies:
        print(f"ratio relctl / native: p99 {relctl.percentile(0.99) / native.percentile(0.99):.2f}x, "
              f"throughput {relctl.per_second / native.per_second:.2f}x")
    print(f"relctl: {relctl.note}")
    errors = [e for measured in runs.values() for m in measured for e in m.errors]
    for error in sorted(set(errors))[:10]:
        print(f"error ({errors.count(error)}x): {error[:300]}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
