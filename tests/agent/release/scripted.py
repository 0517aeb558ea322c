"""A scripted node for the release engine's unit tests: a `Caller` that answers each expected
RPC with a scripted reply (or raises), records every call, and simulates a node restart.

The script is strict and ordered: each call must be the next expected `(module, function,
args)`, so a test that scripts a sequence also asserts the engine made exactly those RPCs in
that order. A call nobody scripted raises `UnexpectedCall` (an AssertionError, which the
engine never catches) and is kept in `unexpected`, so a test cannot pass by swallowing it.

The reply builders give the shapes release_handler and friends send, as `bridge` decodes them:
charlists as `str`, atoms as `Atom`, `true`/`false` as `bool`, tuples as tuples.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.release import Placing, StepRecord
from bridge import Atom

OK = Atom("ok")
ERROR = Atom("error")
UNDEFINED = Atom("undefined")
NODE = "counter@localhost"
REL = "counter"
LIBS = ("kernel-8.5.3", "stdlib-4.2")  # what every counter release runs besides counter


class Anything:
    """Matches any argument list (for arguments a test need not pin down)."""

    def __repr__(self) -> str:
        return "ANY"


ANY = Anything()


class UnexpectedCall(AssertionError):
    """The engine made an RPC (or waited for a restart) that the script did not expect."""


@dataclass(frozen=True)
class Call:
    """One RPC the engine made."""

    module: str
    function: str
    args: list[Any]
    timeout: float | None

    @property
    def mfa(self) -> str:
        return f"{self.module}:{self.function}"


@dataclass(frozen=True)
class Expect:
    """One expected RPC and what the node does: return ``reply``, or raise ``error``. With
    ``repeat``, it answers every call that matches it (at least one) until one does not."""

    mfa: str
    args: Sequence[Any] | Anything = ANY
    reply: Any = None
    error: BaseException | None = None
    repeat: bool = False

    def matches(self, module: str, function: str, args: Sequence[Any]) -> bool:
        return self.mfa == f"{module}:{function}" and (
            isinstance(self.args, Anything) or list(self.args) == list(args))


def answer(mfa: str, args: Sequence[Any] | Anything, reply: Any) -> Expect:
    return Expect(mfa, args, reply)


def fail(mfa: str, args: Sequence[Any] | Anything, error: BaseException) -> Expect:
    return Expect(mfa, args, error=error)


def repeatedly(mfa: str, args: Sequence[Any] | Anything, reply: Any) -> Expect:
    return Expect(mfa, args, reply, repeat=True)


class ScriptedNode:
    """The engine's `Caller`, answering from a script."""

    def __init__(self, script: Iterable[Expect] = (), *, restarts: Iterable[bool] = (),
                 name: str = NODE) -> None:
        self._name = name
        self._script: deque[Expect] = deque(script)
        self._restarts: deque[bool] = deque(restarts)
        self.calls: list[Call] = []
        self.restart_waits: list[tuple[float, float]] = []  # (down_within, up_within)
        self.unexpected: list[str] = []
        self.effects: dict[str, Callable[[], None]] = {}  # mfa -> what the call does on disk
        self._head_used = False  # the repeating expectation at the head answered once

    @property
    def name(self) -> str:
        return self._name

    def expect(self, *script: Expect) -> None:
        self._script.extend(script)

    def then_restart(self, *came_back: bool) -> None:
        """What the next wait_for_restart calls answer: True, the node restarted and is back."""
        self._restarts.extend(came_back)

    async def call(self, module: str, function: str, args: Sequence[Any] = (), *,
                   timeout: float | None = None) -> Any:
        self.calls.append(Call(module, function, list(args), timeout))
        expected = self._take(module, function, args)
        effect = self.effects.get(f"{module}:{function}")
        if effect is not None:
            effect()
        if expected.error is not None:
            raise expected.error
        return expected.reply

    def _take(self, module: str, function: str, args: Sequence[Any]) -> Expect:
        while self._script:
            head = self._script[0]
            if head.matches(module, function, args):
                if head.repeat:
                    self._head_used = True
                else:
                    self._script.popleft()
                return head
            if not (head.repeat and self._head_used):
                break
            self._script.popleft()  # a repetition ends at the first call that does not match
            self._head_used = False
        what = f"{module}:{function}({list(args)!r})"
        self.unexpected.append(what)
        head_text = f"{self._script[0].mfa}{self._script[0].args!r}" if self._script else "none"
        raise UnexpectedCall(f"unscripted call {what}; expected {head_text}")

    async def wait_for_restart(self, *, down_within: float, up_within: float) -> bool:
        self.restart_waits.append((down_within, up_within))
        if not self._restarts:
            self.unexpected.append("wait_for_restart")
            raise UnexpectedCall("unscripted wait_for_restart")
        return self._restarts.popleft()

    @property
    def remaining(self) -> list[Expect]:
        """What the script expected and the engine never asked."""
        left = list(self._script)
        return left[1:] if left and left[0].repeat and self._head_used else left

    def mfas(self) -> list[str]:
        return [c.mfa for c in self.calls]

    def calls_to(self, mfa: str) -> list[Call]:
        return [c for c in self.calls if c.mfa == mfa]

    def assert_done(self) -> None:
        """Every scripted RPC and restart was used, and nothing else was called."""
        assert self.unexpected == []
        assert self.remaining == [], f"never called: {self.remaining}"
        assert not self._restarts, f"restarts never waited for: {list(self._restarts)}"


