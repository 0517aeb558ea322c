"""A private Prometheus server for the tests: its own config, data dir and free port on
loopback, scraping the given targets every second; stopped by pid like every process here.

Debian's `prometheus` package brings the server and `promtool` (.ci/setup installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.tools.otp_procs import LOOPBACK, ManagedProcess, free_port, track

JOB = "relctl"  # the job name the example rules expect for agent targets


def prometheus_missing_reason() -> str | None:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            return f"{tool} not found: install Debian's prometheus package (bash .ci/setup)"
    return None


class PrometheusProc(ManagedProcess):
    stop_grace = 5.0

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path,
                 owned_dir: Path) -> None:
        super().__init__(proc, log_path, owned_dir)
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; raises AssertionError with Prometheus's
        own error text otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        assert answer.get("status") == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}, not a vector"
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, check: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 30.0) -> list[dict[str, Any]]:
        """Query ``expr`` until ``check`` holds for its result (scrapes come every second)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} after {timeout} s: {result}")
            time.sleep(0.25)

    def wait_for_rules(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The rule groups, once every rule has been evaluated at least once."""
        deadline = time.monotonic() + timeout
        while True:
            groups: list[dict[str, Any]] = self.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("health") != "unknown" for r in rules):
                return groups
            if time.monotonic() > deadline:
                raise AssertionError(f"rules not evaluated after {timeout} s: {groups}")
            time.sleep(0.25)

    def __repr__(self) -> str:
        return f"PrometheusProc(pid={self.pid}, url={self.url})"


def start_prometheus(workdir: Path, targets: Sequence[str], *,
                     rule_files: Sequence[Path] = (), timeout: float = 30.0) -> PrometheusProc:
    """Start Prometheus scraping ``targets`` (HOST:PORT of agents' /metrics) as job
    "relctl", with ``rule_files`` loaded; wait until it is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    # JSON is YAML: no YAML library needed to write it.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(f) for f in rule_files],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }, indent=2))
    log_path = workdir / "prometheus.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir)
    server = PrometheusProc(proc, port, log_path, workdir / "data")
    track(proc.pid, server.stop)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"prometheus not ready after {timeout} s:\n{server.log_text()}")
        time.sleep(0.1)
