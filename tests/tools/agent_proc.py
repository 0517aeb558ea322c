"""Run the real `relctl-agent` and `relctl` as subprocesses for end-to-end tests.

The agent gets a config on free loopback ports and its own state dir; ``AgentProc.stop()``
sends SIGTERM by pid (then SIGKILL after the grace) and keeps the exit code and log. Its TCP
listener requires a bearer token, as in production: every test agent accepts the session's
operator token (:func:`operator_token_file`), which :func:`relctl` passes by default.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.tools import failures, invariants
from tests.tools.otp_procs import ManagedProcess, NodeProc, free_port, track

ROOT = Path(__file__).resolve().parents[2]
_T = TypeVar("_T")
# What systemd gives the process running the tests is not for the agents they start: an
# inherited NOTIFY_SOCKET would have them report to the test runner's service manager.
_SERVICE_MANAGER_ENV = frozenset({"JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                                  "WATCHDOG_PID"})


_token_file: Path | None = None


def operator_token_file() -> Path:
    """A file (mode 0600) with the operator token of this test session's agents."""
    global _token_file
    if _token_file is None:
        directory = Path(tempfile.mkdtemp(prefix="relctl-test-token-"))
        atexit.register(shutil.rmtree, directory, True)
        _token_file = directory / "operator.token"
        _token_file.write_text(secrets.token_hex(24) + "\n")
        _token_file.chmod(0o600)
    return _token_file


def eventually(check: Callable[[], _T], timeout: float = 15.0, what: str = "") -> _T:
    """Poll ``check`` until it returns a truthy value (or raise with its last result)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check} (last: {value!r})")
        time.sleep(0.1)


def toml_value(value: Any) -> str:
    """``value`` as TOML: JSON's spelling for scalars and arrays, inline tables for dicts
    (``hooks = [{name = "a", when = "pre_install", ...}]``)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


@dataclass(frozen=True)
class NodeEntry:
    name: str
    cookie: str
    epmd_port: int
    # Given as this systemd credential: the cookie goes to credentials/NAME beside the config,
    # the directory to pass as $CREDENTIALS_DIRECTORY.
    credential: str = ""


