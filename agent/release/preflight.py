"""Preflight checks that stop an operation before it changes anything (DESIGN.md section 4,
step 1): the node's RELEASES file exists (created from the running release's .rel when it does
not), and the target release's sys.config parses the way release_handler will read it; the
relup holds the entry the switch needs (from the running version, or down to the target); a
tarball given for a version already on the node holds that very release (sha256), or replaces it.

Each check raises a Failure with outcome ``failed_unchanged`` naming the file and the reason.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from agent.relfile import RelSyntaxError, RelupVersions, decode, parse_releases, relup_versions
from bridge import Atom, BadRpc

from .core import EngineCore, OperationContext, StepState, consult_error
from .ertscheck import erts_runs_here
from .releases import Release
from .tarballs import ReleaseTarball
from .values import FAILED_UNCHANGED, Failure, term_text

SHA_FILE = "relctl.sha256"  # releases/VSN/relctl.sha256: the tarball the agent unpacked there
RELUP_HINT = "build it with `rebar3 relup` or `relctl make-relup OLD NEW`"

_OK = Atom("ok")
_ERROR = Atom("error")


class Preflight:
    def __init__(self, core: EngineCore) -> None:
        self._core = core

    async def read_target(self, ctx: OperationContext, version: str, *,
                          absent: str | None = None, running: str | None = None
                          ) -> Release | None:
        """Reads the node (its releases, dirs, ERTS) and finds ``version`` among its releases.
        ``absent``: what to do when the node does not have it, which is then refused (None:
        not having it is no refusal); ``running``: the same for a target that already runs."""
        await self._core.read_node(ctx)
        target = ctx.find(version)
        node = self._core.node.name
        if target is None and absent is not None:
            known = ", ".join(f"{r.version} ({r.status})" for r in ctx.releases) or "none"
            raise Failure(FAILED_UNCHANGED, f"release {version} is not on {node} (it has: "
                                             f"{known}){'; ' + absent if absent else ''}")
        if target is not None and target.running and running is not None:
            raise Failure(FAILED_UNCHANGED, f"{version} already runs on {node}"
                                             f"{'; ' + running if running else ''}")
        return target

    async def ensure_releases_file(self, ctx: OperationContext, state: StepState) -> None:
        """Without RELEASES, release_handler invents a release with no libraries, and a later
        remove_release can delete the running code: create the file from the running .rel and
        make release_handler read it, before anything else."""
        assert ctx.dirs is not None
        call = self._core.call
        path = os.path.join(ctx.dirs.releases, "RELEASES")
        if await call("filelib", "is_regular", [path]):
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
            if await call("filelib", "is_regular", [candidate]):
                rel_file = candidate
                break
        if rel_file is None:
            raise Failure(FAILED_UNCHANGED, f"{path} is missing and no .rel file of the running "
                                             f"release was found ({' or '.join(candidates)})")
        made = await call("release_handler", "create_RELEASES",
                          [ctx.dirs.root, ctx.dirs.releases, rel_file, []])
        if made != _OK:
            raise Failure(FAILED_UNCHANGED, f"creating {path} failed: {term_text(made)}")
        # release_handler read its state at start: restart it so that it reads the new file.
        for fn in ("terminate_child", "restart_child"):
            await call("supervisor", fn, [Atom("sasl_sup"), Atom("release_handler")])
        state.detail += f"created {path} from {rel_file}; "  # what follows is appended

    async def check_config(self, version: str, text: bytes | None, ctx: OperationContext) -> str:
        """release_handler silently treats a sys.config that does not parse as empty: refuse it.
        Parsed by the node itself (erl_scan/erl_parse), so the judgement is Erlang's.

        ``text`` is the tarball's sys.config; None checks the one already on the node."""
        assert ctx.dirs is not None
        where = f"releases/{version}/sys.config"
        if text is None:
            path = os.path.join(ctx.dirs.releases, version, "sys.config")
            res = await self._core.call("file", "consult", [path])
            if isinstance(res, tuple) and res[0] == _OK:
                return f"{where} parses"
            if res == (_ERROR, Atom("enoent")):
                return f"no {where}"
            reason = res[1] if isinstance(res, tuple) and len(res) == 2 else res
            raise Failure(FAILED_UNCHANGED, f"{where} does not parse: "
                          f"{await consult_error(self._core.node, reason, self._core.rpc_timeout)}")
        return await self._check_source(where, decode(text))

    def recorded_sha256(self, version: str, ctx: OperationContext) -> tuple[str | None, str]:
        """The sha256 of the tarball VSN was unpacked from, and where it was read: the file
        the agent wrote into the release dir first (it lives and dies with the files), then
        the agent's journal."""
        assert ctx.dirs is not None
        path = Path(ctx.dirs.releases) / version / SHA_FILE
        try:
            text = path.read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError):
            text = []
        if text and len(text[0]) == 64:
            return text[0].lower(), str(path)
        recorded = self._core.ledger.recorded(version)
        return (recorded, "the agent's journal") if recorded else (None, "")

    def existing_release(self, target: Release, tarball: ReleaseTarball, ctx: OperationContext,
                         *, replace: bool) -> bool:
        """A tarball given for a version the node already has: True when that release is to
        be replaced (removed, then the tarball unpacked), False when it is this tarball's
        release (nothing to unpack). Refuses other bytes, or bytes it cannot tell, without
        ``replace``; and never replaces the running or permanent release."""
        node, version = self._core.node.name, target.version
        fixed = target.running or target.status in ("current", "permanent")
        if replace and fixed:
            raise Failure(FAILED_UNCHANGED, f"{version} is {target.status} on {node}: the "
                          "running or permanent release cannot be replaced; install another "
                          "release first, or give the fixed release a new version")
        if replace:
            return True
        recorded, source = self.recorded_sha256(version, ctx)
        if recorded == tarball.sha256:
            return False
        if recorded is None:
            why = (f"{version} is already {target.status} on {node}, and no sha256 was "
                   "recorded when it was unpacked, so relctl cannot tell whether it is the "
                   "release of this tarball")
        else:
            why = (f"{version} is already {target.status} on {node}, unpacked from other "
                   f"bytes (sha256 {recorded[:12]}... per {source}; this tarball: "
                   f"{tarball.sha256[:12]}...)")
        todo = ("it runs or is permanent, so it cannot be replaced: give the fixed release a "
                "new version" if fixed else
                "pass --replace to remove it and unpack this tarball in its place")
        raise Failure(FAILED_UNCHANGED, f"{why}; {todo}, or leave out --tarball to use the "
                                         "release already there")

    async def check_tarball(self, tarball: ReleaseTarball, ctx: OperationContext) -> str:
        """A tarball's identity before anything changes: its release is the node's, its ERTS
        is the node's or is at hand (shipped and runnable here, or in the root) with a relup
        that restarts the emulator, and its relup has an entry from the running version. The
        step detail it adds (empty when the ERTS does not change)."""
        node, version = self._core.node.name, tarball.version
        running = next((r for r in ctx.releases if r.running), None)
        if running is not None and tarball.release_name != running.name:
            raise Failure(FAILED_UNCHANGED, f"the tarball holds release {tarball.release_name} "
                          f"{version}, but {node} runs release {running.name}: release_handler "
                          f"only switches between versions of one release. Give relctl the "
                          f"tarball of {running.name} {version}, or the node that runs "
                          f"{tarball.release_name}")
        relup = await self._check_relup(tarball, ctx.from_version)
        node_erts = ctx.erts_version
        if not node_erts or tarball.erts_version == node_erts:
            return ""
        assert ctx.dirs is not None
        erts = f"erts-{tarball.erts_version}"
        in_root = Path(ctx.dirs.root, erts, "bin", "erlexec").is_file()
        if not (tarball.erts_included or in_root):
            raise Failure(FAILED_UNCHANGED, f"release {tarball.release_name} {version} needs "
                          f"ERTS {tarball.erts_version} (its .rel says {{erts, "
                          f"\"{tarball.erts_version}\"}}), which is neither in the tarball nor "
                          f"in {ctx.dirs.root}; {node} runs ERTS {node_erts}. Build the release "
                          f"with its ERTS included (relx: include_erts; systools:make_tar: "
                          "{erts, Dir}), or for the node's OTP")
        if ctx.from_version and ctx.from_version not in relup.new_emulator_from:
            raise Failure(FAILED_UNCHANGED, f"the ERTS changes ({node_erts} -> "
                          f"{tarball.erts_version}) but releases/{version}/relup goes from "
                          f"{ctx.from_version} without restart_new_emulator: the relup was built "
                          f"for the wrong OTP. Build it with the new release's OTP "
                          f"({RELUP_HINT}), so that it starts with restart_new_emulator")
        if in_root:
            return f"ERTS {node_erts} -> {tarball.erts_version} ({erts} in the root); "
        why = await asyncio.to_thread(erts_runs_here, tarball)
        if why is not None:
            raise Failure(FAILED_UNCHANGED, f"the tarball's {erts} does not run on this host: "
                          f"{why}. Its emulator would replace the running one at "
                          "restart_new_emulator and the node would not come back: build the "
                          "release on (or for) this host's architecture and system")
        return f"ERTS {node_erts} -> {tarball.erts_version} (shipped, runs on this host); "

    async def _check_relup(self, tarball: ReleaseTarball, from_version: str) -> RelupVersions:
        """install_release needs releases/VSN/relup with an entry from the running version;
        without one, check_install_release still answers ok and install fails later (enoent
        on the running release's relup). Refused here, before anything is staged."""
        version = tarball.version
        where = f"releases/{version}/relup"
        if tarball.relup is None:
            raise Failure(FAILED_UNCHANGED, f"the tarball of {version} has no {where}, so "
                          f"release_handler has no script to go from {from_version} to "
                          f"{version}; {RELUP_HINT}, and put it into the tarball")
        found = await self._parse_relup(tarball.relup, f"{where} in the tarball")
        if found.version != version:
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball is the relup of "
                          f"{found.version}, not of {version}; {RELUP_HINT}")
        if from_version and from_version not in found.up_from:
            # Which hop to take first: one of the versions the relup knows, reached by a
            # release whose relup goes up from the running one.
            hop = (f"upgrade to {' or '.join(found.up_from)} first (with a relup from "
                   f"{from_version}), then to {version}; or " if found.up_from else "")
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball has no entry from the "
                          f"running {from_version} (it upgrades from: "
                          f"{', '.join(found.up_from) or 'nothing'}); {hop}{RELUP_HINT} with "
                          f"{from_version} as OLD (make-relup takes several OLDs: an entry "
                          "from each)")
        return found

    def check_down_erts(self, version: str, ctx: OperationContext) -> str:
        """The ERTS of the release a downgrade goes to (RELEASES names it) must be at hand
        when it is not the running one: the relup's restart_emulator boots it. The step detail
        it adds ("" when the ERTS does not change or RELEASES cannot say)."""
        assert ctx.dirs is not None
        try:
            listed = parse_releases(Path(ctx.dirs.releases, "RELEASES").read_text(
                encoding="utf-8", errors="replace"))
        except (OSError, RelSyntaxError):
            return ""  # release_handler reads it too: check_install_release judges then
        target = next((r for r in listed if r.version == version), None)
        if target is None or not ctx.erts_version or target.erts_version == ctx.erts_version:
            return ""
        erts = f"erts-{target.erts_version}"
        if not Path(ctx.dirs.root, erts, "bin", "erlexec").is_file():
            raise Failure(FAILED_UNCHANGED, f"{version} runs on ERTS {target.erts_version}, "
                          f"which is not in {ctx.dirs.root} ({erts} is missing); the node runs "
                          f"ERTS {ctx.erts_version}, and the relup's restart_emulator would "
                          "boot nothing. Restore it (unpack a tarball of "
                          f"{version} that includes its ERTS), or downgrade by a restart")
        return f"ERTS {ctx.erts_version} -> {target.erts_version} ({erts} in the root); "

    async def check_down_relup(self, version: str, ctx: OperationContext) -> str:
        """A downgrade runs the running release's relup down script to ``version`` (or, as
        release_handler tries first, the target's relup up from the running one): refuse
        when neither file has that entry, which check_install_release does not check."""
        assert ctx.dirs is not None
        running = ctx.from_version
        up_path = Path(ctx.dirs.releases) / version / "relup"
        down_path = Path(ctx.dirs.releases) / running / "relup"
        try:
            try:
                up = await self._relup_on_node(up_path)
            except Failure:
                up = None  # release_handler then tries the down script too
            if up is not None and up.version == version and running in up.up_from:
                return f"relup of {version} goes up from {running}"
            down = await self._relup_on_node(down_path)
        except OSError as exc:  # not ours to judge then: check_install_release does
            return f"relup not read by the agent ({exc.strerror or exc})"
        live = (f"a live downgrade needs a relup of {running} with a down entry to {version} "
                f"({RELUP_HINT}); without one, restart the node on {version} instead")
        if down is None:
            raise Failure(FAILED_UNCHANGED, f"{down_path} is missing, so release_handler has "
                          f"no script to go down from {running} to {version}; {live}")
        if down.version != running or version not in down.down_to:
            raise Failure(FAILED_UNCHANGED, f"{down_path} has no down entry to {version} (it "
                          f"goes down to: {', '.join(down.down_to) or 'nothing'}); {live}")
        return f"relup of {running} goes down to {version}"

    async def _relup_on_node(self, path: Path) -> RelupVersions | None:
        """The relup at ``path`` on this host (the agent runs beside the node); None when
        there is none; OSError when it cannot be read."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        return await self._parse_relup(data, str(path))

    async def _parse_relup(self, data: bytes, where: str) -> RelupVersions:
        try:
            # Off the event loop: a relup may be megabytes.
            return await asyncio.to_thread(relup_versions, decode(data))
        except RelSyntaxError as exc:
            raise Failure(FAILED_UNCHANGED, f"{where} does not parse as a relup "
                          f"({exc}); {RELUP_HINT}") from None

    async def _check_source(self, where: str, source: str) -> str:
        scanned = await self._core.call("erl_scan", "string", [source])
        if not (isinstance(scanned, tuple) and scanned[0] == _OK):
            detail = await self._format_parse_error(scanned)
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball does not parse: {detail}")
        tokens = scanned[1]
        last = tokens[-1] if isinstance(tokens, list) and tokens else None
        if not (isinstance(last, tuple) and last and last[0] == Atom("dot")):
            # file:consult (what release_handler uses) needs the final dot, or it reads nothing.
            raise Failure(FAILED_UNCHANGED, f"{where} in the tarball does not end with '.' "
                                             "(a sys.config is one Erlang list and a dot)")
        parsed = await self._core.call("erl_parse", "parse_term", [tokens])
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
            words = await self._core.call(
                "lists", "flatten", [await self._core.call(str(module.name), "format_error", [desc])])
            loc = line[0] if isinstance(line, tuple) else line
            return f"line {loc}: {term_text(words)}"
        except (TypeError, IndexError, AttributeError, BadRpc):
            return term_text(res)
