"""The release engine: upgrade, downgrade and each release_handler step on its own, as DESIGN.md
section 4 describes them (preflight, stage, unpack, check, install, verify, make permanent,
rollback).

It knows neither gRPC nor Prometheus nor the journal's storage: it talks to the node through
the small :class:`Caller` protocol, reports steps to a callback, and returns a :class:`Result`
whose outcome says exactly where the node stands.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec

from agent.config import POST_INSTALL, PRE_INSTALL, Hook
from agent.errors import NodeUnavailable
from bridge import Atom, BadRpc

from .hooks import run_hooks, skip_hooks
from .releases import Release, parse_which_releases
from .steps import (
    DRY_RUN,
    FAILED,
    FAILED_UNCHANGED,
    ROLLED_BACK,
    SUCCEEDED,
    Caller,
    Failure,
    NodeDirs,
    Result,
    Steps,
    StepSink,
    StepState,
    consult_error,
    node_dirs,
    term_text,
)
from .tarball import ReleaseTarball

_OK = Atom("ok")
_ERROR = Atom("error")

@dataclass(frozen=True)
class Probe:
    """A health probe: ``module:function()`` must return ``ok``."""

    module: str
    function: str

    def __str__(self) -> str:
        return f"{self.module}:{self.function}()"


@dataclass(frozen=True)
class Options:
    permanent: bool = True
    dry_run: bool = False
    install_timeout: float = 300.0   # relup scripts may migrate big states
    health_timeout: float = 0.0      # soak time of the probes; 0: probes run once
    probes: tuple[Probe, ...] = ()
    restart_timeout: float = 60.0    # how long a node restarted by release_handler may take
    hooks: tuple[Hook, ...] = ()     # RPCs before and after each install_release


@dataclass
class _Context:
    from_version: str = ""
    releases: tuple[Release, ...] = ()
    dirs: NodeDirs | None = None
    unpacked_here: bool = False
    staged_file: Path | None = None
    tarball: ReleaseTarball | None = None


def _find(ctx: _Context, version: str) -> Release | None:
    return next((r for r in ctx.releases if r.version == version), None)


_P = ParamSpec("_P")


def _guarded(method: Callable[Concatenate[ReleaseEngine, _Context, str, _P], Awaitable[Result]]
             ) -> Callable[Concatenate[ReleaseEngine, str, _P], Awaitable[Result]]:
    """An operation with a fresh context; a refusal or failure becomes its Result."""
    @functools.wraps(method)
    async def run(self: ReleaseEngine, version: str, /, *args: _P.args,
                  **kwargs: _P.kwargs) -> Result:
        ctx = _Context()
        try:
            return await method(self, ctx, version, *args, **kwargs)
        except Failure as failure:
            return await self._failed(failure, ctx, version)
    return run


class ReleaseEngine:
    def __init__(self, node: Caller, on_step: StepSink, *, rpc_timeout: float = 30.0) -> None:
        self._node = node
        self._on_step = on_step
        self._steps = Steps(on_step)
        self._rpc_timeout = rpc_timeout

    @property
    def node(self) -> Caller:
        return self._node

    @property
    def steps(self) -> Steps:
        return self._steps

    @property
    def rpc_timeout(self) -> float:
        return self._rpc_timeout

    # --- steps --------------------------------------------------------------------------

    # --- node facts ---------------------------------------------------------------------

    async def _call(self, module: str, function: str, args: Sequence[Any] = (),
                    timeout: float | None = None) -> Any:
        return await self._node.call(module, function, args,
                                     timeout=self._rpc_timeout if timeout is None else timeout)

    async def releases(self) -> tuple[Release, ...]:
        return parse_which_releases(await self._call("release_handler", "which_releases"))

    async def _ensure_releases_file(self, ctx: _Context, state: StepState) -> None:
        """Without RELEASES, release_handler invents a release with no libraries, and a later
        remove_release can delete the running code: create the file from the running .rel and
        make release_handler read it, before anything else."""
        assert ctx.dirs is not None
        path = os.path.join(ctx.dirs.releases, "RELEASES")
        if await self._call("filelib", "is_regular", [path]):
            return
        running = next((r for r in ctx.releases if r.running), None)
        if running is None:
            raise Failure(FAILED_UNCHANGED, f"{path} is missing and the node runs no known release")
        # Where unpack_release (releases/VSN/NAME-VSN.rel), relx (releases/VSN/NAME.rel) and
        # systools:make_tar (releases/NAME-VSN.rel) leave the running release's .rel.
        candidates = [
            os.path.join(ctx.dirs.releases, running.version, f"{running.name}-{running.version}.rel"),
            os.path.join(ctx.dirs.releases, running.version, f"{running.name}.rel"),
            os.path.join(ctx.dirs.releases, f"{running.name}-{running.version}.rel")]
        rel_file = None
        for candidate in candidates:
            if await self._call("filelib", "is_regular", [candidate]):
                rel_file = candidate
                break
        if rel_file is None:
            raise Failure(FAILED_UNCHANGED, f"{path} is missing and no .rel file of the running "
                                             f"release was found ({' or '.join(candidates)})")
        made = await self._call("release_handler", "create_RELEASES",
                                [ctx.dirs.root, ctx.dirs.releases, rel_file, []])
        if made != _OK:
            raise Failure(FAILED_UNCHANGED, f"creating {path} failed: {term_text(made)}")
        # release_handler read its state at start: restart it so that it reads the new file.
        for fn in ("terminate_child", "restart_child"):
            await self._call("supervisor", fn, [Atom("sasl_sup"), Atom("release_handler")])
        state.detail += f"created {path} from {rel_file}; "  # what follows is appended

    async def _check_config(self, version: str, text: bytes | None, ctx: _Context) -> str:
        """release_handler silently treats a sys.config that does not parse as empty: refuse it.
        Parsed by the node itself (erl_scan/erl_parse), so the judgement is Erlang's."""
        assert ctx.dirs is not None
        where = f"releases/{version}/sys.config"
        if text is None:
            path = os.path.join(ctx.dirs.releases, version, "sys.config")
            res = await self._call("file", "consult", [path])
            if isinstance(res, tuple) and res[0] == _OK:
                return f"{where} parses"
            if res == (_ERROR, Atom("enoent")):
                return f"no {where}"
            reason = res[1] if isinstance(res, tuple) and len(res) == 2 else res
            raise Failure(FAILED_UNCHANGED, f"{where} does not parse: "
                          f"{await consult_error(self._node, reason, self._rpc_timeout)}")
        try:
            source = text.decode("utf-8")
        except UnicodeDecodeError:
            source = text.decode("latin-1")
        scanned = await self._call("erl_scan", "string", [source])
        if not (isinstance(scanned, tuple) and scanned[0] == _OK):
            detail = await self._format_parse_error(scanned)
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball does not parse: {detail}")
        tokens = scanned[1]
        last = tokens[-1] if isinstance(tokens, list) and tokens else None
        if not (isinstance(last, tuple) and last and last[0] == Atom("dot")):
            # file:consult (what release_handler uses) needs the final dot, or it reads nothing.
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball does not end with '.' "
                                             "(a sys.config is one Erlang list and a dot)")
        parsed = await self._call("erl_parse", "parse_term", [tokens])
        if not (isinstance(parsed, tuple) and parsed[0] == _OK):
            detail = await self._format_parse_error(parsed)
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball does not parse: {detail}")
        if not isinstance(parsed[1], list):
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball is not a list of "
                                             "{Application, [{Key, Value}]}")
        return f"{where} parses"

    async def _format_parse_error(self, res: Any) -> str:
        # {error, {Line, Module, Descriptor}, ...}: Module:format_error/1 words it.
        try:
            line, module, desc = res[1][0], res[1][1], res[1][2]
            words = await self._call("lists", "flatten",
                                     [await self._call(str(module.name), "format_error", [desc])])
            loc = line[0] if isinstance(line, tuple) else line
            return f"line {loc}: {term_text(words)}"
        except (TypeError, IndexError, AttributeError, BadRpc):
            return term_text(res)

    # --- the operations -----------------------------------------------------------------

    @_guarded
    async def upgrade(self, ctx: _Context, version: str, tarball: ReleaseTarball | None,
                      options: Options) -> Result:
        return await self._upgrade(version, tarball, options, ctx)

    async def _preflight(self, ctx: _Context) -> None:
        ctx.releases = await self.releases()
        running = next((r for r in ctx.releases if r.running), None)
        ctx.from_version = running.version if running else ""
        ctx.dirs = await node_dirs(self._node, self._rpc_timeout)

    async def _upgrade(self, version: str, tarball: ReleaseTarball | None, options: Options,
                       ctx: _Context) -> Result:
        async with self._steps.step("preflight") as st:
            await self._preflight(ctx)
            target = _find(ctx, version)
            if target is not None and target.running and target.status == "permanent":
                raise Failure(FAILED_UNCHANGED, f"{version} already runs and is permanent on "
                                                 f"{self._node.name}; nothing to do")
            if target is None and tarball is None:
                raise Failure(FAILED_UNCHANGED, f"release {version} is not on {self._node.name}; "
                                                 "pass --tarball FILE to upload it")
            if target is not None and tarball is not None:
                tarball = None  # relx does the same: a release already there is not re-uploaded
                st.detail = f"{version} is already {target.status}; the tarball is not needed. "
            await self._ensure_releases_file(ctx, st)
            if target is None or target.status != "current":
                st.detail += await self._check_config(
                    version, tarball.sys_config if tarball else None, ctx)
            st.detail = (st.detail + f"; running {ctx.from_version}").lstrip("; ")

        if target is not None and target.status == "current":
            # Installed but not permanent (e.g. --no-permanent before): only make it permanent.
            for name in ("stage", "unpack", "check"):
                self._steps.skip(name, f"{version} is already current")
            self._skip_install(options, f"{version} is already current")
            return await self._verify_and_commit(version, options, ctx, rollback=False,
                                                 installed=False)

        if tarball is not None:
            await self._stage(tarball, ctx)
            await self._unpack(tarball, ctx)
        else:
            self._steps.skip("stage", f"{version} is already {target.status if target else '?'}")
            self._steps.skip("unpack", f"{version} is already {target.status if target else '?'}")

        try:
            async with self._steps.step("check") as st:
                res = await self._call("release_handler", "check_install_release", [version])
                if not (isinstance(res, tuple) and res[0] == _OK):
                    reason = res[1] if isinstance(res, tuple) and len(res) > 1 else res
                    raise Failure(FAILED_UNCHANGED, f"check_install_release({version}) refused: "
                                                     f"{term_text(reason)}")
                st.detail = f"relup from {res[1]} found"
        except Failure:
            if ctx.unpacked_here:  # leave the node's releases as they were (and retryable)
                await self._undo_unpack(version, ctx)
            raise

        if options.dry_run:
            if ctx.unpacked_here:
                await self._undo_unpack(version, ctx)
            self._skip_install(options, "--dry-run")
            for name in ("verify", "make_permanent"):
                self._steps.skip(name, "--dry-run")
            return Result(DRY_RUN, ctx.from_version, version, releases=await self.releases(),
                          detail="checks passed; nothing was changed")

        await self._pre_install_hooks(version, options, ctx)
        await self._install(version, options, ctx)
        return await self._verify_and_commit(version, options, ctx, rollback=True)

    async def _stage(self, tarball: ReleaseTarball, ctx: _Context) -> None:
        assert ctx.dirs is not None
        async with self._steps.step("stage") as st:
            dest = Path(ctx.dirs.releases) / f"{tarball.unpack_name}.tar.gz"
            tmp = dest.with_name(f".{dest.name}.relctl-tmp")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp.unlink(missing_ok=True)
                try:  # same file system: a hard link costs nothing, whatever the size
                    os.link(tarball.path, tmp)
                except OSError:
                    await asyncio.to_thread(shutil.copyfile, tarball.path, tmp)
                os.replace(tmp, dest)  # atomic: release_handler never sees half a tarball
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise Failure(FAILED_UNCHANGED, f"cannot write {dest}: {exc.strerror or exc}; "
                                                 "the agent needs write access to the node's "
                                                 "releases directory") from None
            ctx.staged_file = dest
            st.detail = f"{dest} ({tarball.size} bytes, sha256 {tarball.sha256[:12]}...)"

    async def _unpack(self, tarball: ReleaseTarball, ctx: _Context) -> None:
        async with self._steps.step("unpack") as st:
            res = await self._call("release_handler", "unpack_release", [tarball.unpack_name],
                                   timeout=max(self._rpc_timeout, 120.0))
            if isinstance(res, tuple) and res[0] == _OK:
                ctx.unpacked_here = True
                ctx.tarball = tarball
                st.detail = f"unpack_release({tarball.unpack_name!r}) -> {res[1]}"
                return
            # release_handler deletes the tarball only on success; leave nothing to trip a retry.
            if ctx.staged_file is not None:
                ctx.staged_file.unlink(missing_ok=True)
            raise Failure(FAILED_UNCHANGED, f"unpack_release({tarball.unpack_name!r}) failed: "
                                             f"{term_text(res[1] if isinstance(res, tuple) else res)}")

    async def _undo_unpack(self, version: str, ctx: _Context) -> None:
        """Take back what this operation's unpack did, so that a retry starts clean.

        set_removed (never remove_release, which deletes libraries by its own rules) takes the
        release out of RELEASES. Then the files it extracted go too: release_handler extracts
        with keep_old_files, so a bad relup or beam left behind would be used by the retry.
        Only releases/VSN and the lib directories no other release uses are deleted."""
        async with self._steps.step("undo_unpack") as st:
            res = await self._call("release_handler", "set_removed", [version])
            if res != _OK:
                raise Failure(FAILED, f"set_removed({version}) failed: {term_text(res)}; "
                                       f"{version} stays unpacked")
            removed: list[str] = []
            if ctx.dirs is not None and ctx.tarball is not None:
                others = {lib for r in await self.releases() for lib in r.applications}
                root = Path(ctx.dirs.root)
                doomed = [Path(ctx.dirs.releases) / version] + [
                    root / "lib" / f"{app}-{vsn}" for app, vsn in ctx.tarball.applications
                    if f"{app}-{vsn}" not in others]
                for path in doomed:
                    if path.is_dir() and root in path.resolve().parents:
                        await asyncio.to_thread(shutil.rmtree, path)
                        removed.append(str(path.relative_to(root)))
            st.detail = f"set_removed({version}); deleted {', '.join(removed) or 'nothing'}"

    async def _pre_install_hooks(self, version: str, options: Options, ctx: _Context) -> None:
        """A failing pre_install hook stops the operation before install_release: the node is
        unchanged, and a release this operation unpacked is taken back, as a failed check is."""
        try:
            await run_hooks(self._node, self._steps, options.hooks, PRE_INSTALL,
                            outcome=FAILED_UNCHANGED)
        except Failure:
            if ctx.unpacked_here:
                await self._undo_unpack(version, ctx)
            raise

    def _skip_install(self, options: Options, reason: str) -> None:
        """The install and the hooks around it, shown skipped in the order they would run."""
        skip_hooks(self._steps, options.hooks, PRE_INSTALL, reason)
        self._steps.skip("install", reason)
        skip_hooks(self._steps, options.hooks, POST_INSTALL, reason)

    async def _install(self, version: str, options: Options, ctx: _Context) -> None:
        async with self._steps.step("install") as st:
            try:
                res = await self._call("release_handler", "install_release",
                                       [version, [(Atom("update_paths"), True)]],
                                       timeout=options.install_timeout)
            except NodeUnavailable as exc:
                res = (_ERROR, f"connection lost during install ({exc})")
            if isinstance(res, tuple) and res[0] == _OK:
                st.detail = f"{ctx.from_version} -> {version}"
                return
            if isinstance(res, tuple) and res[0] == Atom("continue_after_restart"):
                if not await self._node.wait_for_restart(down_within=30.0,
                                                         up_within=options.restart_timeout):
                    raise Failure(FAILED, "the node restarted into a new emulator for "
                                           f"{version} and did not come back within "
                                           f"{options.restart_timeout:g} s")
                st.detail = "installed; the node restarted into the new emulator"
                return
            reason = term_text(res[1] if isinstance(res, tuple) and len(res) > 1 else res)
            # A crashing relup script makes release_handler restart the node on its
            # permanent release.
            if await self._node.wait_for_restart(down_within=5.0,
                                                 up_within=options.restart_timeout):
                raise Failure(ROLLED_BACK, f"install of {version} failed ({reason}); the node "
                                            "restarted on its permanent release (rolled back by "
                                            "node restart)")
            if ctx.unpacked_here:
                await self._undo_unpack(version, ctx)
            raise Failure(FAILED_UNCHANGED, f"install_release({version}) failed: {reason}")

    async def _verify(self, version: str, options: Options) -> str:
        releases = await self.releases()
        target = next((r for r in releases if r.version == version), None)
        if target is None or not target.running:
            state = target.status if target else "not listed"
            raise Failure(FAILED, f"after install, {version} is {state}, not running")
        apps = await self._call("application", "which_applications")
        running = {a[0].name: a[2] for a in apps
                   if isinstance(a, tuple) and len(a) == 3 and isinstance(a[0], Atom)}
        wrong = []
        for lib in target.applications:
            name, _, vsn = lib.partition("-")  # app names have no '-'; versions may
            if name in running and running[name] != vsn:
                wrong.append(f"{name} runs {running[name]}, release has {vsn}")
        if wrong:
            raise Failure(FAILED, "applications not switched: " + "; ".join(wrong))
        detail = f"{version} is {target.status}; {len(running)} applications run"
        if options.probes:
            detail += "; " + await self._soak(options)
        return detail

    async def _soak(self, options: Options) -> str:
        deadline = time.monotonic() + options.health_timeout
        rounds = 0
        while True:
            for probe in options.probes:
                try:
                    res = await self._call(probe.module, probe.function, [])
                except BadRpc as exc:
                    res = exc.reason
                if res != _OK:
                    raise Failure(FAILED, f"health probe {probe} returned {term_text(res)}")
            rounds += 1
            if time.monotonic() >= deadline:
                return f"probes ok {rounds}x over {options.health_timeout:g} s"
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def _verify_and_commit(self, version: str, options: Options, ctx: _Context,
                                 *, rollback: bool, installed: bool = True) -> Result:
        try:
            if installed:
                # Post-install hooks are part of the health gate: a failure rolls back too.
                await run_hooks(self._node, self._steps, options.hooks, POST_INSTALL,
                                outcome=FAILED)
            async with self._steps.step("verify") as st:
                st.detail = await self._verify(version, options)
        except Failure as failure:
            if not rollback or not ctx.from_version:
                raise
            return await self._rollback(version, failure, options, ctx)
        if options.permanent:
            await self._make_permanent(version, ctx)
        else:
            self._steps.skip("make_permanent", "--no-permanent: the node boots the old release on "
                                         "restart until `relctl make-permanent`")
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self.releases())

    async def _make_permanent(self, version: str, ctx: _Context) -> None:
        async with self._steps.step("make_permanent") as st:
            res = await self._call("release_handler", "make_permanent", [version])
            if res != _OK:
                raise Failure(FAILED, f"make_permanent({version}) failed: "
                                       f"{term_text(res[1] if isinstance(res, tuple) else res)}; "
                                       f"{version} runs but the node would boot the old release")
            st.detail = f"{version} is permanent"
            copied = await self._copy_start_script(version, ctx)
            if copied:
                st.detail += f"; {copied}"

    async def _copy_start_script(self, version: str, ctx: _Context) -> str:
        """relx writes bin/NAME-VSN; the permanent release's script becomes bin/NAME."""
        if ctx.dirs is None:
            return ""
        name = next((r.name for r in ctx.releases if r.running), "")
        src = Path(ctx.dirs.root) / "bin" / f"{name}-{version}"
        if not name or not src.is_file():
            return ""
        dest = Path(ctx.dirs.root) / "bin" / name
        tmp = dest.with_name(f".{name}.relctl-tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
        return f"copied bin/{src.name} to bin/{name}"

    async def _rollback(self, version: str, failure: Failure, options: Options,
                        ctx: _Context) -> Result:
        async with self._steps.step("rollback") as st:
            res = await self._call("release_handler", "install_release", [ctx.from_version],
                                   timeout=options.install_timeout)
            if not (isinstance(res, tuple) and res[0] == _OK):
                raise Failure(FAILED, f"{failure.message}; rollback to {ctx.from_version} "
                                       f"failed too: {term_text(res)}")
            st.detail = f"installed {ctx.from_version} again (relup down script)"
        # The code changed again, so what the post-install hooks clear is stale again; pre-install
        # hooks do not run, as nothing may stop a rollback. A failure here is only reported.
        note = ""
        try:
            await run_hooks(self._node, self._steps, options.hooks, POST_INSTALL,
                            outcome=ROLLED_BACK)
        except Failure as again:
            note = f"; after the rollback, {again.message}"
        async with self._steps.step("verify") as st:
            st.detail = await self._verify(ctx.from_version, Options())
        return Result(ROLLED_BACK, ctx.from_version, version, error=failure.message + note,
                      releases=await self.releases(),
                      detail=f"back on {ctx.from_version}")

    async def _failed(self, failure: Failure, ctx: _Context, version: str) -> Result:
        try:
            releases = await self.releases()
        except (NodeUnavailable, BadRpc):
            releases = ()
        return Result(failure.outcome, ctx.from_version, version, error=failure.message,
                      releases=releases)

    # --- downgrade and single steps -------------------------------------------------------

    @_guarded
    async def downgrade(self, ctx: _Context, version: str, options: Options) -> Result:
        async with self._steps.step("preflight") as st:
            await self._preflight(ctx)
            target = _find(ctx, version)
            if target is None:
                known = ", ".join(f"{r.version} ({r.status})" for r in ctx.releases)
                raise Failure(FAILED_UNCHANGED, f"release {version} is not on "
                                                 f"{self._node.name} (it has: {known})")
            if target.running:
                raise Failure(FAILED_UNCHANGED, f"{version} already runs on {self._node.name}")
            if target.status == "unpacked":
                raise Failure(FAILED_UNCHANGED, f"{version} was never installed on "
                                                 f"{self._node.name}; use `relctl upgrade "
                                                 f"{version}` to install it")
            await self._ensure_releases_file(ctx, st)
            st.detail = await self._check_config(version, None, ctx)
            st.detail += f"; running {ctx.from_version}"
        async with self._steps.step("check") as st:
            res = await self._call("release_handler", "check_install_release", [version])
            if not (isinstance(res, tuple) and res[0] == _OK):
                raise Failure(FAILED_UNCHANGED, f"the running release cannot go down to "
                                                 f"{version}: {term_text(res)}")
            st.detail = f"relup of {ctx.from_version} goes down to {version}"
        if options.dry_run:
            self._skip_install(options, "--dry-run")
            for name in ("verify", "make_permanent"):
                self._steps.skip(name, "--dry-run")
            return Result(DRY_RUN, ctx.from_version, version, releases=await self.releases())
        await self._pre_install_hooks(version, options, ctx)
        await self._install(version, options, ctx)
        return await self._verify_and_commit(version, options, ctx, rollback=False)

    @_guarded
    async def unpack(self, ctx: _Context, version: str, tarball: ReleaseTarball) -> Result:
        async with self._steps.step("preflight") as st:
            await self._preflight(ctx)
            existing = _find(ctx, version)
            if existing is not None:
                raise Failure(FAILED_UNCHANGED, f"{version} is already {existing.status} on "
                                                 f"{self._node.name}; nothing to unpack")
            await self._ensure_releases_file(ctx, st)
            st.detail += await self._check_config(version, tarball.sys_config, ctx)
        await self._stage(tarball, ctx)
        await self._unpack(tarball, ctx)
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self.releases())

    @_guarded
    async def check(self, ctx: _Context, version: str) -> Result:
        async with self._steps.step("check") as st:
            await self._preflight(ctx)
            res = await self._call("release_handler", "check_install_release", [version])
            if not (isinstance(res, tuple) and res[0] == _OK):
                raise Failure(FAILED_UNCHANGED, f"check_install_release({version}) refused: "
                                                 f"{term_text(res)}")
            st.detail = f"can be installed over {res[1]}"
        return Result(SUCCEEDED, ctx.from_version, version, releases=ctx.releases)

    @_guarded
    async def install(self, ctx: _Context, version: str, options: Options) -> Result:
        """install_release and verify; not made permanent (that is its own step)."""
        async with self._steps.step("preflight") as st:
            await self._preflight(ctx)
            target = _find(ctx, version)
            if target is None:
                raise Failure(FAILED_UNCHANGED, f"release {version} is not on "
                                                 f"{self._node.name}; unpack it first")
            if target.running:
                raise Failure(FAILED_UNCHANGED, f"{version} already runs on {self._node.name}")
            await self._ensure_releases_file(ctx, st)
            st.detail = await self._check_config(version, None, ctx)
        await self._pre_install_hooks(version, options, ctx)
        await self._install(version, options, ctx)
        await run_hooks(self._node, self._steps, options.hooks, POST_INSTALL, outcome=FAILED)
        async with self._steps.step("verify") as st:
            st.detail = await self._verify(version, options)
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self.releases())

    @_guarded
    async def make_permanent(self, ctx: _Context, version: str) -> Result:
        async with self._steps.step("preflight") as st:
            await self._preflight(ctx)
            target = _find(ctx, version)
            if target is None or not target.running:
                state = target.status if target else "not on the node"
                raise Failure(FAILED_UNCHANGED, f"{version} is {state}; only the running "
                                                 "release can be made permanent")
            st.detail = f"{version} is {target.status}"
        await self._make_permanent(version, ctx)
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self.releases())

    @_guarded
    async def remove(self, ctx: _Context, version: str) -> Result:
        async with self._steps.step("preflight") as st:
            await self._preflight(ctx)
            target = _find(ctx, version)
            if target is None:
                raise Failure(FAILED_UNCHANGED, f"release {version} is not on {self._node.name}")
            if target.running or target.status in ("permanent", "current"):
                raise Failure(FAILED_UNCHANGED, f"{version} is {target.status} on "
                                                 f"{self._node.name}; the running or "
                                                 "permanent release cannot be removed")
            await self._ensure_releases_file(ctx, st)
            st.detail = f"{version} is {target.status}"
        async with self._steps.step("remove") as st:
            res = await self._call("release_handler", "remove_release", [version])
            if res != _OK:
                raise Failure(FAILED, f"remove_release({version}) failed: {term_text(res)}")
            st.detail = f"{version} removed"
        return Result(SUCCEEDED, ctx.from_version, version, releases=await self.releases())
