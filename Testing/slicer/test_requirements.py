"""The module's dependency check, package by package, without importing what it checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest
from conftest import MODULE_DIR

from ProgressiveRegistrationLib.slicer import requirements

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
    problem = requirements.torch_problem()
    imported = "torch" in sys.modules
    print(repr((problem, imported, requirements.torch_import_problem(), requirements.missing_pip_packages(),
                requirements.missing_pip_packages(optional=True))))
""")


def _check_with_blocked(*blocked: str):
    r = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=set(blocked))], cwd=MODULE_DIR,
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    import ast

    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


def test_dependencies_are_checked_one_by_one():
    """With torch present (the PyTorch extension's usual case) a missing matplotlib is still
    found; with everything present nothing is missing; numba is optional; PyYAML and psutil,
    which no registration imports, are neither."""
    assert _check_with_blocked() == (None, False, None, [], [])
    _, _, _, missing, optional = _check_with_blocked("matplotlib")
    assert missing == ["matplotlib>=3.7"] and optional == []
    _, _, _, missing, optional = _check_with_blocked("yaml", "psutil", "numba")
    assert missing == [] and optional == ["numba>=0.59"]


def test_a_registration_imports_neither_yaml_nor_psutil():
    """What the module's background process runs (``progreg register`` with a report) loads
    neither, so the module does not install them."""
    code = ("import sys\n"
            "from ProgressiveRegistrationLib.cli import register\n"
            "from ProgressiveRegistrationLib.registration import engine, outputs, pipeline, report\n"
            "from ProgressiveRegistrationLib.slicer import jobs, mrml, mrml4d\n"
            "print(sorted({'yaml', 'psutil'} & {m.split('.')[0] for m in sys.modules}))")
    blocked = BLOCKER.split("from ProgressiveRegistrationLib.slicer import requirements")[0].format(
        blocked={"yaml", "psutil"})
    r = subprocess.run([sys.executable, "-c", blocked + code], cwd=MODULE_DIR, capture_output=True, text=True,
                       encoding="utf-8")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
    names = {name for name, _ in requirements.PIP_PACKAGES + requirements.OPTIONAL_PIP_PACKAGES}
    assert not names & {"yaml", "psutil"}


def test_requirement_names_and_the_declined_setting():
    assert requirements.requirement_name("numba>=0.59") == "numba"
    assert requirements.requirement_name("PyYAML") == "pyyaml"
    assert requirements.requirement_name("uvicorn[standard]>=1") == "uvicorn"
    # qt.QSettings.value gives None (never set), "" (cleared), a string, or a list (a value with commas, on some platforms)
    assert requirements.parse_names(None) == set() == requirements.parse_names("")
    assert requirements.parse_names("numba") == {"numba"}
    assert requirements.parse_names(" Numba , foo,") == {"numba", "foo"}
    assert requirements.parse_names(["numba", "foo"]) == {"numba", "foo"}
    # What the widget writes is read back as it was.
    declined = {"numba", "foo"}
    assert requirements.parse_names(",".join(sorted(declined))) == declined


class _Socket:
    def close(self):
        pass


def _refuse(address, timeout):
    raise OSError(101, "Network is unreachable")


def test_the_package_index_and_the_proxy_pip_connects_to():
    assert requirements.package_index({}) == ("pypi.org", 443, "the package index pypi.org")
    assert requirements.package_index({"PIP_INDEX_URL": "http://mirror.local:8080/simple"}) == \
        ("mirror.local", 8080, "the package index mirror.local")
    assert requirements.package_index({"HTTPS_PROXY": "http://proxy.local:3128"}) == \
        ("proxy.local", 3128, "the proxy proxy.local")
    assert requirements.package_index({"https_proxy": "proxy.local:3128"})[:2] == ("proxy.local", 3128)
    tried = []
    assert requirements.index_problem({}, lambda address, timeout: tried.append(address) or _Socket()) is None
    assert tried == [("pypi.org", 443)]
    problem = requirements.index_problem({}, _refuse)
    assert problem.startswith("no connection to the package index pypi.org (OSError")


