"""Whether a node runs the code of a release (DESIGN.md section 4, step 6): every module of
every application of the release is loaded with the md5 of the beam in the release's lib dir.

A relup only changes the modules its appups name, so an appup that forgot a changed module
leaves the node on the old code, and one that forgot an ``add_module`` leaves the module
unloaded (in embedded mode, calling it is an ``undef``). Neither stops ``install_release``,
and the release still shows as current: only comparing the loaded code with the release's
beams tells.

The check runs on the node in one evaluation (erl_scan, erl_parse, then erl_eval: three RPCs
whatever the size of the release; no module of ours is loaded there) and returns only the
modules that do not match. Modules in the release's ``.app`` lists are compared:

* loaded: ``erlang:get_module_info(M, md5)`` must equal ``beam_lib:md5`` of the release's
  beam (a module loaded from another directory with the same code is fine: release_handler
  does not reload modules that did not change, so they keep their old path), or the beam of
  a code path directory before the release's ebin (a mix release's consolidated protocols);
* not loaded, embedded mode: an error (nothing loads it on demand);
* not loaded, interactive mode: the first code path directory holding its beam must be the
  release's ebin, where the code server will load it from.

When something does not match, the appups say why: :func:`appup_modules` finds the modules the
appup's instructions name for the way between the two versions, and :func:`problem_text` words
what the appup lacks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import NodeFault
from bridge import Atom, BadRpc

from .proccheck import CheckFailed, old_code_processes, stale_funs, tree_problems
from .releases import parse_which_releases
from .values import Caller, term_text

# The check, evaluated on the node with Apps bound to [{AppName, Vsn}] (charlists). Returns
# {Mode, [{App, Vsn, LibDir, ModuleCount, ProblemCount, Problems | AppFileError}]}, with at most
# 50 problems per application (the count says how many there are).
CHECK_EXPR = r"""
Mode = code:get_mode(),
Lib = code:lib_dir(),
PathIndex = maps:from_list(lists:zip([filename:absname(D) || D <- code:get_path()],
                                     lists:seq(1, length(code:get_path())))),
