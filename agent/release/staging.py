"""Stage and unpack a release tarball for the node (DESIGN.md section 4, step 2), and take an
unpack back when the operation stops before install.

When the agent may write the node's release root, it extracts the tarball itself (unpack.py)
into ROOT/.relctl-unpack-XXXX at the stage step, moves what is new into place and has the node
register it with ``release_handler:set_unpacked`` at the unpack step: the node decompresses
nothing. Otherwise (a root of another owner, read-only, ...) the tarball is put whole into
the node's releases directory and ``release_handler:unpack_release`` extracts and registers it.
What this operation unpacked is recorded in its context, so that a failed check, a refused
hook or a dry run can leave the node's releases as they were, and a retry starts clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path

from agent.errors import NodeDown, NodeTimeout, NodeUnavailable
from bridge import Atom

from .base import EngineCore, OperationContext
from .releases import Release
from .preflight import SHA_FILE
from .steps import FAILED, FAILED_UNCHANGED, Failure, term_text
from .tarball import ReleaseTarball, TarballError
from .unpack import Conflict, Extracted, Interrupted, WriteFailed, extract, leftovers, place, remove
from .unpack import TREE, UNPACK_PREFIX, why_not_write, write_sha

_OK = Atom("ok")


def write_refused(path: Path, exc: OSError) -> str:
    """Why the agent could not write ``path`` under the release root, and what to do."""
    fix = {errno.EROFS: "its file system is mounted read-only: remount it read-write",
           errno.EACCES: "run the agent as the release's owner or give it write access",
           errno.EPERM: "run the agent as the release's owner or give it write access",
           errno.ENOSPC: "free some space on its file system"}.get(exc.errno or 0, "")
    return (f"cannot write {path}: {exc.strerror or exc}; nothing was changed. The agent needs "
            f"write access to {path.parent}" + (f" ({fix})" if fix else "")
            + ", then retry")


class Staging:
    def __init__(self, core: EngineCore) -> None:
        self._core = core

    def _unlisted_dirs(self, tarball: ReleaseTarball, ctx: OperationContext,
                       listed: tuple[Release, ...]) -> list[Path]:
        """The dirs an unpack of ``tarball`` creates that no release the node lists owns:
        releases/VSN (unless VSN is listed) and each lib/APP-VSN no listed release uses."""
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        used = {lib for r in listed for lib in r.applications}
        dirs = [] if any(r.version == tarball.version for r in listed) else [
            Path(ctx.dirs.releases) / tarball.version]
        dirs += [root / "lib" / f"{app}-{vsn}" for app, vsn in tarball.applications
                 if f"{app}-{vsn}" not in used]
        return [d for d in dirs if root in d.resolve().parents]

    async def _delete(self, dirs: list[Path], ctx: OperationContext) -> list[str]:
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        removed = []
        for path in dirs:
            if path.is_dir() and not path.is_symlink():
                try:
                    await asyncio.to_thread(shutil.rmtree, path)
                except OSError as exc:
                    raise Failure(FAILED, f"cannot delete {path} (left by an unpack that did "
                                           f"not finish): {exc.strerror or exc}; delete it "
                                           "before a retry") from None
                removed.append(str(path.relative_to(root)))
        return removed

    async def stage(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        async with self._core.steps.step("stage") as st:
            # An unpack that did not finish (node killed, agent killed) left files the node
            # does not list: remove them first, or keep_old_files would keep a truncated file.
            # So did an agent killed while it extracted: ROOT/.relctl-unpack-XXXX.
            cleared = await self._delete(
                self._unlisted_dirs(tarball, ctx, ctx.releases) + leftovers(root), ctx)
            why_not = (why_not_write(root, Path(ctx.dirs.releases)) if self._core.agent_unpack
                       else "")  # "": unpack_release, as the engine was told, no reason given
            if why_not is None:
                ctx.extracted = await self._extract(tarball, root)
                st.detail = (f"extracted by the agent into {ctx.extracted.tmp} "
                             f"({ctx.extracted.written} files written, {ctx.extracted.kept} "
                             "kept as the root has them; sha256 "
                             f"{tarball.sha256[:12]}... checked again)")
            else:
                ctx.in_node = why_not and (f"the agent may not write {root} ({why_not}): "
                                           "unpacking in the node")
                st.detail = await self._stage_tarball(tarball, ctx)
                st.detail += f"; {ctx.in_node}" if ctx.in_node else ""
            if cleared:
                st.detail += "; removed what an unfinished unpack left: " + ", ".join(cleared)

    async def _extract(self, tarball: ReleaseTarball, root: Path) -> Extracted:
        stop = threading.Event()
        job = asyncio.ensure_future(asyncio.to_thread(extract, tarball, root, stop=stop))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()  # the thread stops at the next member and removes what it wrote
            with contextlib.suppress(BaseException):
                await job
            raise
        except TarballError as exc:
            raise Failure(FAILED_UNCHANGED, f"{exc}; nothing was changed") from None
        except WriteFailed as exc:
            raise Failure(FAILED_UNCHANGED, write_refused(exc.path, exc.error)) from None
        except OSError as exc:  # making ROOT/.relctl-unpack-XXXX
            raise Failure(FAILED_UNCHANGED, write_refused(
                root / f"{UNPACK_PREFIX}XXXX", exc)) from None
        except Interrupted:  # only after a cancel, which is re-raised above
            raise Failure(FAILED_UNCHANGED, "the extraction was interrupted; nothing was "
                                             "changed") from None

    async def _stage_tarball(self, tarball: ReleaseTarball, ctx: OperationContext) -> str:
        """Put the tarball where unpack_release takes it: releases/N.tar.gz."""
        assert ctx.dirs is not None
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
            with contextlib.suppress(OSError):  # e.g. releases/ is not a directory at all
                tmp.unlink(missing_ok=True)
            raise Failure(FAILED_UNCHANGED, write_refused(dest, exc)) from None
        ctx.staged_file = dest
        return f"{dest} ({tarball.size} bytes, sha256 {tarball.sha256[:12]}...)"

    async def unpack(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        if ctx.extracted is not None:
            await self._set_unpacked(tarball, ctx.extracted, ctx)
        else:
            await self._unpack_release(tarball, ctx)

    async def _set_unpacked(self, tarball: ReleaseTarball, extracted: Extracted,
                            ctx: OperationContext) -> None:
        """All or nothing: what the agent placed goes again unless the node listed it."""
        assert ctx.dirs is not None
        root, version = Path(ctx.dirs.root), tarball.version
        # Every library in ROOT/lib, named relative to it: RELEASES then reads as after
        # unpack_release ("lib/APP-VSN"), and set_unpacked checks that each dir exists.
        libs = [(Atom(app), vsn, "lib") for app, vsn in tarball.applications]
        call = f"set_unpacked({str(extracted.rel_file)!r})"
        limit = max(self._core.rpc_timeout, 120.0)
        async with self._core.steps.step("unpack") as st:
            try:
                try:
                    write_sha(extracted.tmp / TREE, version, SHA_FILE, tarball.sha256)
                    placed = place(extracted, root, version)
                except OSError as exc:
                    raise Failure(FAILED_UNCHANGED, write_refused(
                        Path(exc.filename or root), exc)) from None
                except Conflict as exc:
                    raise Failure(FAILED_UNCHANGED, f"{exc}; nothing was changed: rebuild the "
                                  f"tarball without what it has below {exc.path.name}") from None
                ctx.placed = placed.paths
                kept = [d for d in [f"erts-{tarball.erts_version}"] + [
                    f"lib/{app}-{vsn}" for app, vsn in tarball.applications]
                    if (root / d).is_dir() and root / d not in placed.paths]
                try:
                    res = await self._core.call("release_handler", "set_unpacked",
                                                [str(extracted.rel_file), libs], timeout=limit)
                except NodeTimeout:
                    res = None
                    what = f"{call} did not answer within {limit:g} s"
                except NodeDown as exc:
                    raise Failure(FAILED, f"the connection was lost during {call} ({exc}); "
                                           f"unless the node lists {version}, the next upgrade "
                                           f"or unpack of {version} removes what the agent "
                                           "placed") from None
                if res is None:
                    try:
                        listed = await self._core.releases()
                    except NodeUnavailable as exc:
                        raise Failure(FAILED, f"{what}, and the node did not answer "
                                               f"which_releases either ({exc}); unless the node "
                                               f"lists {version}, the next upgrade or unpack of "
                                               f"{version} removes what the agent placed") from None
                    res = ((_OK, version) if any(r.version == version for r in listed)
                           else (Atom("error"), f"{what} and did not register it"))
                if not (isinstance(res, tuple) and res[0] == _OK):
                    failed = await asyncio.to_thread(remove, placed.paths)
                    ctx.placed = ()
                    reason = term_text(res[1] if isinstance(res, tuple) else res)
                    raise Failure(FAILED if failed else FAILED_UNCHANGED,
                                  f"{call} failed: {reason}; " + (
                                      "could not delete what the agent placed: "
                                      + ", ".join(failed) + "; delete it before a retry"
                                      if failed else "removed what the agent placed: "
                                      + ", ".join(str(p.relative_to(root))
                                                  for p in placed.paths)))
            finally:
                await asyncio.to_thread(shutil.rmtree, extracted.tmp, True)
                ctx.extracted = None
            ctx.unpacked_here = True
            ctx.tarball = tarball
            self._core.ledger.record(version, tarball.sha256)
            new = [str(p.relative_to(root)) for p in placed.paths]
            st.detail = (f"the agent unpacked it (the node decompressed nothing): placed "
                         f"{', '.join(new)}" + (f"; kept as they were: {', '.join(kept)}"
                                                if kept else "")
                         + f"; {call} -> {res[1]}")

    async def _unpack_release(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        """All or nothing: when unpack_release fails, what it extracted goes (only dirs no
        release the node lists owns: none existed before, stage removed leftovers)."""
        call = f"unpack_release({tarball.unpack_name!r})"
        limit = max(self._core.rpc_timeout, 120.0)
        async with self._core.steps.step("unpack") as st:
            try:
                res = await self._core.call("release_handler", "unpack_release",
                                            [tarball.unpack_name], timeout=limit)
            except NodeTimeout:
                # Still unpacking, maybe: which_releases answers once it is over.
                res = None
                what = f"{call} did not answer within {limit:g} s"
            except NodeDown as exc:
                raise Failure(FAILED, f"the connection was lost during {call} ({exc}); what it "
                                       "extracted is removed by the next upgrade or unpack of "
                                       f"{tarball.version}") from None
            if res is None:
                try:
                    listed = await self._core.releases()
                except NodeUnavailable as exc:
                    raise Failure(FAILED, f"{what}, and the node did not answer which_releases "
                                           f"either ({exc}); the unpack may still run; the next "
                                           f"upgrade or unpack of {tarball.version} removes what "
                                           "it left") from None
                if any(r.version == tarball.version for r in listed):
                    res = (_OK, tarball.version)
                else:
                    res = (Atom("error"), f"{what} and did not unpack it")
            if isinstance(res, tuple) and res[0] == _OK:
                ctx.unpacked_here = True
                ctx.tarball = tarball
                st.detail = (f"{ctx.in_node}: {call} -> {res[1]}"
                             + await self._record(tarball, ctx)).lstrip(": ")
                return
            # release_handler deletes the tarball only on success; leave nothing to trip a retry.
            if ctx.staged_file is not None:
                ctx.staged_file.unlink(missing_ok=True)
            assert ctx.dirs is not None
            if "/" not in tarball.unpack_name:
                # systools layout: unpack_release extracted releases/NAME-VSN.rel first and
                # deletes it only on success (relx's releases/VSN/NAME.rel goes with its dir).
                (Path(ctx.dirs.releases) / f"{tarball.unpack_name}.rel").unlink(missing_ok=True)
            reason = term_text(res[1] if isinstance(res, tuple) else res)
            removed = await self._delete(
                self._unlisted_dirs(tarball, ctx, await self._core.releases()), ctx)
            raise Failure(FAILED_UNCHANGED, f"{call} failed: {reason}"
                          + (f"; removed what it extracted: {', '.join(removed)}"
                             if removed else ""))

    async def _record(self, tarball: ReleaseTarball, ctx: OperationContext) -> str:
        """Keep the sha256 of the tarball a release was unpacked from, in its release dir
        (releases/VSN/relctl.sha256, which goes when the release goes) and in the agent's
        ledger, so that a later tarball of the same version can be told apart."""
        assert ctx.dirs is not None
        path = Path(ctx.dirs.releases) / tarball.version / SHA_FILE
        self._core.ledger.record(tarball.version, tarball.sha256)
        if not path.parent.is_dir():
            return ""  # unpack_release always makes releases/VSN; never made up here
        tmp = path.with_name(f".{SHA_FILE}.relctl-tmp")
        try:
            tmp.write_text(f"{tarball.sha256}\n", encoding="ascii")
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return (f"; its sha256 was not written to {path} ({exc.strerror or exc}), only to "
                    "the agent's journal")
        return ""

    async def remove_stale(self, release: Release, ctx: OperationContext) -> None:
        """Remove a release that a tarball of the same version is to replace (--replace):
        remove_release deletes releases/VSN and the lib dirs no other release uses, so
        keep_old_files cannot keep a stale file when the tarball is unpacked."""
        version = release.version
        async with self._core.steps.step("replace") as st:
            res = await self._core.call("release_handler", "remove_release", [version])
            if res != _OK:
                raise Failure(FAILED_UNCHANGED, f"remove_release({version}) failed: "
                              f"{term_text(res)}; {version} stays {release.status} and the "
                              "tarball was not unpacked")
            ctx.releases = await self._core.releases()
            st.detail = (f"removed {version} (it was {release.status}) and its files, to "
                         "unpack the given tarball in its place")

    async def undo_unpack(self, version: str, ctx: OperationContext) -> None:
        """Take back what this operation's unpack did, so that a retry starts clean.

        set_removed (never remove_release, which deletes libraries by its own rules) takes the
        release out of RELEASES. Then the files it extracted go too: release_handler extracts
        with keep_old_files, so a bad relup or beam left behind would be used by the retry.
        Only releases/VSN and the lib directories no other release uses are deleted."""
        async with self._core.steps.step("undo_unpack") as st:
            # Asked first: release_handler answers once any install it runs is over, and a
            # release the node reports current or permanent is never taken back.
            before = await self._core.releases()
            mine = next((r for r in before if r.version == version), None)
            if mine is not None and (mine.running or mine.status in ("current", "permanent")):
                raise Failure(FAILED, f"{version} is {mine.status} on the node: it was not "
                                       "taken back and none of its files were deleted")
            res = await self._core.call("release_handler", "set_removed", [version])
            if res != _OK:
                raise Failure(FAILED, f"set_removed({version}) failed: {term_text(res)}; "
                                       f"{version} stays unpacked")
            removed: list[str] = []
            if ctx.dirs is not None and ctx.tarball is not None:
                others = {lib for r in before if r.version != version for lib in r.applications}
                root = Path(ctx.dirs.root)
                doomed = [Path(ctx.dirs.releases) / version] + [
                    root / "lib" / f"{app}-{vsn}" for app, vsn in ctx.tarball.applications
                    if f"{app}-{vsn}" not in others]
                for path in doomed:
                    if path.is_dir() and root in path.resolve().parents:
                        try:
                            await asyncio.to_thread(shutil.rmtree, path)
                        except OSError as exc:
                            raise Failure(FAILED, f"set_removed({version}) done, but deleting "
                                                   f"{path} failed: {exc.strerror or exc}; "
                                                   "delete it before a retry") from None
                        removed.append(str(path.relative_to(root)))
                # What else the agent's unpack placed (e.g. bin/NAME-VSN): all of it new.
                extra = [p for p in ctx.placed if os.path.lexists(p) and p not in doomed]
                failed = await asyncio.to_thread(remove, extra)
                if failed:
                    raise Failure(FAILED, f"set_removed({version}) done, but deleting "
                                           f"{', '.join(failed)} failed; delete it before a "
                                           "retry")
                removed += [str(p.relative_to(root)) for p in extra]
            ctx.placed = ()
            st.detail = f"set_removed({version}); deleted {', '.join(removed) or 'nothing'}"
