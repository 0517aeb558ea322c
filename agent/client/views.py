"""What the read-only `relctl` commands do: `versions`, `nodes` and `ping` ask every agent given
at once and show each answer; an agent or node with a problem adds a line on stderr, and the
first problem decides the exit code.

Click-free: the click commands (:mod:`agent.client.commands.nodes`) and the click-free reader
of the common command lines (:mod:`agent.client.fastpath`, `relctl versions`) both call these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relctl.v1 import agent_pb2 as pb

from .common import Answer, Settings, ask_agents
from .output import STATUS_NAMES, ago, emit, report, table
from .status import CliError, ExitCode, Problem


def _node_filter(settings: Settings, answers: list[Answer]) -> list[Answer]:
    """With --node, an agent that does not manage the node is not an error as long as one
    of the agents does."""
    if not settings.node:
        return answers
    found = [a for a in answers if a.problem is None or a.problem.code != ExitCode.NOT_FOUND]
    if found:
        return found
    if len(answers) == 1:
        return answers
    raise CliError(f"no agent manages node {settings.node} (asked: {', '.join(settings.agents)})",
                   ExitCode.NOT_FOUND)


def _node_problems(agent: str, nodes: Iterable[Any]) -> list[Problem]:
    problems: list[Problem] = []
    for n in nodes:
        if not n.up:
            problems.append(Problem(f"node {n.node} is down (agent {agent}): "
                                    f"{n.error or 'not connected'}", ExitCode.UNAVAILABLE))
        elif n.error:
            problems.append(Problem(f"node {n.node} (agent {agent}): {n.error}", ExitCode.FAILED))
    return problems


def versions(settings: Settings) -> ExitCode:
    """`relctl versions`: the releases of each node and their status."""
    answers = _node_filter(settings, ask_agents(settings, "GetReleases",
                                                pb.GetReleasesRequest(node=settings.node)))
    problems = [a.problem for a in answers if a.problem]
    rows: list[dict[str, Any]] = []
    for a in answers:
        if a.response is None:
            continue
        problems += _node_problems(a.agent, a.response.nodes)
        for n in a.response.nodes:
            rows.append({"agent": a.agent, "node": n.node, "up": n.up, "releases": [
                {"name": r.name, "version": r.version, "status": STATUS_NAMES.get(r.status, "?"),
                 "_running": r.running} for r in n.releases]})

    def text() -> str:
        many = len(settings.agents) > 1
        head = ["", *(["AGENT"] if many else []), "NODE", "RELEASE", "VERSION", "STATUS"]
        lines: list[list[str]] = [head]
        for row in rows:
            agent = [row["agent"]] if many else []
            if not row["up"]:
                lines.append(["", *agent, row["node"], "-", "-", "down"])
            for r in row["releases"]:
                lines.append(["*" if r["_running"] else "", *agent, row["node"], r["name"],
                              r["version"], r["status"]])
        return table(lines) if len(lines) > 1 else ""

    json_nodes = [{**row, "releases": [{k: r[k] for k in ("name", "version", "status")}
                                       for r in row["releases"]]} for row in rows]
    emit(settings, {"nodes": json_nodes}, text)
    return report(problems)


def nodes(settings: Settings) -> ExitCode:
    """`relctl nodes`: the nodes each agent manages, up or down, and what they run."""
    answers = ask_agents(settings, "ListNodes", pb.ListNodesRequest())
    problems = [a.problem for a in answers if a.problem]
    rows: list[dict[str, Any]] = []
    seen = False
    for a in answers:
        if a.response is None:
            continue
        listed = [n for n in a.response.nodes if not settings.node or n.node == settings.node]
        seen = seen or bool(listed)
        problems += _node_problems(a.agent, listed)
        for n in listed:
            running = next((r for r in n.releases if r.running), None)
            rows.append({
                "agent": a.agent, "node": n.node, "up": n.up,
                "since": n.since.ToJsonString() if n.since.seconds else None,
                "running": {"name": running.name, "version": running.version} if running else None,
                "error": n.error, "_since": ago(n.since)})
    if settings.node and not seen and not problems:
        raise CliError(f"no agent manages node {settings.node} (asked: "
                       f"{', '.join(settings.agents)})", ExitCode.NOT_FOUND)

    def text() -> str:
        lines = [["AGENT", "NODE", "STATE", "RUNNING", "SINCE"]]
        for r in rows:
            run = r["running"]
            lines.append([r["agent"], r["node"], "up" if r["up"] else "down",
                          f"{run['name']} {run['version']}" if run else "-", r["_since"]])
        return table(lines) if rows else ""

    emit(settings, {"nodes": [{k: v for k, v in r.items() if not k.startswith("_")}
                              for r in rows]}, text)
    return report(problems)


def ping(settings: Settings) -> ExitCode:
    """`relctl ping`: whether each agent answers and reaches its nodes."""
    answers = _node_filter(settings, ask_agents(settings, "Ping",
                                                pb.PingRequest(node=settings.node)))
    problems = [a.problem for a in answers if a.problem]
    agents: list[dict[str, Any]] = []
    for a in answers:
        if a.response is None:
            continue
        nodes_out = []
        for n in a.response.nodes:
            rtt = n.round_trip.ToNanoseconds() / 1e6 if n.HasField("round_trip") else None
            nodes_out.append({"node": n.node, "up": n.up, "round_trip_ms": rtt, "error": n.error})
            if rtt is None:
                problems.append(Problem(f"node {n.node} (agent {a.agent}) did not answer: "
                                        f"{n.error}", ExitCode.UNAVAILABLE))
        agents.append({"agent": a.agent, "version": a.response.agent.version,
                       "hostname": a.response.agent.hostname,
                       "round_trip_ms": round(a.seconds * 1e3, 3), "nodes": nodes_out})

    def text() -> str:
        lines = [["AGENT", "NODE", "RESULT", "TIME"]]
        for ag in agents:
            lines.append([ag["agent"], "-", f"agent {ag['version']} on {ag['hostname']}",
                          f"{ag['round_trip_ms']:.1f} ms"])
            for n in ag["nodes"]:
                ok = n["round_trip_ms"] is not None
                lines.append([ag["agent"], n["node"], "pong" if ok else "pang",
                              f"{n['round_trip_ms']:.1f} ms" if ok else "-"])
        return table(lines) if agents else ""

    emit(settings, {"agents": agents}, text)
    return report(problems)
