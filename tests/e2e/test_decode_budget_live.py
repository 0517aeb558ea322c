"""A node answering ``lists:duplicate(30000000, [])`` (30 MB on the wire, over 2 GB as Python
lists) against the decode budget, with a real node (issue 13, item 7): the call fails with
TermTooLarge naming the budget, the process stays small, the event loop keeps running (ticks,
other calls on the same connection and on another node's), and the connection stays up.

The bridge runs in a child process of its own, so that its peak RSS (VmHWM) is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.otp

ROOT = Path(__file__).resolve().parents[2]

PROBE = r'''
import asyncio, json, sys, time
from bridge import Atom, DecodeBudget, Node

def hwm_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")

async def main(big_name, other_name, cookie, port, n):
    loop = asyncio.get_running_loop()
    budget = DecodeBudget(elements_setting="[agent] max_term_elements")
    big = await Node(cookie=cookie, epmd_port=port, decode_budget=budget).connect(big_name, timeout=10)
    other = await Node(cookie=cookie, epmd_port=port, decode_budget=budget).connect(other_name, timeout=10)
    await big.call("erlang", "node", [], timeout=10)
    base = hwm_mb()
    stall = 0.0
    done = False

    async def ticker():  # the watchdog's stand-in: how late does a 10 ms timer fire?
        nonlocal stall
        last = loop.time()
        while not done:
            await asyncio.sleep(0.01)
            now = loop.time()
            stall = max(stall, now - last - 0.01)
            last = now

    answered = {"same": [], "other": []}

    async def caller(conn, key):
        while not done:
            started = loop.time()
            await conn.call("erlang", "node", [], timeout=60)
            answered[key].append(loop.time() - started)
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(ticker()), asyncio.create_task(caller(big, "same")),
             asyncio.create_task(caller(other, "other"))]
    started = time.perf_counter()
    try:
        reply = await big.call("lists", "duplicate", [n, []], timeout=240)
        outcome = {"ok": len(reply)}
        del reply
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    took = time.perf_counter() - started
    after = await big.call("erlang", "node", [], timeout=10)
    done = True
    await asyncio.gather(*tasks)
    print(json.dumps({"outcome": outcome, "seconds": took, "base_mb": base, "peak_mb": hwm_mb(),
                      "stall_s": stall, "same": answered["same"], "other": answered["other"],
                      "after": after.name, "closed": big.is_closed or other.is_closed}))
    await big.close()
    await other.close()

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5])))
'''


def run_probe(big: Any, other: Any, n: int, probe: str = PROBE) -> dict[str, Any]:
    # subprocess.run kills the child (by its pid) if it overruns.
    done = subprocess.run([sys.executable, "-c", probe, big.name, other.name, big.cookie, str(big.epmd_port), str(n)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_30_million_element_reply_fails_its_call_and_nothing_else(node_factory: Any) -> None:
    big = node_factory("big@localhost")
    other = node_factory("other@localhost")
    result = run_probe(big, other, 30_000_000)
    print(json.dumps({k: v for k, v in result.items() if k not in ("same", "other")}))
    outcome = result["outcome"]
    assert outcome.get("error") == "TermTooLarge", outcome
    assert "the reply to lists:duplicate/2" in outcome["message"]
    assert "over the decode budget" in outcome["message"]
    assert "[agent] max_term_elements" in outcome["message"]
    assert result["peak_mb"] < 500, f"peak RSS {result['peak_mb']:.0f} MB"
    assert result["stall_s"] < 1.0, f"the event loop stalled {result['stall_s']:.3f} s"
    assert result["after"] == big.name and not result["closed"]
    # Calls kept being answered while the big reply arrived and was refused, on both nodes.
    for key in ("same", "other"):
        assert result[key], f"no call answered on the {key} connection"
        assert max(result[key]) < 2.0, f"{key}: a call took {max(result[key]):.2f} s"


def test_many_lists_within_one_reply_are_refused_by_the_budget_too(node_factory: Any) -> None:
    """lists:duplicate(300, lists:duplicate(100000, [])): no single count gives it away, so
    decoding runs (off the loop) until the budget is spent."""
    big = node_factory("big@localhost")
    other = node_factory("other@localhost")
    probe = PROBE.replace('"lists", "duplicate", [n, []]', '"lists", "duplicate", [n // 100000, [[]] * 100000]')
    assert probe != PROBE
    result = run_probe(big, other, 30_000_000, probe)
    print(json.dumps({k: v for k, v in result.items() if k not in ("same", "other")}))
    assert result["outcome"].get("error") == "TermTooLarge", result["outcome"]
    assert result["peak_mb"] < 500, f"peak RSS {result['peak_mb']:.0f} MB"
    assert result["stall_s"] < 1.0, f"the event loop stalled {result['stall_s']:.3f} s"
    assert result["other"] and max(result["other"]) < 2.0
    assert result["after"] == big.name and not result["closed"]
