"""Stage and unpack a release tarball for the node (DESIGN.md section 4, step 2), and take an
unpack back when the operation stops before install.

When the agent may write the node's release root, it extracts the tarball itself (tarballs/extract.py)
into ROOT/.relctl-unpack-XXXX at the stage step (or the upload did, as it arrived: then the
stage renames that extraction to its own dir), moves what is new into place and has the node
register it with ``release_handler:set_unpacked`` at the unpack step: the node decompresses
nothing. Otherwise (a root of another owner, read-only, ...) the tarball is put whole into
the node's releases directory and ``release_handler:unpack_release`` extracts and registers it.
What this operation places is written to the agent's ledger before the first file is, and
kept in its context with the one way back (:meth:`Staging.undo`, run by ``core.guarded``): a
failed check, a refused hook or a dry run leaves the node's releases as they were, and an
operation that never finished is taken back by the next one from that record. What goes
inside a directory the root already has (keep_old_files adds the files of the tarball's
lib/APP-VSN that the root's copy lacks) is recorded on its own (``ctx.added``), before the
agent moves it (tarballs ``planned``) or before unpack_release runs (``unpack_adds``, from the
tarball's members): the undo takes back exactly those, though the directory is in use. Nothing
else is ever deleted that the release root's in-use set holds (inuse.py).

The agent's own extraction dirs (ROOT/.relctl-unpack-*, and an upload's ROOT/.relctl-upload-*)
are locked by whoever owns them (tarballs/held.py), so the stage also removes those a killed
agent left, with or without their journal record, and never one alive: operations on one root
can overlap (one at a time per node, but two nodes may run from one root), and so can an
operation and an upload still arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from agent.errors import NodeDown, NodeTimeout, NodeUnavailable
from bridge import Atom

from .core import EngineCore, OperationContext
from .beams import BEAMS, ebins
from .inuse import ON_CODE_PATH
from .preflight import SHA_FILE
from .releases import Release
from .tarballs import NotADirectoryOnNode, Extracted, Interrupted, WriteFailed, adopt, extract, place, remove
from .tarballs import clear_leftovers, planned, unpack_adds
from .tarballs import ReleaseTarball, TarballError
from .tarballs import TREE, UNPACK_PREFIX, why_not_write, write_sha
from .values import FAILED, FAILED_UNCHANGED, Failure, term_text

_OK = Atom("ok")

log = logging.getLogger("relctl.agent.release.staging")


def write_refused(path: Path, exc: OSError) -> str:
    """Why the agent could not write ``path`` under the release root, and what to do."""
    fix = {errno.EROFS: "its file system is mounted read-only: remount it read-write",
           errno.EACCES: "run the agent as the release's owner or give it write access",
           errno.EPERM: "run the agent as the release's owner or give it write access",
           errno.ENOSPC: "free some space on its file system"}.get(exc.errno or 0, "")
    return (f"cannot write {path}: {exc.strerror or exc}; nothing was changed. The agent needs "
            f"write access to {path.parent}" + (f" ({fix})" if fix else "")
            + ", then retry")


def _adopted(ahead: Extracted | None, root: Path) -> Extracted | None:
    """The upload's extraction moved to this operation's dir, or None when there is none that
    fits the root now (tarballs/extract.py adopt)."""
    if ahead is None:
        return None
    try:
        return adopt(ahead, root)
    except OSError as exc:  # e.g. removed meanwhile: extract again
        log.info("the upload's extraction %s cannot be used (%s); extracting again",
                 ahead.tmp, exc.strerror or exc)
        return None


def _added_text(added: tuple[Path, ...] | list[Path], root: Path) -> str:
    names = ", ".join(str(p.relative_to(root)) for p in added)
    return f"; added inside dirs the root had: {names}" if added else ""


class Staging:
    def __init__(self, core: EngineCore) -> None:
        self._core = core

    async def _remove(self, paths: list[Path], ctx: OperationContext, *, placing: str,
                      added: list[Path] | tuple[Path, ...] = ()) -> tuple[list[str], list[str]]:
        """Delete those of ``paths`` that nothing in use holds (``placing``: the version they
        were placed for, whose own .rel does not count), and those of ``added`` (what was
        added inside dirs the root had, e.g. a new file in the running release's
        lib/APP-VSN) that are not in use themselves. The relative paths removed, and why each
        of the others stayed. Raises Failure(FAILED) when a deletion fails."""
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        existing = [p for p in paths if os.path.lexists(p)]
        inside = [p for p in added if os.path.lexists(p)]
        if not existing and not inside:
            return [], []
        used = await self._core.in_use(ctx, placing={placing})
        free, kept = used.split(existing)
        free_inside, kept_inside = used.split(inside, added=True)
        free, kept = free_inside + free, kept_inside + kept
        failed = await asyncio.to_thread(remove, free)
        if failed:
            raise Failure(FAILED, f"cannot delete {', '.join(failed)}; delete it by hand "
                                  "before a retry")
        return [str(p.relative_to(root)) for p in free], kept

    async def _clear_unfinished(self, ctx: OperationContext) -> str:
        """Take back what operations that never finished were placing (the ledger's record,
        never a guess from the disk), and the extraction dirs that a killed agent left (its
        operations' and uploads': their lock is free; a held one is alive and stays)."""
        assert ctx.dirs is not None
        removed: list[str] = []
        kept: list[str] = []
        for placing in self._core.ledger.unfinished():
            gone, stayed = await self._remove([Path(p) for p in placing.paths], ctx,
                                              placing=placing.version,
                                              added=[Path(p) for p in placing.added])
            removed += gone
            kept += stayed
            self._core.ledger.forget(placing)
        # ROOT/.relctl-unpack-* and .relctl-upload-*, only ever the agent's, whose lock no live
        # extraction holds (tarballs/held.py): a killed agent's, journal or not.
        tmp, failed = await asyncio.to_thread(clear_leftovers, Path(ctx.dirs.root))
        if failed:
            raise Failure(FAILED_UNCHANGED, f"cannot delete {', '.join(failed)}: left by an "
                          "extraction of a relctl agent that no longer runs (no process holds "
                          "its lock), and the agent may not delete it; nothing was changed. "
                          "Delete it by hand (rm -rf, as a user who may), then retry")
        removed += [p.name for p in tmp]
        return ((f"; removed what an unfinished operation left: {', '.join(removed)}"
                 if removed else "")
                + (f"; kept, being in use: {'; '.join(kept)}" if kept else ""))

    async def stage(self, tarball: ReleaseTarball, ctx: OperationContext,
                    ahead: Extracted | None = None) -> None:
        """``ahead``: the tarball as extracted while it was uploaded, moved into this
        operation's extraction dir when it still fits the root (one rename), else removed
        by its owner (the upload) and the tarball extracted again."""
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        async with self._core.steps.step("stage") as st:
            # An unpack that did not finish (node or agent killed) left files: removed first
            # (or keep_old_files would keep a truncated one), as far as nothing uses them.
            cleared = await self._clear_unfinished(ctx)
            stray = Path(ctx.dirs.releases) / tarball.version
            if os.path.lexists(stray) and ctx.find(tarball.version) is None:
                # keep_old_files would keep whatever it holds: not unpacked into, and not
                # deleted either (nothing says relctl placed it).
                raise Failure(FAILED_UNCHANGED, f"{stray} exists, but {self._core.node.name} "
                              f"does not list {tarball.version} and no unfinished operation of "
                              "the agent placed it; relctl deletes only what it placed. Look at "
                              "what it holds, move it away, then retry")
            why_not = (why_not_write(root, Path(ctx.dirs.releases)) if self._core.agent_unpack
                       else "")  # "": unpack_release, as the engine was told, no reason given
            # Recorded before the first file is written; taken back by undo() or by the next
            # operation when this one never finishes.
            ctx.placed = tarball.new_paths(root)
            ctx.added = ()  # what goes inside dirs the root has: known once extracted
            ctx.undo = functools.partial(self.undo, tarball.version, ctx)
            if why_not is None:
                self._core.ledger.placing(tarball.version, ctx.placed)
                ctx.extracted = _adopted(ahead, root)
                if ctx.extracted is not None:
                    st.detail = (f"extracted by the agent into {ctx.extracted.tmp} as the "
                                 f"upload arrived ({ctx.extracted.written} files written, "
                                 f"{ctx.extracted.kept} kept as the root has them; one pass, "
                                 f"sha256 {tarball.sha256[:12]}...)")
                else:
                    ctx.extracted = await self._extract(tarball, root)
                    st.detail = (f"extracted by the agent into {ctx.extracted.tmp} "
                                 f"({ctx.extracted.written} files written, {ctx.extracted.kept} "
                                 "kept as the root has them; sha256 "
                                 f"{tarball.sha256[:12]}... checked again)")
            else:
                ctx.in_node = why_not and (f"the agent may not write {root} ({why_not}): "
                                           "unpacking in the node")
                # The node's keep_old_files adds what the root's dirs lack (a file the root's
                # lib/APP-VSN has not): listed now, recorded with the rest, taken back by undo.
                ctx.added = await self._unpack_adds(tarball, root)
                st.detail = await self._stage_tarball(tarball, ctx)
                st.detail += f"; {ctx.in_node}" if ctx.in_node else ""
            st.detail += cleared

    async def _extract(self, tarball: ReleaseTarball, root: Path) -> Extracted:
        stop = threading.Event()

        def work() -> Extracted:
            extracted = extract(tarball, root, stop=stop)
            # The beams' md5 for the verify at the switch (loaded.py), while they are at hand.
            BEAMS.remember([*ebins(extracted.tmp / TREE, tarball.applications),
                            *ebins(root, tarball.applications)])
            return extracted
        job = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()  # the thread stops at the next member and removes what it wrote
            with contextlib.suppress(BaseException):
                done = await job  # or it had just finished: its dir goes, its lock with it
                await asyncio.to_thread(shutil.rmtree, done.tmp, True)
                if done.held is not None:
                    done.held.release()
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

    async def _unpack_adds(self, tarball: ReleaseTarball, root: Path) -> tuple[Path, ...]:
        try:
            return await asyncio.to_thread(unpack_adds, tarball, root)
        except TarballError as exc:
            raise Failure(FAILED_UNCHANGED, f"{exc}; nothing was changed") from None
        except OSError as exc:
            raise Failure(FAILED_UNCHANGED, f"cannot read {exc.filename or tarball.path} to "
                          f"list what the unpack adds to {root}: {exc.strerror or exc}; "
                          "nothing was changed") from None

    async def _stage_tarball(self, tarball: ReleaseTarball, ctx: OperationContext) -> str:
        """Put the tarball where unpack_release takes it: releases/N.tar.gz."""
        assert ctx.dirs is not None
        dest = Path(ctx.dirs.releases) / f"{tarball.unpack_name}.tar.gz"
        tmp = dest.with_name(f".{dest.name}.relctl-tmp")
        ctx.placed += tuple(p for p in (dest, tmp) if not os.path.lexists(p))
        self._core.ledger.placing(tarball.version, ctx.placed, ctx.added)
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
        return f"{dest} ({tarball.size} bytes, sha256 {tarball.sha256[:12]}...)"

    async def unpack(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        """Register the staged release with the node. A failure that leaves it unregistered
        is Failure(FAILED_UNCHANGED): undo() then takes back what stage placed."""
        if ctx.extracted is not None:
            await self._set_unpacked(tarball, ctx.extracted, ctx)
        else:
            await self._unpack_release(tarball, ctx)
        ctx.registered = True
        # The node lists the release now: what is placed is in use, never a leftover again.
        self._core.ledger.settled()

    async def _set_unpacked(self, tarball: ReleaseTarball, extracted: Extracted,
                            ctx: OperationContext) -> None:
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
                    # What goes inside dirs the root has is recorded before it is moved:
                    # the undo takes back exactly that, never a file the root had.
                    tops = set(ctx.placed)
                    ctx.added = tuple(p for p in planned(extracted, root, version)
                                      if p not in tops)
                    self._core.ledger.placing(version, ctx.placed, ctx.added)
                    try:
                        placed = place(extracted, root, version)
                    except BaseException:
                        ctx.added = ()  # place took back what it moved
                        raise
                    ctx.added = tuple(p for p in placed.paths if p not in tops)
                except OSError as exc:
                    raise Failure(FAILED_UNCHANGED, write_refused(
                        Path(exc.filename or root), exc)) from None
                except NotADirectoryOnNode as exc:
                    raise Failure(FAILED_UNCHANGED, f"{exc}; nothing was changed: rebuild the "
                                  f"tarball without what it has below {exc.path.name}") from None
                kept = [d for d in [f"erts-{tarball.erts_version}"] + [
                    f"lib/{app}-{vsn}" for app, vsn in tarball.applications]
                    if (root / d).is_dir() and root / d not in placed.paths
                    and not any(root / d in p.parents for p in ctx.added)]
                res = await self._registered(
                    "set_unpacked", [str(extracted.rel_file), libs], call, version, limit)
            finally:
                await asyncio.to_thread(shutil.rmtree, extracted.tmp, True)
                if extracted.held is not None:  # removed: no scan can mistake it now
                    extracted.held.release()
                ctx.extracted = None
            self._core.ledger.record(version, tarball.sha256, ctx.added)
            new = [str(p.relative_to(root)) for p in placed.paths if p not in ctx.added]
            st.detail = (f"the agent unpacked it (the node decompressed nothing): placed "
                         f"{', '.join(new)}" + _added_text(ctx.added, root)
                         + (f"; kept as they were: {', '.join(kept)}" if kept else "")
                         + f"; {call} -> {res}")

    async def _registered(self, function: str, args: list[Any], call: str, version: str,
                          limit: float) -> Any:
        """Call release_handler:``function``; its ok value, else a Failure that says whether
        the release is registered: FAILED_UNCHANGED when it surely is not, FAILED when that
        is unknown (the ledger's record of what was placed outlives the operation)."""
        try:
            res = await self._core.call("release_handler", function, args, timeout=limit)
        except NodeTimeout:
            # Still at work, maybe: which_releases answers once it is over.
            what = f"{call} did not answer within {limit:g} s"
            try:
                listed = await self._core.releases()
            except NodeUnavailable as exc:
                raise Failure(FAILED, f"{what}, and the node did not answer which_releases "
                                      f"either ({exc}); unless the node lists {version}, the "
                                      f"next upgrade or unpack takes back what was placed for "
                                      "it") from None
            res = ((_OK, version) if any(r.version == version for r in listed)
                   else (Atom("error"), f"{what} and did not register it"))
        except NodeDown as exc:
            raise Failure(FAILED, f"the connection was lost during {call} ({exc}); unless the "
                                  f"node lists {version}, the next upgrade or unpack takes "
                                  "back what was placed for it") from None
        if isinstance(res, tuple) and len(res) == 2 and res[0] == _OK:
            return res[1]
        reason = term_text(res[1] if isinstance(res, tuple) and len(res) == 2 else res)
        raise Failure(FAILED_UNCHANGED, f"{call} failed: {reason}")

    async def _unpack_release(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        call = f"unpack_release({tarball.unpack_name!r})"
        limit = max(self._core.rpc_timeout, 120.0)
        async with self._core.steps.step("unpack") as st:
            res = await self._registered("unpack_release", [tarball.unpack_name], call,
                                         tarball.version, limit)
            assert ctx.dirs is not None
            st.detail = (f"{ctx.in_node}: {call} -> {res}"
                         + _added_text([p for p in ctx.added if os.path.lexists(p)],
                                       Path(ctx.dirs.root))
                         + await self._record(tarball, ctx)).lstrip(": ")

    async def _record(self, tarball: ReleaseTarball, ctx: OperationContext) -> str:
        """Keep the sha256 of the tarball a release was unpacked from, in its release dir
        (releases/VSN/relctl.sha256, which goes when the release goes) and in the agent's
        ledger, so that a later tarball of the same version can be told apart."""
        assert ctx.dirs is not None
        path = Path(ctx.dirs.releases) / tarball.version / SHA_FILE
        self._core.ledger.record(tarball.version, tarball.sha256,
                                 [p for p in ctx.added if os.path.lexists(p)])
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
            await self.check_removal(release, ctx)
            res = await self._core.call("release_handler", "remove_release", [version])
            if res != _OK:
                raise Failure(FAILED_UNCHANGED, f"remove_release({version}) failed: "
                              f"{term_text(res)}; {version} stays {release.status} and the "
                              "tarball was not unpacked")
            ctx.releases = await self._core.releases()
            st.detail = (f"removed {version} (it was {release.status}) and its files, to "
                         "unpack the given tarball in its place"
                         + self.left_added(version, ctx, replaced=True))

    def left_added(self, version: str, ctx: OperationContext, *, replaced: bool = False) -> str:
        """After remove_release(``version``): what its unpack added inside dirs the root had
        and that stays (remove_release keeps a dir another release uses whole), named, with
        why. relctl does not delete them: a release unpacked after ``version`` may have kept
        them as its own (keep_old_files), and nothing on disk tells which. ``replaced``: a
        tarball of ``version`` is unpacked next, which keeps them as they are."""
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        left = [Path(p) for p in self._core.ledger.added_by(version) if os.path.lexists(p)]
        if not left:
            return ""
        names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
                          for p in left)
        then = ("; the tarball unpacked now keeps them as they are (keep_old_files), not its "
                "own copies" if replaced else "")
        return (f"; left as they are: {names} (the unpack of {version} added them inside dirs "
                "other releases use, which remove_release keeps whole; relctl deletes no file "
                "another release may use: delete them by hand if no release needs them"
                f"{then})")

    async def check_removal(self, release: Release, ctx: OperationContext) -> None:
        """release_handler:remove_release deletes releases/VSN and each library of VSN that no
        other release *it lists* uses; with a RELEASES it does not know (a mix release's) that
        can be the running code. Refused when anything it would delete is in use."""
        assert ctx.dirs is not None
        root = Path(ctx.dirs.root)
        others = {lib for r in await self._core.releases() if r.version != release.version
                  for lib in r.applications}
        doomed = [p for p in [Path(ctx.dirs.releases) / release.version] + [
            root / "lib" / lib for lib in release.applications if lib not in others]
            if os.path.lexists(p)]
        if not doomed:
            return
        used = await self._core.in_use(ctx, removing={release.version})
        _, kept = used.split(doomed)
        if kept:
            # The running code (e.g. a mix release's releases/VSN/consolidated, which a hot
            # upgrade leaves on the code path) is freed by a restart, not by fixing RELEASES.
            fixes = ["restart the node (it boots the permanent release, which frees what the "
                     "running code holds), then retry"] if any(ON_CODE_PATH in k for k in kept) \
                else []
            if any(ON_CODE_PATH not in k for k in kept):
                fixes.append("release_handler does not know every release on this root: "
                             "check releases/RELEASES")
            raise Failure(FAILED_UNCHANGED, f"removing {release.version} would delete what is "
                          f"in use: {'; '.join(kept)}; nothing was changed. "
                          + "; ".join(fixes))

    async def undo(self, version: str, ctx: OperationContext) -> str:
        """The one way back for stage and unpack: the node forgets the release if it had
        registered it (set_removed, never remove_release, which deletes by its own rules),
        then what this operation placed goes, as far as nothing in use holds it (release_handler
        extracts with keep_old_files, so a bad relup or beam left behind would be used by the
        retry): the paths it created at the tarball's top two levels (lib/APP-VSN, releases/VSN)
        and what it added inside dirs the root had (a new file in the running release's
        lib/APP-VSN, which is in use and stays), never a file the root had before. Says what
        it did; raises Failure(FAILED) when it could not."""
        if not ctx.registered and not any(os.path.lexists(p)
                                          for p in (*ctx.placed, *ctx.added)):
            # Nothing was placed: nothing to show either.
            ctx.placed, ctx.added, ctx.undo = (), (), None
            self._core.ledger.settled()
            return f"nothing of {version} was placed"
        async with self._core.steps.step("undo_unpack") as st:
            forgot = ""
            if ctx.registered:
                # Asked first: release_handler answers once any install it runs is over, and a
                # release the node reports current or permanent is never taken back.
                mine = next((r for r in await self._core.releases() if r.version == version),
                            None)
                if mine is not None and (mine.running or mine.status in ("current",
                                                                        "permanent")):
                    raise Failure(FAILED, f"{version} is {mine.status} on the node: it was not "
                                           "taken back and none of its files were deleted")
                res = await self._core.call("release_handler", "set_removed", [version])
                if res != _OK:
                    raise Failure(FAILED, f"set_removed({version}) failed: {term_text(res)}; "
                                           f"{version} stays unpacked")
                ctx.registered = False
                forgot = f"set_removed({version}); "
            removed, kept = await self._remove(list(ctx.placed), ctx, placing=version,
                                               added=ctx.added)
            ctx.placed = ctx.added = ()
            ctx.undo = None
            self._core.ledger.settled()
            st.detail = forgot + (
                f"deleted {', '.join(removed) or 'nothing'}"
                + (f"; kept, being in use: {'; '.join(kept)}" if kept else ""))
            return f"took back the unpack of {version}: {st.detail}"