First = case Mode of
    embedded -> #{};
    _ -> lists:foldl(fun(D, Acc) ->
             case erl_prim_loader:list_dir(D) of
                 {ok, Fs} ->
                     Abs = filename:absname(D),
                     lists:foldl(fun(F, A) ->
                         case filename:extension(F) =:= ".beam" andalso not maps:is_key(F, A) of
                             true -> A#{F => Abs};
                             false -> A
                         end end, Acc, Fs);
                 _ -> Acc
             end end, #{}, code:get_path())
end,
CheckMod = fun(M, Ebin) ->
    File = filename:join(Ebin, atom_to_list(M) ++ ".beam"),
    case code:is_loaded(M) of
        {file, preloaded} -> false;
        {file, Loaded} ->
            case beam_lib:md5(File) of
                {ok, {_, Want}} ->
                    Have = erlang:get_module_info(M, md5),
                    LoadedDir = filename:dirname(filename:absname(Loaded)),
                    Earlier = maps:get(LoadedDir, PathIndex, infinity)
                        < maps:get(Ebin, PathIndex, infinity),
                    case Have of
                        Want -> false;
                        _ when Earlier ->
                            case beam_lib:md5(Loaded) of
                                {ok, {_, Have}} -> false;
                                _ -> {true, {M, differs, Loaded}}
                            end;
                        _ -> {true, {M, differs, Loaded}}
                    end;
                {error, beam_lib, Why} -> {true, {M, no_beam, Why}}
            end;
        false when Mode =:= embedded -> {true, {M, not_loaded, embedded}};
        false ->
            case maps:get(atom_to_list(M) ++ ".beam", First, none) of
                Ebin -> false;
                Other -> {true, {M, would_load, Other}}
            end
    end
end,
CheckApp = fun({A, V}) ->
    Dir0 = filename:join(Lib, A ++ "-" ++ V),
    Dir = case filelib:is_dir(Dir0) of
        true -> Dir0;
        false ->
            case code:lib_dir(list_to_atom(A)) of
                D when is_list(D) ->
                    case lists:member(filename:basename(D), [A, A ++ "-" ++ V]) of
                        true -> D;
                        false -> Dir0
                    end;
                _ -> Dir0
            end
    end,
    Ebin = filename:absname(filename:join(Dir, "ebin")),
    case file:consult(filename:join(Ebin, A ++ ".app")) of
        {ok, [{application, _, Props}]} ->
            Ms = proplists:get_value(modules, Props, []),
            Probs = lists:filtermap(fun(M) -> CheckMod(M, Ebin) end, Ms),
            {A, V, Dir, length(Ms), length(Probs), lists:sublist(Probs, 50)};
        Bad -> {A, V, Dir, 0, -1, Bad}
    end
end,
{Mode, lists:map(CheckApp, Apps)}.
"""

TREE = "supervision tree"      # NodeCode.processes: a child a cold boot would not give
OLD_CODE = "old code"          # NodeCode.processes: a process still running old code
DIFFERS = "differs"          # loaded, with other code than the release's beam
NOT_LOADED = "not_loaded"    # embedded mode, not loaded
WOULD_LOAD = "would_load"    # interactive mode, not loaded, the path finds another beam first
NO_BEAM = "no_beam"          # the .app lists it, its beam cannot be read
NO_APP = "no_app"            # the application's .app cannot be read


@dataclass(frozen=True)
class ModuleProblem:
    app: str
    vsn: str
    module: str
    kind: str      # one of the constants above
    where: str     # loaded from / would load from / why the file cannot be read
    lib_dir: str   # the release's lib/APP-VSN on the node


@dataclass(frozen=True)
class AppCode:
    app: str
    vsn: str
    lib_dir: str
    modules: int
    problem_count: int
    problems: tuple[ModuleProblem, ...]


@dataclass(frozen=True)
class CodeReport:
    mode: str              # "embedded" or "interactive"
    apps: tuple[AppCode, ...]

    @property
    def modules(self) -> int:
        return sum(a.modules for a in self.apps)

    @property
    def problems(self) -> tuple[ModuleProblem, ...]:
        return tuple(p for a in self.apps for p in a.problems)

    @property
    def problem_count(self) -> int:
        return sum(a.problem_count for a in self.apps)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


class UnexpectedCheckReply(NodeFault, ValueError):
    """The node's answer to the code check is not the shape the check builds."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Atom):
        return value.name
    if isinstance(value, list) and all(isinstance(c, int) for c in value):
        return "".join(map(chr, value))
    return term_text(value)


def parse_report(reply: Any) -> CodeReport:
    """The check's value as a :class:`CodeReport`."""
    if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], Atom)
            and isinstance(reply[1], list)):
        raise UnexpectedCheckReply(f"the code check returned {term_text(reply)}")
    apps = []
    for entry in reply[1]:
        if not (isinstance(entry, tuple) and len(entry) == 6 and isinstance(entry[3], int)
                and isinstance(entry[4], int)):
            raise UnexpectedCheckReply(f"the code check returned the entry {term_text(entry)}")
        app, vsn, lib_dir = _text(entry[0]), _text(entry[1]), _text(entry[2])
        if entry[4] < 0:  # the .app could not be read: the whole application is missing
            problem = ModuleProblem(app, vsn, "", NO_APP, term_text(entry[5]), lib_dir)
            apps.append(AppCode(app, vsn, lib_dir, 0, 1, (problem,)))
            continue
        problems = []
        for item in entry[5] if isinstance(entry[5], list) else []:
            if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], Atom):
                problems.append(ModuleProblem(app, vsn, item[0].name, _text(item[1]),
                                              _text(item[2]), lib_dir))
        apps.append(AppCode(app, vsn, lib_dir, entry[3], entry[4], tuple(problems)))
    return CodeReport(reply[0].name, tuple(apps))


def split_lib(lib: str) -> tuple[str, str]:
    """("counter", "0.0.2") of "counter-0.0.2" (application names have no '-'; versions may)."""
    name, _, vsn = lib.partition("-")
    return name, vsn


async def check_code(node: Caller, apps: Iterable[tuple[str, str]], *,
                     timeout: float) -> CodeReport:
    """Run the check on the node for ``apps`` [(name, vsn)] of a release."""
    scanned = await node.call("erl_scan", "string", [CHECK_EXPR], timeout=timeout)
    if not (isinstance(scanned, tuple) and scanned[0] == Atom("ok")):
        raise UnexpectedCheckReply(f"the node could not scan the code check: {term_text(scanned)}")
    parsed = await node.call("erl_parse", "parse_exprs", [scanned[1]], timeout=timeout)
    if not (isinstance(parsed, tuple) and parsed[0] == Atom("ok")):
        raise UnexpectedCheckReply(f"the node could not parse the code check: {term_text(parsed)}")
    bindings = [(Atom("Apps"), [(name, vsn) for name, vsn in apps])]
    try:
        value = await node.call("erl_eval", "exprs", [parsed[1], bindings], timeout=timeout)
    except BadRpc as exc:
        raise UnexpectedCheckReply(f"the code check crashed on the node: "
                                   f"{term_text(exc.reason)}") from None
    if not (isinstance(value, tuple) and len(value) == 3 and value[0] == Atom("value")):
        raise UnexpectedCheckReply(f"the code check returned {term_text(value)}")
    return parse_report(value[1])


