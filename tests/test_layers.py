"""Imports point down the layers of DESIGN.md, and protocol cores do no I/O (STYLE.md "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "corral"

# Layer of each top-level part of the package; a module may import only from its own or lower layers.
LAYERS = {
    "errors": 0,
    "limits": 0,
    "frozen": 0,
    "eventloop": 0,
    "model": 1,
    "records": 1,
    "store": 2,
    "core": 3,
    "rpc": 3,
    "config": 3,
    "sim": 4,
    "services": 4,
    "client": 4,
    "recipes": 5,
    "jobs": 5,
    "http": 6,
    "cli": 6,
    "__init__": 7,
    "__main__": 7,
}

# What a protocol core may import from the standard library: pure, deterministic modules only.
CORE_STDLIB = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "logging",
    "math",
    "random",
    "typing",
    "types",
}
CORE_CORRAL = {"corral.model", "corral.records", "corral.errors", "corral.limits", "corral.frozen", "corral.core"}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_every_part_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert _part(path) in LAYERS, f"{path} belongs to no layer; add it to LAYERS"


def test_imports_point_down() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        own = LAYERS[_part(path)]
        for name in _imports(path):
            if not name.startswith("corral."):
                continue
            target = name.split(".")[1]
            assert LAYERS[target] <= own, f"{path.relative_to(PACKAGE)} imports {name}, a higher layer"


def test_cores_do_no_io() -> None:
    cores = list((PACKAGE / "core").rglob("*.py"))
    assert cores
    for path in cores:
        for name in _imports(path):
            if name.startswith("corral"):
                assert any(name == a or name.startswith(a + ".") for a in CORE_CORRAL), (
                    f"core module {path.name} imports {name}"
                )
            else:
                assert name.split(".")[0] in CORE_STDLIB, f"core module {path.name} imports {name} (I/O?)"


# What a recipe may import from Corral: the client SDK (the public modules of `corral.client`), the
# types its calls take and return (model, errors), the protocol's limits, and other recipes. Not the
# wire (rpc), the servers (services), the protocol cores (core), the store, or the configuration: a
# recipe is written against the public client API only, like any user's code.
RECIPES_MAY_IMPORT = {
    "corral.client",
    "corral.client.aio",
    "corral.client.session",
    "corral.client.sync",
    "corral.errors",
    "corral.limits",
    "corral.model",
}


def _corral_modules(path: Path) -> list[str]:
    """The corral modules `path` imports, relative imports resolved; `from pkg import mod` names `pkg.mod`."""
    package = ["corral", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.append(module)
            for alias in node.names:
                sub = Path(PACKAGE.parent, *f"{module}.{alias.name}".split("."))
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    names.append(f"{module}.{alias.name}")
    return [n for n in names if n == "corral" or n.startswith("corral.")]


def test_recipes_use_only_the_public_client_api() -> None:
    recipes = list((PACKAGE / "recipes").rglob("*.py"))
    assert recipes
    for path in recipes:
        for name in _corral_modules(path):
            allowed = name in RECIPES_MAY_IMPORT or name == "corral.recipes" or name.startswith("corral.recipes.")
            assert allowed, f"recipe module {path.name} imports {name}, not part of the public client API"
