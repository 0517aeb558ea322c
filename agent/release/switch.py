"""The switch from one release to another (DESIGN.md section 4, steps 4 to 8): the hooks around
``install_release``, the install itself (including a node that restarts), the verification
that the node runs the target release and passes its probes, making it permanent, and the
rollback when the verification fails.

Every failure here names the outcome that says where the node ended: unchanged, rolled back
(by the relup's down script or by a node restart), or failed (neither release for sure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import POST_INSTALL, PRE_INSTALL
from agent.errors import NodeDown, NodeTimeout, NodeUnavailable, ReplyTooLarge
from bridge import Atom, BadRpc

from .codecheck import check_code, mismatch_text, read_appups, split_lib
from .core import EngineCore, OperationContext
from .hooks import run_hooks
from .loaded import loaded_matches
from .proccheck import OldCodeProcess, killed_text, old_code_processes, verify_processes
from .releases import Release, parse_which_releases
from .relupscript import RESTART_EMULATOR, heart_needed, restart_kind
from .runtime import RuntimeConfig
from .values import FAILED, FAILED_UNCHANGED, ROLLED_BACK, SUCCEEDED, Failure, Options, Result
from .values import term_text

_OK = Atom("ok")


def install_options(options: Options, *, update_paths: bool) -> list[Any]:
    """install_release/2's options: install_timeout bounds each process's suspend and
    code_change too (sys's default is 5 s, after which the node restarts)."""
    limit = max(1, int(options.install_timeout * 1000))
    opts: list[Any] = [(Atom("code_change_timeout"), limit), (Atom("suspend_timeout"), limit)]
    if update_paths:
        opts.append((Atom("update_paths"), True))
    return opts


class Switch:
    def __init__(self, core: EngineCore, runtime: RuntimeConfig) -> None:
        self._core = core
        self._runtime = runtime

    async def pre_install_hooks(self, version: str, options: Options,
                                ctx: OperationContext) -> None:
        """A failing pre_install hook stops the operation before install_release: the node is
        unchanged, and a release this operation unpacked is taken back, as a failed check is."""
        await run_hooks(self._core.node, self._core.steps, options.hooks, PRE_INSTALL,
                        outcome=FAILED_UNCHANGED)

    async def install(self, version: str, options: Options, ctx: OperationContext) -> None:
        node = self._core.node
        # relx's rendered sys.config first: install_release reads and applies that file.
        await self._runtime.write(version, ctx, outcome=FAILED_UNCHANGED)
        # A script holding restart_emulator answers ok, then reboots the node into version;
        # any emulator restart needs heart on the node (relupscript.py).
        restart = (await restart_kind(ctx.dirs.releases, ctx.from_version, version)
                   if ctx.dirs and ctx.from_version else "")
        restarts = restart == RESTART_EMULATOR
        async with self._core.steps.step("install") as st:
            if restart and await self._core.call("erlang", "whereis",
                                                 [Atom("heart")]) == Atom("undefined"):
                raise Failure(FAILED_UNCHANGED, heart_needed(restart, ctx.from_version,
                                                             version, node.name))
            try:
                res = await self._core.call("release_handler", "install_release",
                                            [version, install_options(options, update_paths=True)],
                                            timeout=options.install_timeout)
            except (NodeUnavailable, ReplyTooLarge) as exc:
                # The install's effect is unknown: never undo anything now; wait for the node's
                # own answer and report what it says.
                st.detail = await self._after_unknown_install(version, options, ctx, exc)
                return
            if isinstance(res, tuple) and res[0] == _OK:
                st.detail = f"{ctx.from_version} -> {version}"
                if restarts:
                    if not await node.wait_for_restart(down_within=30.0,
                                                       up_within=options.restart_timeout):
                        raise Failure(FAILED, f"the relup's script ends with restart_emulator, "
                                              f"and the node did not restart into {version} "
                                              f"and come back within "
                                              f"{options.restart_timeout:g} s")
                    st.detail += "; the node restarted its emulator (restart_emulator)"
                return
            if isinstance(res, tuple) and res[0] == Atom("continue_after_restart"):
                if not await node.wait_for_restart(down_within=30.0,
                                                   up_within=options.restart_timeout):
                    raise Failure(FAILED, "the node restarted into a new emulator for "
                                           f"{version} and did not come back within "
                                           f"{options.restart_timeout:g} s")
                st.detail = "installed; the node restarted into the new emulator"
                return
            raw = res[1] if isinstance(res, tuple) and len(res) > 1 else res
            # A crashing relup script makes release_handler restart the node on its
            # permanent release. The reason is worded after that wait, not to miss the drop
            # (on an Elixir node wording it is an RPC: a code_change's raise, in Elixir).
            restarted = await node.wait_for_restart(down_within=5.0,
                                                    up_within=options.restart_timeout)
            reason = await self._core.style.reason(raw)
            if restarted:
                raise Failure(ROLLED_BACK, f"install of {version} failed ({reason}); the node "
                                            "restarted on its permanent release (rolled back by "
                                            "node restart)")
            raise Failure(FAILED_UNCHANGED, f"install_release({version}) failed: {reason}")

    async def _after_unknown_install(self, version: str, options: Options,
                                     ctx: OperationContext,
                                     exc: NodeUnavailable | ReplyTooLarge) -> str:
        """install_release did not answer (timeout) or the connection dropped: the install may
        still run, have finished, or have restarted the node. release_handler serializes its
        calls, so which_releases answers only once the install is over (or the node restarted):
        report the state it shows. Nothing is undone here; the step detail on success."""
        connected = isinstance(exc, (NodeTimeout, ReplyTooLarge))
        if isinstance(exc, ReplyTooLarge):
            what = f"the answer of install_release({version}) could not be read ({exc})"
        elif connected:
            what = (f"install_release({version}) did not answer within "
                    f"{options.install_timeout:g} s")
        else:
            what = f"the connection was lost during install_release({version}) ({exc})"
        restarted = False
        if not connected:
            restarted = await self._core.node.wait_for_restart(
                down_within=5.0, up_within=options.restart_timeout)
            if not restarted:
                raise Failure(FAILED, f"{what}, and the node was not back within "
                                      f"{options.restart_timeout:g} s: where the install ended "
                                      "is unknown. Nothing was undone; `relctl versions` shows "
                                      "the node's releases once it is back")
        wait = options.install_timeout + options.restart_timeout
        releases, dropped = await self._await_releases(wait)
        restarted = restarted or dropped
        if releases is None:
            raise Failure(FAILED, f"{what}, and the node still had not answered {wait:g} s "
                                  f"later: the install may be still running on the node. "
                                  "Nothing was undone; `relctl versions` shows where the node "
                                  "ends")
        ctx.releases = releases
        target = next((r for r in releases if r.version == version), None)
        running = next((r for r in releases if r.running), None)
        seen = ", ".join(f"{r.version} {r.status}" for r in releases) or "no releases"
        if target is not None and target.running:
            return (f"{ctx.from_version} -> {version}; {what}, then the node finished it "
                    f"({seen})")
        if running is not None and running.version == ctx.from_version:
            if restarted:
                raise Failure(ROLLED_BACK, f"{what}; the node restarted on its permanent "
                                           f"release {ctx.from_version} (rolled back by node "
                                           f"restart; the node has: {seen})")
            raise Failure(FAILED_UNCHANGED, f"{what}; when it ended the node still ran "
                                            f"{ctx.from_version} and {version} was not "
                                            f"installed (the node has: {seen})")
        raise Failure(FAILED, f"{what}; the node now runs "
                              f"{running.version if running else 'no known release'} "
                              f"(the node has: {seen})")

    async def _await_releases(self, wait: float) -> tuple[tuple[Release, ...] | None, bool]:
        """which_releases once the node answers it (it queues behind a running install; None
        when it has not within ``wait`` seconds), and whether the connection dropped meanwhile
        (a relup that crashed or outlasted code_change_timeout restarts the node)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        dropped = False
        while (remaining := deadline - loop.time()) > 0:
            try:
                return parse_which_releases(await self._core.call(
                    "release_handler", "which_releases", [], timeout=remaining)), dropped
            except NodeDown:  # not connected (yet): the link reconnects by itself
                dropped = True
                await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
            except NodeTimeout:
                break
        return None, dropped

    async def verify(self, version: str, options: Options, *, from_version: str = "",
                     root: str = "") -> str:
        """The release ``version`` runs: it is current, its applications run, its code is
        loaded (codecheck.py) and the probes pass. ``from_version``: the release the node ran
        before, whose appups explain a module that did not switch; ``root``: the node's release
        root, where the agent reads the beams to compare what is loaded with (loaded.py)."""
        releases = await self._core.releases()
        target = next((r for r in releases if r.version == version), None)
        if target is None or not target.running:
            state = target.status if target else "not listed"
            raise Failure(FAILED, f"after install, {version} is {state}, not running")
        apps = await self._core.call("application", "which_applications")
        running = {a[0].name: a[2] for a in apps
                   if isinstance(a, tuple) and len(a) == 3 and isinstance(a[0], Atom)}
        wrong = []
        for lib in target.applications:
            name, _, vsn = lib.partition("-")  # app names have no '-'; versions may
            if name in running and running[name] != vsn:
                wrong.append(f"{name} runs {running[name]}, release has {vsn}")
        if wrong:
            raise Failure(FAILED, "applications not switched: " + "; ".join(wrong))
        code = await self._verify_code(target, releases, from_version, root)
        code += await verify_processes(self._core.node, [split_lib(a)[0] for a in
                                                          target.applications],
                                       allow_purge_kill=options.allow_purge_kill,
                                       timeout=self._core.rpc_timeout)
        detail = f"{version} is {target.status}; {len(running)} applications run; {code}"
        if options.probes:
            detail += "; " + await self._soak(options)
        return detail

    async def _verify_code(self, target: Release, releases: tuple[Release, ...],
                           from_version: str, root: str) -> str:
        """Every module of the target's applications runs the release's beam; else a Failure
        naming the modules and what the appup lacks. What is loaded is compared in the agent
        (loaded.py); only when that does not show all of it running does the node check."""
        node, timeout = self._core.node, self._core.rpc_timeout
        apps = [split_lib(a) for a in target.applications]
        report = await loaded_matches(node, root, apps, timeout=timeout) if root else None
        how = ", md5s compared in the agent" if report is not None else ""
        if report is None:
            report = await check_code(node, apps, timeout=timeout)
        if not report.ok:
            prior = next((r for r in releases
                          if r.version == from_version and r.version != target.version), None)
            appups = await read_appups(node, report,
                                       [split_lib(a) for a in prior.applications] if prior else [],
                                       timeout=timeout)
            raise Failure(FAILED, f"{target.version} does not run all of its code: "
                                  f"{mismatch_text(report, appups)}. Fix the appups (`relctl "
                                  "make-relup` checks them against the beams) and build the "
                                  "release again")
        return f"{report.modules} modules match the release's beams ({report.mode} mode{how})"

    async def _soak(self, options: Options) -> str:
        deadline = time.monotonic() + options.health_soak
        rounds = 0
        while True:
            for probe in options.probes:
                try:
                    res = await self._core.call(probe.module, probe.function, [])
                except BadRpc as exc:
                    res = exc.reason
                if res != _OK:
                    raise Failure(FAILED, f"health probe {probe} returned "
                                          f"{await self._core.style.reason(res)}")
            rounds += 1
            if time.monotonic() >= deadline:
                return f"probes ok {rounds}x over {options.health_soak:g} s"
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def verify_and_commit(self, version: str, options: Options, ctx: OperationContext,
                                *, rollback: bool, installed: bool = True) -> Result:
        """Post-install hooks and verify, then make permanent; with ``rollback``, a failure
        installs the release the node ran before (``installed``: install_release ran now)."""
        try:
            if installed:
                # What a fresh boot of the release would compute (runtime.py), before the
                # hooks and the verification see the node; a failure rolls back too.
                await self._runtime.apply(version, ctx)
                # Post-install hooks are part of the health gate: a failure rolls back too.
                await run_hooks(self._core.node, self._core.steps, options.hooks, POST_INSTALL,
                                outcome=FAILED)
            async with self._core.steps.step("verify") as st:
                st.detail = await self.verify(version, options, from_version=ctx.from_version,
                                              root=ctx.dirs.root if ctx.dirs else "")
        except Failure as failure:
            if not rollback or not ctx.from_version:
                raise
            return await self._rollback(version, failure, options, ctx)
        if options.permanent:
            doomed = (await old_code_processes(self._core.node, timeout=self._core.rpc_timeout,
                                               tries=1) if options.allow_purge_kill else [])
            await self.make_permanent(version, ctx, doomed)
        else:
            self._core.steps.skip("make_permanent", "--no-permanent: the node boots the old "
                                                    "release on restart until "
                                                    "`relctl make-permanent`")
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self._core.releases(),
                      config_changes=self._runtime.changes)

    async def make_permanent(self, version: str, ctx: OperationContext,
                             doomed: Sequence[OldCodeProcess] = ()) -> None:
        """``doomed``: processes on old code that its purge kills (--allow-purge-kill; verify
        refuses them otherwise): each one killed is reported."""
        async with self._core.steps.step("make_permanent") as st:
            res = await self._core.call("release_handler", "make_permanent", [version])
            if res != _OK:
                raise Failure(FAILED, f"make_permanent({version}) failed: "
                                       f"{term_text(res[1] if isinstance(res, tuple) else res)}; "
                                       f"{version} runs but the node would boot the old release")
            st.detail = f"{version} is permanent"
            st.detail += await killed_text(self._core.node, doomed,
                                           timeout=self._core.rpc_timeout)
            copied = await self._copy_start_script(version, ctx)
            if copied:
                st.detail += f"; {copied}"

    async def _copy_start_script(self, version: str, ctx: OperationContext) -> str:
        """relx writes bin/NAME-VSN; the permanent release's script becomes bin/NAME."""
        if ctx.dirs is None:
            return ""
        name = next((r.name for r in ctx.releases if r.running), "")
        src = Path(ctx.dirs.root) / "bin" / f"{name}-{version}"
        if not name or not src.is_file():
            return ""
        dest = Path(ctx.dirs.root) / "bin" / name
        tmp = dest.with_name(f".{name}.relctl-tmp")
        try:
            shutil.copy2(src, tmp)
            os.replace(tmp, dest)
        except OSError as exc:  # the release is permanent already: say so, do not fail it
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return (f"could not copy bin/{src.name} to bin/{name} ({exc.strerror or exc}): "
                    f"copy it by hand")
        return f"copied bin/{src.name} to bin/{name}"

    async def _rollback(self, version: str, failure: Failure, options: Options,
                        ctx: OperationContext) -> Result:
        # The release gone back to gets its boot-time config too (runtime.py); nothing may
        # stop a rollback, so a failure of it is only reported.
        note = ""
        try:
            await self._runtime.plan_back(ctx.from_version, ctx)
            await self._runtime.write(ctx.from_version, ctx, outcome=FAILED)
        except Failure as again:
            note += f"; before the rollback, {again.message}"
        async with self._core.steps.step("rollback") as st:
            res = await self._core.call("release_handler", "install_release",
                                        [ctx.from_version,
                                         install_options(options, update_paths=False)],
                                        timeout=options.install_timeout)
            if not (isinstance(res, tuple) and res[0] == _OK):
                raise Failure(FAILED, f"{failure.message}; rollback to {ctx.from_version} "
                                       f"failed too: {term_text(res)}")
            st.detail = f"installed {ctx.from_version} again (relup down script)"
        # The code changed again, so what the post-install hooks clear is stale again; pre-install
        # hooks do not run, as nothing may stop a rollback. A failure here is only reported.
        try:
            await self._runtime.apply(ctx.from_version, ctx)
        except Failure as again:
            note += f"; after the rollback, {again.message}"
        try:
            await run_hooks(self._core.node, self._core.steps, options.hooks, POST_INSTALL,
                            outcome=ROLLED_BACK)
        except Failure as again:
            note += f"; after the rollback, {again.message}"
        async with self._core.steps.step("verify") as st:
            st.detail = await self.verify(ctx.from_version, Options(), from_version=version,
                                          root=ctx.dirs.root if ctx.dirs else "")
        return Result(ROLLED_BACK, ctx.from_version, version, error=failure.message + note,
                      releases=await self._core.releases(),
                      detail=f"back on {ctx.from_version}", config_changes=self._runtime.changes)