# --- what the appups say --------------------------------------------------------------------

ALL = frozenset({"*"})  # the instructions restart or reload the whole application


def _vsn_matches(pattern: Any, vsn: str) -> bool:
    """An appup's version: a string, or a binary regular expression (the whole must match)."""
    if isinstance(pattern, str):
        return pattern == vsn
    if isinstance(pattern, bytes):
        try:
            return re.fullmatch(pattern.decode("utf-8", "replace"), vsn) is not None
        except re.error:
            return False
    return False


def _named(instructions: Any, app: str) -> set[str]:
    named: set[str] = set()
    for ins in instructions if isinstance(instructions, list) else []:
        if not isinstance(ins, tuple) or not ins or not isinstance(ins[0], Atom):
            if isinstance(ins, Atom) and ins.name in ("restart_new_emulator", "restart_emulator"):
                named |= ALL
            continue
        verb = ins[0].name
        if verb in ("update", "load_module", "add_module", "delete_module") and len(ins) > 1 \
                and isinstance(ins[1], Atom):
            named.add(ins[1].name)
        elif verb == "restart_application" and len(ins) > 1 and ins[1] == Atom(app):
            named |= ALL
        elif verb == "load_object_code" and len(ins) > 1 and isinstance(ins[1], tuple) \
                and len(ins[1]) == 3 and isinstance(ins[1][2], list):
            named |= {m.name for m in ins[1][2] if isinstance(m, Atom)}
        elif verb == "load" and len(ins) > 1 and isinstance(ins[1], tuple) and ins[1] \
                and isinstance(ins[1][0], Atom):
            named.add(ins[1][0].name)
    return named


def appup_modules(appup: Any, app: str, vsn: str, *, up_from: str = "",
                  down_to: str = "") -> frozenset[str] | None:
    """The modules the appup's instructions name going up from ``up_from`` or down to
    ``down_to`` (:data:`ALL` when they restart the whole application); None when the appup
    has no entry for that version. ``appup`` is file:consult's list of terms."""
    if not (isinstance(appup, list) and len(appup) == 1 and isinstance(appup[0], tuple)
            and len(appup[0]) == 3 and _vsn_matches(appup[0][0], vsn)):
        return None
    _, ups, downs = appup[0]
    other, entries = (up_from, ups) if up_from else (down_to, downs)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, tuple) and len(entry) == 2 and _vsn_matches(entry[0], other):
            return frozenset(_named(entry[1], app))
    return None


@dataclass(frozen=True)
class AppupView:
    """What the appup between two versions of one application says (``named`` None: it has no
    entry for the way between them)."""

    file: str
    from_vsn: str
    named: frozenset[str] | None


def problem_text(p: ModuleProblem, appup: AppupView | None) -> str:
    """One mismatch in words: what runs, and what the appup lacks when that is the reason."""
    beam = os.path.join(p.lib_dir, "ebin", f"{p.module}.beam")
    forgot = appup is not None and (appup.named is None
                                    or (p.module not in appup.named and appup.named != ALL))
    if p.kind == NO_APP:
        return (f"{p.app} {p.vsn}: cannot read {os.path.join(p.lib_dir, 'ebin', p.app + '.app')} "
                f"({p.where}); the release's application is not where release_handler put it")
    if p.kind == DIFFERS:
        if forgot:
            return (f"{p.module} changed but the appup has no instruction for it "
                    f"(the node still runs {p.where})")
        return f"{p.module} runs other code than {beam} (loaded from {p.where})"
    if p.kind == NOT_LOADED:
        if forgot:
            return (f"{p.module} is not loaded (embedded mode): the appup lacks "
                    f"{{add_module, {p.module}}}")
        return f"{p.module} is not loaded (embedded mode): calling it fails with undef"
    if p.kind == WOULD_LOAD:
        where = (f"would load from {p.where}" if p.where != "none"
                 else "is in no directory of the code path")
        return f"{p.module} is not loaded and {where}, not from {os.path.dirname(beam)}"
    return f"{p.module} is listed in {p.app}.app but {beam} cannot be read ({p.where})"


