"""The library's layering: its imports form a DAG, all at module level, the subpackages are
layered (a package imports only from lower ones), and only the command line writes to the
terminal (``Testing/import_graph.py`` prints the graph)."""

from __future__ import annotations

import ast
from pathlib import Path

import import_graph


def test_library_imports_form_a_dag():
    graph, _ = import_graph.edges()
    assert import_graph.cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_graph.cycles(graph) == [["a", "b", "c"]]
    assert import_graph.layers({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == {"b": 0, "a": 1, "c": 2}


def test_library_imports_are_at_module_level():
    # The package's public names are loaded lazily through importlib (PEP 562 __getattr__), which keeps
    # `import ProgressiveRegistrationLib` free of torch for the Slicer module's dependency check.
    _, nested = import_graph.edges()
    assert nested == []


def test_subpackages_follow_the_package_layers():
    graph, _ = import_graph.edges()
    assert import_graph.package_violations(graph) == []
    on_disk = {p.name for p in import_graph.LIB.iterdir() if (p / "__init__.py").exists()}
    assert on_disk == set(import_graph.PACKAGE_LAYERS) - {"__init__", "__main__"}
    # The root holds only the package's entry files: every module lives in a subpackage.
    assert sorted(p.name for p in import_graph.LIB.glob("*.py")) == ["__init__.py", "__main__.py"]


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in sorted(import_graph.LIB.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "Imports:" in doc and len(doc) > 80, init


def test_testing_mirrors_the_library():
    """Testing/<package>/test_<module>.py tests <package>.<module>; the project-wide tests sit at the top."""
    testing = Path(__file__).resolve().parent
    modules = set(import_graph.modules())
    folders = {p.name for p in testing.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders <= set(import_graph.PACKAGE_LAYERS), folders
    for test in sorted(testing.glob("*/test_*.py")):
        name = test.stem.removeprefix("test_")
        assert f"{test.parent.name}.{name}" in modules or name == test.parent.name, test


def test_the_package_check_finds_a_planted_violation():
    graph, _ = import_graph.edges()
    planted = {k: set(v) for k, v in graph.items()}
    planted["core.grid"].add("registration.engine")   # upwards
    planted["io.images"].add("simulation.phantom")    # sideways, same layer
    found = import_graph.package_violations(planted)
    assert len(found) == 2 and "core.grid -> registration.engine" in found[0] and "io.images" in found[1]
    assert import_graph.package_violations({"newpkg.x": set()}) == ["newpkg.x: package 'newpkg' has no layer"]


def test_every_module_is_in_the_graph_and_low_layers_stay_low():
    graph, _ = import_graph.edges()
    layer = import_graph.layers(graph)
    assert set(graph) == set(import_graph.modules())
    for leaf in ("core.errors", "core.jit", "model.schedule", "io.resources", "core.grid",
                 "slicer.requirements", "slicer.jobs"):
        assert layer[leaf] == 0, leaf
    # Data and I/O never reach up into the engine or the trainer.
    up = {"registration.engine", "registration.pipeline", "training.trainer", "registration.evaluation", "cli",
          "slicer.mrml"}
    for low in ("io.images", "io.landmarks", "core.transforms", "core.warp", "io.dirlab", "core.lungs",
                "model.preprocess", "model.network", "registration.refine"):
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
