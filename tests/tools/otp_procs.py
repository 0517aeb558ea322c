"""Start, probe and stop the OS processes of a real Erlang test setup.

Responsibility: own every process it starts (a private ``epmd`` on a free
loopback port, release nodes started from a target directory built by
:mod:`tests.tools.release_fixture`, short-lived hidden "probe" nodes) and
stop them by pid, so that test runs never leak processes, never touch the
system epmd on 4369 and can run concurrently.

The probe helpers (:func:`erl_rpc`, :func:`erl_eval`) talk to a node with
plain ``erl`` and ``rpc:call``; they are the independent reference that
tests hold relctl's own Python bridge against, so they must not use it.

Plain synchronous Python without pytest imports: the pytest fixtures, demo
scripts and benchmarks all build on it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.tools import invariants
from tests.tools import otp_select

LOOPBACK = "127.0.0.1"
SYSTEM_EPMD_PORT = 4369
EPMD_NAMES_REQ = 110  # 'n'

# Environment variables that would change how erl behaves behind our back.
_ERL_ENV_NOISE: tuple[str, ...] = (
    "ERL_FLAGS",
    "ERL_AFLAGS",
    "ERL_ZFLAGS",
    "ERL_LIBS",
    "ERL_EPMD_PORT",
    "ERL_EPMD_ADDRESS",
    "ERL_ROOTDIR",
    "ERL_CRASH_DUMP",
)


class OtpProcessError(RuntimeError):
    """A process did not start, or a probe failed; ``output`` has its log."""

    def __init__(self, message: str, output: str = "") -> None:
        self.output = output
        text = message if not output else f"{message}\n--- output ---\n{output.rstrip()}"
        super().__init__(text)


class ErlRpcError(OtpProcessError):
    """The probe ran but the remote call failed (badrpc, parse error...)."""

    def __init__(self, message: str, output: str, returncode: int) -> None:
        self.returncode = returncode
        super().__init__(message, output)


# ---------------------------------------------------------------------------
# small helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago, from below the kernel's ephemeral range.

    A port the kernel picked (``bind(0)``) lies in the range it also hands out as the source
    port of outgoing connections: between the choice and the agent's or node's own bind, a
    client connecting anywhere could take it (CI saw "Address already in use" so). Ports below
    that range are only ever taken by an explicit bind. Each xdist worker draws from its own
    slice, from a random start, so that two workers (or two runs) rarely probe the same port;
    callers must still cope with the race that remains."""
    low, high = _port_slice()
    if low >= high:  # no room below the ephemeral range: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            return port
    global _next_port
    if _next_port is None or not low <= _next_port < high:
        _next_port = low + secrets.randbelow(high - low)
    for _ in range(high - low):
        candidate, _next_port = _next_port, low + (_next_port + 1 - low) % (high - low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError(f"no free TCP port on {host} in {low}-{high - 1}")


_next_port: int | None = None
_PORTS_FLOOR = 10000  # below: well-known services (epmd's 4369 among them)


def _port_slice() -> tuple[int, int]:
    """This worker's share of [_PORTS_FLOOR, the ephemeral range's low end)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    width = (ephemeral_low - _PORTS_FLOOR) // max(count, 1)
    low = _PORTS_FLOOR + width * min(index, max(count, 1) - 1)
    return low, low + width


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ERL_ENV_NOISE}
    env.update(extra)
    return env


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, start time, state) of ``pid`` from /proc, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text("ascii", "replace")
    except OSError:
        return None
    # The command name is parenthesised and may hold spaces: split after it.
    fields = data[data.rfind(")") + 2 :].split()
    return int(fields[1]), fields[19], fields[0]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Descendants of ``pid`` as (pid, start time); empty without /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _same_process_alive(pid: int, start_time: str) -> bool:
    """Still running (a zombie only waits for its new parent to reap it)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == start_time and stat[2] != "Z"


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds, reap it.

    The emulator's helpers (erl_child_setup, which calls setsid, and port
    programs such as inet_gethost under it) normally exit once beam.smp is
    gone. They are recorded by pid and start time before signalling, and
    any still there shortly after is killed; the start time guards
    against a recycled pid. Leftovers in ``proc``'s own process group
    (it was started as a session leader) are killed too.
    """
    helpers = _descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    _LIVE.pop(proc.pid, None)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and (
        _group_exists(proc.pid) or any(_same_process_alive(p, t) for p, t in helpers)
    ):
        time.sleep(0.02)
    for pid, start_time in helpers:
        if _same_process_alive(pid, start_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if _group_exists(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# How to stop everything started here and not stopped yet, by pid, so that
# a script that dies on an exception (or forgets stop()) still takes its
# processes (and temp dirs) with it.
_LIVE: dict[int, Callable[[], None]] = {}


def track(pid: int, stopper: Callable[[], None]) -> None:
    _LIVE[pid] = stopper


@atexit.register
def _stop_leftovers() -> None:
    for stopper in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            stopper()


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (Linux /proc; empty elsewhere)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def _pid_listens_on(pid: int, port: int) -> bool | None:
    """Whether ``pid`` holds the listening socket of ``port``; None if unknown."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return None
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    try:
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in wanted:
                    return True
    except OSError:
        return None
    return False


