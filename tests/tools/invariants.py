"""The invariants every relctl command keeps (DESIGN.md section 4), checked around every
command a test runs through :func:`tests.tools.agent_proc.relctl`, for every node the test
started and that still runs (nodes register themselves: tests.tools.otp_procs.NodeProc).

Before the command: the files of every release of the node's root (each release RELEASES
lists or a ``.rel`` on disk names: its ``releases/VSN``, ``lib/APP-VSN`` and ``erts-VSN``),
with size and sha256. After it:

- a file of a release that is still there, or of one that another release still uses, is
  neither missing nor changed (a release the command removed may lose its own files);
- every directory of the node's code path under the root still exists;
- ``releases/RELEASES``, ``releases/start_erl.data`` and (relx) ``bin/NAME`` agree with what
  ``release_handler:which_releases`` says is permanent.

A violation raises AssertionError from the relctl call itself, so the test fails at the
command that broke the rule. Files relctl may rewrite by design are left out: a release's
``relctl.sha256`` and, where a template sits beside it, its rendered ``sys.config``; and what
an operation of a test's agent that never finished recorded as added inside a dir the root
had (its journal's unsettled ``placing.added``: a file the tarball's lib/APP-VSN has and the
root's lacked), which is no release's file and which the next operation takes back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.client.main import COMMANDS
from agent.relfile import RelSyntaxError, parse_rel, parse_releases
from bridge import Atom, BridgeError, Node

_TEMPLATES = ("sys.config.src", "sys.config.orig")


@dataclass
class Watched:
    name: str
    cookie: str
    epmd_port: int
    root: Path
    tls: bool = False


_watched: dict[int, Watched] = {}
_lock = threading.Lock()
# (path, size, mtime_ns, ctime_ns, inode) -> sha256: files are hashed once while unchanged.
_hashes: dict[tuple[str, int, int, int, int], str] = {}


_journals: dict[Path, int] = {}  # the journal of each running agent a test started, counted


def watch_journal(path: Path) -> None:
    """The journal of an agent a test started (its unsettled additions: see the docstring),
    until :func:`unwatch_journal` (the agent stopped: a new one on it watches it again)."""
    with _lock:
        _journals[path] = _journals.get(path, 0) + 1


def unwatch_journal(path: Path) -> None:
    with _lock:
        if _journals.get(path, 0) > 1:
            _journals[path] -= 1
        else:
            _journals.pop(path, None)


def unsettled_additions() -> set[Path]:
    """What operations that never finished recorded as added inside dirs the root had."""
    with _lock:
        journals = list(_journals)
    found: set[Path] = set()
    for path in journals:
        if not path.exists():
            continue
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                rows = conn.execute("SELECT added FROM placing").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            continue  # not made yet, or of an older schema: nothing recorded as added
        found.update(Path(p) for (text,) in rows for p in json.loads(text))
    return found


def watch(key: int, node: Watched) -> None:
    with _lock:
        _watched[key] = node


def unwatch(key: int) -> None:
    with _lock:
        _watched.pop(key, None)


def watched() -> list[Watched]:
    with _lock:
        return list(_watched.values())


@dataclass
class Snapshot:
    root: Path
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # rel path -> size, sha
    owners: dict[str, set[str]] = field(default_factory=dict)        # rel path -> versions
    releases: set[str] = field(default_factory=set)


def _sha256(path: Path, info: os.stat_result) -> str:
    key = (str(path), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    found = _hashes.get(key)
    if found is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        found = _hashes[key] = digest.hexdigest()
    return found


def _release_dirs(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(version, dirs relative to root) of every release RELEASES lists or a .rel names."""
    releases = root / "releases"
    try:
        for rel in parse_releases((releases / "RELEASES").read_text("utf-8", "replace")):
            libs = [os.path.relpath(os.path.normpath(root / d), root) for _, _, d in rel.libs]
            yield rel.version, [f"releases/{rel.version}", f"erts-{rel.erts_version}", *libs]
    except (OSError, RelSyntaxError):
        pass
    for rel_file in sorted(releases.glob("*/*.rel")):
        try:
            _, version, erts, apps = parse_rel(rel_file.read_text("utf-8", "replace"))
        except (OSError, RelSyntaxError):
            continue
        yield version, [f"releases/{version}", f"erts-{erts}",
                        *(f"lib/{app}-{vsn}" for app, vsn in apps)]


def snapshot(root: Path, skip: set[Path] | frozenset[Path] = frozenset()) -> Snapshot:
    """``skip``: paths (and what lies in them) that are no release's files."""
    snap = Snapshot(root)
    for version, dirs in _release_dirs(root):
        snap.releases.add(version)
        for rel_dir in dirs:
            top = root / rel_dir
            if not top.is_dir() or top.is_symlink():
                continue
            for folder, _, names in os.walk(top):
                for name in names:
                    path = Path(folder) / name
                    if name == "relctl.sha256" or (name == "sys.config" and any(
                            (path.parent / t).exists() for t in _TEMPLATES)):
                        continue
                    if skip and (path in skip or not skip.isdisjoint(path.parents)):
                        continue
                    rel = str(path.relative_to(root))
                    snap.owners.setdefault(rel, set()).add(version)
                    if rel not in snap.files:
                        try:
                            info = path.lstat()
                            snap.files[rel] = (info.st_size, "link" if path.is_symlink()
                                               else _sha256(path, info))
                        except OSError:
                            continue
    return snap


