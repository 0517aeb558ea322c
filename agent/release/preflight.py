"""Preflight checks that stop an operation before it changes anything (DESIGN.md section 4,
step 1): the node's RELEASES file exists (created from the running release's .rel when it does
not), and the target release's sys.config parses the way release_handler will read it.

Each check raises a Failure with outcome ``failed_unchanged`` naming the file and the reason.
"""

from __future__ import annotations

import os
from typing import Any

from bridge import Atom, BadRpc

from .base import EngineCore, OperationContext
from .steps import FAILED_UNCHANGED, Failure, StepState, consult_error, term_text

_OK = Atom("ok")
_ERROR = Atom("error")


class Preflight:
    def __init__(self, core: EngineCore) -> None:
        self._core = core

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
        try:
            source = text.decode("utf-8")
        except UnicodeDecodeError:
            source = text.decode("latin-1")
        return await self._check_source(where, source)

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