def test_an_offline_install_says_so_and_what_to_do():
    """Offline, pip_install raises only CalledProcessError('... returned non-zero exit status 1')
    (slicer.util.logProcessOutput): the message says there is no connection, and what to do."""
    error = subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", "matplotlib>=3.7"])
    message = requirements.install_failure(["matplotlib>=3.7"], error, {}, _refuse)
    assert message.startswith("Could not install matplotlib>=3.7: no connection to the package index pypi.org")
    assert "internet" in message and "HTTPS_PROXY" in message and "slicer.util.pip_install" in message
    online = requirements.install_failure(["matplotlib>=3.7"], error, {}, lambda address, timeout: _Socket())
    assert "no connection" not in online and "non-zero exit status 1" in online and "Python console" in online


def test_the_torch_version_is_read_without_importing_torch():
    """An imported torch stays loaded: a check that imported it could never see an upgrade."""
    problem, imported, import_problem, _, _ = _check_with_blocked("torch")
    assert problem is None and not imported  # the metadata says installed and new enough
    assert import_problem.startswith("PyTorch is installed but cannot be imported (ModuleNotFoundError")


def test_a_loaded_torch_does_not_decide_the_version(monkeypatch):
    old = types.ModuleType("torch")
    old.__version__ = "1.13.1"
    monkeypatch.setitem(sys.modules, "torch", old)
    assert requirements.torch_problem() is None  # the installed distribution's metadata decides
    monkeypatch.setattr(requirements, "installed_version", lambda name: "2.1.2" if name == "torch" else None)
    assert "2.1.2 is older than the 2.2" in requirements.torch_problem()
    monkeypatch.setattr(requirements, "installed_version", lambda name: None)
    assert requirements.torch_problem() == "PyTorch is not installed"


def test_too_old_says_to_upgrade_in_pytorch_utils_and_restart():
    problem = requirements.torch_problem(version="2.0.1")
    assert "PyTorch Utils" in problem and "'>=2.2'" in problem and "restart Slicer" in problem
    assert requirements.torch_problem(version="2.2.2") is None and requirements.torch_problem(version="2.13.0+cpu") is None


def test_torch_version_comparison():
    from ProgressiveRegistrationLib.slicer.requirements import _version_tuple

    assert _version_tuple("2.13.0+cpu") > _version_tuple("2.2") > _version_tuple("2.1.2")
    assert _version_tuple("2.2.0a0") >= _version_tuple("2.2")
    assert all(_version_tuple(v) < (2, 2) for v in ("1.13.1", "2.0.0"))


@pytest.mark.parametrize("system, machine, numpy, wanted", [
    ("darwin", "x86_64", "2.0.2", "numpy<2"),  # Intel macOS (and Slicer under Rosetta 2), Slicer 5.10
    ("darwin", "x86_64", "1.26.4", None),      # Slicer 5.6, 5.8, or numpy already brought below 2
    ("darwin", "arm64", "2.2.6", None),        # a native arm64 Python has newer torch wheels
    ("linux", "x86_64", "2.2.6", None),
    ("win32", "AMD64", "2.2.6", None),
])
def test_numpy_below_2_only_on_intel_macos(system, machine, numpy, wanted):
    """PyTorch 2.2, the last for macOS x86_64, was built against numpy 1 (as SlicerTotalSegmentator handles it)."""
    assert requirements.numpy_requirement(system, machine, numpy) == wanted


def test_the_requirements_module_imports_nothing_it_checks():
    code = ("import sys; from ProgressiveRegistrationLib.slicer import requirements; "
            "requirements.torch_problem(); requirements.numpy_requirement(); "
            "print(sorted({'torch', 'matplotlib', 'numba', 'yaml'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