# ---------------------------------------------------------------------------
# epmd


def epmd_names(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> dict[str, int]:
    """Ask the epmd at ``host:port`` for its registered names (NAMES_REQ).

    Request: 2-byte big-endian length, then byte 110. Reply: the 4-byte epmd
    port, then text lines ``name <Name> at port <Port>`` until close.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">HB", 1, EPMD_NAMES_REQ))
        chunks: list[bytes] = []
        while True:
            data = sock.recv(4096)
            if not data:
                break
            chunks.append(data)
    reply = b"".join(chunks)
    if len(reply) < 4:
        raise OtpProcessError(f"short NAMES reply from epmd on {host}:{port}: {reply!r}")
    names: dict[str, int] = {}
    for line in reply[4:].decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "name" and parts[2:4] == ["at", "port"]:
            names[parts[1]] = int(parts[4])
    return names


class ManagedProcess:
    """A process we started and own: its log, an optional directory it owns, an idempotent
    ``stop()`` (by pid, SIGTERM then SIGKILL after the grace) and the context-manager form."""

    stop_grace = 2.0

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, owned_dir: Path | None) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.owned_dir = owned_dir  # removed by stop(), after its log is kept in final_log
        self.final_log: str | None = None

    def running(self) -> bool:
        """Whether the process is still alive (not yet exited)."""
        return self._proc.poll() is None

    def log_text(self) -> str:
        if self.final_log is not None:
            return self.final_log
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float | None = None) -> None:
        _terminate(self._proc, self.stop_grace if grace is None else grace)
        if self.owned_dir is not None and self.final_log is None:
            self.final_log = self.log_text()
            shutil.rmtree(self.owned_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EpmdProc(ManagedProcess):
    """A private epmd we started in the foreground; ``stop()`` is idempotent."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        super().__init__(proc, log_path, None)
        self.port = port
        self.host = LOOPBACK

    def names(self, timeout: float = 2.0) -> dict[str, int]:
        return epmd_names(self.port, self.host, timeout)

    def __repr__(self) -> str:
        return f"EpmdProc(port={self.port}, pid={self.pid}, running={self.running()})"


def _start_epmd_once(port: int, log_path: Path, timeout: float) -> EpmdProc | None:
    """Start epmd on ``port``; None if the port turned out to be taken."""
    epmd = otp_select.epmd()  # the host's, or OTP 27's in its root
    if not epmd:
        raise OtpProcessError("epmd not found on PATH")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            # No -daemon: epmd stays our child, so its pid is the one to stop.
            [*epmd, "-port", str(port), "-address", LOOPBACK],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env({}),
            start_new_session=True,
        )
    epmd_proc = EpmdProc(proc, port, log_path)
    track(proc.pid, epmd_proc.stop)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            epmd_proc.stop()  # reap it
            return None  # most likely "address already in use"
        try:
            epmd_names(port, timeout=0.5)
        except OSError:
            time.sleep(0.02)
            continue
        # Something answers NAMES on the port: make sure it is ours and not
        # a concurrent run's epmd that won the race for the same port.
        owned = _pid_listens_on(proc.pid, port)
        if owned is None:
            time.sleep(0.1)
            owned = proc.poll() is None
        if owned:
            return epmd_proc
        time.sleep(0.02)
    epmd_proc.stop()
    raise OtpProcessError(
        f"epmd on port {port} not answering after {timeout}s", epmd_proc.log_text()
    )


