"""The single steps, each an operation of its own (``relctl unpack``, ``check``, ``install``,
``make-permanent``, ``remove``): one release_handler step with the preflight it needs, for
operators who drive an upgrade by hand. They neither roll back nor take back: each does one
thing and says where the node stands.
"""

from __future__ import annotations

from agent.config import POST_INSTALL
from bridge import Atom

from .core import EngineCore, OperationContext, Steps, UnpackLedger, guarded
from .hooks import run_hooks
from .preflight import Preflight
from .releases import Release
from .runtime import RuntimeConfig
from .staging import Staging
from .switch import Switch
from .tarballs import Extracted, ReleaseTarball
from .values import FAILED, FAILED_UNCHANGED, SUCCEEDED, Caller, Failure, Options, Result, StepSink
from .values import term_text

_OK = Atom("ok")


class EngineParts:
    """The release engine's parts wired over one core: the operations (here and upgrade.py)
    are written against it and reach the node only through its parts and core. The core and the parts, as protected attributes for the operations that subclass it;
    the node, steps and RPC timeout are public for what runs beside an operation (a config
    reload uses the same ones)."""

    def __init__(self, node: Caller, on_step: StepSink, *, rpc_timeout: float,
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


class SingleSteps(EngineParts):
    @guarded("unpack")
    async def unpack(self, ctx: OperationContext, version: str, tarball: ReleaseTarball,
                     *, replace: bool = False, ahead: Extracted | None = None) -> Result:
        async with self.steps.step("preflight") as st:
            existing = await self._preflight.read_target(ctx, version)
            if existing is not None and not self._preflight.existing_release(
                    existing, tarball, ctx, replace=replace):
                raise Failure(FAILED_UNCHANGED, f"{version} is already {existing.status} on "
                                                 f"{self.node.name}, from this tarball (same "
                                                 "sha256); nothing to unpack")
            st.detail += await self._preflight.check_tarball(tarball, ctx)
            await self._preflight.ensure_releases_file(ctx, st)
            st.detail += await self._preflight.check_config(version, tarball.sys_config, ctx)
        if existing is not None:
            await self._staging.remove_stale(existing, ctx)
        await self._staging.stage(tarball, ctx, ahead)
        await self._staging.unpack(tarball, ctx)
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self._core.releases())

    @guarded("check")
    async def check(self, ctx: OperationContext, version: str) -> Result:
        async with self.steps.step("check") as st:
            await self._core.read_node(ctx)
            res = await self._core.call("release_handler", "check_install_release", [version])
            if not (isinstance(res, tuple) and res[0] == _OK):
                raise Failure(FAILED_UNCHANGED, f"check_install_release({version}) refused: "
                                                 f"{term_text(res)}")
            st.detail = f"can be installed over {res[1]}"
        return Result(SUCCEEDED, ctx.from_version, version, releases=ctx.releases)

    @guarded("install")
    async def install(self, ctx: OperationContext, version: str, options: Options) -> Result:
        """install_release and verify; not made permanent (that is its own step)."""
        async with self.steps.step("preflight") as st:
            await self._preflight.read_target(ctx, version, absent="unpack it first",
                                              running="")
            await self._preflight.ensure_releases_file(ctx, st)
            st.detail = await self._preflight.check_config(version, None, ctx)
        await self._switch.pre_install_hooks(version, options, ctx)
        await self._switch.install(version, options, ctx)
        await run_hooks(self.node, self.steps, options.hooks, POST_INSTALL, outcome=FAILED)
        async with self.steps.step("verify") as st:
            st.detail = await self._switch.verify(version, options,
                                                  from_version=ctx.from_version,
                                                  root=ctx.dirs.root if ctx.dirs else "")
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self._core.releases())

    @guarded("make_permanent")
    async def make_permanent(self, ctx: OperationContext, version: str) -> Result:
        async with self.steps.step("preflight") as st:
            target = await self._preflight.read_target(ctx, version)
            if target is None or not target.running:
                state = target.status if target else "not on the node"
                raise Failure(FAILED_UNCHANGED, f"{version} is {state}; only the running "
                                                 "release can be made permanent")
            st.detail = f"{version} is {target.status}"
        await self._switch.make_permanent(version, ctx)
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self._core.releases())

    @guarded("remove")
    async def remove(self, ctx: OperationContext, version: str) -> Result:
        async with self.steps.step("preflight") as st:
            target = await self._preflight.read_target(ctx, version, absent="")
            assert target is not None  # read_target refused its absence
            if target.running or target.status in ("permanent", "current"):
                raise Failure(FAILED_UNCHANGED, f"{version} is {target.status} on "
                                                 f"{self.node.name}; the running or "
                                                 "permanent release cannot be removed")
            await self._preflight.ensure_releases_file(ctx, st)
            st.detail = f"{version} is {target.status}"
            await self._staging.check_removal(target, ctx)
        async with self.steps.step("remove") as st:
            res = await self._core.call("release_handler", "remove_release", [version])
            if res != _OK:
                raise Failure(FAILED, f"remove_release({version}) failed: {term_text(res)}")
            st.detail = f"{version} removed" + self._staging.left_added(version, ctx)
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self._core.releases())
