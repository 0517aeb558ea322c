"""Connection's dispatch of replies, driven with frames (our own class; the socket is replaced
by a recorder, since the behaviour under test is what happens after bytes arrive)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from bridge import Atom, BridgeTimeout, DecodeError, Node, Pid, encode
from bridge.codec import decode_prefix
from bridge.flags import OUR_FLAGS, DFlag
from bridge.handshake import HandshakeResult
from bridge.node import Connection

PEER = Pid(Atom("counter@localhost"), 70, 0, 5)


class Recorder:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close_transport(self) -> None: ...

    def abort_transport(self) -> None: ...


# A peer without DFLAG_SPAWN: calls go through rex (the spawn path: test_spawn_calls.py).
REX_FLAGS = int(OUR_FLAGS & ~DFlag.SPAWN)


def connection() -> tuple[Connection, Recorder]:
    recorder = Recorder()
    node = Node(cookie="c", name="relctl_t@localhost")
    result = HandshakeResult("counter@localhost", 5, REX_FLAGS, REX_FLAGS, b"")
    pid = Pid(node.atom, 1, 0, node.creation)
    return Connection(recorder, result, pid, node), recorder  # type: ignore[arg-type]


def sent_call(recorder: Recorder) -> Any:
    frame = recorder.written[-1]
    control, pos = decode_prefix(frame, 5)
    payload, _ = decode_prefix(frame, pos)
    assert control[0] == 6 and control[3] == Atom("rex")
    return payload  # {'$gen_call', {Pid, Ref}, {call, M, F, A, user}}


def frame(control: tuple[Any, ...], payload: Any) -> bytes:
    body = b"p" + encode(control) + encode(payload)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("op", [2, 22])  # SEND (the byte-level fast path), SEND_SENDER (general path)
async def test_a_reply_answers_its_call_whatever_its_control(op: int) -> None:
    conn, recorder = connection()
    call = asyncio.ensure_future(conn.call("erlang", "node", [], timeout=5))
    await asyncio.sleep(0)
    _, (our_pid, ref), _ = sent_call(recorder)
    control = (2, Atom(""), our_pid) if op == 2 else (22, PEER, our_pid)
    conn.data_received(frame(control, (ref, Atom("counter@localhost"))))
    assert await call == Atom("counter@localhost")
    conn.abort()


async def test_an_undecodable_reply_fails_its_call_with_decode_error() -> None:
    conn, recorder = connection()
    call = asyncio.ensure_future(conn.call("erlang", "node", [], timeout=5))
    await asyncio.sleep(0)
    _, (our_pid, ref), _ = sent_call(recorder)
    good = frame((22, PEER, our_pid), (ref, Atom("x")))
    conn.data_received(good[:-3] + b"\x01\x01\x01")
    with pytest.raises(DecodeError, match="reply from counter@localhost could not be decoded"):
        await call
    conn.abort()


async def test_deadlines_expire_one_by_one_and_nothing_stays_pending() -> None:
    conn, _ = connection()
    calls = [asyncio.ensure_future(conn.call("timer", "sleep", [10], timeout=0.05 * (i + 1))) for i in range(3)]
    await asyncio.sleep(0)
    assert conn.pending_calls == 3
    done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    assert done == {calls[0]} and conn.pending_calls == 2
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, BridgeTimeout) for r in results)
    assert "timer:sleep/1 on counter@localhost did not answer within 0.05 s" in str(results[0])
    assert "within 0.15 s" in str(results[2])
    assert conn.pending_calls == 0
    conn.abort()
