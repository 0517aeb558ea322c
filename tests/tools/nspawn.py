"""A Debian 12 root (built once by .ci/systemd-root) booted with systemd as its PID 1 under
`systemd-nspawn -b`, for the systemd stage (tests/e2e/test_systemd_stage.py).

The root stays untouched: each container boots an overlay of it (a fresh upper dir per
container, kept across reboots of that container). The container has its own network (only
loopback); commands run in it through `nsenter` into its namespaces and root, with a clean
environment. :meth:`Container.close` stops nspawn by pid and unmounts the overlay, whatever
state the container is in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path("/var/cache/relctl-ci/systemd-root")
HOSTNAME = "relctl-ci"
# nspawn's exit status when the container rebooted (systemd-nspawn(1)).
REBOOTED = 133
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "cat", "PAGER": "cat"}


class BootFailed(RuntimeError):
    """The container did not boot; the message says why (for the stage's skip or failure)."""


def build_root() -> Path:
    """The cached root, built by .ci/systemd-root when it is not there yet; BootFailed with
    the script's reason when it cannot be built."""
    given = os.environ.get("RELCTL_SYSTEMD_ROOT")
    root = Path(given) if given else DEFAULT_ROOT
    if (root / ".relctl-ready").is_file():
        return root
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "systemd-root")], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        reason = [line for line in proc.stderr.splitlines() if line.startswith("systemd-root:")]
        raise BootFailed(reason[-1] if reason else f".ci/systemd-root failed: {proc.stderr}")
    return Path(proc.stdout.strip())


def boot_problem() -> str | None:
    """Why this host cannot boot a container at all (None when it may)."""
    if os.geteuid() != 0:
        return "booting a systemd container needs root (systemd-nspawn, mount)"
    for tool in ("systemd-nspawn", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/systemd-root installs systemd-container)"
    return None


class Container:
    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.merged = workdir / "merged"
        self.console = workdir / "console.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._mounted = False

    # --- life --------------------------------------------------------------------------------

    def boot(self, timeout: float = 60.0) -> float:
        """Boot (again, on the same overlay); the seconds until systemd said running."""
        if not self._mounted:
            for d in ("upper", "work", "merged"):
                (self.workdir / d).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.root},upperdir={self.workdir / 'upper'},"
                            f"workdir={self.workdir / 'work'}", str(self.merged)],
                           check=True, capture_output=True, timeout=30)
            self._mounted = True
        started = time.monotonic()
        with open(self.console, "ab") as console:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "-b", "-D", str(self.merged), "--register=no", "--keep-unit",
                 "--private-network", "-M", HOSTNAME, "--console=passive"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console)
        deadline = started + timeout
        while not self.leader:
            if self._nspawn.poll() is not None:
                raise BootFailed(f"systemd-nspawn exited with {self._nspawn.returncode}: "
                                 f"{self.console_tail()}")
            if time.monotonic() > deadline:
                raise BootFailed(f"no container init after {timeout:g} s: {self.console_tail()}")
            self.leader = self._child(self._nspawn.pid)
            time.sleep(0.05)
        while True:
            state = self.run("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline or self._nspawn.poll() is not None:
                raise BootFailed(f"systemd in the container is {state!r} after {timeout:g} s: "
                                 f"{self.console_tail()}")
            time.sleep(0.1)
        if state == "degraded":
            failed = self.run("systemctl --failed --no-legend", check=False).stdout
            raise BootFailed(f"the container booted degraded: {failed.strip()}")
        return time.monotonic() - started

    @staticmethod
    def _child(pid: int) -> int:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return 0
        return int(children[0]) if children else 0

    def console_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_exit(self, timeout: float = 60.0) -> int:
        """nspawn's exit status once the container powered off or rebooted."""
        assert self._nspawn is not None
        code = self._nspawn.wait(timeout)
        self.leader = 0
        return code

    def reboot(self, timeout: float = 60.0) -> float:
        """`systemctl reboot` in the container, then boot it again on the same overlay (nspawn
        ends with status 133 on a reboot; systemd-nspawn@.service would start it again)."""
        self.run("systemctl reboot", check=False)
        code = self.wait_exit(timeout)
        if code != REBOOTED:
            raise AssertionError(f"nspawn ended with {code}, not {REBOOTED} (reboot): "
                                 f"{self.console_tail()}")
        return self.boot(timeout)

    def close(self) -> None:
        """Stop the container (poweroff, then SIGTERM and SIGKILL to nspawn by pid) and
        unmount the overlay; safe to call in any state."""
        proc = self._nspawn
        if proc is not None and proc.poll() is None:
            if self.leader:
                self.run("systemctl poweroff", check=False, timeout=10)
            for sig, wait in ((None, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                if sig is not None and proc.poll() is None:
                    proc.send_signal(sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.leader = 0
        if self._mounted:
            result = subprocess.run(["umount", str(self.merged)], capture_output=True,
                                    timeout=30)
            if result.returncode != 0:  # something still holds it: detach it anyway
                subprocess.run(["umount", "-l", str(self.merged)], capture_output=True,
                               timeout=30)
            self._mounted = False
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- use -----------------------------------------------------------------------------

    def path(self, inside: str) -> Path:
        """The host's path of ``inside`` (absolute, in the container)."""
        return self.merged / inside.lstrip("/")

    def run(self, script: str, *, user: str | None = None, check: bool = True,
            timeout: float = 120.0, env: Mapping[str, str] | None = None,
            cwd: str = "/tmp") -> subprocess.CompletedProcess[str]:
        """Run ``script`` with /bin/sh in the container, as root or ``user``."""
        if not self.leader:
            raise RuntimeError("the container is not running")
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in {**ENV, **(env or {})}.items())]
        if user is not None:
            argv += ["/usr/sbin/runuser", "-u", user, "--"]
        argv += ["/bin/sh", "-c", f"cd {cwd} && {script}" if cwd else script]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container ({user or 'root'}): {script}\n"
                                 f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, script: str, *, user: str | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``script`` in the container without waiting (the caller waits for it)."""
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in {**ENV, **(env or {})}.items())]
        if user is not None:
            argv += ["/usr/sbin/runuser", "-u", user, "--"]
        argv += ["/bin/sh", "-c", f"cd /tmp && {script}"]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def unit(self, name: str, prop: str) -> str:
        return self.run(f"systemctl show -p {prop} --value {name}").stdout.strip()