class MemoryLedger:
    """The journal's side of the engine (UnpackLedger) in memory, to script what an earlier
    operation left unfinished and see what the engine records."""

    def __init__(self) -> None:
        self.sha: dict[str, str] = {}
        self.recorded_added: dict[str, tuple[str, ...]] = {}  # what each unpack added
        self.placings: list[tuple[str, tuple[Path, ...]]] = []  # what this operation recorded
        self.added: list[tuple[Path, ...]] = []  # and what it adds inside dirs the root had
        self.unfinished_placings: list[Placing] = []           # other operations'
        self.settled_count = 0

    def recorded(self, version: str) -> str | None:
        return self.sha.get(version)

    def record(self, version: str, sha256: str, added: Sequence[Path] = ()) -> None:
        self.sha[version] = sha256
        self.recorded_added[version] = tuple(str(p) for p in added)

    def added_by(self, version: str) -> tuple[str, ...]:
        return self.recorded_added.get(version, ())

    def placing(self, version: str, paths: Sequence[Path], added: Sequence[Path] = ()) -> None:
        self.placings.append((version, tuple(paths)))
        self.added.append(tuple(added))

    def settled(self) -> None:
        self.settled_count += 1

    def unfinished(self) -> tuple[Placing, ...]:
        return tuple(self.unfinished_placings)

    def forget(self, placing: Placing) -> None:
        self.unfinished_placings.remove(placing)


