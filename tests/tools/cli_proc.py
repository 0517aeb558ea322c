"""`relctl` run in the background as a user would, its stdout lines kept with the time each
came (for tests that act while it runs: silence an agent, cut a link, kill it)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

from tests.tools.agent_proc import ROOT, relctl_env


class Cli:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.client", *args], cwd=ROOT,
                                     env=relctl_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def now(self) -> float:
        """Seconds since it started."""
        return time.monotonic() - self.started

    def seen(self, pattern: str) -> tuple[float, str] | None:
        """The first line matching ``pattern`` and when it came, or None."""
        return next(((t, line) for t, line in list(self.lines) if re.search(pattern, line)), None)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Its exit status, stdout and stderr once it ended (within ``timeout`` s)."""
        assert self.proc.stderr is not None
        self.proc.wait(timeout)
        err = self.proc.stderr.read()
        self._reader.join(5)
        return self.proc.returncode, "\n".join(line for _, line in self.lines), err

    def transcript(self) -> str:
        return "\n".join(f"+{t:5.1f} s  {line}" for t, line in self.lines)

    def stop(self) -> None:
        """Kill it if it still runs (teardown; by pid)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
