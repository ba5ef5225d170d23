"""What the library needs in Slicer's Python, checked package by package (standard library
only: it runs before any of them is importable).

Slicer bundles numpy, SimpleITK (and VTK): those are never installed, with one exception
below. PyTorch comes from Slicer's PyTorch extension (``PyTorchUtils``, which picks the CPU
or CUDA build); the rest from pip, and only what a registration imports: Pillow (which draws
the pictures) and matplotlib (their colour maps and fonts, and the 4DCT figure). numba is
optional: without it the library runs the same computations in torch and ITK, slower. Not
installed for the module: PyYAML (read only for YAML training configurations and
``--tolerances`` files, neither of which the module uses) and psutil (``jobs`` uses it where
it is installed, and the standard library otherwise).

Offline, pip's own error says only that pip failed: :func:`install_failure` says whether
the package index could be reached, and what to do.

Versions are read from the installed distributions' metadata (``importlib.metadata``), never
by importing the package: an imported torch stays loaded in the running Slicer, so a check
that imports it would see the old version again after an upgrade, and the upgrade itself
cannot replace a loaded library (PyTorch Utils upgrades it, then Slicer must restart).

Intel macOS: PyTorch 2.2 is the last release with macOS x86_64 wheels (Slicer's macOS
package is an x86_64 build, on Apple silicon too, under Rosetta 2), and it was built against
numpy 1: with the numpy 2 of Slicer 5.10 and later, torch cannot exchange arrays with numpy.
There, as SlicerTotalSegmentator does, numpy is brought below 2 before torch is first
imported, and Slicer is restarted (:func:`numpy_requirement`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import socket
import sys
from urllib.parse import urlsplit

#: The oldest torch the library is tested with (also the newest one for Intel macOS: 2.2.x).
TORCH_MINIMUM = "2.2"

#: (import name, pip requirement) of what Slicer does not bundle and a registration needs, besides torch.
PIP_PACKAGES = (
    ("PIL", "pillow>=9.1"),
    ("matplotlib", "matplotlib>=3.7"),
)

#: (import name, pip requirement) of what makes the library faster but is not needed (see ``core/jit.py``).
OPTIONAL_PIP_PACKAGES = (
    ("numba", "numba>=0.59"),
)


def importable(name: str) -> bool:
    """Whether ``import name`` works (an import that fails for any reason counts as missing)."""
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - a broken install is as missing as an absent one
        return False


def missing_pip_packages(optional: bool = False) -> list[str]:
    """pip requirements of the packages besides torch that cannot be imported: the needed ones,
    or with ``optional`` the optional ones."""
    packages = OPTIONAL_PIP_PACKAGES if optional else PIP_PACKAGES
    return [requirement for name, requirement in packages if not importable(name)]


def requirement_name(requirement: str) -> str:
    """The distribution name of a pip requirement, lower case: ``"numba>=0.59"`` -> ``"numba"``."""
    for i, ch in enumerate(requirement):
        if ch in "<>=!~[;@ ":
            return requirement[:i].strip().lower()
    return requirement.strip().lower()


def parse_names(value) -> set[str]:
    """Package names kept in an application setting: a comma-separated string (or a list, as
    ``qt.QSettings.value`` may give, or None), read back as a set of lower-case names."""
    if value is None:
        return set()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return {str(v).strip().lower() for v in items if str(v).strip()}


#: Where pip looks for packages unless it is told otherwise.
DEFAULT_INDEX = "https://pypi.org/simple"


def package_index(env: dict | None = None) -> tuple[str, int, str]:
    """(host, port, what) that pip connects to first: the HTTPS proxy if one is set, else the
    index (``PIP_INDEX_URL``, default PyPI). ``env`` defaults to this process's environment."""
    env = os.environ if env is None else env
    index = env.get("PIP_INDEX_URL") or DEFAULT_INDEX
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy")
    url = urlsplit(proxy if "://" in str(proxy) else f"http://{proxy}") if proxy else urlsplit(index)
    default_port = 443 if url.scheme == "https" else 80
    try:
        port = url.port or default_port
    except ValueError:
        port = default_port
    what = f"the proxy {url.hostname}" if proxy else f"the package index {url.hostname}"
    return url.hostname or "", port, what


def index_problem(env: dict | None = None, connect=socket.create_connection, timeout_s: float = 5.0) -> str | None:
    """None if the package index (or the proxy to it) accepts a connection, else why not:
    ``"no connection to the package index pypi.org (...)"``. ``connect``: for tests."""
    host, port, what = package_index(env)
    try:
        connect((host, port), timeout=timeout_s).close()
    except OSError as err:
        return f"no connection to {what} ({type(err).__name__}: {err})"
    return None


def install_failure(packages: list[str], error: BaseException, env: dict | None = None,
                    connect=socket.create_connection) -> str:
    """What to tell the user when installing ``packages`` failed with ``error`` (pip's own is
    only "returned non-zero exit status 1"): offline, that there is no connection to the
    package index, and what to do about it; else pip's error, and where its output is."""
    names = ", ".join(packages)
    problem = index_problem(env, connect)
    if problem:
        return (f"Could not install {names}: {problem}. Connect this computer to the internet (behind a proxy: set "
                f"HTTPS_PROXY before starting Slicer) and try again; or, without internet access, install them from "
                f"downloaded wheel files in Slicer's Python console: slicer.util.pip_install(['<file>.whl']).")
    return f"Could not install {names} ({error}); pip's output is in the Python console."


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``"torch"``, ``"numpy"``), from its metadata;
    None if it is not installed. Imports nothing."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_problem(minimum: str = TORCH_MINIMUM, version: str | None = None) -> str | None:
    """None if the installed torch is recent enough, else why not (missing or too old).

    ``version``: the installed version (default: read from the package metadata, without
    importing torch)."""
    version = installed_version("torch") if version is None else version
    if version is None:
        return "PyTorch is not installed"
    if _version_tuple(version) < _version_tuple(minimum):
        return (f"PyTorch {version} is older than the {minimum} this module needs: upgrade it in the PyTorch Utils "
                f"module (version requirement '>={minimum}'), then restart Slicer")
    return None


def torch_import_problem() -> str | None:
    """None if torch imports, else why not (e.g. a DLL that fails to load). Imports torch:
    call it only once :func:`torch_problem` is None."""
    try:
        importlib.import_module("torch")
    except Exception as err:  # noqa: BLE001 - whatever stops the import is the user's problem to see
        return f"PyTorch is installed but cannot be imported ({type(err).__name__}: {err})"
    return None


def numpy_requirement(system: str | None = None, machine: str | None = None,
                      numpy_version: str | None = None) -> str | None:
    """The pip requirement numpy must be brought to before torch is imported, or None.

    ``"numpy<2"`` on Intel macOS (``system`` ``"darwin"``, ``machine`` ``"x86_64"``) while numpy
    2 or later is installed (the module docstring says why); None everywhere else. The
    arguments default to this interpreter's platform and the installed numpy."""
    system = sys.platform if system is None else system
    machine = platform.machine() if machine is None else machine
    if system != "darwin" or machine != "x86_64":
        return None
    numpy_version = installed_version("numpy") if numpy_version is None else numpy_version
    if numpy_version is None or _version_tuple(numpy_version) < (2,):
        return None
    return "numpy<2"