class StepLog:
    """The engine's step sink: keeps every StepRecord it reports."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    def __call__(self, record: StepRecord) -> None:
        self.records.append(record)

    def ended(self) -> list[tuple[str, str]]:
        """(name, state) of each step as it ended: succeeded, failed or skipped."""
        return [(r.name, r.state) for r in self.records if r.state != "running"]

    def detail(self, name: str) -> str:
        """The detail of the last ending of step ``name``."""
        ends = [r for r in self.records if r.name == name and r.state != "running"]
        assert ends, f"step {name} never ended"
        return ends[-1].detail

    def balanced(self) -> bool:
        """Each step that started also ended, in order (skips never start)."""
        open_: list[str] = []
        for r in self.records:
            if r.state == "running":
                open_.append(r.name)
            elif r.state != "skipped":
                if not open_ or open_.pop() != r.name:
                    return False
        return not open_


# --- replies as the node sends them -------------------------------------------------------

def release(version: str, status: str, libs: Sequence[str] = LIBS) -> tuple[Any, ...]:
    """One which_releases entry: {Name, Vsn, Libs, Status}."""
    return (REL, version, [*libs, f"{REL}-{version}"], Atom(status))


def releases(*entries: tuple[str, str]) -> list[tuple[Any, ...]]:
    """A which_releases reply from (version, status) pairs, as the node lists them."""
    return [release(vsn, status) for vsn, status in entries]


def applications(counter: str, *, kernel: str = "8.5.3", stdlib: str = "4.2") -> list[Any]:
    """application:which_applications(): [{App, Description, Vsn}]."""
    return [(Atom(REL), "The counter of the upgrade tests", counter),
            (Atom("stdlib"), "ERTS  CXC 138 10", stdlib),
            (Atom("kernel"), "ERTS  CXC 138 10", kernel)]


def which_releases(*entries: tuple[str, str]) -> Expect:
    return answer("release_handler:which_releases", [], releases(*entries))


ERTS = "13.1.5"  # the ERTS the scripted node runs (and the test tarballs' .rel name)


def node_dirs(root: Path) -> list[Expect]:
    """How the engine finds the root and releases dir of a node without sasl releases_dir or
    RELDIR set: code:root_dir(), then the two places it looks, then root/releases; then the
    ERTS the node runs."""
    return [answer("code:root_dir", [], str(root)),
            answer("application:get_env", [Atom("sasl"), Atom("releases_dir")], UNDEFINED),
            answer("os:getenv", ["RELDIR"], False),
            answer("erlang:system_info", [Atom("version")], ERTS)]


def code_path(root: Path, *libs: str) -> Expect:
    """code:get_path() of a node running ``libs`` (default: the running 0.0.1's) from root."""
    return answer("code:get_path", [], [str(root / "lib" / lib / "ebin")
                                        for lib in (libs or (*LIBS, f"{REL}-0.0.1"))])


def releases_file(root: Path, exists: bool = True) -> Expect:
    return answer("filelib:is_regular", [str(root / "releases" / "RELEASES")], exists)


def tokens(text: str) -> list[Any]:
    """erl_scan tokens of a one-line sys.config, enough for the engine's checks: it looks at the
    last token (the dot) and passes the list on to erl_parse unchanged."""
    return [(Atom("["), 1), (Atom("{"), 1), (Atom("atom"), 1, Atom(REL)), (Atom(","), 1),
            (Atom("["), 1), (Atom("{"), 1), (Atom("atom"), 1, Atom("greeting")), (Atom(","), 1),
            (Atom("string"), 1, text), (Atom("}"), 1), (Atom("]"), 1), (Atom("}"), 1),
            (Atom("]"), 1), (Atom("dot"), 1)]


SYS_CONFIG = b'[{counter, [{greeting, "hi"}]}].\n'
SYS_CONFIG_TERM = [(Atom(REL), [(Atom("greeting"), "hi")])]


def config_parses(source: bytes = SYS_CONFIG) -> list[Expect]:
    """A tarball's sys.config scanned and parsed on the node, successfully."""
    scanned = tokens("hi")
    return [answer("erl_scan:string", [source.decode()], (OK, scanned, 2)),
            answer("erl_parse:parse_term", [scanned], (OK, SYS_CONFIG_TERM))]


def config_on_node(root: Path, version: str, reply: Any = None) -> Expect:
    """file:consult of releases/VSN/sys.config on the node (default: it parses)."""
    return answer("file:consult", [str(root / "releases" / version / "sys.config")],
                  (OK, SYS_CONFIG_TERM) if reply is None else reply)


def code_check(report: Any) -> list[Expect]:
    """The code check of verify (agent/release/codecheck.py): the node scans and parses the
    check (the tokens and forms are passed on unchanged, so any stand-in will do), then
    evaluates it; ``report`` is the value it evaluates to."""
    return [answer("erl_scan:string", ANY, (OK, [(Atom("atom"), 1, Atom("check"))], 1)),
            answer("erl_parse:parse_exprs", [[(Atom("atom"), 1, Atom("check"))]],
                   (OK, [(Atom("atom"), 1, Atom("check"))])),
            answer("erl_eval:exprs", ANY, (Atom("value"), report, []))]


def evaluated(value: Any) -> list[Expect]:
    """A check the node parsed before (agent/release/proccheck.py keeps the forms of each
    expression per node): only evaluated, ``value`` being what it evaluates to."""
    return [answer("erl_eval:exprs", ANY, (Atom("value"), value, []))]


def code_report(counter: str, *problems: tuple[str, str, str], mode: str = "embedded",
                root: str = "/srv/counter") -> tuple[Any, ...]:
    """A code check's value for a counter release: {Mode, [{App, Vsn, LibDir, Modules,
    ProblemCount, Problems}]}, ``problems`` being counter's (module, kind, where)."""
    entries = [(name, vsn, f"{root}/lib/{name}-{vsn}", n, 0, [])
               for name, vsn, n in (("kernel", "8.5.3", 96), ("stdlib", "4.2", 87))]
    entries.append((REL, counter, f"{root}/lib/{REL}-{counter}", 4, len(problems),
                    [(Atom(m), Atom(kind), where) for m, kind, where in problems]))
    return (Atom(mode), entries)


def code_matches(counter: str, *, parsed: bool = False) -> list[Expect]:
    """The code check of a node that runs all of counter ``counter``'s code, then the process
    checks (agent/release/proccheck.py) finding nothing: no child of the supervision tree a
    boot would not give, no process on old code, no fun of old code in a process's state
    (``parsed``: the node parsed those three before, in this operation)."""
    process_check = evaluated if parsed else code_check
    return [*code_check(code_report(counter)), *process_check([]), *process_check([]),
            *process_check([])]
