"""DESIGN.md section 2, enforced: what each package may import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANS_IO = {"codec", "epmd", "handshake", "session", "flags", "terms", "errors", "erlfmt"}
IO_MODULES = {"asyncio", "socket", "selectors", "select", "ssl", "subprocess", "threading"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_bridge_uses_only_the_standard_library() -> None:
    for path in sorted((ROOT / "bridge").glob("*.py")):
        foreign = {name for name in imports_of(path) if name not in sys.stdlib_module_names}
        assert not foreign, f"{path.name} imports {foreign}; bridge is standard library only"


def test_protocol_core_is_sans_io() -> None:
    for name in sorted(SANS_IO):
        used = imports_of(ROOT / "bridge" / f"{name}.py") & IO_MODULES
        assert not used, f"bridge/{name}.py imports {used}; the protocol core does no I/O"


def test_public_names_are_exported() -> None:
    import bridge

    for name in ("Node", "Atom", "Pid", "Reference", "BadRpc", "CookieRejected", "NodeNotFound", "ConnectionLost"):
        assert name in bridge.__all__ and hasattr(bridge, name)


CLIENT = {"cli.py", "cli_ops.py", "cli_build.py", "cli_auth.py", "cli_audit.py", "cli_fleet.py",
          "relup_tool.py", "relfile.py"}  # the `relctl` client: no bridge, no daemon code


def _agent_modules() -> list[Path]:
    return sorted((ROOT / "agent").glob("*.py"))


def test_agent_uses_the_bridge_through_its_public_names_only() -> None:
    import bridge

    for path in _agent_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge"):
                assert node.module == "bridge", f"{path.name} imports {node.module}"
                private = [a.name for a in node.names if a.name not in bridge.__all__]
                assert not private, f"{path.name} imports non-public bridge names {private}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("bridge.") for a in node.names), path.name


def test_only_the_servicer_and_the_client_know_grpc_and_only_metrics_knows_prometheus() -> None:
    for path in _agent_modules():
        used = imports_of(path)
        if "grpc" in used:
            assert path.name in {"service.py", "interceptor.py"} | CLIENT, \
                f"{path.name} imports grpc"
        if "prometheus_client" in used:
            assert path.name == "metrics.py", f"{path.name} imports prometheus_client"


def test_the_client_imports_only_stubs_grpc_click_and_the_standard_library() -> None:
    allowed = {"grpc", "click", "relctl", "google", "__future__"}  # google: protobuf runtime
    for name in sorted(CLIENT):
        path = ROOT / "agent" / name
        foreign = {n for n in imports_of(path) if n not in sys.stdlib_module_names} - allowed
        assert not foreign, f"agent/{name} imports {foreign}"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                sibling = f"{node.module or ''}.py" if node.module else None
                names = [f"{a.name}.py" for a in node.names] if sibling is None else [sibling]
                assert set(names) <= CLIENT, f"agent/{name} imports agent modules {names}"
