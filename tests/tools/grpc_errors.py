"""What a grpc stub raises when a call fails, for the client's unit tests: an RpcError that is
also the call, with its status, details and (when the agent answered) the agent's marker."""

from __future__ import annotations

from typing import Any

import grpc

from relctl.v1 import AGENT_ERROR_METADATA


class FailedCall(grpc.RpcError, grpc.Call):
    def __init__(self, status: grpc.StatusCode, details: str, from_agent: bool = False) -> None:
        self._status, self._details = status, details
        self._metadata = ((AGENT_ERROR_METADATA, "1"),) if from_agent else ()

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._metadata

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0  # the call is over

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False