@dataclass(frozen=True)
class NodeView:
    permanent: str | None
    code_path: tuple[str, ...]


async def _ask(node: Watched) -> NodeView:
    bridge = Node(cookie=node.cookie, epmd_port=node.epmd_port)
    async with bridge.connect(node.name, timeout=5.0) as conn:
        listed = await conn.call("release_handler", "which_releases", [], timeout=10.0)
        code_path = await conn.call("code", "get_path", [], timeout=10.0)
    permanent = next((r[1] for r in listed if isinstance(r, tuple) and len(r) == 4
                      and r[3] == Atom("permanent")), None)
    return NodeView(permanent if isinstance(permanent, str) else None,
                    tuple(p for p in code_path if isinstance(p, str)))


def ask(node: Watched) -> NodeView | None:
    """which_releases and the code path of a running node, through the bridge (in a thread
    of its own: the caller may be inside an event loop); None when it cannot be reached."""
    if node.tls:
        return None
    found: list[NodeView | None] = [None]

    def run() -> None:
        try:
            found[0] = asyncio.run(_ask(node))
        except (BridgeError, OSError, asyncio.TimeoutError):
            found[0] = None
    worker = threading.Thread(target=run, name="relctl-invariants")
    worker.start()
    worker.join(30.0)
    return found[0]


def before_command() -> list[tuple[Watched, Snapshot]]:
    added = unsettled_additions()
    return [(node, snapshot(node.root, added)) for node in watched()]


def after_command(taken: Sequence[tuple[Watched, Snapshot]], argv: Sequence[str]) -> None:
    """Raise AssertionError naming every invariant the command broke."""
    problems: list[str] = []
    replaced = _replaced_version(argv)
    for node, before in taken:
        if node not in watched():
            continue  # stopped by the test meanwhile
        after = snapshot(node.root)
        problems += [f"{node.name}: {p}" for p in compare(before, after, replaced)]
        view = ask(node)
        if view is not None:
            problems += [f"{node.name}: {p}" for p in agree(node.root, view)]
    assert not problems, (f"`relctl {' '.join(argv)}` broke an invariant of DESIGN.md section 4:\n"
                          + "\n".join(problems[:20]))


def _replaced_version(argv: Sequence[str]) -> str | None:
    """With --replace, the release of that version is removed and unpacked anew (its own
    files may change); the version is the command's first plain argument after its name."""
    if "--replace" not in argv:
        return None
    plain = [a for a in argv if not a.startswith("-")]
    return plain[1] if len(plain) > 1 else None


def compare(before: Snapshot, after: Snapshot, replaced: str | None) -> list[str]:
    removed = before.releases - after.releases
    problems = []
    for rel, (size, sha) in before.files.items():
        keeps = before.owners[rel] - removed - ({replaced} if replaced else set())
        if not keeps:
            continue  # only releases the command removed (or replaced) owned it
        now = after.files.get(rel)
        if now is None and not (before.root / rel).exists():
            problems.append(f"{rel} of release {', '.join(sorted(keeps))} was deleted")
        elif now is not None and now != (size, sha):
            problems.append(f"{rel} of release {', '.join(sorted(keeps))} was changed")
    return problems


def agree(root: Path, view: NodeView) -> list[str]:
    problems = [f"{path} is on the node's code path but is gone" for path in view.code_path
                if Path(path).is_relative_to(root) and not Path(path).exists()]
    if view.permanent is None:
        return problems
    try:
        listed = parse_releases((root / "releases" / "RELEASES").read_text("utf-8", "replace"))
    except FileNotFoundError:
        listed = ()  # a mix release before relctl's first operation: nothing to compare
    except (OSError, RelSyntaxError) as exc:
        return [*problems, f"releases/RELEASES cannot be read: {exc}"]
    in_file = [r.version for r in listed if r.status == "permanent"]
    if listed and in_file != [view.permanent]:
        problems.append(f"releases/RELEASES says permanent {in_file}, which_releases "
                        f"{view.permanent}")
    start = root / "releases" / "start_erl.data"
    if start.is_file():
        words = start.read_text().split()
        if len(words) == 2 and words[1] != view.permanent:
            problems.append(f"releases/start_erl.data boots {words[1]}, which_releases says "
                            f"{view.permanent} is permanent")
    name = next((r.name for r in listed if r.version == view.permanent), None)
    if name is not None:
        script, versioned = root / "bin" / name, root / "bin" / f"{name}-{view.permanent}"
        if script.is_file() and versioned.is_file() and \
                script.read_bytes() != versioned.read_bytes():
            problems.append(f"bin/{name} is not bin/{versioned.name} of the permanent release")
    return problems


# The commands that only read: the check is skipped for them. Besides costing a hash of every
# release file and two node calls, its which_releases would wait out an install another
# command runs meanwhile, so a poll of `relctl operation N` could never see the install running.
READ_ONLY = frozenset({"versions", "nodes", "ping", "operations", "operation", "audit",
                       "verify", "make-appup"})
assert READ_ONLY <= COMMANDS.keys(), f"not relctl commands: {READ_ONLY - COMMANDS.keys()}"


def check_call(argv: Sequence[str], run: Any) -> Any:
    """Run ``run()`` (a relctl command) between the two halves of the check (not for a
    command that only reads: :data:`READ_ONLY`)."""
    if next((a for a in argv if a in COMMANDS), None) in READ_ONLY:
        return run()
    taken = before_command()
    result = run()
    after_command(taken, argv)
    return result
