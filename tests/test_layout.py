"""DESIGN.md section 2, enforced by folder: what each package may import, and how.

Every rule is read from the source with `ast`; a new file is checked by the rules of the folder
it lands in, with no list to keep up to date. Nothing here imports the modules it checks, except
`test_public_names_are_exported` (the runtime package) and the subprocess that imports the client.
The helpers are tested on made-up sources at the bottom, so each check is seen to fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STDLIB = frozenset(sys.stdlib_module_names)
TABLE = "DESIGN.md §2 import table"

# --------------------------------------------------------------------------------------------
# The rules


@dataclass(frozen=True)
class Layer:
    """What the modules of `package` may import besides the standard library."""

    package: str
    project: frozenset[str]  # first-party modules, each with everything below it
    third_party: frozenset[str] = frozenset()
    rule: str = TABLE


def _layer(package: str, project: Iterable[str], third_party: Iterable[str] = (), rule: str = TABLE) -> Layer:
    return Layer(package, frozenset(project), frozenset(third_party), rule)


# Departures from the table, each decided on purpose. agent.relfile raises agent.errors'
# RelSyntaxError (a RequestError: whoever supplied the .rel is at fault; issue 12, item 4).
# Both are standard-library-only leaves, so the client loading agent.errors through relfile
# costs nothing and brings no server code.
EXTRA_EDGES: dict[str, frozenset[str]] = {
    "agent.relfile": frozenset({"agent.errors"}),
}

_BELOW_API = ("bridge", "agent.errors", "agent.relfile", "agent.config", "agent.release", "agent.nodes",
              "agent.operations")
_GRPC = ("grpc", "google.protobuf")

# Module -> layer is the longest matching prefix: a module's folder decides its rules.
LAYERS: dict[str, Layer] = {layer.package: layer for layer in (
    _layer("bridge", ["bridge"], rule="DESIGN.md §2 rule 1: bridge imports only the standard library"),
    _layer("agent", []),  # agent/__init__.py: everything imports it, so it imports nothing
    _layer("agent.errors", ["agent.errors", *EXTRA_EDGES.get("agent.errors", ())]),
    _layer("agent.relfile", ["agent.relfile", *EXTRA_EDGES.get("agent.relfile", ())]),
    _layer("agent.config", ["agent.config", "agent.errors", "bridge"]),
    _layer("agent.release", ["agent.release", "agent.config", "agent.errors", "agent.relfile", "bridge"]),
    _layer("agent.nodes", ["agent.nodes", "agent.release", "agent.config", "agent.errors", "bridge"]),
    _layer("agent.operations", ["agent.operations", "agent.release", "agent.nodes", "agent.errors"]),
    _layer("agent.api", ["agent.api", *_BELOW_API, "relctl.v1"], _GRPC),
    _layer("agent.daemon", ["agent.daemon", *_BELOW_API, "agent.api", "relctl.v1"], [*_GRPC, "prometheus_client"]),
    # `python -m agent` is the daemon's entry point: the daemon's rules.
    _layer("agent.__main__", ["agent.daemon", *_BELOW_API, "agent.api", "relctl.v1"], [*_GRPC, "prometheus_client"]),
    # The release build tool (make-relup, make-appup): standard library, .rel parsing, errors.
    _layer("agent.build", ["agent.build", "agent.relfile", "agent.errors"]),
    # The client loads agent.build only when a build command runs (see the start-up test).
    _layer("agent.client", ["agent.client", "agent.build", "agent.relfile", "relctl.v1"], [*_GRPC, "click"],
           rule="DESIGN.md §2 rule 5: the client imports only the stubs, grpc, click and its own package"),
)}

IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "select", "subprocess", "threading"})
# The only bridge modules that may do I/O; every other one is sans-IO (DESIGN.md §2 rule 2).
# eventloop.py is an opt-in asyncio loop (selectors, asyncio) for callers such as bench/; it is
# not in DESIGN.md's list ("node.py and nothing else"), so it is named here on purpose.
BRIDGE_IO = {"bridge.node": "asyncio streams, sockets and timers",
             "bridge.eventloop": "a busy-polling asyncio event loop"}
# Sans-IO modules that import an I/O module for its exception classes only: bridge/tls.py
# turns ssl's errors into TlsHandshakeFailed causes; it opens, wraps and reads nothing.
EXCEPTIONS_ONLY = {"bridge.tls": frozenset({"ssl"})}

AGENT_TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "relfile.py"}
GRPC_USERS = ("agent.api", "agent.client")  # DESIGN.md §2 rule 4 (and rule 5 for the client)
PROMETHEUS_USERS = ("agent.daemon.metrics",)
# Server-side modules the client may load: its own package, relfile, and what relfile imports.
CLIENT_MAY_LOAD = ("agent.client", "agent.relfile", *EXTRA_EDGES.get("agent.relfile", ()))

# --------------------------------------------------------------------------------------------
# Reading the tree


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix() if self.path.is_relative_to(ROOT) else str(self.path)


@dataclass(frozen=True)
class Import:
    """One name an import statement binds: `import target` or `from target import name`."""

    importer: str
    where: str  # "path:line"
    statement: str  # as written, one name
    target: str  # absolute, relative dots resolved
    name: str | None  # None for `import target`
    runtime: bool  # False inside `if TYPE_CHECKING:`

    def module(self, known: Collection[str]) -> str:
        """The module this reaches: `target.name` if that is a module, else `target`."""
        if self.name is not None and f"{self.target}.{self.name}" in known:
            return f"{self.target}.{self.name}"
        return self.target

    def __str__(self) -> str:
        return f"{self.where} `{self.statement}`"


def _source_roots() -> dict[str, Path]:
    """Top-level project name -> its folder: the distribution's packages, then tests, bench, examples."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    tops = {package.split(".")[0] for package in setuptools["packages"]}
    roots = {top: ROOT / package_dir.get(top, top) for top in sorted(tops)}
    roots.update({name: ROOT / name for name in ("tests", "bench", "examples")})
    return roots


