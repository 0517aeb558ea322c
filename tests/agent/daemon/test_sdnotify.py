"""agent/sdnotify.py against a real NOTIFY_SOCKET (a Unix datagram socket, by path and in the
abstract namespace), and the real agent process reporting READY, WATCHDOG and STOPPING."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.daemon.sdnotify import MAX_STATUS, Notifier, nodes_status
from tests.tools.agent_proc import NodeEntry, eventually, start_agent
from tests.tools.otp_procs import free_port
from tests.tools.polls import until


class Receiver:
    """The systemd end: datagrams with their arrival time, read by a thread so that a test
    that blocks its event loop does not delay the timestamps."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.02)
        self._received: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            with self._lock:
                self._received.append((time.monotonic(), data.decode()))

    @property
    def received(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._received)

    @property
    def messages(self) -> list[str]:
        return [text for _, text in self.received]

    def wait_for(self, check: Callable[[str], bool], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if check(m)]
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no such message within {timeout} s; got {self.messages!r}")

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(str(tmp_path / "notify.sock"))
    yield rx
    rx.close()


def socket_env(rx: Receiver, **extra: str) -> dict[str, str]:
    address = rx.sock.getsockname()
    value = "@" + address[1:].decode() if isinstance(address, bytes) else address
    return {"NOTIFY_SOCKET": value, **extra}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logged() -> Iterator[Records]:
    # On the module's own logger: logs.configure() may have turned off propagation to pytest's.
    handler = Records()
    logger = logging.getLogger("relctl.agent.daemon.sdnotify")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def pings(rx: Receiver) -> list[float]:
    return [at for at, text in rx.received if "WATCHDOG=1" in text.split("\n")]


# --- the messages -------------------------------------------------------------------------


def test_ready_status_stopping_and_watchdog_reach_a_socket_path(receiver: Receiver) -> None:
    notifier = Notifier.from_environ(socket_env(receiver))
    assert notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("2 nodes: 2 up")
    assert notifier.status("3 nodes: 1 up,\n2 down")  # one line: a newline starts a new key
    assert notifier.watchdog()
    assert notifier.stopping("stopping")
    receiver.wait_for(lambda m: m.startswith("STOPPING=1"))
    notifier.close()
    assert receiver.messages == ["READY=1\nSTATUS=2 nodes: 2 up", "STATUS=3 nodes: 1 up, 2 down",
                                 "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]


def test_an_abstract_socket_is_reached_by_its_at_name() -> None:
    name = f"relctl-test-{os.getpid()}-{secrets.token_hex(4)}"
    rx = Receiver(b"\0" + name.encode())
    try:
        env = socket_env(rx)
        assert env["NOTIFY_SOCKET"] == f"@{name}"
        notifier = Notifier.from_environ(env)
        assert notifier.ready("0 nodes")
        assert rx.wait_for(lambda m: True) == "READY=1\nSTATUS=0 nodes"
        notifier.close()
    finally:
        rx.close()


def test_a_long_status_is_cut_to_what_systemd_accepts(receiver: Receiver) -> None:
    notifier = Notifier.from_environ(socket_env(receiver))
    notifier.status("x" * 10_000)
    assert receiver.wait_for(lambda m: True) == "STATUS=" + "x" * MAX_STATUS
    notifier.close()


def test_the_variables_are_taken_out_of_the_environment(receiver: Receiver) -> None:
    env = socket_env(receiver, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()),
                     HOME="/root")
    notifier = Notifier.from_environ(env)
    assert env == {"HOME": "/root"}  # children must not speak for the agent
    assert notifier.watchdog_interval == 15.0
    notifier.close()


def test_without_notify_socket_everything_is_a_quick_no_op(logged: Records) -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping()

    async def run() -> None:  # nothing to send: the task ends at once instead of looping
        await asyncio.wait_for(notifier.run_watchdog(lambda: "x"), timeout=1)

    asyncio.run(run())
    assert logged.records == []


def test_a_socket_form_we_do_not_speak_is_one_warning(logged: Records) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and not notifier.ready()
    [warning] = logged.at(logging.WARNING)
    assert "NOTIFY_SOCKET='vsock:2:1234' is neither a socket path nor an abstract name" in warning


