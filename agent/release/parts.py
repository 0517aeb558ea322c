"""The release engine's parts wired over one core: the operations (single.py, upgrade.py) are
written against :class:`EngineParts` and reach the node only through its parts and core."""

from __future__ import annotations

from .base import EngineCore, UnpackLedger
from .preflight import Preflight
from .releases import Release
from .runtime import RuntimeConfig
from .staging import Staging
from .steps import Caller, StepSink, Steps
from .switch import Switch


class EngineParts:
    """The core and the parts, as protected attributes for the operations that subclass it;
    the node, steps and RPC timeout are public for what runs beside an operation (a config
    reload uses the same ones)."""

    def __init__(self, node: Caller, on_step: StepSink, *, rpc_timeout: float = 30.0,
                 ledger: UnpackLedger | None = None, agent_unpack: bool = True) -> None:
        self._core = EngineCore(node, on_step, rpc_timeout=rpc_timeout, ledger=ledger,
                                agent_unpack=agent_unpack)
        self._preflight = Preflight(self._core)
        self._staging = Staging(self._core)
        self._runtime = RuntimeConfig(self._core, self._preflight)
        self._switch = Switch(self._core, self._runtime)

    @property
    def core(self) -> EngineCore:
        return self._core

    @property
    def node(self) -> Caller:
        return self._core.node

    @property
    def steps(self) -> Steps:
        return self._core.steps

    @property
    def rpc_timeout(self) -> float:
        return self._core.rpc_timeout

    async def releases(self) -> tuple[Release, ...]:
        return await self._core.releases()
