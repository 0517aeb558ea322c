"""Whether a node's processes are what a cold boot of its release gives (DESIGN.md section 4,
step 6, and issue 21): no process still runs old code, and the supervision tree matches the
child specs its supervisors hold.

**Old code.** A relup loads new code; the old code stays until ``make_permanent`` purges it
(``brutal_purge``, the default, kills every process still running it; ``soft_purge`` leaves it
running). A process looping in a module that was loaded with ``load_module`` (a special process
the appup did not ``update``) is such a process: it would be killed silently, and its supervisor
would restart it empty. So before make_permanent the agent asks, for every module that has old
code, ``erlang:check_process_code/2`` of every process, and names the processes found (pid,
registered name, initial call). A process caught in the middle of a call into old code leaves
it within moments: the check is repeated a few times before anything is reported. What it
cannot see: a fun of an old module kept in a process's state (OTP 25+ no longer counts funs in
check_process_code), which breaks with ``badfun`` on its next use, not at the purge. For those,
the states of the supervised processes (sys:get_state) are searched: before the install for
funs of the modules the relup replaces (a holder whose code the relup does not change is
refused), and at verify for funs made by replaced code.

**Supervision tree.** ``{update, Sup, supervisor}`` only replaces the child specs a supervisor
holds. Walking every application's tree (``application_master:get_child/1``,
``supervisor:which_children/1`` and ``supervisor:get_childspec/2``): a permanent child with a
spec and no process was never started (an added child the appup did not ``restart_child``), and
a running child whose modules are neither loaded nor on the code path was removed from the
release while it kept running (the appup did not ``terminate_child`` + ``delete_child`` it).
What it cannot see: a child whose spec the new supervisor code drops but whose module stays in
the release (the supervisor keeps the old spec; only the supervisor's ``init/1`` knows, and
calling it on a live node could have side effects).

Both checks are one evaluation each on the node (erl_scan, erl_parse, erl_eval; no module of
ours is loaded there).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge import Atom, BadRpc, Pid

from .values import FAILED, FAILED_UNCHANGED, Caller, Failure, term_text

DOCS = "docs/preparing-releases.md"

# Bound: Apps, the names of the release's applications (atoms). Returns
# [{not_started | module_gone, SupName, ChildId, Modules}], at most 50.
TREE_EXPR = r"""
Name = fun(P) -> case process_info(P, registered_name) of
                     {registered_name, N} -> N; _ -> P end end,
Gone = fun(dynamic) -> [];
          (Ms) when is_list(Ms) ->
              [M || M <- Ms, is_atom(M), code:is_loaded(M) =:= false,
                    code:which(M) =:= non_existing];
          (_) -> [] end,
