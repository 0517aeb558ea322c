"""relx-style runtime config on the counter release, without rebar3.

relx ships ``releases/VSN/sys.config.src`` (``sys_config_src``), or a sys.config with
``${VAR}`` that the start script renders when the node is started with RELX_REPLACE_OS_VARS.
Either way it is relx's **start script** that renders the file at boot from the OS environment
and writes ``releases/VSN/sys.config`` (keeping a RELX_REPLACE_OS_VARS template as
``sys.config.orig``). The counter fixture boots through its own small script
(release_fixture.py), so :func:`render_at_boot` does that render before the node starts:
an emulation of relx's script, written here independently of the agent's renderer so that
the test does not check the agent against itself. The variants of the 0.0.2 tarball differ
from the real one only in their sys.config members.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path

_REF = re.compile(r"\$\{([^}]*)\}")


def render_like_relx(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` -> its value ("" when unset); ``${VAR:-default}`` -> default when empty."""
    def one(match: re.Match[str]) -> str:
        name, colon, default = match.group(1).partition(":-")
        value = env.get(name, "")
        return default if colon and value == "" else value
    return _REF.sub(one, text)


def render_at_boot(root: Path, env: Mapping[str, str]) -> None:
    """What relx's start script does to the booting version's config before it execs erlexec:
    render sys.config.src, or (with RELX_REPLACE_OS_VARS) sys.config from sys.config.orig,
    saving the template there first."""
    vsn = (root / "releases" / "start_erl.data").read_text().split()[1]
    rel_dir = root / "releases" / vsn
    src, config, orig = (rel_dir / "sys.config.src", rel_dir / "sys.config",
                         rel_dir / "sys.config.orig")
    if src.is_file():
        config.write_text(render_like_relx(src.read_text(), env))
    elif env.get("RELX_REPLACE_OS_VARS"):
        if not orig.is_file():
            orig.write_bytes(config.read_bytes())
        config.write_text(render_like_relx(orig.read_text(), env))


def config_variant(tarball: Path, dest: Path, version: str, *, src: str | None = None,
                   sys_config: str | None = None) -> Path:
    """``tarball`` with releases/VSN/sys.config replaced: by ``sys_config``, or left out and a
    ``sys.config.src`` of ``src`` added (a relx build with sys_config_src has only that)."""
    member = f"releases/{version}/sys.config"
    with tarfile.open(tarball, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for info in tin:
            if info.name == member:
                continue
            tout.addfile(info, tin.extractfile(info) if info.isfile() else None)
        for name, text in ((member, sys_config), (f"{member}.src", src)):
            if text is not None:
                data = text.encode()
                added = tarfile.TarInfo(name)
                added.size, added.mode = len(data), 0o644
                tout.addfile(added, io.BytesIO(data))
    return dest
