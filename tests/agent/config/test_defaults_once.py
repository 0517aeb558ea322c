"""Each default once, in agent/config/values.py (DESIGN.md §2): read from the source with `ast`,
no parameter or field outside agent/config that is named as a setting has a default of its own,
and no module outside it keeps a DEFAULT_* constant. Allowed: None ("the config decides"), and
the one default itself, named from agent.config (``NodeConfig.install_timeout``,
``RESTART_TIMEOUT``), as the engine's Options does.

What this cannot see, and why: a default restated under another name (``timeout: float =
30.0`` for rpc_timeout) looks like any other number; comparing values instead flags dozens of
unrelated constants that merely equal a default (5.0, 10.0, 64, 8 GiB). Constructors therefore
name the keyword as the setting (NodeLink(reconnect_max_delay=...), UploadStore(
max_upload_bytes=...)), which is what makes them checkable here.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from agent.client.common import DEFAULT_AGENT
from agent.config import AgentConfig, NodeConfig
from agent.config import values as config_values

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("agent", "bench")
OWNER = ROOT / "agent" / "config"

# The settings: every number of [agent] and [[nodes]] (DiscoveryConfig's `interval` and Hook's
# `timeout` are left out: names that generic are used for other things), and the operation
# options whose default values.py holds as a constant.
SETTINGS: dict[str, str] = {
    f.name: f"{cls.__name__}.{f.name}"
    for cls in (AgentConfig, NodeConfig) for f in dataclasses.fields(cls)
    if isinstance(f.default, int | float) and not isinstance(f.default, bool)}
SETTINGS["restart_timeout"] = "RESTART_TIMEOUT"
assert hasattr(config_values, "RESTART_TIMEOUT")


@dataclasses.dataclass(frozen=True)
class Restated:
    file: str
    line: int
    name: str
    default: str

    def __str__(self) -> str:
        owner = SETTINGS.get(self.name, "values.py")
        return (f"{self.file}:{self.line}: {self.name} = {self.default} restates a default "
                f"({owner} in agent/config/values.py): take it as a required argument")


def _defaults(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    """(name, default) of every parameter and class-level field with a default, and of every
    module-level constant."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            yield from zip((a.arg for a in positional[len(positional) - len(args.defaults):]),
                           args.defaults)
            yield from ((a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults)
                        if d is not None)
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (isinstance(statement, ast.AnnAssign) and statement.value is not None
                        and isinstance(statement.target, ast.Name)):
                    yield statement.target.id, statement.value


def _constants(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    for statement in tree.body:
        targets = (statement.targets if isinstance(statement, ast.Assign)
                   else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name) and statement.value is not None:
                yield target.id, statement.value


def _from_config(tree: ast.Module) -> frozenset[str]:
    """The names the module imports from agent.config (or its modules)."""
    return frozenset(alias.asname or alias.name for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module is not None
                     and (node.module == "agent.config" or node.module.startswith("agent.config."))
                     for alias in node.names)


def _allowed(default: ast.expr, config_names: frozenset[str]) -> bool:
    """None, or the default itself taken from agent.config (a name or one of its fields)."""
    if isinstance(default, ast.Constant) and default.value is None:
        return True
    if isinstance(default, ast.Attribute):
        default = default.value
    return isinstance(default, ast.Name) and default.id in config_names


def restated(source: str, file: str) -> list[Restated]:
    tree = ast.parse(source)
    config_names = _from_config(tree)
    found = [Restated(file, default.lineno, name, ast.unparse(default))
             for name, default in _defaults(tree)
             if name in SETTINGS and not _allowed(default, config_names)]
    found += [Restated(file, value.lineno, name, ast.unparse(value))
              for name, value in _constants(tree) if name.startswith("DEFAULT_")]
    return found


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if not path.is_relative_to(OWNER):
                yield path


def _found() -> list[Restated]:
    found: list[Restated] = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        # The client is another program: it keeps its own defaults (DEFAULT_TIMEOUT, ...), and
        # may not import agent.config; it restates none by name (checked), only its own.
        found += [r for r in restated(path.read_text(), rel)
                  if not (rel.startswith("agent/client/") and r.name.startswith("DEFAULT_"))]
    return found


def test_no_default_of_a_setting_is_restated_outside_agent_config() -> None:
    problems = [str(r) for r in _found()]
    assert not problems, "\n".join(problems)


def test_the_clients_default_agent_is_the_agents_default_listen_address() -> None:
    """The client may not import agent.config (DESIGN.md §2 rule 5): the one default both
    sides need is written twice, and held equal here."""
    assert DEFAULT_AGENT == config_values.DEFAULT_LISTEN


# --- the check itself, on made-up sources --------------------------------------------------

MADE_UP = '''
from agent.config import RESTART_TIMEOUT, NodeConfig

DEFAULT_LIMIT = 2 * 1024**3
RETRIES = 3

def connect(host, rpc_timeout=30.0, *, reconnect_max_delay: float = DEFAULT_LIMIT,
            install_timeout: float | None = None, timeout: float = 5.0) -> None: ...

class Store:
    max_upload_bytes: int = 5
    upload_idle_expiry: float
    health_soak: float | None = None
    install_timeout: float = NodeConfig.install_timeout
    restart_timeout: float = RESTART_TIMEOUT
    connect_timeout: float = Elsewhere.connect_timeout

call = lambda metrics_idle_timeout=10.0: metrics_idle_timeout
'''


def test_the_check_finds_each_kind_of_restatement_and_allows_none() -> None:
    found = {(r.name, r.default) for r in restated(MADE_UP, "made_up.py")}
    assert found == {("DEFAULT_LIMIT", "2 * 1024 ** 3"), ("rpc_timeout", "30.0"),
                     ("reconnect_max_delay", "DEFAULT_LIMIT"), ("max_upload_bytes", "5"),
                     ("metrics_idle_timeout", "10.0"),
                     ("connect_timeout", "Elsewhere.connect_timeout")}
    [message] = [str(r) for r in restated(MADE_UP, "made_up.py") if r.name == "rpc_timeout"]
    assert message == ("made_up.py:7: rpc_timeout = 30.0 restates a default "
                       "(AgentConfig.rpc_timeout in agent/config/values.py): take it as a "
                       "required argument")

