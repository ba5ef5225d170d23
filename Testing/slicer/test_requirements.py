"""The module's dependency check, package by package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import MODULE_DIR

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}")
            return None
    for name in list(sys.modules):
        if name.split(".")[0] in {blocked!r}:
            del sys.modules[name]
    sys.meta_path.insert(0, Block())
    from ProgressiveRegistrationLib.slicer import requirements
    print(repr((requirements.torch_problem(), requirements.missing_pip_packages())))
""")


def _check_with_blocked(*blocked: str):
    r = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=set(blocked))], cwd=MODULE_DIR,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    import ast

    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


def test_dependencies_are_checked_one_by_one():
    """With torch present (the PyTorch extension's usual case) a missing matplotlib is still
    found; with everything present nothing is missing; a missing torch is reported."""
    assert _check_with_blocked() == (None, [])
    torch_problem, missing = _check_with_blocked("matplotlib")
    assert torch_problem is None and missing == ["matplotlib>=3.7"]
    torch_problem, missing = _check_with_blocked("torch", "yaml", "numba")
    assert torch_problem == "PyTorch is not installed" and missing == ["PyYAML>=6", "numba>=0.59"]


def test_torch_version_comparison():
    from ProgressiveRegistrationLib.slicer.requirements import _version_tuple

    assert _version_tuple("2.13.0+cpu") > _version_tuple("2.2") > _version_tuple("2.1.2")
    assert _version_tuple("2.2.0a0") >= _version_tuple("2.2")
    assert all(_version_tuple(v) < (2, 2) for v in ("1.13.1", "2.0.0"))