def discover(top: str, folder: Path) -> list[Module]:
    """Every .py file under `folder`, named as `import` names it."""
    modules = []
    for path in sorted(folder.rglob("*.py")):
        parts = [top, *path.relative_to(folder).with_suffix("").parts]
        if any(part == "__pycache__" or part.startswith(".") for part in parts):
            continue
        is_package = parts[-1] == "__init__"
        modules.append(Module(".".join(parts[:-1] if is_package else parts), path, is_package))
    return modules


ROOTS = _source_roots()
FIRST_PARTY = frozenset(ROOTS)
MODULES = {m.name: m for top, folder in ROOTS.items() for m in discover(top, folder)}
KNOWN = frozenset(MODULES)
AGENT_AND_BRIDGE = sorted(n for n in MODULES if n.split(".")[0] in ("agent", "bridge"))
AGENT = [n for n in AGENT_AND_BRIDGE if n.split(".")[0] == "agent"]
BRIDGE = [n for n in AGENT_AND_BRIDGE if n.split(".")[0] == "bridge"]
SCANNED = sorted(n for n in MODULES if n.split(".")[0] in ("agent", "bridge", "tests", "bench", "examples"))


def within(module: str, prefixes: Iterable[str]) -> bool:
    """Whether `module` is one of `prefixes` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute module that `from <level dots><module> import ...` in `importer` reads."""
    if level == 0:
        assert module, "`from import` without a module"
        return module
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > len(package):
        raise ImportError(f"{importer}: {'.' * level}{module or ''} goes above the top-level package")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, runtime: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, at any depth, and whether it runs (not under `if TYPE_CHECKING:`)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, runtime
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.body:
            yield from _import_nodes(statement, False)
        for statement in node.orelse:
            yield from _import_nodes(statement, runtime)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _import_nodes(child, runtime)


