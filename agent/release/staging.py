"""Stage and unpack a release tarball on the node (DESIGN.md section 4, step 2), and take an
unpack back when the operation stops before install.

The tarball is put whole into the node's releases directory, then
``release_handler:unpack_release`` extracts and registers it. What this operation unpacked is
recorded in its context, so that a failed check, a refused hook or a dry run can leave the
node's releases as they were, and a retry starts clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

from bridge import Atom

from .base import EngineCore, OperationContext
from .steps import FAILED, FAILED_UNCHANGED, Failure, term_text
from .tarball import ReleaseTarball

_OK = Atom("ok")


class Staging:
    def __init__(self, core: EngineCore) -> None:
        self._core = core

    async def stage(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        assert ctx.dirs is not None
        async with self._core.steps.step("stage") as st:
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
                raise Failure(FAILED_UNCHANGED, f"cannot write {dest}: {exc.strerror or exc}; "
                                                 "the agent needs write access to the node's "
                                                 "releases directory") from None
            ctx.staged_file = dest
            st.detail = f"{dest} ({tarball.size} bytes, sha256 {tarball.sha256[:12]}...)"

    async def unpack(self, tarball: ReleaseTarball, ctx: OperationContext) -> None:
        async with self._core.steps.step("unpack") as st:
            res = await self._core.call("release_handler", "unpack_release",
                                        [tarball.unpack_name],
                                        timeout=max(self._core.rpc_timeout, 120.0))
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

    async def undo_unpack(self, version: str, ctx: OperationContext) -> None:
        """Take back what this operation's unpack did, so that a retry starts clean.

        set_removed (never remove_release, which deletes libraries by its own rules) takes the
        release out of RELEASES. Then the files it extracted go too: release_handler extracts
        with keep_old_files, so a bad relup or beam left behind would be used by the retry.
        Only releases/VSN and the lib directories no other release uses are deleted."""
        async with self._core.steps.step("undo_unpack") as st:
            res = await self._core.call("release_handler", "set_removed", [version])
            if res != _OK:
                raise Failure(FAILED, f"set_removed({version}) failed: {term_text(res)}; "
                                       f"{version} stays unpacked")
            removed: list[str] = []
            if ctx.dirs is not None and ctx.tarball is not None:
                others = {lib for r in await self._core.releases() for lib in r.applications}
                root = Path(ctx.dirs.root)
                doomed = [Path(ctx.dirs.releases) / version] + [
                    root / "lib" / f"{app}-{vsn}" for app, vsn in ctx.tarball.applications
                    if f"{app}-{vsn}" not in others]
                for path in doomed:
                    if path.is_dir() and root in path.resolve().parents:
                        await asyncio.to_thread(shutil.rmtree, path)
                        removed.append(str(path.relative_to(root)))
            st.detail = f"set_removed({version}); deleted {', '.join(removed) or 'nothing'}"