async def read_appups(node: Caller, report: CodeReport, from_apps: Sequence[tuple[str, str]],
                      *, timeout: float) -> dict[str, AppupView]:
    """For each application with problems whose version differs in the release the node came
    from: the appup that went between the two (the target's going up, else the from-release's
    going down)."""
    before = dict(from_apps)
    views: dict[str, AppupView] = {}
    for app in report.apps:
        old = before.get(app.app)
        if not app.problems or not old or old == app.vsn:
            continue
        target_file = os.path.join(app.lib_dir, "ebin", f"{app.app}.appup")
        from_file = os.path.join(os.path.dirname(app.lib_dir), f"{app.app}-{old}", "ebin",
                                 f"{app.app}.appup")
        named = appup_modules(await _consult(node, target_file, timeout), app.app, app.vsn,
                              up_from=old)
        file = target_file
        if named is None:
            down = appup_modules(await _consult(node, from_file, timeout), app.app, old,
                                 down_to=app.vsn)
            if down is not None:
                named, file = down, from_file
        views[app.app] = AppupView(file, old, named)
    return views


async def _consult(node: Caller, path: str, timeout: float) -> Any:
    res = await node.call("file", "consult", [path], timeout=timeout)
    return res[1] if isinstance(res, tuple) and len(res) == 2 and res[0] == Atom("ok") else None


def mismatch_text(report: CodeReport, appups: dict[str, AppupView], *, limit: int = 10) -> str:
    """The mismatches in words, the first ``limit`` of them, with what to do."""
    texts = [problem_text(p, appups.get(p.app)) for p in report.problems]
    more = report.problem_count - min(limit, len(texts))
    text = "; ".join(texts[:limit]) + (f" (and {more} more)" if more > 0 else "")
    without_entry = sorted({f"{v.file} has no entry for {v.from_vsn}" for v in appups.values()
                            if v.named is None})
    if without_entry:
        text += "; " + "; ".join(without_entry)
    return text


@dataclass(frozen=True)
class NodeCode:
    """``relctl verify``'s answer: the release the node runs and how its code matches."""

    release: str
    version: str
    report: CodeReport
    details: tuple[str, ...]   # problem_text of each of report.problems, in order
    # What a cold boot would not give besides the code (proccheck.py): (what, module,
    # problem, detail) of each child of the supervision tree and process on old code.
    processes: tuple[tuple[str, str, str, str], ...] = ()


async def verify_running(node: Caller, *, timeout: float) -> NodeCode:
    """The code check of the release the node runs (read-only). When it is current but not
    yet permanent, the permanent one is where it came from, and its appups explain."""
    try:
        releases = parse_which_releases(await node.call("release_handler", "which_releases", [],
                                                        timeout=timeout))
    except BadRpc as exc:
        raise NodeFault(f"{node.name}: release_handler:which_releases failed "
                        f"({term_text(exc.reason)}); is sasl running on the node?") from None
    running = next((r for r in releases if r.running), None)
    if running is None:
        raise NodeFault(f"{node.name} runs no release known to release_handler "
                        "(which_releases lists none current or permanent): nothing to verify")
    report = await check_code(node, map(split_lib, running.applications), timeout=timeout)
    appups: dict[str, AppupView] = {}
    if not report.ok:
        prior = next((r for r in releases if r.status == "permanent" and not r.running), None)
        appups = await read_appups(node, report,
                                   [split_lib(a) for a in prior.applications] if prior else [],
                                   timeout=timeout)
    try:
        tree = await tree_problems(node, [split_lib(a)[0] for a in running.applications],
                                   timeout=timeout)
        old = await old_code_processes(node, timeout=timeout)
        funs = await stale_funs(node, [split_lib(a)[0] for a in running.applications],
                                timeout=timeout)
    except CheckFailed as exc:
        raise NodeFault(f"{node.name}: {exc}") from None
    processes = (*((TREE, ", ".join(t.modules), t.kind, t.text()) for t in tree),
                 *((OLD_CODE, o.module, "old_code",
                    f"{o.text()}: make_permanent's or the next code change's purge kills it")
                   for o in old),
                 *((OLD_CODE, f.module, "old_fun",
                    f"{f.fun_text()}: calling it fails with badfun once that code is purged")
                   for f in funs))
    return NodeCode(running.name, running.version, report,
                    tuple(problem_text(p, appups.get(p.app)) for p in report.problems),
                    processes)
