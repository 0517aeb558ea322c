"""The release engine: upgrade and downgrade, the flows of DESIGN.md section 4 (preflight,
stage, unpack, check, install, verify, make permanent, rollback), on top of the single steps
it inherits (single.py).

It knows neither gRPC nor Prometheus nor the journal's storage: it talks to the node through
the small :class:`Caller` protocol, reports steps to a callback, and returns a :class:`Result`
whose outcome says exactly where the node stands. The flows chain the parts: preflight.py
(checks before any change), staging.py (stage, unpack, undo) and switch.py (install, verify,
make permanent, rollback).
"""

from __future__ import annotations

from pathlib import Path

from agent.config import POST_INSTALL, PRE_INSTALL
from bridge import Atom

from .core import OperationContext, guarded
from .proccheck import check_held_funs, check_loaded_under_processes
from .releases import Release
from .single import SingleSteps
from .tarballs import Extracted, ReleaseTarball
from .values import DRY_RUN, FAILED_UNCHANGED, UP_TO_DATE, Failure, Options, Result, term_text

_OK = Atom("ok")


def _up_to_date(target: Release | None) -> bool:
    """The target runs and boots already: an upgrade to it has nothing to do."""
    return target is not None and target.running and target.status == "permanent"


class ReleaseEngine(SingleSteps):
    """Every operation on one node's releases, each guarded: a refusal or a failure is the
    Result's outcome, never an exception (a node that cannot be reached still raises)."""

    @guarded("upgrade")
    async def upgrade(self, ctx: OperationContext, version: str, tarball: ReleaseTarball | None,
                      options: Options, *, ahead: Extracted | None = None) -> Result:
        """``ahead``: the tarball extracted as it was uploaded (staging.py moves it into
        place when it still fits the root)."""
        target, tarball, stale = await self._upgrade_preflight(ctx, version, tarball, options)
        if _up_to_date(target):
            # Nothing to do, and not a failure: a deploy script run again must exit 0 (relx
            # does too). Only the preflight step ran; any uploaded tarball is discarded.
            return Result(UP_TO_DATE, ctx.from_version, version, releases=ctx.releases,
                          detail=f"{version} already runs and is permanent")
        if stale is not None and options.dry_run:
            # Replacing removes the release there: not for a run that must change nothing.
            await self._staging.check_removal(stale, ctx)  # read-only: what it would delete
            self.steps.skip("replace", "--dry-run")
            self.steps.skip_between("stage", "make_permanent", "--dry-run", options.hooks)
            return Result(DRY_RUN, ctx.from_version, version,
                          releases=await self._core.releases(),
                          detail=f"preflight passed; {version} ({stale.status}) would be "
                                 "removed and the tarball unpacked in its place; nothing was "
                                 "changed; not run: stage, unpack and check_install_release "
                                 f"(they need {version} replaced first)")
        if stale is not None:
            await self._staging.remove_stale(stale, ctx)
        elif target is not None and target.status == "current":
            # Installed but not permanent (e.g. --no-permanent before): only make it permanent.
            self.steps.skip_between("stage", f"{POST_INSTALL}:*", f"{version} is already "
                                    "current", options.hooks)
            return await self._switch.verify_and_commit(version, options, ctx, rollback=False,
                                                        installed=False)

        if tarball is not None:
            await self._staging.stage(tarball, ctx, ahead)
            await self._staging.unpack(tarball, ctx)
        else:
            self.steps.skip_between("stage", "unpack", f"{version} is already "
                                    f"{target.status if target else '?'}")

        await self._check_upgrade(version, ctx, options)
        if options.dry_run:
            # What the stage placed is taken back by the operation's one undo (core.guarded).
            self.steps.skip_between(f"{PRE_INSTALL}:*", "make_permanent", "--dry-run",
                                    options.hooks)
            # Nothing changed since preflight read them (an unpack is taken back, then they
            # are read again: core.guarded).
            return Result(DRY_RUN, ctx.from_version, version, releases=ctx.releases,
                          detail="checks passed; nothing was changed")

        await self._switch.pre_install_hooks(version, options, ctx)
        await self._switch.install(version, options, ctx)
        return await self._switch.verify_and_commit(version, options, ctx, rollback=True)

    async def _upgrade_preflight(self, ctx: OperationContext, version: str,
                                 tarball: ReleaseTarball | None, options: Options
                                 ) -> tuple[Release | None, ReleaseTarball | None, Release | None]:
        """The target as the node lists it (None: not there), the tarball still needed, and
        the release that tarball replaces (--replace)."""
        stale = None
        async with self.steps.step("preflight") as st:
            target = await self._preflight.read_target(
                ctx, version, absent=None if tarball is not None else
                "pass --tarball FILE to upload it")
            if _up_to_date(target):
                st.detail = (f"{version} already runs and is permanent on {self.node.name}; "
                             "nothing to do" + ("; the uploaded tarball is not needed"
                                                if tarball is not None else ""))
                return target, None, None
            if target is not None and tarball is not None:
                if self._preflight.existing_release(target, tarball, ctx,
                                                    replace=options.replace):
                    stale = target
                else:  # the same bytes (sha256): relx does the same, it is not unpacked again
                    tarball = None
                    st.detail = (f"{version} is already {target.status}; the tarball is not "
                                 "needed. ")
            if tarball is not None:
                st.detail += await self._preflight.check_tarball(tarball, ctx)
            await self._preflight.ensure_releases_file(ctx, st)
            if target is None or target.status != "current":
                # sys.config parses, and its runtime config can be reproduced (runtime.py).
                st.detail += await self._runtime.check(version, tarball, ctx, options)
            st.detail = (st.detail + f"; running {ctx.from_version}").lstrip("; ")
        return target, tarball, stale

    async def _check_upgrade(self, version: str, ctx: OperationContext,
                             options: Options) -> None:
        async with self.steps.step("check") as st:
            res = await self._core.call("release_handler", "check_install_release", [version])
            if not (isinstance(res, tuple) and res[0] == _OK):
                reason = res[1] if isinstance(res, tuple) and len(res) > 1 else res
                raise Failure(FAILED_UNCHANGED, f"check_install_release({version}) refused: "
                                                 f"{term_text(reason)}")
            st.detail = f"relup from {res[1]} found"
            if ctx.dirs is not None:  # processes the relup would leave on old code
                relup = str(Path(ctx.dirs.releases) / version / "relup")
                st.detail += await check_loaded_under_processes(
                    self.node, relup, ctx.from_version,
                    allow_purge_kill=options.allow_purge_kill, timeout=self._core.rpc_timeout)
                # ... or holding funs of replaced code in their state
                running = next((r for r in ctx.releases if r.running), None)
                apps = [lib.partition("-")[0] for lib in running.applications] if running else []
                st.detail += await check_held_funs(self.node, relup, ctx.from_version, apps,
                                                   timeout=self._core.rpc_timeout)

    @guarded("downgrade")
    async def downgrade(self, ctx: OperationContext, version: str, options: Options) -> Result:
        async with self.steps.step("preflight") as st:
            target = await self._preflight.read_target(ctx, version, absent="", running="")
            assert target is not None  # read_target refused its absence
            if target.status == "unpacked":
                raise Failure(FAILED_UNCHANGED, f"{version} was never installed on "
                                                 f"{self.node.name}; use `relctl upgrade "
                                                 f"{version}` to install it")
            relup = self._preflight.check_down_erts(version, ctx)
            relup += await self._preflight.check_down_relup(version, ctx)
            await self._preflight.ensure_releases_file(ctx, st)
            st.detail = await self._runtime.check(version, None, ctx, options)
            st.detail += f"; {relup}; running {ctx.from_version}"
        async with self.steps.step("check") as st:
            res = await self._core.call("release_handler", "check_install_release", [version])
            if not (isinstance(res, tuple) and res[0] == _OK):
                raise Failure(FAILED_UNCHANGED, f"the running release cannot go down to "
                                                 f"{version}: {term_text(res)}")
            st.detail = f"relup of {ctx.from_version} goes down to {version}"
        if options.dry_run:
            self.steps.skip_between(f"{PRE_INSTALL}:*", "make_permanent", "--dry-run",
                                    options.hooks)
            return Result(DRY_RUN, ctx.from_version, version,
                          releases=await self._core.releases())
        await self._switch.pre_install_hooks(version, options, ctx)
        await self._switch.install(version, options, ctx)
        return await self._switch.verify_and_commit(version, options, ctx, rollback=False)