def parse_imports(name: str, source: str, *, is_package: bool = False, path: str = "<source>") -> list[Import]:
    """The imports of module `name` (given its source), one per bound name."""
    found = []
    for node, runtime in _import_nodes(ast.parse(source, path)):
        where = f"{path}:{node.lineno}"
        if isinstance(node, ast.Import):
            found += [Import(name, where, f"import {a.name}", a.name, None, runtime) for a in node.names]
        else:
            target = resolve(name, is_package, node.level, node.module)
            written = "." * node.level + (node.module or "")
            found += [Import(name, where, f"from {written} import {a.name}", target, a.name, runtime)
                      for a in node.names]
    return found


def imports_of(name: str) -> list[Import]:
    module = MODULES[name]
    return parse_imports(name, module.path.read_text(), is_package=module.is_package, path=module.rel)


def layer_of(module: str) -> Layer:
    matches = [p for p in LAYERS if within(module, [p])]
    assert matches, f"{module}: no layer in DESIGN.md §2 covers it"
    return LAYERS[max(matches, key=len)]


def layer_violations(imports: Iterable[Import], layer: Layer, known: Collection[str] = KNOWN) -> list[str]:
    """Imports outside `layer`'s allowed first-party and third-party sets."""
    problems = []
    for imp in imports:
        target = imp.module(known)
        if target.split(".")[0] in FIRST_PARTY:
            # The root package `agent` (its __version__) imports nothing: every agent layer may
            # read it, which allows no submodule.
            root_ok = target == "agent" and layer.package.startswith("agent")
            if not root_ok and not within(target, layer.project):
                allowed = ", ".join(sorted(layer.project)) or "nothing from the project"
                problems.append(f"{imp}: {layer.package} may not import {target} (may: {allowed}) [{layer.rule}]")
        elif target.split(".")[0] not in STDLIB:
            spelled = [imp.target] if imp.name is None else [imp.target, f"{imp.target}.{imp.name}"]
            if not any(within(s, layer.third_party) for s in spelled):
                allowed = ", ".join(sorted(layer.third_party)) or "no third-party package"
                problems.append(f"{imp}: {layer.package} may not import {target} (may: {allowed}) [{layer.rule}]")
    return problems


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_name_violations(imports: Iterable[Import]) -> list[str]:
    """`_name`s imported from project modules (a dunder such as `__version__` is public)."""
    problems = []
    for imp in imports:
        if imp.target.split(".")[0] not in FIRST_PARTY:
            continue
        private = [p for p in [*imp.target.split("."), imp.name or ""] if _private(p)]
        if private:
            problems.append(f"{imp}: imports the private name {private[-1]} from another module "
                            "[DESIGN.md §2: no _private name imported from another module]")
    return problems


def bridge_use_violations(imports: Iterable[Import], public: Collection[str]) -> list[str]:
    """Any use of bridge other than `from bridge import <name in bridge.__all__>`."""
    rule = "[DESIGN.md §2 rule 3: agent uses bridge only as `from bridge import <name in bridge.__all__>`]"
    problems = []
    for imp in imports:
        if not within(imp.target, ["bridge"]):
            continue
        if imp.target != "bridge" or imp.name is None:
            problems.append(f"{imp}: reaches into bridge {rule}")
        elif imp.name not in public:
            problems.append(f"{imp}: {imp.name} is not in bridge.__all__ {rule}")
    return problems


def import_graph(imports: Mapping[str, Iterable[Import]], nodes: Collection[str]) -> dict[str, dict[str, Import]]:
    """Module -> module it imports at run time (first such import kept), over `nodes` only."""
    graph: dict[str, dict[str, Import]] = {node: {} for node in nodes}
    for importer, found in imports.items():
        for imp in found:
            target = imp.module(nodes)
            while target and target not in nodes:
                target = target.rpartition(".")[0]
            if imp.runtime and target and target != importer:
                graph[importer].setdefault(target, imp)
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One shortest cycle (first node repeated at the end) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) > 1 or start in graph.get(start, ()):
            cycles.append(_shortest_cycle(graph, start, set(component)))
    return sorted(cycles)


def _shortest_cycle(graph: Mapping[str, Iterable[str]], start: str, members: set[str]) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in graph.get(v, ()):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w in members and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is on no cycle")