def write_config(path: Path, nodes: Sequence[NodeEntry], *, grpc_port: int, metrics_port: int,
                 extra_agent: Mapping[str, Any] | None = None,
                 node_extra: Mapping[str, Any] | None = None,
                 discovery: Mapping[str, Any] | None = None,
                 tokens: Sequence[Mapping[str, str]] = (),
                 tables: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """An agent config with one cookie file per node (mode 0600) beside it; without nodes,
    ``discovery`` is its [discovery] table. The session's operator token is always accepted
    (unless ``insecure_no_auth``); ``tokens`` are more [[tokens]] tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(extra_agent or {})
    listen = extra.pop("listen", f"127.0.0.1:{grpc_port}")
    # A given metrics_listen (a host's own address, as for a file_sd inventory) wins.
    metrics = extra.pop("metrics_listen", f"127.0.0.1:{metrics_port}" if metrics_port else "")
    lines = ["[agent]", f"listen = {toml_value(listen)}",
             f"metrics_listen = {toml_value(metrics)}", 'state_dir = "state"']
    for key, value in extra.items():
        lines.append(f"{key} = {toml_value(value)}")
    if not extra.get("insecure_no_auth"):
        lines += ["", "[[tokens]]", 'name = "test-operator"', 'role = "operator"',
                  f"file = {toml_value(str(operator_token_file()))}"]
    for table in tokens:
        lines += ["", "[[tokens]]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    if discovery is not None:
        lines += ["", "[discovery]"] + [f"{k} = {toml_value(v)}" for k, v in discovery.items()]
    for i, node in enumerate(nodes):
        if node.credential:
            (path.parent / "credentials").mkdir(mode=0o700, exist_ok=True)
            cookie_file = path.parent / "credentials" / node.credential
            source = f'cookie_credential = "{node.credential}"'
        else:
            cookie_file = path.parent / f"node{i}.cookie"
            source = f'cookie_file = "{cookie_file.name}"'
        cookie_file.write_text(node.cookie + "\n")
        cookie_file.chmod(0o600)
        lines += ["", "[[nodes]]", f'name = "{node.name}"', source,
                  f"epmd_port = {node.epmd_port}"]
        lines += [f"{key} = {toml_value(value)}" for key, value in (node_extra or {}).items()]
    for name, table in (tables or {}).items():  # more top-level tables, e.g. distribution_tls
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProc(ManagedProcess):
    stop_grace = 10.0

    def __init__(self, proc: subprocess.Popen[bytes], config: Path, grpc_port: int,
                 metrics_port: int, log_path: Path) -> None:
        super().__init__(proc, log_path, None)
        self.config = config
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.address = f"127.0.0.1:{grpc_port}"
        self.socket = ""  # "unix:PATH" when the agent listens on a Unix socket too
        # Its journal (state_dir = "state"), watched while it runs: the invariant checks read
        # what an unfinished operation recorded as added inside a release's dirs.
        self.journal = config.parent / "state" / "journal.sqlite3"
        self._watching = True
        invariants.watch_journal(self.journal)

    def stop(self, grace: float | None = None) -> None:
        super().stop(grace)
        if self._watching:
            self._watching = False
            invariants.unwatch_journal(self.journal)

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def send_signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    def metrics_text(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=timeout) as resp:
            body: bytes = resp.read()
        return body.decode()

    def __repr__(self) -> str:
        return f"AgentProc(pid={self.pid}, address={self.address})"


def start_agent(workdir: Path, nodes: Sequence[NodeEntry], *, metrics: bool = True,
                extra_agent: Mapping[str, Any] | None = None,
                node_extra: Mapping[str, Any] | None = None, log_level: str = "info",
                timeout: float = 20.0, discovery: Mapping[str, Any] | None = None,
                tokens: Sequence[Mapping[str, str]] = (),
                env: Mapping[str, str] | None = None,
                tables: Mapping[str, Mapping[str, Any]] | None = None) -> AgentProc:
    """Start relctl-agent and wait for its "ready" line; ``env`` is added to its environment.

    The ports are free when chosen, but another process (a node, another agent) may take one
    before the agent binds it: then the agent is started again on new ports."""
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        try:
            return _start_agent_once(workdir, nodes, metrics=metrics, extra_agent=extra_agent,
                                     node_extra=node_extra, log_level=log_level, timeout=timeout,
                                     discovery=discovery, tokens=tokens, env=env, tables=tables)
        except _PortTaken:
            if attempt == _PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


_PORT_ATTEMPTS = 3


def start_agent_for(agents: list[AgentProc], node: NodeProc, workdir: Path,
                    **node_extra: object) -> AgentProc:
    """An agent for ``node`` alone (``node_extra``: its node table's settings), reconnecting
    within a second, added to ``agents`` (the e2e fixture that stops them)."""
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        extra_agent={"reconnect_max_delay": 1}, node_extra=node_extra)
    agents.append(agent)
    return agent


class _PortTaken(RuntimeError):
    pass


def _start_agent_once(workdir: Path, nodes: Sequence[NodeEntry], *, metrics: bool,
                      extra_agent: Mapping[str, Any] | None,
                      node_extra: Mapping[str, Any] | None, log_level: str, timeout: float,
                      discovery: Mapping[str, Any] | None, tokens: Sequence[Mapping[str, str]],
                      env: Mapping[str, str] | None,
                      tables: Mapping[str, Mapping[str, Any]] | None) -> AgentProc:
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    metrics_port = free_port() if metrics else 0
    config = write_config(workdir / "agent.toml", nodes, grpc_port=grpc_port,
                          metrics_port=metrics_port, extra_agent=extra_agent,
                          node_extra=node_extra, discovery=discovery, tokens=tokens,
                          tables=tables)
    log_path = workdir / "agent.log"
    # A restarted agent appends to the same log: only what it writes counts as its "ready".
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(config), "--log-level", log_level],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={**{k: v for k, v in os.environ.items() if k not in _SERVICE_MANAGER_ENV},
                 **(env or {})})
    agent = AgentProc(proc, config, grpc_port, metrics_port, log_path)
    failures.agent_started(log_path, offset)
    listen = (extra_agent or {}).get("listen", [])
    listen = [listen] if isinstance(listen, str) else list(listen)
    # An explicit listen list: address is its first TCP entry, socket its first unix: one.
    agent.address = next((a for a in listen if not a.startswith("unix:")), agent.address)
    agent.socket = next((a for a in listen if a.startswith("unix:")), "")
    track(proc.pid, agent.stop)
    deadline = time.monotonic() + timeout
    while "relctl.agent: ready:" not in agent.log_text()[offset:]:
        if proc.poll() is not None:
            agent.stop()  # exited: reaped, its journal no longer watched
            text = agent.log_text()[offset:]
            if "(Address already in use)" in text and "cannot start" in text:
                raise _PortTaken(text)
            raise RuntimeError(f"relctl-agent exited with {proc.returncode}:\n{agent.log_text()}")
        if time.monotonic() > deadline:
            agent.stop()
            raise RuntimeError(f"relctl-agent not ready after {timeout} s:\n{agent.log_text()}")
        time.sleep(0.02)
    return agent


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def relctl_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `relctl` runs with in tests: the session's operator token, no agent."""
    full_env = {k: v for k, v in os.environ.items() if k != "RELCTL_AGENT"}
    full_env["RELCTL_TOKEN_FILE"] = str(operator_token_file())
    full_env.update(env or {})
    return full_env


def relctl(*args: str, agents: Sequence[str] = (), env: Mapping[str, str] | None = None,
           timeout: float = 30.0) -> CliResult:
    """Run the `relctl` client as a separate process, as a user would; the invariants of
    every node the test runs are checked around it (tests.tools.invariants)."""
    argv = [sys.executable, "-m", "agent.client"]
    for agent in agents:
        argv += ["--agent", agent]

    def run() -> CliResult:
        proc = subprocess.run([*argv, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=relctl_env(env))
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    result: CliResult = invariants.check_call(args, run)
    return result
