"""The library's layering: its imports form a DAG, all at module level, and only the
command line writes to the terminal (``Testing/import_graph.py`` prints the graph)."""

from __future__ import annotations

import ast

import import_graph


def test_library_imports_form_a_dag():
    graph, _ = import_graph.edges()
    assert import_graph.cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_graph.cycles(graph) == [["a", "b", "c"]]
    assert import_graph.layers({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == {"b": 0, "a": 1, "c": 2}


def test_library_imports_are_at_module_level():
    # The one exception: the package's lazy entry point, which keeps `import ProgressiveRegistrationLib`
    # free of torch for the Slicer module's dependency check.
    _, nested = import_graph.edges()
    assert [(a, b) for a, b, _ in nested] == [("__init__", "mrml")]


def test_every_module_is_in_the_graph_and_low_layers_stay_low():
    graph, _ = import_graph.edges()
    layer = import_graph.layers(graph)
    assert set(graph) == set(import_graph.modules())
    for leaf in ("errors", "atomic", "jit", "schedule", "resources", "grid", "requirements", "jobs"):
        assert layer[leaf] == 0, leaf
    # Data and I/O never reach up into the engine or the trainer.
    up = {"engine", "pipeline", "trainer", "evaluation", "cli", "mrml"}
    for low in ("images", "landmarks", "transforms", "warp", "dirlab", "lungs", "preprocess", "network", "refine"):
        reach, todo = set(), [low]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in reach:
                    reach.add(dep)
                    todo.append(dep)
        assert not reach & up, (low, reach & up)


def test_only_the_command_line_prints():
    printing = []
    for name, path in import_graph.modules().items():
        if name == "cli" or name.startswith("cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                printing.append(f"{name}:{node.lineno}")
    assert printing == []