def bridge_public_names() -> frozenset[str]:
    """bridge.__all__, read from bridge/__init__.py without importing it."""
    for node in ast.parse(MODULES["bridge"].path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError("bridge/__init__.py has no literal __all__")


# --------------------------------------------------------------------------------------------
# The tree obeys the rules


@pytest.mark.parametrize("module", AGENT_AND_BRIDGE)
def test_imports_follow_the_layer_table(module: str) -> None:
    """Each module imports only what its folder's row of the DESIGN.md §2 table allows."""
    problems = layer_violations(imports_of(module), layer_of(module))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", [m for m in BRIDGE if m not in BRIDGE_IO])
def test_bridge_is_sans_io_outside_its_io_modules(module: str) -> None:
    """Only bridge/node.py (and the opt-in eventloop.py) import an I/O module (rule 2)."""
    problems = []
    for imp in imports_of(module):
        target = imp.module(KNOWN)
        io = target.split(".")[0] in IO_MODULES or (module != "bridge" and within(target, BRIDGE_IO))
        if io and target not in EXCEPTIONS_ONLY.get(module, ()):
            problems.append(f"{imp}: {module} is sans-IO; only {', '.join(BRIDGE_IO)} do I/O "
                            "[DESIGN.md §2 rule 2]")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", AGENT_AND_BRIDGE)
def test_only_the_api_and_the_client_know_grpc_and_only_metrics_knows_prometheus(module: str) -> None:
    problems = []
    for imp in imports_of(module):
        if within(imp.target, ["grpc"]) and not within(module, GRPC_USERS):
            problems.append(f"{imp}: only {' and '.join(GRPC_USERS)} know grpc [DESIGN.md §2 rule 4]")
        if within(imp.target, ["prometheus_client"]) and module not in PROMETHEUS_USERS:
            problems.append(f"{imp}: only agent/daemon/metrics.py knows prometheus_client [DESIGN.md §2 rule 4]")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", AGENT)
def test_agent_uses_the_bridge_through_its_public_names_only(module: str) -> None:
    problems = bridge_use_violations(imports_of(module), bridge_public_names())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", [m for m in AGENT if within(m, ["agent.client.commands"])])
def test_client_commands_import_neither_each_other_nor_main(module: str) -> None:
    """commands/ holds click commands only; main.py alone registers them (DESIGN.md §2 layout)."""
    problems = []
    for imp in imports_of(module):
        target = imp.module(KNOWN)
        sibling = within(target, ["agent.client.commands"]) and target not in ("agent.client.commands", module)
        if sibling or within(target, ["agent.client.main"]):
            problems.append(f"{imp}: a command imports neither another command nor main "
                            "[DESIGN.md §2 layout: agent/client/commands]")
    assert not problems, "\n".join(problems)


ROOMS = ("agent.api", "agent.build", "agent.client", "agent.config", "agent.daemon", "agent.nodes",
         "agent.operations", "agent.release")


def room_of(module: str) -> str | None:
    if module == "agent.__main__":
        return "agent.daemon"  # `python -m agent` is the daemon's entry point
    return next((room for room in ROOMS if within(module, [room])), None)


def cross_room_violations(imports: Iterable[Import], known: Collection[str] = KNOWN) -> list[str]:
    """Imports of another room's modules: a room is used through its package (its __all__)."""
    problems = []
    for imp in imports:
        mine, target = room_of(imp.importer), imp.module(known)
        theirs = room_of(target)
        if theirs is not None and theirs != mine and target != theirs:
            problems.append(f"{imp}: {imp.importer} reaches into {target}; import {theirs} "
                            f"(add the name to its __all__) [DESIGN.md §2: rooms name their "
                            "public surface]")
    return problems


@pytest.mark.parametrize("module", AGENT)
def test_other_rooms_are_imported_as_packages(module: str) -> None:
    problems = cross_room_violations(imports_of(module))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_says_what_it_is_and_names_its_surface(room: str) -> None:
    init = ROOT / room.replace(".", "/") / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree) or ""
    assert len(doc) > 80 and "TODO" not in doc, f"{init}: say what the room is for and what it may not know"
    used = any(room_of(imp.module(KNOWN)) == room for m in AGENT if room_of(m) not in (room, None)
               for imp in imports_of(m))
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "__all__"]
    assert names or not used, f"{init}: other rooms import {room}, so it names its public surface in __all__"


