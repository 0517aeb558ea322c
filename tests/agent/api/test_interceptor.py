"""The interceptor's bracket around a handler: the audit record is written however the
handler ends, even when grpc finalises a streaming handler from another task."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

from agent.api.auth import Identity
from agent.api.interceptor import CALLER, AuditedCall, serving


class _Finishes:
    def __init__(self) -> None:
        self.finished: list[tuple[str, BaseException | None]] = []

    def finish(self, call: AuditedCall, context: Any, failed: BaseException | None) -> None:
        self.finished.append((call.rpc, failed))


async def test_a_stream_closed_from_another_context_is_still_recorded() -> None:
    access = _Finishes()
    call = AuditedCall("Upgrade", Identity("op", "operator", "ipv4:127.0.0.1:1"), audited=True)
    seen: list[Identity | None] = []

    async def handler() -> AsyncIterator[int]:
        with serving(access, call, None):  # type: ignore[arg-type]
            seen.append(CALLER.get())
            yield 1
            yield 2

    stream = handler()
    # Started in one context (grpc's task for the call), closed in another (the loop's
    # async-generator finaliser, or a task grpc spawns when the client leaves).
    await asyncio.create_task(anext(stream), context=contextvars.copy_context())  # type: ignore[call-arg]
    await asyncio.create_task(stream.aclose(), context=contextvars.copy_context())  # type: ignore[call-arg]
    assert seen == [call.identity]
    assert len(access.finished) == 1 and access.finished[0][0] == "Upgrade"
    assert isinstance(access.finished[0][1], GeneratorExit)
    assert CALLER.get() is None


async def test_the_caller_is_cleared_after_a_plain_call() -> None:
    access = _Finishes()
    call = AuditedCall("Upload", Identity("op", "operator", "unix:"), audited=True)
    with serving(access, call, None):  # type: ignore[arg-type]
        assert CALLER.get() is call.identity
    assert CALLER.get() is None and access.finished == [("Upload", None)]