Walk = fun W(Sup, Acc) ->
    case catch supervisor:which_children(Sup) of
        Children when is_list(Children) ->
            lists:foldl(fun({Id, Child, Type, Mods}, A) ->
                Restart = case catch supervisor:get_childspec(Sup, Id) of
                              {ok, #{restart := R}} -> R;
                              _ -> dynamic end,
                A1 = case Child of
                         undefined when Restart =:= permanent ->
                             [{not_started, Name(Sup), Id, Mods} | A];
                         P when is_pid(P) ->
                             case Gone(Mods) of
                                 [] -> A;
                                 Ms -> [{module_gone, Name(Sup), Id, Ms} | A] end;
                         _ -> A end,
                case Type of
                    supervisor when is_pid(Child) -> W(Child, A1);
                    _ -> A1 end end, Acc, Children);
        _ -> Acc end end,
Tops = [Top || App <- Apps,
               Master <- [application_controller:get_master(App)], is_pid(Master),
               {Top, _} <- [catch application_master:get_child(Master)], is_pid(Top)],
lists:sublist(lists:reverse(lists:foldl(Walk, [], Tops)), 50).
"""

# Me, and how a process is named in a report: Init(P) its initial call ($initial_call of a
# proc_lib process), Name(P) its registered name or []. Shared by the expressions below.
WHO = r"""
Me = self(),
Init = fun(P) ->
    case process_info(P, dictionary) of
        {dictionary, D} ->
            case lists:keyfind('$initial_call', 1, D) of
                {_, IC} -> IC;
                false -> case process_info(P, initial_call) of
                             {initial_call, IC} -> IC; _ -> undefined end end;
        _ -> undefined end end,
Name = fun(P) -> case process_info(P, registered_name) of
                     {registered_name, N} -> N; _ -> [] end end,
"""

# Returns [{Pid, Module, RegisteredName | [], InitialCall}] of the processes running (or
# referring to) old code, at most 50.
OLD_CODE_EXPR = r"""
Old = [M || {M, _} <- code:all_loaded(), erlang:check_old_code(M)],
""" + WHO + r"""
Found = [{P, M} || M <- Old, P <- processes(), P =/= Me,
                   (catch erlang:check_process_code(P, M)) =:= true],
[{P, M, Name(P), Init(P)} || {P, M} <- lists:sublist(Found, 50)].
"""

# Bound: Apps. The processes of the applications' supervision trees: Supervised.
SUPERVISED = r"""
Kids = fun K(Sup, Acc) ->
    case catch supervisor:which_children(Sup) of
        Cs when is_list(Cs) ->
            lists:foldl(fun({_, P, supervisor, _}, A) when is_pid(P) -> K(P, [P | A]);
                           ({_, P, _, _}, A) when is_pid(P) -> [P | A];
                           (_, A) -> A end, Acc, Cs);
        _ -> Acc end end,
Tops = [Top || App <- Apps,
               Master <- [application_controller:get_master(App)], is_pid(Master),
               {Top, _} <- [catch application_master:get_child(Master)], is_pid(Top)],
Supervised = lists:usort(lists:foldl(Kids, Tops, Tops)),
"""

# Bound: Procs, Suspects (the modules Stale can be true of, or all), MaxCopy (bytes) and
# Stale(M, U): whether a local fun of module M whose new_uniq (the md5 of the module that made
# it) is U is, or will be, made by replaced code. Binds Held: [{Pid, Module, RegisteredName |
# [], InitialCall}] of the processes whose state (sys:get_state, 1 s each, 5 s in all) holds
# such a fun.
#
# Walking a state in erl_eval costs about 15 us a term (14 ms for a small release's 27
# supervised processes, issue 24). A fun's external format names its module as an atom, so a
# state whose term_to_binary (atoms in UTF-8: minor_version 2) holds none of the suspects'
# atoms cannot hold such a fun and is not walked; binary:match does that test in C. A state
# too large to copy again (over MaxCopy bytes: STATE_COPY_LIMIT) is walked as before.
STATE_COPY_LIMIT = "MaxCopy = " + str(16 * 1024 * 1024) + ",\n"

HELD_FUNS = r"""
AtomExt = fun(AtomM) -> AtomB = atom_to_binary(AtomM, utf8),
                        case byte_size(AtomB) of
                            Small when Small < 256 -> <<119, Small, AtomB/binary>>;
                            Large -> <<118, Large:16, AtomB/binary>> end end,
Mentions = case Suspects of
    all -> fun(_) -> true end;
    [] -> fun(_) -> false end;
    SuspectList ->
        Pattern = binary:compile_pattern([AtomExt(Sm) || Sm <- SuspectList]),
        fun(Term) -> erlang:external_size(Term) > MaxCopy orelse
                     binary:match(term_to_binary(Term, [{minor_version, 2}]), Pattern)
                         =/= nomatch end end,
Walk = fun W(_, {Found, 0}) -> {Found, 0};
           W(F, {Found, N}) when is_function(F) ->
               Hit = case erlang:fun_info(F, type) of
                   {type, local} ->
                       {module, M} = erlang:fun_info(F, module),
                       {new_uniq, U} = erlang:fun_info(F, new_uniq),
                       case Stale(M, U) of true -> [M]; false -> [] end;
                   _ -> [] end,
               {Hit ++ Found, N - 1};
           W(T, {Found, N}) when is_tuple(T) -> W(tuple_to_list(T), {Found, N - 1});
           W(T, {Found, N}) when is_map(T) -> W(maps:to_list(T), {Found, N - 1});
           W([H | T], Acc) -> W(T, W(H, Acc));
           W(_, {Found, N}) -> {Found, N - 1} end,
""" + WHO + r"""
Deadline = erlang:monotonic_time(millisecond) + 5000,
Held = lists:append(
    [[{P, M, Name(P), Init(P)} || M <- lists:usort(Ms)]
     || P <- Procs, erlang:monotonic_time(millisecond) < Deadline,
        {ok, State} <- [catch {ok, sys:get_state(P, 1000)}], Mentions(State),
        {Ms, _} <- [Walk(State, {[], 100000})], Ms =/= []]),
"""

# Bound: Apps (as TREE_EXPR). Returns [{Pid, Module, RegisteredName | [], InitialCall}] of
# the processes of the applications' supervision trees whose state holds a fun of one of the
# applications' modules made by other code than the module's current code. OTP 25+'s
# check_process_code does not see funs, so release_handler purges that code at the end of the
# install when no process runs it: calling such a fun then fails with badfun. At most 50.
STALE_FUN_EXPR = r"""
Old = lists:append([Ms || App <- Apps, {ok, Ms} <- [application:get_key(App, modules)]]),
""" + SUPERVISED + r"""
%% sys:get_state moves a special process on old code to the current code (sys calls
%% Mod:system_continue): those are the old-code check's, and are left as they are.
OldCode = [M || {M, _} <- code:all_loaded(), erlang:check_old_code(M)],
Procs = [P || P <- Supervised,
              not lists:any(fun(M) -> (catch erlang:check_process_code(P, M)) =:= true end,
                            OldCode)],
Stale = fun(M, U) -> lists:member(M, Old) andalso erlang:module_loaded(M)
                     andalso (catch M:module_info(md5)) =/= U end,
%% Every module of the release's applications, OTP's among them: their names are in most
%% states (17 of a small release's 27 supervised processes), so the filter would cost more
%% than it saves (21.5 ms against 14.2 ms).
Suspects = all,
""" + STATE_COPY_LIMIT + HELD_FUNS + r"""
lists:sublist(Held, 50).
"""

# A call in progress into old code returns within moments; a loop in it does not.
OLD_CODE_TRIES = 3
OLD_CODE_PAUSE = 0.3


class CheckFailed(Exception):
    """The node could not evaluate a check (its answer is in the message)."""


@dataclass(frozen=True)
class TreeProblem:
    kind: str          # "not_started" or "module_gone"
    supervisor: str    # its registered name, or pid
    child: str         # the child's id, as Erlang writes it
    modules: tuple[str, ...]

    def text(self) -> str:
        if self.kind == "not_started":
            return (f"{self.supervisor}: permanent child {self.child} has a spec and no process "
                    "(an added child never started: the appup needs {apply, {supervisor, "
                    f"restart_child, [{self.supervisor}, {self.child}]}}}} after the "
                    "supervisor's update)")
        return (f"{self.supervisor}: child {self.child} runs, but its module "
                f"{', '.join(self.modules)} is gone from the release (a removed child still "
                "running: the appup needs {apply, {supervisor, terminate_child, "
                f"[{self.supervisor}, {self.child}]}}}} and delete_child before the "
                "supervisor's update)")


@dataclass(frozen=True)
class OldCodeProcess:
    pid: Pid
    module: str
    name: str          # registered name, "" if none
    initial_call: str  # M:F/A

    def text(self) -> str:
        return f"{self.who()} runs old {self.module}"

    def fun_text(self) -> str:
        return f"{self.who()} holds a fun made by replaced code of {self.module} in its state"

    def who(self) -> str:
        return (f"<0.{self.pid.id}.{self.pid.serial}>" + (f" ({self.name})" if self.name else "")
                + f" started by {self.initial_call}")


# The checks' expressions as the node parsed them, by node connection: scanning and parsing
# them again at every verify cost the node more than evaluating them (2 to 10 ms each). The
# forms are plain terms; a node restarted on another OTP may answer them differently, so an
# evaluation of remembered forms that fails is tried once more from the text.
_PARSED: weakref.WeakKeyDictionary[Caller, dict[str, Any]] = weakref.WeakKeyDictionary()

# The checks walk process states and code on the user's node while its application serves:
# at low priority they yield to the application's processes (low is interleaved with normal,
# never starved). In bench/vs_relx.py the app's p99 during relctl's upgrade went from 3.5-4.2x
# idle to 1.2-2.2x (0.09-0.10 ms to 0.04-0.06 ms; relx's own upgrade: 0.09-0.12 ms), with the
# check and verify steps as long as before. Only the call's own process takes it.
YIELDING = "process_flag(priority, low), "


async def evaluate(node: Caller, expr: str, bindings: Sequence[tuple[Atom, Any]], *,
                   timeout: float) -> Any:
    """The value of Erlang ``expr`` evaluated on the node with ``bindings``."""
    known = _PARSED.setdefault(node, {})
    forms = known.pop(expr, None)
    try:
        if forms is not None:
            try:
                value = await node.call("erl_eval", "exprs", [forms, list(bindings)],
                                        timeout=timeout)
            except BadRpc:
                forms = None
            else:
                if _evaluated(value):
                    known[expr] = forms
                    return value[1]
                forms = None
        scanned = await node.call("erl_scan", "string", [YIELDING + expr], timeout=timeout)
        if not (isinstance(scanned, tuple) and scanned[0] == Atom("ok")):
            raise CheckFailed(f"the node could not scan the check: {term_text(scanned)}")
        parsed = await node.call("erl_parse", "parse_exprs", [scanned[1]], timeout=timeout)
        if not (isinstance(parsed, tuple) and parsed[0] == Atom("ok")):
            raise CheckFailed(f"the node could not parse the check: {term_text(parsed)}")
        value = await node.call("erl_eval", "exprs", [parsed[1], list(bindings)],
                                timeout=timeout)
    except BadRpc as exc:
        raise CheckFailed(f"the check crashed on the node: {term_text(exc.reason)}") from None
    if not _evaluated(value):
        raise CheckFailed(f"the check returned {term_text(value)}")
    known[expr] = parsed[1]
    return value[1]


def _evaluated(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and value[0] == Atom("value")


def _name(value: Any) -> str:
    return value.name if isinstance(value, Atom) else term_text(value)


async def tree_problems(node: Caller, apps: Iterable[str], *,
                        timeout: float) -> list[TreeProblem]:
    """The children of the applications' supervision trees that a cold boot would not give."""
    found = await evaluate(node, TREE_EXPR, [(Atom("Apps"), [Atom(a) for a in apps])],
                           timeout=timeout)
    problems = []
    for item in found if isinstance(found, list) else []:
        if isinstance(item, tuple) and len(item) == 4 and isinstance(item[0], Atom):
            mods = item[3] if isinstance(item[3], list) else []
            problems.append(TreeProblem(item[0].name, _name(item[1]), _name(item[2]),
                                        tuple(_name(m) for m in mods)))
    return problems


def _mfa(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], int):
        return f"{_name(value[0])}:{_name(value[1])}/{value[2]}"
    return term_text(value)


async def old_code_processes(node: Caller, *, timeout: float,
                             tries: int = OLD_CODE_TRIES) -> list[OldCodeProcess]:
    """The processes that still run old code, found on each of ``tries`` looks a moment apart
    (a process only passing through old code is not one of them)."""
    return await _stable(node, OLD_CODE_EXPR, [], timeout=timeout, tries=tries)


async def stale_funs(node: Caller, apps: Iterable[str], *,
                     timeout: float) -> list[OldCodeProcess]:
    """The supervised processes whose state holds a fun made by old code (STALE_FUN_EXPR)."""
    return await _stable(node, STALE_FUN_EXPR, [(Atom("Apps"), [Atom(a) for a in apps])],
                         timeout=max(timeout, 10.0), tries=1)


async def alive(node: Caller, pids: Iterable[Pid], *, timeout: float) -> set[Pid]:
    """Which of ``pids`` (of the node) are alive."""
    out = set()
    for pid in pids:
        # The bridge decodes the atoms true and false as Python's booleans.
        if await node.call("erlang", "is_process_alive", [pid], timeout=timeout) is True:
            out.add(pid)
    return out


async def verify_processes(node: Caller, apps: Sequence[str], *, allow_purge_kill: bool,
                           timeout: float) -> str:
    """The tree and old-code checks of verify: "" when both pass (or the old code is allowed
    to be killed: then it says so), else a Failure naming the children and processes."""
    try:
        tree = await tree_problems(node, apps, timeout=timeout)
        old = await old_code_processes(node, timeout=timeout)
        funs = await stale_funs(node, apps, timeout=timeout)
    except CheckFailed as exc:
        raise Failure(FAILED, f"the process check could not run: {exc}") from None
    if tree:
        raise Failure(FAILED, "the supervision tree is not what a boot of the release gives: "
                              + "; ".join(p.text() for p in tree)
                              + f". See {DOCS} (relctl make-relup writes these calls)")
    if funs:
        raise Failure(FAILED, "processes keep funs made by replaced code in their state, "
                              "which fail with badfun once that code is purged (when no "
                              "process runs it, at the end of the install): "
                              + "; ".join(p.fun_text() for p in funs)
                              + ". Have their code_change replace those funs")
    if not old:
        return "; no process runs old code"
    listed = "; ".join(p.text() for p in old)
    if allow_purge_kill:
        return (f"; {len(old)} processes run old code, which make_permanent's purge kills "
                f"(--allow-purge-kill): {listed}")
    raise Failure(FAILED, f"processes still run old code, which make_permanent's purge would "
                          f"kill (their supervisors would restart them empty): {listed}. Have "
                          "the appup update these modules ({update, M, {advanced, []}} for a "
                          "special process) rather than load_module them, or pass "
                          "--allow-purge-kill to have them killed and reported")


async def killed_text(node: Caller, doomed: Sequence[OldCodeProcess], *,
                      timeout: float) -> str:
    """"; killed by the purge: ..." for those of ``doomed`` that make_permanent killed."""
    if not doomed:
        return ""
    try:
        living = await alive(node, (p.pid for p in doomed), timeout=timeout)
    except BadRpc:
        return "; could not tell which processes the purge killed"
    killed = [p for p in doomed if p.pid not in living]
    if not killed:
        return ""
    return "; killed by the purge: " + "; ".join(
        f"<0.{p.pid.id}.{p.pid.serial}>" + (f" ({p.name})" if p.name else "")
        + f" started by {p.initial_call}" for p in killed)


# Bound: File (the relup on the node), From (the running version). Binds Script, the relup's
# script from From ([] when it has no such entry), Loaded, the modules it loads, and Changed,
# those it suspends or changes the code of (their processes' state goes through code_change).
SCRIPT = r"""
Script = case file:consult(File) of
    {ok, [{_, Ups, _}]} when is_list(Ups) ->
        case [S || {V, _, S} <- Ups, V =:= From] of [S | _] when is_list(S) -> S; _ -> [] end;
    _ -> [] end,
Loaded = [M || {load, {M, _, _}} <- Script],
Changed = lists:append([[case X of {M, _} -> M; M -> M end || X <- Ms]
                        || I <- Script, is_tuple(I), tuple_size(I) >= 2,
                           {K, Ms} <- [{element(1, I), element(tuple_size(I), I)}],
                           K =:= suspend orelse K =:= code_change, is_list(Ms)]),
"""

# Bound: File (the relup on the node), From (the running version). Returns
# [{Pid, Module, RegisteredName | [], InitialCall}] of the processes running code of a module
# that the relup's script from From loads without a code change (load_module, add_module of a
# module already loaded): after the load they run old code. At most 50; [] when the relup has
# no such entry.
STUCK_EXPR = SCRIPT + r"""
Plain = [M || M <- lists:usort(Loaded), not lists:member(M, Changed),
              erlang:module_loaded(M)],
""" + WHO + r"""
In = fun(P, M) -> case process_info(P, current_stacktrace) of
                      {current_stacktrace, St} -> lists:keymember(M, 1, St);
                      _ -> false end end,
Found = [{P, M} || M <- Plain, P <- processes(), P =/= Me, In(P, M)],
[{P, M, Name(P), Init(P)} || {P, M} <- lists:sublist(Found, 50)].
"""


async def _stable(node: Caller, expr: str, bindings: Sequence[tuple[Atom, Any]], *,
                  timeout: float, tries: int) -> list[OldCodeProcess]:
    """The processes ``expr`` finds on each of ``tries`` looks a moment apart."""
    seen: dict[Pid, OldCodeProcess] | None = None
    for attempt in range(tries):
        if attempt:
            await asyncio.sleep(OLD_CODE_PAUSE)
        found = await evaluate(node, expr, bindings, timeout=timeout)
        now = {}
        for item in found if isinstance(found, list) else []:
            if isinstance(item, tuple) and len(item) == 4 and isinstance(item[0], Pid):
                name = "" if item[2] == [] else _name(item[2])
                now[item[0]] = OldCodeProcess(item[0], _name(item[1]), name, _mfa(item[3]))
        seen = now if seen is None else {p: v for p, v in now.items() if p in seen}
        if not seen:
            return []
    return list(seen.values()) if seen else []


async def check_loaded_under_processes(node: Caller, relup: str, from_version: str, *,
                                       allow_purge_kill: bool, timeout: float) -> str:
    """Before the install: a process running in a module the relup only reloads (no
    suspend, no code change) stays on the old code, which make_permanent's purge kills.
    Refused (nothing changed yet) unless ``allow_purge_kill``; "" when there is none."""
    try:
        stuck = await _stable(node, STUCK_EXPR, [(Atom("File"), relup),
                                                 (Atom("From"), from_version)],
                              timeout=timeout, tries=OLD_CODE_TRIES)
    except CheckFailed as exc:
        raise Failure(FAILED_UNCHANGED, f"the process check could not run: {exc}") from None
    if not stuck:
        return ""
    mods = sorted({p.module for p in stuck})
    listed = "; ".join(p.text().replace(" runs old ", " runs in ") for p in stuck)
    if allow_purge_kill:
        return (f"; the relup reloads {', '.join(mods)} without a code change under running "
                f"processes, which make_permanent's purge will kill (--allow-purge-kill): "
                f"{listed}")
    raise Failure(FAILED_UNCHANGED,
                  f"the relup reloads {', '.join(mods)} without a code change (load_module) "
                  f"while processes run in it, which would stay on the old code and be killed "
                  f"by make_permanent's purge (their supervisors restart them empty): "
                  f"{listed}. Have the appup update "
                  + ", ".join(f"{m} ({{update, {m}, {{advanced, []}}}})" for m in mods)
                  + ", or pass --allow-purge-kill to have them killed and reported")


# Bound: File, From (as STUCK_EXPR) and Apps (the running release's applications). Returns
# [{Pid, Module, RegisteredName | [], InitialCall, HolderModule, Changes}] of the processes of
# the applications' supervision trees whose state holds a fun of a module the relup's script
# loads with other code (the md5 of its new beam, in ROOT/lib/APP-VSN/ebin as
# load_object_code names it, is not the fun's new_uniq): after the install that fun is made by
# replaced code, and fails with badfun once that code is purged. Changes: whether the script
# suspends or changes the code of the holder's own module (its code_change may rebuild the
# fun). [] when the script restarts the emulator (every process starts afresh). At most 50.
HELD_FUN_EXPR = SCRIPT + r"""
Restarts = lists:any(fun(I) -> I =:= restart_new_emulator orelse I =:= restart_emulator end,
                     Script),
Root = code:root_dir(),
NewMd5 = maps:from_list(
    [{M, Md5} || {load_object_code, {App, Vsn, Ms}} <- Script, M <- Ms, lists:member(M, Loaded),
                 {ok, {_, Md5}} <- [beam_lib:md5(filename:join(
                     [Root, "lib", atom_to_list(App) ++ "-" ++ Vsn, "ebin",
                      atom_to_list(M) ++ ".beam"]))]]),
""" + SUPERVISED + r"""
Procs = case Restarts orelse map_size(NewMd5) =:= 0 of true -> []; false -> Supervised end,
Stale = fun(M, U) -> case maps:find(M, NewMd5) of {ok, New} -> New =/= U; error -> false end end,
Suspects = maps:keys(NewMd5),
""" + STATE_COPY_LIMIT + HELD_FUNS + r"""
Mod = fun({M, _, _}) when is_atom(M) -> M; (_) -> undefined end,
[{P, M, N, I, Mod(I), lists:member(Mod(I), Changed)} || {P, M, N, I} <- lists:sublist(Held, 50)].
"""


@dataclass(frozen=True)
class FunHolder:
    """A process whose state holds a fun of ``process.module``, which the relup replaces."""

    process: OldCodeProcess
    holder_module: str   # the module of its initial call ("" if it has none)
    changes: bool        # the relup suspends it / changes the code of its module

    def text(self) -> str:
        return f"{self.process.who()} holds a fun of {self.process.module}"


async def check_held_funs(node: Caller, relup: str, from_version: str, apps: Iterable[str], *,
                          timeout: float) -> str:
    """Before the install: the funs the relup will leave made by replaced code in the state of
    supervised processes (check_process_code does not see them; after the install they fail
    with badfun once the old code is purged, and verify rolls the node back). A holder whose
    own module the relup does not change cannot get a new fun from it: refused (nothing
    changed yet). A holder whose code_change runs may rebuild the fun: named in the step's
    detail (verify checks it). "" when there is none."""
    try:
        found = await evaluate(node, HELD_FUN_EXPR, [
            (Atom("File"), relup), (Atom("From"), from_version),
            (Atom("Apps"), [Atom(a) for a in apps])], timeout=max(timeout, 10.0))
    except CheckFailed as exc:
        raise Failure(FAILED_UNCHANGED, f"the process check could not run: {exc}") from None
    holders = []
    for item in found if isinstance(found, list) else []:
        if isinstance(item, tuple) and len(item) == 6 and isinstance(item[0], Pid):
            name = "" if item[2] == [] else _name(item[2])
            holder = "" if item[4] == Atom("undefined") else _name(item[4])
            holders.append(FunHolder(OldCodeProcess(item[0], _name(item[1]), name,
                                                    _mfa(item[3])),
                                     holder, item[5] is True))
    stuck = [h for h in holders if not h.changes]
    if stuck:
        mods = sorted({h.holder_module for h in stuck if h.holder_module})
        how = ("Have the appup update " + ", ".join(
            f"{m} ({{update, {m}, {{advanced, []}}}})" for m in mods)
               + " with a code_change that rebuilds the funs" if mods else
               "Have the processes rebuild those funs in a code_change the appup runs")
        raise Failure(FAILED_UNCHANGED,
                      "processes keep in their state funs of modules the relup replaces, and "
                      "the relup does not change those processes' code: after the install the "
                      "funs are made by replaced code and fail with badfun once it is purged "
                      "(at the end of the install): "
                      + "; ".join(h.text() for h in stuck) + f". {how}")
    if not holders:
        return ""
    return ("; " + "; ".join(h.text() for h in holders) + ", which the relup replaces: their "
            "code_change must rebuild these funs (verify checks it)")
