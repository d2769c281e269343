"""The architecture as a test: each layer imports only from the layers below it (README,
"Architecture"). A module's layer is its top-level package under shmarray/; every import is
counted, at module level or inside a function, so no cycle can hide behind a lazy import."""

from __future__ import annotations

import ast
import pathlib

import shmarray

# lowest first; a name maps to the package (or module) shmarray/<name>[.py]
LAYERS: list[set[str]] = [
    {"errors"},
    {"_os", "_ring", "_lease"},  # the OS layer and the C core it loads (csrc/)
    {"array"},
    {"channel"},
    {"pool", "aio"},  # built on channels: the worker pool; the asyncio twins
    {"dask", "bridge"},  # integrations: optional extras, imported only when used
    {"cli"},
]
FACADE = "__init__"  # shmarray/__init__.py: re-exports the layers up to the pool
# from here up (integrations, the CLI) a module may use the public API as users do
ABOVE_FACADE = 5
ROOT = pathlib.Path(shmarray.__file__).parent


def _rank(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"shmarray/{part} is in no layer: add it to LAYERS (and to the README's "
                         "architecture section)")


def _module(path: pathlib.Path) -> list[str]:
    rel = path.relative_to(ROOT).with_suffix("")
    return list(rel.parts)


def _is_module(name: str) -> bool:
    return (ROOT / f"{name}.py").exists() or (ROOT / name).is_dir() or any(
        ROOT.glob(f"{name}.*.so"))


def _imports(path: pathlib.Path) -> list[tuple[int, list[str]]]:
    """(line, target module path under shmarray, or [FACADE]) of every shmarray import in
    ``path``."""
    package = _module(path)[:-1]  # (for a package's __init__ too)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "shmarray":
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # from shmarray import x: a module, or a name of the facade
                out += [(node.lineno, [a.name] if _is_module(a.name) else [FACADE])
                        for a in node.names]
            else:
                out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1:] or [FACADE]) for a in node.names
                    if a.name.split(".")[0] == "shmarray"]
    return out


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _module(path)
        if here == [FACADE]:
            continue
        mine = _rank(here[0])
        for line, target in _imports(path):
            if target == [FACADE]:
                if mine >= ABOVE_FACADE:
                    continue
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports the shmarray facade: "
                             "import the module that defines the name")
                continue
            theirs = _rank(target[0])
            if theirs > mine:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({here[0]}) imports "
                             f"{'.'.join(target)} from a higher layer")
    assert not wrong, "\n".join(wrong)


def test_every_layer_is_in_the_list() -> None:
    parts = {_module(p)[0] for p in ROOT.rglob("*.py")} - {FACADE}
    listed = set().union(*LAYERS)
    assert parts <= listed, sorted(parts - listed)
