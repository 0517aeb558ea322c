"""`relctl verify`: whether a node runs the code of its release (read-only). Exit 0 when every
module matches the release's beams, 1 (FAILED) with the modules that do not."""

from __future__ import annotations

from typing import Any

import click

from relctl.v1 import agent_pb2 as pb

from ..common import Settings, ask_one
from ..options import shared_options
from ..output import emit, error, table
from ..status import ExitCode

# Reading every beam of a big release takes a few seconds on a slow disk.
_MIN_TIMEOUT = 60.0


@click.command()
@shared_options
@click.pass_obj
def verify(settings: Settings) -> ExitCode:
    """Check that the node runs its release's code: every module of every application loaded
    with the md5 of the release's beam. Changes nothing."""
    reply = ask_one(settings, "Verify", pb.VerifyRequest(node=settings.node),
                    timeout=max(settings.timeout, _MIN_TIMEOUT))
    mismatches: list[dict[str, Any]] = [
        {"application": m.application, "module": m.module, "problem": m.problem,
         "detail": m.detail} for m in reply.mismatches]
    ok = reply.mismatch_count == 0
    data = {"node": reply.node, "release": reply.release, "version": reply.version,
            "mode": reply.mode, "applications": reply.applications, "modules": reply.modules,
            "ok": ok, "mismatch_count": reply.mismatch_count, "mismatches": mismatches}

    def text() -> str:
        head = (f"{reply.node}: {reply.release} {reply.version}, {reply.applications} "
                f"applications, {reply.modules} modules ({reply.mode} mode): ")
        if ok:
            return head + "every module runs the release's code"
        rows = [["APPLICATION", "MODULE", "PROBLEM"],
                *([m["application"], m["module"] or "-", m["detail"]] for m in mismatches)]
        more = reply.mismatch_count - len(mismatches)
        return (head + f"{reply.mismatch_count} do not match\n" + table(rows)
                + (f"\n... and {more} more" if more > 0 else ""))

    emit(settings, data, text)
    if not ok:
        error(f"{reply.node} does not run all of the code of {reply.release} {reply.version}: "
              "fix the appups (`relctl make-relup` checks them) and upgrade again, or restart "
              "the node")
        return ExitCode.FAILED
    return ExitCode.OK
