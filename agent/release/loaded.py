"""The code check of verify in milliseconds (issue 24): the md5 of every beam of the release is
known in the agent (beams.py: computed when the agent extracted the release, or once from its
files), so the node is only asked what it has loaded, and the agent compares.

The module lists the check goes by are the ``.app`` files' (appfile.py reads them in the
agent; one it cannot read as file:consult would is asked of the node). One round trip asks the
node, in compiled code (no erl_eval), the mode and ``code:is_loaded`` of every module; a second
one the md5 of the loaded ones (``erlang:get_module_info(M, md5)``).
It says yes only where codecheck.py's check on the node would: every module the ``.app`` files
list is preloaded, or loaded with its beam's md5, or loaded from a dir before the release's
ebin on the code path with that file's md5 (a mix release's consolidated protocols). Anything
else (a module not loaded, another md5, a beam or lib dir the agent cannot read, an answer of
another shape) is not decided here: the caller runs the node's own check, which words it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge import Atom, BadRpc, Export

from .appfile import APP_FILES
from .beams import BEAMS
from .codecheck import AppCode, CodeReport
from .values import Caller

_OK = Atom("ok")
_FILE = Atom("file")
_PRELOADED = Atom("preloaded")


def _fun(module: str, function: str, arity: int) -> Export:
    return Export(Atom(module), Atom(function), arity)


@dataclass(frozen=True)
class _Disk:
    beams: dict[str, dict[str, bytes | None]]  # app -> module -> md5 of its beam
    listed: dict[str, list[str] | None]        # app -> the modules its .app lists (None: unread)


def _disk(root: str, apps: Sequence[tuple[str, str]]) -> _Disk | None:
    """What ROOT/lib/APP-VSN/ebin holds for each app; None when one (or its .app) is not
    there for the agent."""
    beams, listed = {}, {}
    for name, vsn in apps:
        ebin = os.path.join(root, "lib", f"{name}-{vsn}", "ebin")
        found = BEAMS.ebin(ebin)
        if found is None:
            return None
        app_file = os.path.join(ebin, f"{name}.app")
        if not os.path.isfile(app_file):
            return None  # no .app the agent sees: the node's check says what it makes of it
        beams[name] = found
        listed[name] = APP_FILES.modules(app_file)
    return _Disk(beams, listed)


def _modules(consulted: Any) -> list[str] | None:
    """The modules of one file:consult answer of a .app, or None."""
    if not (isinstance(consulted, tuple) and len(consulted) == 2 and consulted[0] == _OK
            and isinstance(consulted[1], list) and len(consulted[1]) == 1):
        return None
    app = consulted[1][0]
    if not (isinstance(app, tuple) and len(app) == 3 and app[0] == Atom("application")
            and isinstance(app[2], list)):
        return None
    props = [p for p in app[2] if isinstance(p, tuple) and len(p) == 2 and p[0] == Atom("modules")]
    mods = props[0][1] if props else []  # proplists:get_value(modules, Props, [])
    if not isinstance(mods, list) or not all(isinstance(m, Atom) for m in mods):
        return None
    return [m.name for m in mods]


async def loaded_matches(node: Caller, root: str, apps: Sequence[tuple[str, str]], *,
                         timeout: float) -> CodeReport | None:
    """The report of a node that runs all of the release's code, from what it has loaded; None
    when that is not what it shows (or cannot be told here): then ask check_code."""
    read = await asyncio.to_thread(_disk, root, apps)
    if read is None:
        return None
    disk = read.beams
    if any(mods is not None and not all(disk[app].get(m) for m in mods)
           for app, mods in read.listed.items()):
        return None  # a listed module without a beam the agent reads: the node's check says
    libs = {name: os.path.join(root, "lib", f"{name}-{vsn}") for name, vsn in apps}
    names = sorted({m for mods in disk.values() for m in mods})
    try:
        mode, loaded, app_modules = await asyncio.gather(
            node.call("code", "get_mode", [], timeout=timeout),
            node.call("lists", "map", [_fun("code", "is_loaded", 1),
                                       [Atom(m) for m in names]], timeout=timeout),
            _listed(node, libs, read.listed, timeout=timeout))
    except BadRpc:
        return None
    if not (isinstance(loaded, list) and len(loaded) == len(names) and isinstance(mode, Atom)
            and app_modules is not None):
        return None
    where: dict[str, str | None] = {}  # module -> the file it was loaded from (None: preloaded)
    for module, state in zip(names, loaded, strict=True):
        if isinstance(state, tuple) and len(state) == 2 and state[0] == _FILE:
            if state[1] == _PRELOADED:
                where[module] = None
            elif isinstance(state[1], str):
                where[module] = state[1]
    listed: list[tuple[str, str, bytes | None]] = []  # (app, module, the beam's md5)
    counts: list[int] = []
    for name, _ in apps:
        mods = app_modules[name]
        if mods is None or not all(m in disk[name] and m in where for m in mods):
            return None  # no .app, a module without a beam, or one not loaded: the node says
        listed += [(name, m, disk[name][m]) for m in mods if where[m] is not None]
        counts.append(len(mods))
    if listed:
        try:
            md5s = await node.call("lists", "zipwith",
                                   [_fun("erlang", "get_module_info", 2),
                                    [Atom(m) for _, m, _ in listed],
                                    [Atom("md5")] * len(listed)], timeout=timeout)
        except BadRpc:  # one was unloaded meanwhile
            return None
        if not (isinstance(md5s, list) and len(md5s) == len(listed)):
            return None
        others = [(name, m, have) for (name, m, want), have in zip(listed, md5s, strict=True)
                  if want is None or have != want]
        if others and not await _earlier_with_same_code(node, libs, others, where,
                                                          timeout=timeout):
            return None
    return CodeReport(mode.name, tuple(
        AppCode(name, vsn, libs[name], count, 0, ())
        for (name, vsn), count in zip(apps, counts, strict=True)))


async def _listed(node: Caller, libs: dict[str, str], read: dict[str, list[str] | None], *,
                  timeout: float) -> dict[str, list[str] | None] | None:
    """The modules of each app's .app: as read in the agent, else as the node consults it."""
    unread = [name for name, mods in read.items() if mods is None]
    if not unread:
        return read
    consulted = await node.call("lists", "map", [_fun("file", "consult", 1), [
        os.path.join(libs[name], "ebin", f"{name}.app") for name in unread]], timeout=timeout)
    if not (isinstance(consulted, list) and len(consulted) == len(unread)):
        return None
    return {**read, **{name: _modules(answer)
                       for name, answer in zip(unread, consulted, strict=True)}}


