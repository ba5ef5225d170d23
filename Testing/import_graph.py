"""The library's internal import graph, read from the source (ast, nothing imported).

    python Testing/import_graph.py            # modules by layer, their imports, any cycle
    python Testing/import_graph.py --dot      # Graphviz

Every ``from . import x`` / ``from .x import y`` between modules of
ProgressiveRegistrationLib is an edge; imports inside functions are reported apart
(the library has none). Modules live in subpackages, which are layered too
(``PACKAGE_LAYERS``): a module imports only from its own package and from packages on
lower layers.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "ProgressiveRegistration" / "ProgressiveRegistrationLib"

#: The subpackages, bottom first: a package imports only from packages on lower layers
#: (docs/ARCHITECTURE.md). The root ``__init__`` imports nothing and may be imported by all
#: (``__version__``); ``__main__`` is above everything.
PACKAGE_LAYERS = {
    "__init__": -1,
    "core": 0,
    "io": 1, "simulation": 1,
    "model": 2,
    "registration": 3,
    "training": 4, "slicer": 4, "batch": 4,
    "cli": 5,
    "__main__": 6,
}


def modules(root: Path = LIB) -> dict[str, Path]:
    """Module name (dotted, relative to the package) -> file."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts) or "__init__"] = path
    return found


def _resolve(current: str, is_package: bool, level: int, target: str | None, known: set[str]) -> list[str]:
    base = current.split(".") if current != "__init__" else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    name = ".".join(base + ([target] if target else []))
    return [name or "__init__"]


def edges(root: Path = LIB) -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> modules it imports at module level, [(module, imported, line) inside functions])."""
    mods = modules(root)
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    nested: list[tuple[str, str, int]] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            targets = []
            for base in _resolve(name, is_package, node.level, node.module, known):
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base != "__init__" else alias.name
                    targets.append(sub if sub in known else base)
            for t in targets:
                if t == name or t not in known:
                    continue
                if id(node) in top or _in_type_checking(tree, node):
                    graph[name].add(t)
                else:
                    nested.append((name, t, node.lineno))
    return graph, nested


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and any(n is node for n in ast.walk(stmt)):
            return True  # module-level conditional import
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    """The subpackage a module belongs to (``"core.grid"`` -> ``"core"``); the root's files are their own."""
    return module.split(".")[0]


def package_violations(graph: dict[str, set[str]], ranks: dict[str, int] = PACKAGE_LAYERS) -> list[str]:
    """Every import that crosses packages sideways or upwards, and every package missing from ``ranks``."""
    bad = []
    for a in sorted(graph):
        pa = package_of(a)
        if pa not in ranks:
            bad.append(f"{a}: package {pa!r} has no layer")
            continue
        for b in sorted(graph[a]):
            pb = package_of(b)
            if pb != pa and ranks.get(pb, 99) >= ranks[pa]:
                bad.append(f"{a} -> {b} ({pa} on layer {ranks[pa]} imports {pb} on layer {ranks.get(pb, '?')})")
    return bad


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Layer of each module: 0 imports nothing of the library, n imports layers below n only."""
    layer: dict[str, int] = {}
    remaining = dict(graph)
    level = 0
    while remaining:
        ready = [m for m, deps in remaining.items() if all(d in layer for d in deps)]
        if not ready:  # a cycle: put the rest on one layer
            for m in remaining:
                layer[m] = level
            break
        for m in ready:
            layer[m] = level
            del remaining[m]
        level += 1
    return layer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dot", action="store_true")
    p.add_argument("--all", action="store_true", help="count imports inside functions as edges too")
    args = p.parse_args(argv)
    graph, nested = edges()
    if args.all:
        for a, b, _ in nested:
            graph[a].add(b)
    if args.dot:
        print("digraph progreg {\n  rankdir=BT;")
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    lay = layers(graph)
    for level in sorted(set(lay.values())):
        print(f"layer {level}:")
        for m in sorted(k for k, v in lay.items() if v == level):
            print(f"  {m:<26} <- {', '.join(sorted(graph[m])) or '-'}")
    print(f"imports inside functions: {len(nested)}")
    for a, b, line in nested:
        print(f"  {a}:{line} -> {b}")
    found = cycles(graph)
    print(f"cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    crossing = package_violations(graph)
    print("packages, bottom first: " + " < ".join(
        "/".join(p for p, r in PACKAGE_LAYERS.items() if r == rank) for rank in sorted(set(PACKAGE_LAYERS.values()))))
    print(f"imports against the package layers: {len(crossing)}" + "".join(f"\n  {c}" for c in crossing))
    return 1 if found or crossing else 0


if __name__ == "__main__":
    sys.exit(main())
