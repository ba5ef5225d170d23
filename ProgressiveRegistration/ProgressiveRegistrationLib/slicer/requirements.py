"""What the library needs in Slicer's Python, checked package by package (standard library
only: it runs before any of them is importable).

Slicer bundles numpy, SimpleITK (and VTK): those are never installed. PyTorch comes from
Slicer's PyTorch extension (``PyTorchUtils``, which picks the CPU or CUDA build); the
rest from pip.
"""

from __future__ import annotations

import importlib

#: The oldest torch the library is tested with.
TORCH_MINIMUM = "2.2"

#: (import name, pip requirement) of what Slicer does not bundle, besides torch.
PIP_PACKAGES = (
    ("matplotlib", "matplotlib>=3.7"),
    ("yaml", "PyYAML>=6"),
    ("numba", "numba>=0.59"),
    ("psutil", "psutil>=5"),
)


def importable(name: str) -> bool:
    """Whether ``import name`` works (an import that fails for any reason counts as missing)."""
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - a broken install is as missing as an absent one
        return False


def missing_pip_packages() -> list[str]:
    """pip requirements of the packages besides torch that cannot be imported."""
    return [requirement for name, requirement in PIP_PACKAGES if not importable(name)]


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def torch_problem(minimum: str = TORCH_MINIMUM) -> str | None:
    """None if a usable torch is importable, else why not (missing, broken or too old)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    except Exception as err:  # noqa: BLE001 - e.g. a DLL that fails to load
        return f"PyTorch is installed but cannot be imported ({type(err).__name__}: {err})"
    if _version_tuple(torch.__version__) < _version_tuple(minimum):
        return f"PyTorch {torch.__version__} is older than the {minimum} this module needs"
    return None
