"""Regenerates the Python stubs beside the .proto files (never edit the stubs by hand).

    .venv/bin/python proto/generate.py            # writes proto/relctl/v1/*_pb2*.py[i]
    .venv/bin/python proto/generate.py OUT_DIR    # writes under OUT_DIR (the stub test uses this)

Needs grpcio-tools (in the `dev` extra). Its bundled protoc decides the protobuf runtime the
stubs need: pyproject.toml pins `protobuf` to that major version.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.glob("relctl/v1/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every relctl/v1 proto; return the files written."""
    from grpc_tools import protoc  # a build tool, imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p for p in (out_dir / "relctl" / "v1").iterdir() if p.suffix in {".py", ".pyi"}
                  and p.name != "__init__.py")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(target):
        print(path)
