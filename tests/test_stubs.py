"""The committed stubs are exactly what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    fresh = generate.generate(tmp_path)
    assert {p.name for p in fresh} == {"agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"}
    for path in fresh:
        committed = ROOT / "proto" / "relctl" / "v1" / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} differs from the .proto: run .venv/bin/python proto/generate.py")