@pytest.mark.parametrize("module", SCANNED)
def test_no_private_name_is_imported_from_another_module(module: str) -> None:
    problems = private_name_violations(imports_of(module))
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    """No cycle among bridge/ and agent/ modules through imports that run (TYPE_CHECKING ones don't)."""
    graph = import_graph({m: imports_of(m) for m in AGENT_AND_BRIDGE}, AGENT_AND_BRIDGE)
    reports = []
    for cycle in find_cycles(graph):
        edges = [f"    {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        reports.append(" -> ".join(cycle) + "\n" + "\n".join(edges))
    assert not reports, "import cycles [DESIGN.md §2: no import cycles]:\n" + "\n".join(reports)


def test_agent_top_level_holds_only_its_four_modules() -> None:
    extra = sorted(p.name for p in (ROOT / "agent").glob("*.py") if p.name not in AGENT_TOP_LEVEL)
    assert not extra, (f"agent/{extra}: agent/ holds only {sorted(AGENT_TOP_LEVEL)}; "
                       "the rest goes into its subpackages [DESIGN.md §2 layout]")


def test_every_folder_with_modules_is_a_listed_package_and_back() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {m.name for m in MODULES.values() if m.is_package and m.name.split(".")[0] in listed}
    folders = {m.path.parent for m in MODULES.values() if m.name.split(".")[0] in listed}
    problems = [f"{folder.relative_to(ROOT)}/ has .py files but no __init__.py" for folder in sorted(folders)
                if not (folder / "__init__.py").exists()]
    problems += [f"{name}: a package not in pyproject.toml [tool.setuptools] packages"
                 for name in sorted(found - listed)]
    problems += [f"{name}: in pyproject.toml [tool.setuptools] packages but no folder with __init__.py"
                 for name in sorted(listed - found)]
    assert not problems, "\n".join(problems)


def test_importing_the_client_loads_no_bridge_and_no_server_package() -> None:
    code = ("import agent.client.main, sys; "
            "print(sorted(m for m in sys.modules if m.startswith(('bridge','agent.'))))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, f"`import agent.client.main` failed:\n{run.stderr}"
    loaded = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    foreign = [m for m in loaded if not within(m, CLIENT_MAY_LOAD)]
    assert not foreign, (f"importing agent/client/main.py loads {foreign}; the client may load only "
                         f"{list(CLIENT_MAY_LOAD)} [DESIGN.md §2 rule 5]")


def test_public_names_are_exported() -> None:
    import bridge

    for name in ("Node", "Atom", "Pid", "Reference", "BadRpc", "CookieRejected", "NodeNotFound", "ConnectionLost"):
        assert name in bridge.__all__, f"bridge.__all__ lacks {name}"
    missing = [name for name in bridge.__all__ if not hasattr(bridge, name)]
    assert not missing, f"bridge/__init__.py: __all__ names {missing}, which bridge does not define"


# --------------------------------------------------------------------------------------------
# The checks themselves, on made-up sources


@pytest.mark.parametrize(("importer", "is_package", "level", "module", "expected"), [
    ("agent.client.main", False, 1, "status", "agent.client.status"),
    ("agent.client.main", False, 1, None, "agent.client"),
    ("agent.client.main", False, 2, None, "agent"),
    ("agent.client.main", False, 2, "errors", "agent.errors"),
    ("agent.client", True, 1, "status", "agent.client.status"),
    ("agent.client", True, 2, None, "agent"),
    ("bridge.node", False, 0, "asyncio", "asyncio"),
])
def test_resolve(importer: str, is_package: bool, level: int, module: str | None, expected: str) -> None:
    assert resolve(importer, is_package, level, module) == expected


def test_resolve_refuses_to_climb_above_the_top() -> None:
    with pytest.raises(ImportError):
        resolve("agent.errors", False, 2, None)


def test_parse_imports_resolves_names_and_marks_type_checking() -> None:
    source = ("import typing\nfrom . import status\nfrom ..release import steps as s\n"
              "if typing.TYPE_CHECKING:\n    from agent.nodes import Link\n"
              "def f() -> None:\n    import agent.api.service\n")
    found = parse_imports("agent.config.parse", source)
    known = {"agent.config.status", "agent.release.steps", "agent.api.service"}
    assert [(i.module(known), i.runtime) for i in found] == [
        ("typing", True), ("agent.config.status", True), ("agent.release.steps", True),
        ("agent.nodes", False), ("agent.api.service", True)]


def test_cross_room_imports_must_go_through_the_package() -> None:
    source = ("from agent.release import Options\nfrom agent.release.core import Steps\n"
              "from ..release import values\nfrom . import service\n")
    found = parse_imports("agent.api.messages", source, path="agent/api/messages.py")
    known = {"agent.release", "agent.release.core", "agent.release.values", "agent.api.service"}
    problems = cross_room_violations(found, known)
    assert len(problems) == 2
    assert problems[0].startswith("agent/api/messages.py:2 `from agent.release.core import Steps`")
    assert "import agent.release (add the name to its __all__)" in problems[0]
    assert "agent.release.values" in problems[1]


def test_layer_violations_name_file_import_and_rule() -> None:
    source = "from ..errors import ConfigError\nfrom agent.nodes import Link\nimport grpc\nimport tomllib\n"
    found = parse_imports("agent.config.parse", source, path="agent/config/parse.py")
    problems = layer_violations(found, LAYERS["agent.config"])
    assert len(problems) == 2
    assert problems[0].startswith("agent/config/parse.py:2 `from agent.nodes import Link`: agent.config")
    assert "grpc" in problems[1] and TABLE in problems[1]


def test_the_client_may_not_import_bridge_or_the_server() -> None:
    source = "from bridge import Node\nfrom agent.errors import AgentError\nfrom agent import relfile\nimport click\n"
    found = parse_imports("agent.client.common", source)
    problems = layer_violations(found, layer_of("agent.client.common"), known={"agent.relfile"})
    assert [p.split("`")[1] for p in problems] == ["from bridge import Node", "from agent.errors import AgentError"]


def test_private_names_are_found_in_every_spelling() -> None:
    source = ("from tests.tools.otp_procs import _track, free_port\nimport bridge._impl\n"
              "from .session import _frame\nfrom agent import __version__\nfrom os import _exit\n")
    found = parse_imports("bridge.node", source)
    assert [p.split("`")[1] for p in private_name_violations(found)] == [
        "from tests.tools.otp_procs import _track", "import bridge._impl", "from .session import _frame"]


def test_bridge_use_allows_only_public_names_from_the_package() -> None:
    source = "from bridge import Node, _secret\nfrom bridge.node import Node\nimport bridge\nfrom bridge import Atom\n"
    found = parse_imports("agent.nodes.link", source)
    problems = bridge_use_violations(found, {"Node", "Atom"})
    assert [p.split("`")[1] for p in problems] == [
        "from bridge import _secret", "from bridge.node import Node", "import bridge"]


def test_find_cycles_reports_one_shortest_cycle_per_component() -> None:
    graph = {"a": ["b"], "b": ["c", "a"], "c": ["a"], "d": ["d"], "e": ["f"], "f": []}
    assert find_cycles(graph) == [["a", "b", "a"], ["d", "d"]]
    assert find_cycles({"a": ["b"], "b": []}) == []


def test_import_graph_skips_type_checking_and_maps_from_imports_to_modules() -> None:
    sources = {
        "agent.config": "from .parse import load\n",
        "agent.config.parse": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.config import X\n",
        "agent.release": "from . import steps\n",
        "agent.release.steps": "from agent.release import Step\n",
    }
    imports = {name: parse_imports(name, source, is_package=name.count(".") == 1) for name, source in sources.items()}
    graph = import_graph(imports, sources)
    assert find_cycles(graph) == [["agent.release", "agent.release.steps", "agent.release"]]