def start_epmd(
    port: int | None = None,
    *,
    log_dir: Path | None = None,
    timeout: float = 10.0,
    attempts: int = 5,
) -> EpmdProc:
    """Start ``epmd -port P -address 127.0.0.1`` and wait until it answers.

    With ``port=None`` a free port is picked (and re-picked if another
    process grabs it first). The log goes to ``log_dir`` (default: a new
    temporary directory, removed by ``stop()``) as ``epmd-<port>.log``.
    """
    if port == SYSTEM_EPMD_PORT:
        raise ValueError("refusing to run a test epmd on the system port 4369")
    owned = log_dir is None
    base = Path(tempfile.mkdtemp(prefix="relctl-epmd-")) if log_dir is None else log_dir
    base.mkdir(parents=True, exist_ok=True)
    tried: list[int] = []
    for _ in range(attempts if port is None else 1):
        chosen = port if port is not None else free_port()
        tried.append(chosen)
        log_path = base / f"epmd-{chosen}.log"
        started = _start_epmd_once(chosen, log_path, timeout)
        if started is not None:
            started.owned_dir = base if owned else None
            return started
    last_log = (base / f"epmd-{tried[-1]}.log").read_text("utf-8", "replace")
    if owned:
        shutil.rmtree(base, ignore_errors=True)
    raise OtpProcessError(f"could not start epmd on port(s) {tried}", last_log)


# ---------------------------------------------------------------------------
# release nodes


def split_name(name: str) -> tuple[str, str]:
    alive, sep, host = name.partition("@")
    if not sep:
        host = "localhost"
    if not alive or not host:
        raise ValueError(f"bad node name {name!r}")
    return alive, host


def write_cookie_home(home: Path, cookie: str) -> None:
    """A HOME whose .erlang.cookie (mode 0400, as erl insists) holds ``cookie``."""
    home.mkdir(parents=True, exist_ok=True)
    cookie_file = home / ".erlang.cookie"
    if cookie_file.exists():
        cookie_file.chmod(0o600)
    cookie_file.write_text(cookie, encoding="ascii")
    cookie_file.chmod(0o400)


def _erl_string(text: str | Path) -> str:
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class NodeProc(ManagedProcess):
    """A release node started by :func:`start_node`; ``stop()`` is idempotent.

    ``stop()`` sends SIGTERM (beam runs init:stop()) and SIGKILLs after 5 s.
    ``pid`` is the beam.smp pid itself (the start script execs erlexec,
    which execs the emulator). ``home`` holds the cookie file and is what
    probes use as HOME; ``log_path`` collects the node's stdout/stderr.
    """

    stop_grace = 5.0

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        name: str,
        cookie: str,
        epmd_port: int,
        root: Path,
        workdir: Path,
        owns_workdir: bool,
    ) -> None:
        super().__init__(proc, workdir / "node.log", workdir if owns_workdir else None)
        self.name = name
        self.alive_name, self.host = split_name(name)
        self.cookie = cookie
        self.epmd_port = epmd_port
        self.root = root
        self.workdir = workdir
        self.home = workdir / "home"
        self.started_seconds = 0.0
        # Every relctl command a test runs checks this node's invariants while it runs.
        invariants.watch(id(self), invariants.Watched(
            name, cookie, epmd_port, root,
            tls="inet_tls" in " ".join(str(a) for a in getattr(proc, "args", ()))))

    def stop(self, grace: float | None = None) -> None:
        invariants.unwatch(id(self))
        super().stop(grace)

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def __repr__(self) -> str:
        return f"NodeProc(name={self.name!r}, pid={self.pid}, epmd_port={self.epmd_port})"


