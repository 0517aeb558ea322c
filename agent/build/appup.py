"""Appups from the beams: what `relctl make-relup` generates when an application ships none, and
what it checks a given appup against (`relctl make-appup` prints the generated ones).

The beams of an application's two versions are compared in the local ``erl`` (the client may not
read beams itself): ``beam_lib:md5/1`` (not the file bytes, which differ between identical builds
by debug info and compile times), the ``behaviour`` attribute, the ``code_change`` export and the
imported modules. From that diff:

- an added module: ``add_module``; a deleted one: ``delete_module``;
- a changed ``supervisor`` (or Elixir ``Supervisor``): ``{update, M, supervisor}``; since that
  only replaces the child specs the supervisor holds, the children its ``init/1`` adds, removes
  or starts differently get ``supervisor:restart_child`` / ``terminate_child`` +
  ``delete_child`` calls around it (the specs are read by evaluating ``init/1`` from the beam's
  debug_info, allowing only pure calls; where they are known only at run time, a warning says
  so and which appup to write by hand);
- a changed process behaviour (gen_server, gen_statem, gen_event, gen_fsm, Elixir's GenServer and
  GenStateMachine) exporting ``code_change``: ``{update, M, {advanced, []}}``; without it,
  ``{load_module, M}`` and a warning (``advanced`` would crash: its processes keep their state);
- a changed special process (exports ``system_code_change/4``): ``{update, M, {advanced, []}}``,
  never ``load_module`` (its loop would stay on the old code, which the next purge kills);
- any other changed module: ``{load_module, M}``, with a warning when it starts processes with
  ``proc_lib`` (the same fate);
- a changed module comes after the changed modules it calls, which it names as dependencies;
  the down instructions mirror the up ones (an added module is deleted going down).

``.app`` changes (applications added or removed, env) are left to systools and config_change.
A given appup is read by ``erl`` too (``file:consult``) and must have entries from the old
version (up and down) that name every changed, added and deleted module.

Standard library only; loaded by :mod:`agent.build.relup`, which the client imports only when a
build command runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .erl import ERL_TIMEOUT, BuildError, clean_env, erl_path

SUPERVISORS = frozenset({"supervisor", "Elixir.Supervisor"})
PROCESSES = frozenset({"gen_server", "gen_statem", "gen_event", "gen_fsm", "Elixir.GenServer",
                       "Elixir.GenStateMachine", "Elixir.GenEvent"})

class AppupError(BuildError):
    """The beams or an appup could not be read (a failure, not the user's input)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Child:
    """One child spec of a supervisor, as its init/1 gives it; terms as Erlang source."""

    id: str
    start: str  # the {M, F, A}
    restart: str = "permanent"
    type: str = "worker"
    modules: str = "[]"


@dataclass(frozen=True)
class SupTree:
    """What the beam of a supervisor says of the children its init/1 returns.

    ``children`` is None when they are known only at run time (``unknown`` says why);
    ``name`` is the Erlang source of the name it is started with (``supervisor:start_link``
    with ``{local, N}``, ``{global, N}`` or ``{via, M, N}``), "" when none is written there."""

    name: str
    children: tuple[Child, ...] | None
    unknown: str = ""
    dynamic: bool = False  # simple_one_for_one: its children are started at run time


@dataclass(frozen=True)
class Beam:
    """What the generator needs of one module's beam."""

    module: str
    md5: str
    behaviours: tuple[str, ...] = ()
    code_change: bool = False
    imports: frozenset[str] = frozenset()
    special: bool = False  # exports system_code_change/4: a sys special process
    sup: SupTree | None = None


@dataclass(frozen=True)
class Instruction:
    """One appup instruction: ``kind`` is add_module, delete_module, load_module, update, or
    apply (a call of ``supervisor:CHANGE(SUP_REF, CHILD)``)."""

    kind: str
    module: str
    change: str = ""  # update: "supervisor" or "advanced"; apply: the supervisor function
    deps: tuple[str, ...] = ()
    strict: bool = False  # update: load_module is not enough (a special process)
    sup_ref: str = ""  # apply: the supervisor's name, Erlang source
    child: str = ""  # apply: the child's id, Erlang source

    def term(self) -> str:
        if self.kind == "apply":
            return f"{{apply, {{supervisor, {self.change}, [{self.sup_ref}, {self.child}]}}}}"
        mod = atom(self.module)
        deps = "[" + ", ".join(atom(d) for d in self.deps) + "]"
        if self.kind == "update":
            change = "supervisor" if self.change == "supervisor" else "{advanced, []}"
            return f"{{update, {mod}, {change}" + (f", {deps}}}" if self.deps else "}")
        if self.kind == "load_module" and self.deps:
            return f"{{load_module, {mod}, {deps}}}"
        return f"{{{self.kind}, {mod}}}"


@dataclass(frozen=True)
class Appup:
    """A generated appup of ``app``, from ``old_vsn`` to ``new_vsn`` and back."""

    app: str
    old_vsn: str
    new_vsn: str
    up: tuple[Instruction, ...]
    down: tuple[Instruction, ...]
    warnings: tuple[str, ...] = ()

    def text(self) -> str:
        """The appup file, as `file:consult/1` reads it."""
        return appup_text([self])


def appup_text(appups: Sequence[Appup]) -> str:
    """One appup file of one application with an entry for each of ``appups`` (generated
    from several old versions to one new version), up and down."""
    first = appups[0]

    def block(instrs: Sequence[Instruction]) -> str:
        if not instrs:
            return "[]"
        return "[" + ",\n    ".join(i.term() for i in instrs) + "]"

    def entries(direction: str) -> str:
        return ",\n  ".join(f"{{{string(a.old_vsn)},\n   "
                             f"{block(a.up if direction == 'up' else a.down)}}}"
                             for a in appups)
    olds = ", ".join(a.old_vsn for a in appups)
    return (f"%% {first.app}.appup, generated by relctl make-appup from the beams of "
            f"{first.app} {olds} and {first.new_vsn}.\n"
            f"{{{string(first.new_vsn)},\n"
            f" [{entries('up')}],\n"
            f" [{entries('down')}]}}.\n")


@dataclass(frozen=True)
class Diff:
    """The beam diff of one application between two versions."""

    added: tuple[str, ...]
    deleted: tuple[str, ...]
    changed: tuple[str, ...]


@dataclass(frozen=True)
class Coverage:
    """What a given appup's entry for one direction names: modules by kind of instruction."""

    found: bool  # an entry for the old version exists
    versions: tuple[str, ...]  # the versions the appup names for that direction
    load: frozenset[str] = frozenset()  # load_module and update
    add: frozenset[str] = frozenset()
    delete: frozenset[str] = frozenset()
    everything: bool = False  # restart_new_emulator, restart_application, ...
    update: frozenset[str] = frozenset()  # update only
    apply: frozenset[str] = frozenset()  # "FUNCTION CHILD" of supervisor calls


@dataclass(frozen=True)
class GivenAppup:
    path: Path
    version: str  # the appup's own version
    up: Coverage
    down: Coverage


# --- Erlang terms ------------------------------------------------------------------------

_RESERVED = frozenset("after and andalso band begin bnot bor bsl bsr bxor case catch cond div "
                      "end fun if let maybe not of or orelse receive rem try when xor".split())


def atom(name: str) -> str:
    """``name`` as an Erlang atom in source (quoted when it must be)."""
    if re.fullmatch(r"[a-z][A-Za-z0-9_@]*", name) and name not in _RESERVED:
        return name
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- asking erl --------------------------------------------------------------------------

# Inputs come as hex-encoded lines in RELCTL_JOBS: "beams TAG DIR" and "appup TAG FILE VSN".
# Output lines are tab-separated, names hex-encoded, so nothing needs quoting either way.
_ANALYSE = r"""
Hex = fun(B) when is_binary(B) -> binary:encode_hex(B);
         (A) when is_atom(A) -> binary:encode_hex(atom_to_binary(A, utf8));
         (L) when is_list(L) -> binary:encode_hex(unicode:characters_to_binary(L)) end,
Unhex = fun(H) -> unicode:characters_to_list(binary:decode_hex(list_to_binary(H))) end,
Out = fun(Fields) -> io:put_chars([lists:join($\t, Fields), $\n]) end,
Chunk = fun(File, Name) ->
    case beam_lib:chunks(File, [Name], [allow_missing_chunks]) of
        {ok, {_, [{Name, L}]}} when is_list(L) -> L;
        _ -> [] end end,
Src = fun(T) -> Hex(io_lib:format("~tw", [T])) end,
Forms = fun(F, M) ->
    try
        {ok, {M, [{debug_info, {debug_info_v1, Backend, Data}}]}} =
            beam_lib:chunks(F, [debug_info]),
        {ok, Fs} = Backend:debug_info(erlang_v1, M, Data, []),
        {ok, erl_expand_records:module(Fs, [])}
    catch _:_ -> none end end,
SupName = fun(Fs) ->
    Walk = fun W({call, _, {remote, _, {atom, _, supervisor}, {atom, _, start_link}}, [N, _, _]},
                 Acc) -> [N | Acc];
               W(T, Acc) when is_tuple(T) -> W(tuple_to_list(T), Acc);
               W([H | T], Acc) -> W(T, W(H, Acc));
               W(_, Acc) -> Acc end,
    case lists:usort([try erl_parse:normalise(N) catch _:_ -> computed end
                      || N <- Walk(Fs, [])]) of
        [{local, Name}] when is_atom(Name) -> ["name", Src(Name)];
        [{global, _} = G] -> ["name", Src(G)];
        [{via, _, _} = V] -> ["name", Src(V)];
        [] -> ["noname", ""];
        _ -> ["names", ""] end end,
PureErlang = [setelement, make_tuple, list_to_tuple, tuple_to_list, atom_to_list,
              list_to_atom, integer_to_list, list_to_integer, atom_to_binary, binary_to_atom,
              list_to_binary, binary_to_list, integer_to_binary, max, min, append_element],
Pure = fun(erlang, F, A) ->
              erl_internal:arith_op(F, A) orelse erl_internal:bool_op(F, A)
                  orelse erl_internal:comp_op(F, A) orelse erl_internal:list_op(F, A)
                  orelse (erl_internal:guard_bif(F, A) andalso F =/= self andalso F =/= node)
                  orelse lists:member(F, PureErlang);
          (M, _, _) -> lists:member(M, [lists, maps, proplists, orddict, ordsets]) end,
Children = fun(Fs) ->
    Funs = maps:from_list([{{N, A}, Cs} || {function, _, N, A, Cs} <- Fs]),
    Remote = fun({M, F}, As) ->
        case Pure(M, F, length(As)) of
            true -> apply(M, F, As);
            false -> throw({impure, io_lib:format("~tw:~tw/~w", [M, F, length(As)])}) end end,
    Local = fun L(Name, As) ->
        case maps:find({Name, length(As)}, Funs) of
            {ok, Cs} ->
                {value, Fun, _} = erl_eval:expr({'fun', 0, {clauses, Cs}},
                                                erl_eval:new_bindings(),
                                                {value, L}, {value, Remote}),
                apply(Fun, As);
            error -> throw({impure, io_lib:format("~tw/~w", [Name, length(As)])}) end end,
    Eval = fun() ->
        case maps:find({init, 1}, Funs) of
            {ok, [{clause, _, [_], _, Body}]} ->
                {value, V, _} = erl_eval:exprs(Body, erl_eval:new_bindings(),
                                               {value, Local}, {value, Remote}),
                V;
            {ok, _} -> throw({clauses, ""});
            error -> throw({noinit, ""}) end end,
    {P, R} = spawn_monitor(fun() ->
        exit({done, try {ok, Eval()}
                    catch throw:{Why, What} -> {Why, What};
                          error:{unbound, Var} -> {unbound, atom_to_list(Var)};
                          C:E -> {crash, io_lib:format("~tw:~tP", [C, E, 6])} end}) end),
    Got = receive {'DOWN', R, process, P, {done, X}} -> X;
                  {'DOWN', R, process, P, Other} -> {crash, io_lib:format("~tP", [Other, 6])}
          after 5000 -> exit(P, kill), {timeout, ""} end,
    Norm = fun(#{id := Id, start := Start} = C) ->
                  {Id, Start, maps:get(restart, C, permanent), maps:get(type, C, worker),
                   maps:get(modules, C, [element(1, Start)])};
              ({Id, Start, Restart, _, Type, Mods}) -> {Id, Start, Restart, Type, Mods} end,
    Dynamic = fun(#{strategy := simple_one_for_one}) -> true;
                 ({simple_one_for_one, _, _}) -> true;
                 (_) -> false end,
    case Got of
        {ok, {ok, {Flags, Specs}}} when is_list(Specs) ->
            case Dynamic(Flags) of
                true -> ["dynamic", ""];
                false ->
                    case catch supervisor:check_childspecs(Specs) of
                        ok ->
                            ["children", lists:join($,, [
                                lists:join($., [Src(Id), Src(St), Hex(Re), Hex(Ty), Src(Ms)])
                                || {Id, St, Re, Ty, Ms} <- [Norm(S) || S <- Specs]])];
                        Bad -> ["badspec", Hex(io_lib:format("~tP", [Bad, 8]))] end end;
        {ok, ignore} -> ["children", ""];
        {ok, Other2} -> ["returns", Hex(io_lib:format("~tP", [Other2, 8]))];
        {Why2, What2} -> [atom_to_list(Why2), Hex(What2)] end end,
Sup = fun(F, M) ->
    case Forms(F, M) of
        none -> ["noname", "", "nodebug", ""];
        {ok, Fs} -> SupName(Fs) ++ Children(Fs) end end,
Beams = fun(Tag, Dir) ->
    [case beam_lib:md5(F) of
         {ok, {M, Md5}} ->
             Attrs = Chunk(F, attributes),
             Bs = lists:append([B || {K, B} <- Attrs, K =:= behaviour orelse K =:= behavior]),
             Exps = Chunk(F, exports),
             CC = [integer_to_list(A) || {code_change, A} <- Exps],
             Imps = lists:usort([Im || {Im, _, _} <- Chunk(F, imports), Im =/= M]),
             Special = [$1 || lists:member({system_code_change, 4}, Exps)],
             Out(["beam", Tag, Hex(M), binary:encode_hex(Md5),
                  lists:join($,, [Hex(B) || B <- Bs, is_atom(B)]),
                  lists:join($,, CC), lists:join($,, [Hex(I) || I <- Imps]), Special]),
             case lists:member(supervisor, Bs)
                  orelse lists:member('Elixir.Supervisor', Bs) of
                 true -> Out(["sup", Tag, Hex(M)] ++ Sup(F, M));
                 false -> ok end;
         {error, beam_lib, Why} ->
             Out(["error", Tag, Hex(lists:flatten(io_lib:format("~ts: ~tp", [F, Why])))])
     end || F <- lists:sort(filelib:wildcard(filename:join(Dir, "*.beam")))] end,
Matches = fun(Vsn, V) when is_list(V) -> V =:= Vsn;
             (Vsn, V) when is_binary(V) ->
                 case re:run(Vsn, V, [unicode, {capture, first, list}]) of
                     {match, [Vsn]} -> true; _ -> false end;
             (_, _) -> false end,
Mod = fun({load_module, M}) -> {load, [M]}; ({load_module, M, _}) -> {load, [M]};
         ({load_module, M, _, _, _}) -> {load, [M]};
         (I) when element(1, I) =:= update, tuple_size(I) >= 2 -> {update, [element(2, I)]};
         ({apply, {supervisor, F, [_, Id]}}) -> {apply, [io_lib:format("~tw ~tw", [F, Id])]};
         ({add_module, M}) -> {add, [M]}; ({add_module, M, _}) -> {add, [M]};
         ({delete_module, M}) -> {delete, [M]}; ({delete_module, M, _}) -> {delete, [M]};
         ({load_object_code, {_, _, Ms}}) -> {load, Ms};
         ({load, {M, _, _}}) -> {load, [M]};
         ({remove, {M, _, _}}) -> {delete, [M]};
         ({purge, Ms}) -> {delete, Ms};
         (restart_new_emulator) -> {all, []}; (restart_emulator) -> {all, []};
         ({restart_application, _}) -> {all, []};
         (_) -> {other, []} end,
Entry = fun(Tag, Dir, Vsn, Entries) ->
    Vsns = [case V of _ when is_binary(V) -> Hex(V); _ -> Hex(io_lib:format("~tp", [V])) end
            || {V, _} <- Entries],
    Out(["versions", Tag, Dir | Vsns]),
    case [Is || {V, Is} <- Entries, Matches(Vsn, V)] of
        [Instrs | _] when is_list(Instrs) ->
            Out(["entry", Tag, Dir]),
            [Out(["cover", Tag, Dir, atom_to_list(K), Hex(M)])
             || I <- Instrs, {K, Ms} <- [Mod(I)], M <- [all || K =:= all] ++ Ms,
                is_atom(M) orelse K =:= apply];
        _ -> ok end end,
Appup = fun(Tag, File, Vsn) ->
    case file:consult(File) of
        {ok, [{Own, Up, Down}]} when is_list(Up), is_list(Down) ->
            Out(["appup", Tag, Hex(io_lib:format("~tp", [Own]))]),
            Entry(Tag, "up", Vsn, [E || E = {_, _} <- Up]),
            Entry(Tag, "down", Vsn, [E || E = {_, _} <- Down]);
        {ok, Other} ->
            Out(["error", Tag, Hex(lists:flatten(io_lib:format(
                "~ts is no appup: it must hold one term {Vsn, UpFrom, DownTo}, not ~tP",
                [File, Other, 8])))]);
        {error, Why} ->
            Out(["error", Tag, Hex(lists:flatten(io_lib:format("~ts: ~ts",
                [File, file:format_error(Why)])))])
    end end,
io:setopts(standard_io, [{encoding, latin1}]),
[case string:split(Line, " ", all) of
     ["beams", Tag, Dir] -> Beams(Tag, Unhex(Dir));
     ["appup", Tag, File, Vsn] -> Appup(Tag, Unhex(File), Unhex(Vsn))
 end || Line <- string:split(os:getenv("RELCTL_JOBS"), "\n", all), Line =/= ""],
halt(0).
"""


def _hex(text: str) -> str:
    return text.encode("utf-8").hex()


def _unhex(text: str) -> str:
    return bytes.fromhex(text).decode("utf-8", "replace")


def _run_erl(jobs: Sequence[str], erl: str, timeout: float) -> list[list[str]]:
    env = clean_env(RELCTL_JOBS="\n".join(jobs))
    argv = [erl_path(erl), "-boot", "no_dot_erlang", "-noshell", "-noinput", "-eval", _ANALYSE]
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AppupError(f"reading the beams in erl did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise AppupError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        said = " ".join(proc.stdout.decode("utf-8", "replace").split()
                        + proc.stderr.decode("utf-8", "replace").split())
        raise AppupError(f"reading the beams in erl failed: {said or 'no output'}")
    return [line.split("\t") for line in proc.stdout.decode("ascii", "replace").splitlines()]


def _split(field_: str) -> list[str]:
    return [_unhex(x) for x in field_.split(",") if x]


# Why erl could not tell a supervisor's children, by the code it gave.
_UNKNOWN = {
    "nodebug": "its beam has no debug_info (compile with +debug_info) or it is no Erlang "
               "source, so its init/1 cannot be read",
    "impure": "its init/1 calls {}, so its child specs are known only at run time",
    "unbound": "its init/1 builds the child specs from its argument {}, known only at run time",
    "clauses": "its init/1 has several clauses, chosen by arguments known only at run time",
    "noinit": "it has no init/1",
    "crash": "evaluating its init/1 failed: {}",
    "timeout": "evaluating its init/1 took more than 5 s",
    "badspec": "supervisor:check_childspecs/1 refuses the child specs its init/1 returns: {}",
    "returns": "its init/1 returns {}, not {{ok, {{Flags, ChildSpecs}}}}",
}


def _sup_tree(fields: Sequence[str]) -> SupTree:
    name_kind, name, what, data = fields
    name_src = _unhex(name) if name_kind == "name" else ""
    if what == "dynamic":
        return SupTree(name_src, (), dynamic=True)
    if what == "children":
        children = []
        for record in (data.split(",") if data else []):
            cid, start, restart, type_, modules = (_unhex(x) for x in record.split("."))
            children.append(Child(cid, start, restart, type_, modules))
        return SupTree(name_src, tuple(children))
    why = _UNKNOWN.get(what, what + ": {}").format(_unhex(data))
    return SupTree(name_src, None, why)


@dataclass(frozen=True)
class Reading:
    """What erl said: the beams of each ebin tag and each given appup by tag."""

    beams: Mapping[str, Mapping[str, Beam]]
    appups: Mapping[str, GivenAppup]


def read(ebins: Mapping[str, Path], appups: Mapping[str, tuple[Path, str]], *,
         erl: str = "erl", timeout: float = ERL_TIMEOUT) -> Reading:
    """Read the beams of each ``ebins`` directory and each ``appups`` file (with the old version
    to find the entries of) in one run of erl; keys are the caller's tags (no whitespace)."""
    jobs = [f"beams {tag} {_hex(str(path))}" for tag, path in ebins.items()]
    jobs += [f"appup {tag} {_hex(str(path))} {_hex(vsn)}" for tag, (path, vsn) in appups.items()]
    beams: dict[str, dict[str, Beam]] = {tag: {} for tag in ebins}
    own: dict[str, str] = {}
    cover: dict[tuple[str, str], dict[str, set[str]]] = {}
    found: set[tuple[str, str]] = set()
    versions: dict[tuple[str, str], tuple[str, ...]] = {}
    for fields in _run_erl(jobs, erl, timeout):
        kind = fields[0]
        if kind == "beam" and len(fields) == 8:
            tag, mod, md5, behs, cc, imps, special = fields[1:]
            beams[tag][_unhex(mod)] = Beam(_unhex(mod), md5.lower(), tuple(_split(behs)),
                                            bool(cc), frozenset(_split(imps)), bool(special))
        elif kind == "sup" and len(fields) == 7 and _unhex(fields[2]) in beams[fields[1]]:
            mod = _unhex(fields[2])
            beams[fields[1]][mod] = replace(beams[fields[1]][mod], sup=_sup_tree(fields[3:]))
        elif kind == "error" and len(fields) == 3:
            raise AppupError(f"cannot read {_unhex(fields[2])}")
        elif kind == "appup" and len(fields) == 3:
            own[fields[1]] = _unhex(fields[2]).strip('"')
        elif kind == "versions" and len(fields) >= 3:
            versions[(fields[1], fields[2])] = tuple(_unhex(v) for v in fields[3:])
        elif kind == "entry" and len(fields) == 3:
            found.add((fields[1], fields[2]))
        elif kind == "cover" and len(fields) == 5:
            what = cover.setdefault((fields[1], fields[2]), {})
            what.setdefault(fields[3], set()).add(_unhex(fields[4]))
            if fields[3] == "update":
                what.setdefault("load", set()).add(_unhex(fields[4]))
    given = {}
    for tag, (path, _vsn) in appups.items():
        def coverage(direction: str, tag: str = tag) -> Coverage:
            what = cover.get((tag, direction), {})
            return Coverage((tag, direction) in found, versions.get((tag, direction), ()),
                            frozenset(what.get("load", ())), frozenset(what.get("add", ())),
                            frozenset(what.get("delete", ())), "all" in what,
                            frozenset(what.get("update", ())), frozenset(what.get("apply", ())))
        given[tag] = GivenAppup(path, own.get(tag, ""), coverage("up"), coverage("down"))
    return Reading(beams, given)


# --- generating --------------------------------------------------------------------------

def diff(old: Mapping[str, Beam], new: Mapping[str, Beam]) -> Diff:
    return Diff(added=tuple(sorted(set(new) - set(old))),
                deleted=tuple(sorted(set(old) - set(new))),
                changed=tuple(sorted(m for m in set(old) & set(new)
                                     if old[m].md5 != new[m].md5)))


def _ordered(mods: Iterable[str], deps: Mapping[str, tuple[str, ...]]) -> list[str]:
    """``mods`` sorted so that each comes after its dependencies (cycles: by name)."""
    wanted = set(mods)
    done: list[str] = []
    state: dict[str, int] = {}

    def visit(mod: str) -> None:
        if state.get(mod):
            return  # done, or on the stack (a cycle: systools loads those together)
        state[mod] = 1
        for dep in deps.get(mod, ()):
            visit(dep)
        state[mod] = 2
        if mod in wanted:  # a dependency that is added, not changed, is loaded before anyway
            done.append(mod)

    for mod in sorted(wanted):
        visit(mod)
    return done


def _apply(sup: str, ref: str, function: str, child: Child) -> Instruction:
    return Instruction("apply", sup, function, sup_ref=ref, child=child.id)


@dataclass(frozen=True)
class _TreeChange:
    """The supervisor calls around the code change of one supervisor, in each direction:
    children stopped before it, children started after it."""

    up_stop: tuple[Instruction, ...] = ()
    up_start: tuple[Instruction, ...] = ()
    down_stop: tuple[Instruction, ...] = ()
    down_start: tuple[Instruction, ...] = ()


def _tree_change(app: str, mod: str, old: Beam, new: Beam, warnings: list[str]) -> _TreeChange:
    """``{update, Sup, supervisor}`` only replaces the child specs the supervisor holds
    (supervisor:code_change/3): an added child is not started, a removed one keeps running
    (its spec kept), a child whose start changed keeps its old process. So added children get
    ``restart_child`` after the update, removed ones ``terminate_child`` + ``delete_child``
    before it, and changed ones ``terminate_child`` + ``restart_child`` after it; going down,
    the mirror image."""
    old_tree, new_tree = old.sup, new.sup
    if new_tree is None or old_tree is None or new_tree.dynamic or old_tree.dynamic:
        return _TreeChange()  # not a supervisor on both sides; simple_one_for_one: no specs
    if old_tree.children is None or new_tree.children is None:
        why = new_tree.unknown if new_tree.children is None else old_tree.unknown
        warnings.append(
            f"{app}: {mod} is a supervisor whose children make-appup cannot know ({why}): "
            f"the appup only has {{update, {atom(mod)}, supervisor}}, which starts no added "
            "child and stops no removed one; if its children change, write the appup "
            "(`relctl make-appup --write DIR`, then add {apply, {supervisor, restart_child, "
            "[Sup, Id]}} after the update for each added child, terminate_child and "
            "delete_child before it for each removed one) and pass its ebin with --path; see "
            "docs/preparing-releases.md")
        return _TreeChange()
    before = {c.id: c for c in old_tree.children}
    after = {c.id: c for c in new_tree.children}
    added = [c for c in new_tree.children if c.id not in before]
    removed = [c for c in old_tree.children if c.id not in after]
    moved = [c for c in new_tree.children if c.id in before
             and (before[c.id].start, before[c.id].type) != (c.start, c.type)]
    if not (added or removed or moved):
        return _TreeChange()
    ids = ", ".join([f"+{c.id}" for c in added] + [f"-{c.id}" for c in removed]
                    + [f"~{c.id}" for c in moved])
    if not old_tree.name or old_tree.name != new_tree.name:
        why = ("is started without a name (supervisor:start_link/2)" if not old_tree.name
               or not new_tree.name else
               f"is started as {old_tree.name} by one version and {new_tree.name} by the other")
        warnings.append(
            f"{app}: {mod}'s children change ({ids}) but it {why}, so the appup cannot reach "
            "it with supervisor:restart_child/terminate_child: the added children will not "
            "run and the removed ones keep running until a restart; write these calls into "
            "the appup yourself; see docs/preparing-releases.md")
        return _TreeChange()
    temporary = [c for c in moved if c.restart == "temporary"
                 or before[c.id].restart == "temporary"]
    if temporary:
        warnings.append(
            f"{app}: {mod}'s temporary children {', '.join(c.id for c in temporary)} change "
            "their start, but terminating a temporary child drops its spec, so they keep "
            "their old process until it ends")
        moved = [c for c in moved if c not in temporary]
    ref = old_tree.name

    def stop(children: Sequence[Child]) -> tuple[Instruction, ...]:
        return tuple(i for c in reversed(children) for i in (
            _apply(mod, ref, "terminate_child", c), _apply(mod, ref, "delete_child", c)))

    def start(children: Sequence[Child]) -> tuple[Instruction, ...]:
        return tuple(_apply(mod, ref, "restart_child", c) for c in children)

    def restart(children: Sequence[Child]) -> tuple[Instruction, ...]:
        return tuple(i for c in children for i in (
            _apply(mod, ref, "terminate_child", c), _apply(mod, ref, "restart_child", c)))

    return _TreeChange(up_stop=stop(removed), up_start=(*start(added), *restart(moved)),
                       down_stop=stop(added), down_start=(*start(removed), *restart(moved)))


def generate(app: str, old_vsn: str, new_vsn: str, old: Mapping[str, Beam],
             new: Mapping[str, Beam]) -> Appup:
    """The appup of ``app`` from the beams of its two versions (module name -> Beam)."""
    d = diff(old, new)
    loaded = set(d.changed) | set(d.added)
    deps = {m: tuple(sorted(new[m].imports & loaded)) for m in d.changed}
    warnings: list[str] = []
    changes: dict[str, Instruction] = {}
    trees: list[_TreeChange] = []
    for mod in d.changed:
        beam = new[mod]
        behaviours = set(beam.behaviours)
        if behaviours & SUPERVISORS:
            changes[mod] = Instruction("update", mod, "supervisor", deps[mod])
            trees.append(_tree_change(app, mod, old[mod], beam, warnings))
        elif behaviours & PROCESSES and beam.code_change:
            changes[mod] = Instruction("update", mod, "advanced", deps[mod])
        elif beam.special:
            # A sys special process loops in its own module: load_module leaves it on the
            # old code, and the next purge kills it. update suspends it, loads the module
            # and calls system_code_change/4 through sys:change_code.
            changes[mod] = Instruction("update", mod, "advanced", deps[mod], strict=True)
        else:
            if behaviours & PROCESSES:
                warnings.append(
                    f"{app}: {mod} is a {'/'.join(sorted(behaviours & PROCESSES))} without "
                    "code_change, so it is loaded with load_module and its processes keep "
                    "their state untouched (export code_change to have it migrated)")
            elif "proc_lib" in beam.imports and not behaviours & SUPERVISORS:
                warnings.append(
                    f"{app}: {mod} starts processes with proc_lib but exports no "
                    "system_code_change/4, so it is loaded with load_module: a process "
                    f"looping in {mod} stays on the old code, and the purge of the next code "
                    "change (make_permanent's included) kills it; make it a sys special "
                    "process (answer system messages, export system_code_change/4) or have "
                    "the appup restart it")
            changes[mod] = Instruction("load_module", mod, "", deps[mod])
    order = _ordered(d.changed, deps)
    up = (*(Instruction("add_module", m) for m in d.added),
          *(i for t in trees for i in t.up_stop),
          *(changes[m] for m in order),
          *(i for t in trees for i in t.up_start),
          *(Instruction("delete_module", m) for m in d.deleted))
    down = (*(Instruction("add_module", m) for m in d.deleted),
            *(i for t in trees for i in t.down_stop),
            *(changes[m] for m in order),
            *(i for t in trees for i in t.down_start),
            *(Instruction("delete_module", m) for m in d.added))
    return Appup(app, old_vsn, new_vsn, tuple(up), tuple(down), tuple(warnings))


# --- checking ----------------------------------------------------------------------------

def check(app: str, old_vsn: str, new_vsn: str, given: GivenAppup,
          wanted: Appup) -> list[str]:
    """What the given appup lacks against the generated one: one problem per module or entry,
    each naming the instruction needed."""
    problems = []
    if given.version != new_vsn:
        problems.append(f"{given.path} is for version {given.version!r}, not {new_vsn}")
    for direction, cov, instrs, to in (("up", given.up, wanted.up, "from"),
                                       ("down", given.down, wanted.down, "to")):
        if not cov.found:
            named = ", ".join(cov.versions) or "none"
            problems.append(f"no {direction} entry {to} {old_vsn} (it has {named}): "
                            f"{{{string(old_vsn)}, [...]}} is needed")
            continue
        if cov.everything:
            continue
        for instr in instrs:
            if instr.kind == "apply":
                if f"{instr.change} {instr.child}" not in cov.apply:
                    problems.append(f"{instr.module}'s child {instr.child} needs "
                                    f"{instr.term()} ({direction})")
                continue
            ok = {"add_module": cov.add | cov.load, "delete_module": cov.delete,
                  "load_module": cov.load | cov.add,
                  "update": cov.update | cov.add if instr.strict else cov.load | cov.add
                  }[instr.kind]
            if instr.module not in ok:
                why = (" (a special process: load_module leaves it on the old code, and "
                       "the purge kills it)" if instr.strict else "")
                problems.append(f"{instr.module} needs {instr.term()} ({direction}){why}")
    return problems
