"""What under a release root is in use, read from the files and the running node, never from
``which_releases`` alone (DESIGN.md section 4, "What is in use is never deleted").

release_handler started without a RELEASES file (every mix release) invents an entry with no
libraries, and ``create_RELEASES`` does not change what the running release_handler answers:
its library lists cannot say what a deletion would break. So the set is built from:

- every release listed in ``releases/RELEASES``: its ``releases/VSN``, libraries and ERTS;
- every ``.rel`` of a release dir on disk (``releases/VSN/*.rel``): the same, whether or not
  any RELEASES lists it (a mix release boots from ``-boot``, not from RELEASES);
- the running node's code path (``code:get_path()``) and its ERTS (``erts-VSN``).

A path may be deleted only when it is none of these, holds none of them and lies in none of
them (:meth:`InUse.holds`); what an operation added inside a dir the root had (a new file in
the running release's lib/APP-VSN) may go when it is none of these and holds none of them
(:meth:`InUse.holds_added`): nothing in use had it before. The only releases left out of the
``.rel`` scan are the versions an operation of the agent itself was placing (``placing``) and
that RELEASES does not list: their ``.rel`` is one of the files that operation placed, not a
release anyone installed.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.relfile import RelSyntaxError, parse_rel, parse_releases

# Why a path of the running node's code path is in use (callers tell this case apart: it
# ends when the node restarts, not when a file is fixed).
ON_CODE_PATH = "on the running node's code path"


@dataclass(frozen=True)
class InUse:
    root: Path
    why: tuple[tuple[Path, str], ...]  # each path in use (absolute, normalised), with the
                                       # first reason it is

    problems: tuple[str, ...] = ()  # files that could not be read: the set may be too small

    def holds(self, path: Path) -> str | None:
        """Why ``path`` must not be deleted (it is in use, holds or lies in something in
        use, or is not under the root at all), or None when it may go."""
        path = Path(os.path.normpath(path))
        if (unknown := self._unknown(path)) is not None:
            return unknown
        for used, reason in self.why:
            if used == path or used in path.parents or path in used.parents:
                return f"{used.relative_to(self.root)} is in use ({reason})"
        return None

    def holds_added(self, path: Path) -> str | None:
        """As :meth:`holds`, for what an operation added inside a directory the root had (a
        file it put into an existing lib/APP-VSN): that the directory around it is in use does
        not keep it, since nothing in use had it before; being in use or holding what is
        does."""
        path = Path(os.path.normpath(path))
        if (unknown := self._unknown(path)) is not None:
            return unknown
        for used, reason in self.why:
            if used == path or path in used.parents:
                return f"{used.relative_to(self.root)} is in use ({reason})"
        return None

    def _unknown(self, path: Path) -> str | None:
        """Why nothing can be said of ``path`` (normalised): outside the root, or what is in
        use there is not known; else None."""
        if path == self.root or self.root not in path.parents:
            return f"{path} is not inside the release root {self.root}"
        if self.problems:
            # A RELEASES or .rel that cannot be read might name this path: keep everything.
            return f"what is in use under {self.root} is not known ({self.problems[0]})"
        return None

    def split(self, paths: Iterable[Path], *, added: bool = False
              ) -> tuple[list[Path], list[str]]:
        """The paths that may go, and why each of the others stays (``added``: they are
        additions inside dirs the root had, :meth:`holds_added`)."""
        free: list[Path] = []
        kept: list[str] = []
        for path in paths:
            reason = self.holds_added(path) if added else self.holds(path)
            if reason is None:
                free.append(path)
            else:
                kept.append(reason)
        return free, kept


def _release_paths(root: Path, releases: Path, version: str, erts: str,
                   libs: Iterable[tuple[str, str]]) -> list[Path]:
    return ([releases / version, root / f"erts-{erts}"]
            + [root / "lib" / f"{app}-{vsn}" for app, vsn in libs])


def _rel_files(releases: Path) -> list[Path]:
    """Every .rel of a release dir: releases/VSN/*.rel (relx's NAME.rel, unpack_release's
    NAME-VSN.rel, mix's NAME.rel). A releases/NAME-VSN.rel beside them is only where
    systools:make_tar ships it, not what any release boots from."""
    found: list[Path] = []
    try:
        entries = [e for e in os.scandir(releases) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return found
    for entry in entries:
        try:
            found += [Path(e.path) for e in os.scandir(entry.path)
                      if e.name.endswith(".rel") and e.is_file(follow_symlinks=False)]
        except OSError:
            continue
    return sorted(found)


def compute(root: Path, releases: Path, *, code_path: Collection[str] = (),
            erts_version: str = "", placing: Collection[str] = (),
            removing: Collection[str] = ()) -> InUse:
    """The in-use set of the release root ``root`` (whose releases dir is ``releases``), for a
    node whose code path and ERTS version are given. Reads files only: safe off the loop.

    ``placing``: versions an unfinished operation of the agent placed, left out of the .rel
    scan unless RELEASES lists them. ``removing``: versions about to be removed, left out
    entirely (what else still uses their files is what stays)."""
    root = Path(os.path.normpath(root))
    releases = Path(os.path.normpath(releases))
    why: list[tuple[Path, str]] = []
    problems: list[str] = []
    listed: set[str] = set()
    releases_file = releases / "RELEASES"
    try:
        text = releases_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = None
    except OSError as exc:
        problems.append(f"cannot read {releases_file}: {exc.strerror or exc}")
        text = None
    if text is not None:
        try:
            for rel in parse_releases(text):
                if rel.version in removing:
                    continue
                listed.add(rel.version)
                reason = f"release {rel.version} ({rel.status}) in RELEASES"
                why += [(p, reason) for p in _release_paths(root, releases, rel.version,
                                                            rel.erts_version, ())]
                why += [(Path(os.path.normpath(root / d)), reason) for _, _, d in rel.libs]
        except RelSyntaxError as exc:
            problems.append(f"{releases_file} does not parse: {exc}")
    for rel_file in _rel_files(releases):
        try:
            name, version, erts, apps = parse_rel(
                rel_file.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            problems.append(f"cannot read {rel_file}: {exc.strerror or exc}")
            continue
        except RelSyntaxError:
            continue  # not a release file release_handler could use: it names nothing in use
        if version in removing or (version in placing and version not in listed):
            continue
        reason = f"release {name} {version}, {rel_file.relative_to(root)}"
        why += [(p, reason) for p in _release_paths(root, releases, version, erts, apps)]
    for entry in code_path:
        path = Path(os.path.normpath(entry))
        if root in path.parents:
            # ROOT/lib/APP-VSN/ebin -> ROOT/lib/APP-VSN; ROOT/releases/VSN/consolidated ->
            # ROOT/releases/VSN (Elixir's protocols).
            top = path.relative_to(root).parts
            why.append((root.joinpath(*top[:2]), ON_CODE_PATH))
    if erts_version:
        why.append((root / f"erts-{erts_version}", "the running node's ERTS"))
    why.append((releases / "RELEASES", "release_handler's list"))
    why.append((releases / "start_erl.data", "what the start script boots"))
    unique: dict[Path, str] = {}
    for path, reason in why:
        unique.setdefault(path, reason)
    return InUse(root, tuple(unique.items()), tuple(problems))