def start_node(
    target_root: Path,
    name: str = "counter@localhost",
    cookie: str | None = None,
    epmd_port: int | None = None,
    extra_args: Sequence[str] = (),
    *,
    workdir: Path | None = None,
    start_script: str = "bin/counter",
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> NodeProc:
    """Boot the release in ``target_root`` as ``-sname name``; wait until ready.

    Ready means both: the boot script finished (every application of the
    release is started, signalled by a file written from ``-eval``) and the
    node is registered with the epmd on ``epmd_port``. The cookie only ever
    lives in ``<workdir>/home/.erlang.cookie``. ``workdir`` defaults to a new
    temporary directory that ``stop()`` removes (``final_log`` keeps the log).
    """
    if epmd_port is None:
        raise ValueError("start_node needs the port of a private epmd (see start_epmd)")
    if epmd_port == SYSTEM_EPMD_PORT:
        raise ValueError("refusing to register a test node with the system epmd")
    alive, host = split_name(name)
    full_name = f"{alive}@{host}"
    cookie = cookie if cookie is not None else secrets.token_hex(16)
    owns_workdir = workdir is None
    wdir = Path(tempfile.mkdtemp(prefix=f"relctl-{alive}-")) if workdir is None else workdir
    wdir = wdir.resolve()
    wdir.mkdir(parents=True, exist_ok=True)
    home = wdir / "home"
    write_cookie_home(home, cookie)
    ready_file = wdir / "booted"
    ready_file.unlink(missing_ok=True)
    log_path = wdir / "node.log"

    if alive in epmd_names(epmd_port):
        raise OtpProcessError(f"{alive!r} is already registered with epmd on port {epmd_port}")

    root = target_root.resolve()
    argv = [
        *otp_select.run_prefix(),
        str(root / start_script),
        "-sname",
        full_name,
        "-start_epmd",
        "false",
        "-kernel",
        "inet_dist_use_interface",
        "{127,0,0,1}",
        *extra_args,
        # -eval runs once the boot script (all applications) has completed.
        "-eval",
        f"ok = file:write_file({_erl_string(ready_file)}, <<>>)",
    ]
    env = clean_env(
        {
            "HOME": str(home),
            # auth also looks here (after $HOME); keep it inside the private home.
            "XDG_CONFIG_HOME": str(home / ".config"),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_CRASH_DUMP": str(wdir / "erl_crash.dump"),
            **(env or {}),  # the node's own environment variables (relx ${VAR}s, ...)
        }
    )
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=wdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    if "-heart" in argv:
        # heart restarts the node once the emulator has gone, and until then it sees the pid
        # alive: unreaped (a zombie of ours) it waited 5 s, failed to kill it for 5 s more,
        # and every emulator restart took 12 s instead of 2, as it does under systemd or
        # run_erl, whose parent reaps at once. The thread only reaps; stop() still owns it.
        threading.Thread(target=proc.wait, name=f"reap {full_name}", daemon=True).start()
    node = NodeProc(
        proc,
        name=full_name,
        cookie=cookie,
        epmd_port=epmd_port,
        root=root,
        workdir=wdir,
        owns_workdir=owns_workdir,
    )
    return await_started(node, proc, ready_file, timeout, t0)


def await_started(node: NodeProc, proc: subprocess.Popen[bytes], ready_file: Path,
                  timeout: float, t0: float) -> NodeProc:
    """Track a just-started node for the end-of-session sweep and wait until it is ready; a
    node that does not get ready is stopped before the error goes up."""
    track(proc.pid, node.stop)
    try:
        _wait_node_ready(node, proc, ready_file, timeout)
    except BaseException:
        node.stop(grace=1.0)
        raise
    node.started_seconds = time.monotonic() - t0
    return node


def _wait_node_ready(
    node: NodeProc, proc: subprocess.Popen[bytes], ready_file: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OtpProcessError(
                f"node {node.name} exited with {proc.returncode} while starting", node.log_text()
            )
        if ready_file.exists():
            try:
                if node.alive_name in epmd_names(node.epmd_port):
                    return
            except OSError:
                pass
        time.sleep(0.02)
    raise OtpProcessError(f"node {node.name} not ready after {timeout}s", node.log_text())


# ---------------------------------------------------------------------------
# independent probes: plain erl + rpc:call

# Runs in a short-lived hidden node. Inputs come from the environment so no
# quoting is involved; the result goes to stdout on one line, logs to stderr.
# Exit codes: 0 ok, 1 badrpc, 2 cannot connect, 3 bad input.
_PROBE_PROGRAM = r"""
io:setopts(standard_io, [{encoding, unicode}]),
Target = list_to_atom(os:getenv("RELCTL_PROBE_TARGET")),
Timeout = list_to_integer(os:getenv("RELCTL_PROBE_TIMEOUT_MS")),
Exit = fun(Code, Fmt, Args) ->
           io:format(standard_error, Fmt, Args), halt(Code)
       end,
Parse = fun(Src) ->
            S = string:trim(Src, trailing, " \t\r\n."),
            case erl_scan:string(S ++ ".") of
                {ok, Toks, _} ->
                    case erl_parse:parse_exprs(Toks) of
                        {ok, Exprs} -> Exprs;
                        {error, E} -> Exit(3, "parse error: ~tp~n", [E])
                    end;
                {error, E, _} -> Exit(3, "scan error: ~tp~n", [E])
            end
        end,
case net_kernel:connect_node(Target) of
    true -> ok;
    _ -> Exit(2, "cannot connect to ~tp~n", [Target])
end,
Result =
    case os:getenv("RELCTL_PROBE_MODE") of
        "rpc" ->
            M = list_to_atom(os:getenv("RELCTL_PROBE_MODULE")),
            F = list_to_atom(os:getenv("RELCTL_PROBE_FUNCTION")),
            {value, Args, _} =
                erl_eval:exprs(Parse(os:getenv("RELCTL_PROBE_ARGS")), []),
            rpc:call(Target, M, F, Args, Timeout);
        "eval" ->
            Exprs = Parse(os:getenv("RELCTL_PROBE_EXPR")),
            case rpc:call(Target, erl_eval, exprs, [Exprs, []], Timeout) of
                {value, V, _Bindings} -> V;
                Bad -> Bad
            end
    end,
io:format("~*tp~n", [1 bsl 20, Result]),
case Result of
    {badrpc, _} -> halt(1);
    _ -> halt(0)
end.
"""


def _run_probe(node: NodeProc, env_extra: Mapping[str, str], timeout: float, check: bool) -> str:
    erl = shutil.which("erl")
    if erl is None:
        raise OtpProcessError("erl not found on PATH")
    probe = f"probe_{secrets.token_hex(6)}@{node.host}"
    argv = [
        erl,
        "-boot",
        "no_dot_erlang",
        "-hidden",
        "-sname",
        probe,
        "-noshell",
        "-noinput",
        "-start_epmd",
        "false",
        "-kernel",
        "inet_dist_use_interface",
        "{127,0,0,1}",
        "-kernel",
        "logger",
        "[{handler,default,logger_std_h,#{config=>#{type=>standard_error}}}]",
        "-eval",
        _PROBE_PROGRAM,
    ]
    env = clean_env(
        {
            "HOME": str(node.home),
            "XDG_CONFIG_HOME": str(node.home / ".config"),
            "ERL_EPMD_PORT": str(node.epmd_port),
            "ERL_CRASH_DUMP": str(node.home / "probe_crash.dump"),
            "RELCTL_PROBE_TARGET": node.name,
            "RELCTL_PROBE_TIMEOUT_MS": str(int(timeout * 1000)),
            **env_extra,
        }
    )
    proc = subprocess.Popen(
        argv,
        cwd=node.home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    track(proc.pid, lambda: _terminate(proc, grace=0.5))
    try:
        out_b, err_b = proc.communicate(timeout=timeout + 15.0)
    except subprocess.TimeoutExpired:
        _terminate(proc, grace=0.5)
        out_b, err_b = proc.communicate()
        output = out_b.decode("utf-8", "replace") + err_b.decode("utf-8", "replace")
        raise ErlRpcError(f"probe of {node.name} timed out", output, -1) from None
    finally:
        _terminate(proc, grace=0.5)  # reaps and untracks; no-op if it exited
    out = out_b.decode("utf-8", "replace").strip()
    err = err_b.decode("utf-8", "replace").strip()
    if proc.returncode == 0 or (proc.returncode == 1 and not check):
        return out
    raise ErlRpcError(
        f"probe of {node.name} failed (exit {proc.returncode})",
        f"stdout: {out}\nstderr: {err}",
        proc.returncode if proc.returncode is not None else -1,
    )


def erl_rpc(
    node: NodeProc,
    module: str,
    function: str,
    args_erlang_source: str = "[]",
    *,
    timeout: float = 30.0,
    check: bool = True,
) -> str:
    """``rpc:call(Node, Module, Function, Args)`` from a fresh hidden node.

    ``args_erlang_source`` is Erlang source for the argument list, e.g.
    ``'["0.0.2"]'`` (evaluated on the probe). Returns the result printed
    with ``~tp`` on a single line. A ``{badrpc, _}`` result raises
    ErlRpcError unless ``check=False``.
    """
    env = {
        "RELCTL_PROBE_MODE": "rpc",
        "RELCTL_PROBE_MODULE": module,
        "RELCTL_PROBE_FUNCTION": function,
        "RELCTL_PROBE_ARGS": args_erlang_source,
    }
    return _run_probe(node, env, timeout, check)


def erl_eval(node: NodeProc, expr_source: str, *, timeout: float = 30.0, check: bool = True) -> str:
    """Evaluate Erlang expressions *on the node* and return the printed value.

    E.g. ``erl_eval(node, "sys:get_state(counter)")``. Parsed on the probe
    and evaluated remotely with ``erl_eval:exprs/2`` through ``rpc:call``,
    so ``erlang:nodes(hidden)`` there includes the probe itself.
    """
    return _run_probe(node, {"RELCTL_PROBE_MODE": "eval", "RELCTL_PROBE_EXPR": expr_source}, timeout, check)
