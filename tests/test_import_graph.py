"""The import graph of dsv3_jax and pallas_kernels (docs/architecture.md "Layers"): no import circles between
modules or between subpackages, and every arrow points down the layering

    cli -> {train, infer, interop, analysis} -> experiment_config -> {parallel, data} -> {model, layer_split} -> layers
        -> {quant -> kernels} -> bottom

where the bottom is config, config_fields, sharding, registry and param_tree. Imports are read from the source (every
import statement, also those inside functions), not by importing anything.

    python tests/test_import_graph.py      prints the graph facts (cycles, layer violations, line counts)
"""

from __future__ import annotations

import ast
import os
import sys
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("dsv3_jax", "pallas_kernels")
BOTTOM = {"dsv3_jax.config", "dsv3_jax.config_fields", "dsv3_jax.sharding", "dsv3_jax.registry",
          "dsv3_jax.param_tree"}
LEVEL = {  # higher imports lower only
    "bottom": 0, "pallas_kernels": 1, "dsv3_jax.quant": 2, "dsv3_jax.layers": 3, "dsv3_jax.model": 4,
    "dsv3_jax.losses": 4, "dsv3_jax.layer_split": 4, "dsv3_jax.data": 4, "dsv3_jax.parallel": 5,
    "dsv3_jax.experiment_config": 5.5,  # the run config: model + data + mesh + train blocks
    "dsv3_jax.config_args": 5.7,  # config files and --config.x=y on the command line (every tool)
    "dsv3_jax.train": 6, "dsv3_jax.infer": 7, "dsv3_jax.interop": 8, "dsv3_jax.analysis": 8, "dsv3_jax.cli": 9,
    "dsv3_jax": 10,  # the package __init__ (public API)
}


def modules() -> dict[str, str]:
    """{dotted module name: file path} of every .py file under the roots."""
    out = {}
    for root in ROOTS:
        for d, _, files in os.walk(os.path.join(REPO, root)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def imports_of(name: str, path: str, known: set[str]) -> set[str]:
    """Internal modules `name` imports (`from a import b` counts a.b when that is a module)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a package path: the longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> str:
    if module in BOTTOM:
        return "bottom"
    if module.endswith(".__main__"):  # `python -m pkg` entry points are command lines: the cli layer
        return "dsv3_jax.cli"
    best = max((k for k in LEVEL if module == k or module.startswith(k + ".")), key=len)
    return best


def package_graph(g) -> dict[str, set[str]]:
    out = defaultdict(set)
    for m, deps in g.items():
        for d in deps:
            if layer_of(d) != layer_of(m):
                out[layer_of(m)].add(layer_of(d))
    return out


def upward(g) -> list[tuple[str, str]]:
    """(importer, imported) pairs that point up the layering (or sideways between level-peers)."""
    bad = []
    for m, deps in g.items():
        for d in deps:
            lm, ld = layer_of(m), layer_of(d)
            if lm != ld and LEVEL[ld] >= LEVEL[lm]:
                bad.append((m, d))
    return sorted(bad)


def test_no_import_cycles_between_modules():
    assert cycles(graph()) == []


def test_no_import_cycles_between_subpackages():
    assert cycles(package_graph(graph())) == []


def test_every_import_points_down_the_layering():
    assert upward(graph()) == []


def test_layers_import_nothing_above_them():
    forbidden = ("dsv3_jax.train", "dsv3_jax.infer", "dsv3_jax.data", "dsv3_jax.parallel", "dsv3_jax.model",
                 "dsv3_jax.cli", "dsv3_jax.interop", "dsv3_jax.analysis")
    g = graph()
    bad = [(m, d) for m, deps in g.items() if m.startswith("dsv3_jax.layers") for d in deps
           if d.startswith(forbidden)]
    assert bad == []


def test_kernels_import_nothing_of_the_model_package():
    g = graph()
    assert [(m, d) for m, deps in g.items() if m.startswith("pallas_kernels") for d in deps
            if d.startswith("dsv3_jax")] == []


def line_count(prefix: str) -> int:
    return sum(sum(1 for _ in open(p, encoding="utf-8")) for m, p in modules().items()
               if m == prefix or m.startswith(prefix + "."))


if __name__ == "__main__":
    g = graph()
    print(f"modules: {len(g)}, internal import edges: {sum(map(len, g.values()))}")
    print(f"module cycles: {cycles(g)}")
    print(f"subpackage cycles: {cycles(package_graph(g))}")
    print(f"imports pointing up the layering: {upward(g)}")
    for prefix in ("dsv3_jax.layers", "dsv3_jax.infer", "dsv3_jax.parallel.pipeline", "dsv3_jax.model"):
        print(f"lines of {prefix}: {line_count(prefix)}")
