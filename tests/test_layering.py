"""The package's layers depend one way (docs/architecture.md), with no import cycle.

Every ``import`` statement of every module is read from its source, including imports inside functions,
so a lazy import cannot hide an upward dependency or a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parents[1]

# Lower rank = lower layer. A module may import modules of its own rank or below, never above.
LAYERS = {
    "hst_fast.constants": 0,
    "hst_fast.version": 0,
    "hst_fast.kernels": 1,
    "hst_fast.recompute": 1,  # recomputation in backward (torch only), used by the ViT and the side ops
    "hst_fast.backend": 2,
    "hst_fast.vit": 2,
    "hst_fast.adapter": 2,
    "hst_fast.data": 2,
    "hst_fast.hst": 3,
    "hst_fast.baselines": 3,
    "hst_fast.feature_cache": 4,
    "hst_fast.factory": 5,
    "hst_fast": 5,  # the package's __init__: the public API on top of the models
    "hst_fast.openmmlab": 6,
    "hst_fast.train": 6,
    "hst_fast.test": 6,
}
SIDE_BY_SIDE = ("hst_fast.hst", "hst_fast.baselines")  # neither imports the other
OPENMMLAB = ("mmcv", "mmdet", "mmengine", "mmseg", "mmpretrain")


def module_files() -> Dict[str, Path]:
    """{dotted module name: source file} for hst_fast and hst_fast.kernels (installed from kernels/)."""
    files = {}
    for package, folder in (("hst_fast", ROOT / "hst_fast"), ("hst_fast.kernels", ROOT / "kernels")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


def imported_names(path: Path, module: str, is_package: bool) -> Set[str]:
    """Absolute dotted names every import statement of ``path`` names (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def internal_graph() -> Dict[str, Set[str]]:
    """{module: the hst_fast modules it imports}; ``from pkg import sub`` counts as importing ``pkg.sub`` only."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        names = imported_names(path, module, path.name == "__init__.py")
        edges = {name for name in names if name in files}
        # `from pkg import sub` names both pkg and pkg.sub: keep the submodule, drop the package it came from.
        edges -= {name.rpartition(".")[0] for name in edges if name.rpartition(".")[0] in edges and name in files}
        edges.discard(module)
        graph[module] = edges
    return graph


def layer_of(module: str) -> str:
    return max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)


def test_every_module_has_a_layer():
    unplaced = [m for m in module_files() if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"modules without a layer in tests/test_layering.py: {unplaced}"


def test_no_module_imports_upward():
    upward = []
    for module, edges in internal_graph().items():
        for target in edges:
            if LAYERS[layer_of(target)] > LAYERS[layer_of(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "upward imports: " + ", ".join(sorted(upward))


def test_hst_and_baselines_stay_side_by_side():
    crossing = [
        f"{module} -> {target}" for module, edges in internal_graph().items() for target in edges
        if {layer_of(module), layer_of(target)} == set(SIDE_BY_SIDE)
    ]
    assert not crossing, "HST and the baselines import each other: " + ", ".join(crossing)


def test_no_import_cycle():
    graph = internal_graph()
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_only_the_openmmlab_layer_imports_openmmlab_packages():
    files = module_files()
    offenders = []
    for module, path in files.items():
        if LAYERS[layer_of(module)] >= LAYERS["hst_fast.openmmlab"]:
            continue
        names = imported_names(path, module, path.name == "__init__.py")
        offenders += [f"{module} imports {name}" for name in names if name.split(".")[0] in OPENMMLAB]
    assert not offenders, "; ".join(offenders)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from hst_fast.factory import create_model\nfrom .sibling import thing\n")
    names = imported_names(source, "hst_fast.hst.mod", is_package=False)
    assert "hst_fast.factory" in names and "hst_fast.hst.sibling" in names
