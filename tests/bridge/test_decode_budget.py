"""The decode budget (codec.DecodeBudget): how much one message may decode to, relative to its
size on the wire. Terms over it (a long list of empty lists, a compressed bomb) are refused
with TermTooLarge before they cost their memory; real replies pass; a reply over the budget
fails only its own call. No node, no event loop."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib
from typing import Any

import pytest

from bridge import Atom, DecodeBudget, DecodeError, TermTooLarge, decode, encode
from bridge.codec import DEFAULT_BUDGET, decode_prefix
from bridge.rpc import CallFailed, CallReturned
from bridge.session import CallReply, Deferred, Session, Undeliverable

from .test_rpc_sansio import OUR_PID, calls, deliver, ref_of, reply_frame

MiB = 1024 * 1024


def nil_list(n: int) -> bytes:
    """The body of ``lists:duplicate(n, [])``: LIST_EXT n, n NIL_EXT, the NIL tail."""
    return b"l" + struct.pack(">I", n) + b"j" * n + b"j"


def nested_nil_lists(outer: int, inner: int) -> bytes:
    """``lists:duplicate(outer, lists:duplicate(inner, []))``: each list is small on its own."""
    return b"l" + struct.pack(">I", outer) + nil_list(inner) * outer + b"j"


def compressed(body: bytes) -> bytes:
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9)


# --- the limits ---------------------------------------------------------------------------


def test_limits_are_relative_to_the_wire_size_with_a_floor_and_a_cap() -> None:
    budget = DecodeBudget(max_elements=100, min_elements=10, elements_per_wire_byte=2,
                          max_bytes=1000, min_bytes=50, bytes_per_wire_byte=8)
    assert budget.limits(1) == (10, 50)        # the floor
    assert budget.limits(20) == (40, 160)      # relative
    assert budget.limits(10_000) == (100, 1000)  # the cap


def test_default_caps_let_an_uncompressed_term_use_one_element_a_wire_byte() -> None:
    elements, size = DEFAULT_BUDGET.limits(2 * MiB)
    assert elements == 2 * MiB and size >= 2 * MiB


# --- refused ------------------------------------------------------------------------------


def test_a_30_million_element_list_is_refused_at_once() -> None:
    data = b"\x83" + nil_list(30_000_000)  # 30 MB on the wire, over 2 GB as Python lists
    started = time.perf_counter()
    with pytest.raises(TermTooLarge, match=r"more than 3000000 elements, over the decode budget"):
        decode(data)
    assert time.perf_counter() - started < 1.0  # refused from the count, before decoding


def test_many_small_lists_are_refused_when_the_budget_runs_out() -> None:
    data = b"\x83" + nested_nil_lists(300, 10_000)  # 3 M elements in lists of 10 000
    budget = DecodeBudget(max_elements=100_000, min_elements=1000,
                          elements_setting="[agent] max_term_elements")
    with pytest.raises(TermTooLarge) as raised:
        decode(data, budget=budget)
    assert "more than 100000 elements" in str(raised.value)
    assert "the cap is [agent] max_term_elements" in str(raised.value)
    assert isinstance(raised.value, DecodeError)  # callers that catch DecodeError still do


def test_binaries_count_against_the_byte_budget() -> None:
    data = encode([b"x" * 1000] * 10)
    assert decode(data, budget=DecodeBudget(max_bytes=10_000, min_bytes=0)) == [b"x" * 1000] * 10
    with pytest.raises(TermTooLarge, match=r"more than 9999 bytes.*the cap is max_term_bytes"):
        decode(data, budget=DecodeBudget(max_bytes=9999, min_bytes=0, bytes_setting="max_term_bytes"))


def test_a_compressed_bomb_of_empty_lists_is_refused_within_bounded_memory() -> None:
    # 8 KB on the wire; inflated, 8 MB of NIL_EXT; decoded, about 650 MB of Python lists.
    data = compressed(nested_nil_lists(80, 100_000))
    assert len(data) < 16 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TermTooLarge, match=r"more than 1000000 elements"):
            decode(data)  # the floor, not the cap: the wire is small
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 150 * MiB, f"peak {peak / MiB:.0f} MiB"


def test_a_compressed_term_may_not_inflate_past_its_byte_budget() -> None:
    data = compressed(b"m" + struct.pack(">I", 40 * MiB) + bytes(40 * MiB))  # a 40 MiB binary, 40 KB wire
    assert len(data) < 64 * 1024
    with pytest.raises(TermTooLarge, match=r"more than 16777216 inflated bytes"):
        decode(data)  # refused from the declared size: nothing is inflated


def test_a_compressed_term_within_its_budget_decodes() -> None:
    term = [(Atom("ok"), i, b"abc") for i in range(10_000)]
    assert decode(encode(term, compressed=True)) == term


# --- real replies pass ----------------------------------------------------------------------


def test_a_state_of_tens_of_megabytes_passes_the_default_budget() -> None:
    state = {i: {Atom("name"): b"n" * 100, Atom("tags"): [Atom("a"), Atom("b"), i], Atom("at"): (i, i + 1)}
             for i in range(200_000)}
    blob = (Atom("blob"), b"b" * (20 * MiB))
    data = encode((state, blob))
    assert len(data) > 40 * MiB
    assert decode(data) == (state, blob)


def test_which_releases_passes() -> None:
    releases = [["counter", "0.0.1", [f"lib/app-{i}/ebin" for i in range(40)], Atom("permanent")]]
    assert decode(encode(releases)) == releases


# --- one call fails, the connection goes on -------------------------------------------------


def big_reply_frame(ref: Any, body: bytes) -> bytes:
    payload = b"\x83h\x02" + encode(ref)[1:] + body
    frame = b"p" + encode((2, Atom(""), OUR_PID)) + payload
    return struct.pack(">I", len(frame)) + frame


def test_a_reply_over_the_budget_fails_only_its_call() -> None:
    rpc, session = calls()
    big, _ = rpc.request("lists", "duplicate", [5_000_000, []], timeout=30.0, now=0.0)
    small, _ = rpc.request("erlang", "node", [], timeout=30.0, now=0.0)
    events, outcomes = deliver(rpc, session, big_reply_frame(ref_of(big), nil_list(5_000_000)))
    assert type(events[0]) is Undeliverable
    (failed,) = outcomes
    assert isinstance(failed, CallFailed) and failed.call_id == big
    assert isinstance(failed.error, TermTooLarge)
    assert str(failed.error).startswith("the reply to lists:duplicate/2 from counter@localhost is too large")
    assert len(rpc) == 1  # the other call still waits, and is answered
    _, (answered,) = deliver(rpc, session, reply_frame(ref_of(small), Atom("counter@localhost")))
    assert answered == CallReturned(small, Atom("counter@localhost"))


def test_a_big_frame_is_deferred_and_decoded_by_decode_frame() -> None:
    session = Session(flags=0, defer_from=1024)
    session.add_local_pid(OUR_PID)
    ref = ref_of(b"\0\0\0\1\0\0\0\0\0\0\0\1")
    frame = reply_frame(ref, b"x" * 2000)
    events, owed = session.receive_data(frame + reply_frame(ref, Atom("small")))
    assert owed == b"" and [type(e) for e in events] == [Deferred, CallReply]
    deferred = events[0]
    assert isinstance(deferred, Deferred) and deferred.frame == frame[4:]
    event, owed = session.decode_frame(deferred.frame)
    assert owed == b"" and isinstance(event, CallReply) and event.reply == b"x" * 2000


def test_a_small_frame_that_may_hold_a_compressed_term_is_deferred() -> None:
    session = Session(flags=0, defer_from=1024)
    session.add_local_pid(OUR_PID)
    body = b"p" + encode((2, Atom(""), OUR_PID)) + compressed(nested_nil_lists(80, 100_000))
    events, _ = session.receive_data(struct.pack(">I", len(body)) + body)
    assert [type(e) for e in events] == [Deferred]
    event, _ = session.decode_frame(body)
    assert isinstance(event, Undeliverable) and isinstance(event.error, TermTooLarge)


def test_without_defer_from_every_frame_is_decoded_in_receive_data() -> None:
    session = Session(flags=0)
    session.add_local_pid(OUR_PID)
    ref = ref_of(b"\0\0\0\1\0\0\0\0\0\0\0\1")
    events, _ = session.receive_data(reply_frame(ref, b"x" * (1024 * 1024)))
    assert [type(e) for e in events] == [CallReply]


def test_decode_prefix_takes_the_budget_of_the_whole_buffer() -> None:
    data = encode(Atom("control")) + b"\x83" + nil_list(2000)
    _, pos = decode_prefix(data, 0)
    with pytest.raises(TermTooLarge):
        decode_prefix(data, pos, budget=DecodeBudget(max_elements=1000, min_elements=10))
    term, end = decode_prefix(data, pos, budget=DecodeBudget(max_elements=2000, min_elements=10))
    assert len(term) == 2000 and end == len(data)