async def _earlier_with_same_code(node: Caller, libs: dict[str, str],
                                  others: list[tuple[str, str, Any]], where: dict[str, str | None],
                                  *, timeout: float) -> bool:
    """Each of ``others`` (app, module, loaded md5), loaded with another md5 than its beam's,
    comes from a dir before its app's ebin on the code path whose beam has the loaded md5,
    as codecheck's check accepts (consolidated protocols)."""
    try:
        path = await node.call("code", "get_path", [], timeout=timeout)
    except BadRpc:
        return False
    if not isinstance(path, list) or not all(isinstance(d, str) and os.path.isabs(d)
                                             for d in path):
        return False  # a relative dir is relative to the node's cwd: the node says
    index = {d.rstrip("/"): i for i, d in enumerate(path)}  # the last one, as maps:from_list
    files = []
    for app, module, _ in others:
        loaded = where[module]
        if loaded is None or not os.path.isabs(loaded):
            return False
        ebin = os.path.join(libs[app], "ebin")
        if not index.get(os.path.dirname(loaded), len(path)) < index.get(ebin, len(path)):
            return False
        files.append(loaded)
    md5s = await asyncio.to_thread(lambda: [BEAMS.md5(f) for f in files])
    return all(md5 is not None and md5 == have
               for md5, (_, _, have) in zip(md5s, others, strict=True))