def _nobody_there(tmp_path: Path) -> str:
    return str(tmp_path / "missing.sock")


def _closed_socket(tmp_path: Path) -> str:
    path = tmp_path / "closed.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # the file stays, nobody reads: ECONNREFUSED
    return str(path)


@pytest.mark.parametrize("make_path", [_nobody_there, _closed_socket])
def test_an_unreachable_socket_never_raises_and_warns_once(
        tmp_path: Path, logged: Records, make_path: Callable[[Path], str]) -> None:
    path = make_path(tmp_path)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert [notifier.ready("1 node"), notifier.watchdog(), notifier.status("s"),
            notifier.stopping()] == [False] * 4
    [warning] = logged.at(logging.WARNING)
    assert f"cannot notify systemd through NOTIFY_SOCKET={path}: " in warning
    assert "unset NOTIFY_SOCKET when systemd did not start the agent" in warning
    assert len(logged.at(logging.DEBUG)) == 3
    notifier.close()


# --- the watchdog ---------------------------------------------------------------------------


def run_until(notifier: Notifier, *waits: tuple[str, Callable[[], bool]],
              status: Callable[[], str] | None = None, status_interval: float = 15.0,
              between: Callable[[], object] | None = None) -> None:
    """Run the watchdog task until the receiver got what each of ``waits`` waits for (polled,
    5 s at most each), in turn; ``between`` runs on the loop between two waits."""
    async def main() -> None:
        task = asyncio.create_task(notifier.run_watchdog(status, status_interval=status_interval))
        try:
            for i, (what, check) in enumerate(waits):
                if i and between is not None:
                    between()
                await until(check, what=what)
            assert not task.done()  # it runs until cancelled
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_watchdog_pings_come_every_half_watchdog_usec(receiver: Receiver) -> None:
    notifier = Notifier.from_environ(socket_env(receiver, WATCHDOG_USEC="200000"))
    assert notifier.watchdog_interval == 0.1
    run_until(notifier, ("six pings", lambda: len(pings(receiver)) >= 6))
    times = pings(receiver)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.05 <= gap <= 0.3 for gap in gaps), gaps  # ~0.1 s; slack for a busy machine
    notifier.close()


def test_a_blocked_event_loop_stops_the_pings(receiver: Receiver) -> None:
    notifier = Notifier.from_environ(socket_env(receiver, WATCHDOG_USEC="100000"))
    # Two pings, then the loop blocks (as a bug would) for 0.5 s, then one more ping.
    run_until(notifier, ("two pings", lambda: len(pings(receiver)) >= 2),
              ("a ping after the block", lambda: len(pings(receiver)) >= 3),
              between=lambda: time.sleep(0.5))
    times = pings(receiver)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) >= 0.45, gaps  # systemd (WatchdogSec=0.1) would have restarted us
    notifier.close()


@pytest.mark.parametrize("offset", [1, -1])
def test_watchdog_pid_of_another_process_means_no_pings(receiver: Receiver, offset: int) -> None:
    env = socket_env(receiver, WATCHDOG_USEC="100000", WATCHDOG_PID=str(os.getpid() + offset))
    notifier = Notifier.from_environ(env)
    assert notifier.watchdog_interval is None
    up = iter(range(1, 100))  # a new text each round: each round sends what it has
    run_until(notifier, ("three rounds", lambda: len(receiver.messages) >= 3),
              status=lambda: f"3 nodes: {next(up)} up", status_interval=0.05)
    # Status still refreshed, never pinged.
    sent = receiver.messages
    assert sent == [f"STATUS=3 nodes: {n} up" for n in range(1, len(sent) + 1)], sent
    notifier.close()


@pytest.mark.parametrize("usec", ["soon", "0", "-5"])
def test_a_bad_watchdog_usec_is_a_warning_not_a_crash(receiver: Receiver, logged: Records,
                                                     usec: str) -> None:
    notifier = Notifier.from_environ(socket_env(receiver, WATCHDOG_USEC=usec))
    assert notifier.enabled and notifier.watchdog_interval is None
    [warning] = logged.at(logging.WARNING)
    assert f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds" in warning
    notifier.close()


