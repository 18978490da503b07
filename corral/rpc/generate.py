"""Regenerate corral_pb2.py, corral_pb2_grpc.py and corral_pb2.pyi from corral.proto.

`python -m corral.rpc.generate` writes them next to the proto; `--check` exits 1 if they differ
from what is committed (run by the test suite, so the generated code can't drift from the proto).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
OUTPUTS = ("corral_pb2.py", "corral_pb2_grpc.py", "corral_pb2.pyi", "corral_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev dependency, for regenerating

    # mypy-protobuf's plugins sit next to this interpreter; they type the stubs strictly.
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{HERE}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(HERE / "corral.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes `import corral_pb2`; make it an import from this package.
    for name in ("corral_pb2_grpc.py", "corral_pb2_grpc.pyi"):
        path = out_dir / name
        text = re.sub(
            r"^import corral_pb2 as (\w+)$", r"from corral.rpc import corral_pb2 as \1", path.read_text(), flags=re.M
        )
        path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the committed files; change nothing")
    args = parser.parse_args()
    if not args.check:
        generate(HERE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [name for name in OUTPUTS if (Path(tmp) / name).read_text() != (HERE / name).read_text()]
    if stale:
        print(f"generated files are stale: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