def test_status_is_sent_with_the_ping_only_when_it_changed(receiver: Receiver) -> None:
    texts = iter(["2 nodes: 2 up"] * 3 + ["2 nodes: 1 up, 1 down: b@h"] * 100)
    notifier = Notifier.from_environ(socket_env(receiver, WATCHDOG_USEC="100000"))
    notifier.ready("2 nodes: 2 up")
    stopping = "STOPPING=1\nSTATUS=stopping"

    def after_stopping() -> list[str]:
        messages = receiver.messages
        return messages[messages.index(stopping) + 1:] if stopping in messages else []
    run_until(notifier, ("READY, three pings and a new STATUS", lambda: len(receiver.messages) >= 5),
              ("two rounds after STOPPING", lambda: len(after_stopping()) >= 2),
              status=lambda: next(texts), between=lambda: notifier.stopping("stopping"))
    messages = receiver.messages
    assert messages[:5] == ["READY=1\nSTATUS=2 nodes: 2 up"] + ["WATCHDOG=1"] * 3 + [
        "WATCHDOG=1\nSTATUS=2 nodes: 1 up, 1 down: b@h"]
    after = after_stopping()
    assert after and set(after) == {"WATCHDOG=1"}  # pings go on, STATUS stays "stopping"
    notifier.close()


def test_a_failing_status_callable_costs_the_status_not_the_pings(
        receiver: Receiver, logged: Records) -> None:
    def broken() -> str:
        raise KeyError("bug")

    notifier = Notifier.from_environ(socket_env(receiver, WATCHDOG_USEC="100000"))
    run_until(notifier, ("three pings", lambda: len(pings(receiver)) >= 3), status=broken)
    assert set(receiver.messages) == {"WATCHDOG=1"}
    [warning] = logged.at(logging.WARNING)
    assert "cannot compute the systemd STATUS text" in warning
    notifier.close()


@dataclass(frozen=True)
class State:
    name: str
    up: bool


def test_nodes_status_counts_and_names_the_down_nodes() -> None:
    assert nodes_status([]) == "0 nodes"
    assert nodes_status([State("a@h", True)]) == "1 node: 1 up"
    assert nodes_status([State("a@h", True), State("b@h", True)]) == "2 nodes: 2 up"
    assert nodes_status([State("a@h", False), State("b@h", True), State("c@h", False)]) \
        == "3 nodes: 1 up, 2 down: a@h, c@h"
    many = [State(f"n{i}@h", False) for i in range(8)]
    assert nodes_status(many) == "8 nodes: 0 up, 8 down: n0@h, n1@h, n2@h, n3@h, n4@h and 3 more"


# --- the agent process ----------------------------------------------------------------------


def test_the_agent_reports_ready_watchdog_and_stopping(tmp_path: Path,
                                                      receiver: Receiver) -> None:
    ghost = NodeEntry("ghost@localhost", "cookie", free_port())  # no epmd there: down at once
    agent = start_agent(tmp_path / "agent", [ghost], metrics=False,
                        env=socket_env(receiver, WATCHDOG_USEC="400000"))
    try:
        ready = receiver.wait_for(lambda m: m.startswith("READY=1"))
        assert ready == "READY=1\nSTATUS=1 node: 0 up, 1 down: ghost@localhost"
        with socket.create_connection(("127.0.0.1", agent.grpc_port), timeout=2):
            pass  # ready means gRPC listens
        eventually(lambda: len(pings(receiver)) >= 3, timeout=5, what="3 watchdog pings")
        times = pings(receiver)
        assert all(0.05 <= b - a <= 0.6 for a, b in zip(times, times[1:])), times  # ~0.2 s
        agent.send_signal(signal.SIGTERM)
        assert receiver.wait_for(lambda m: m.startswith("STOPPING=1")) \
            == "STOPPING=1\nSTATUS=stopping: letting running calls and operations finish"
        deadline = time.monotonic() + 10
        while agent.running() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        agent.stop()
    assert agent.returncode == 0, agent.log_text()
    messages = receiver.messages
    assert messages.index(ready) == 0  # nothing before READY
    assert "NOTIFY_SOCKET" not in agent.log_text()  # no send failed
