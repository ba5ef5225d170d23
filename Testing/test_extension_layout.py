"""The extension tree is what a Slicer build expects, and the package imports without Slicer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import MODULE_DIR, ROOT

LIB = MODULE_DIR / "ProgressiveRegistrationLib"


def _cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not set"
    items = []
    for line in m.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            items.append(line.replace("${MODULE_NAME}", "ProgressiveRegistration"))
    return items


def test_every_library_file_is_in_scripts():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = set(_cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    on_disk = {f"ProgressiveRegistrationLib/{p.relative_to(LIB).as_posix()}" for p in LIB.rglob("*.py")}
    assert on_disk - scripts == set(), "library files missing from SCRIPTS"
    assert scripts - on_disk == {"ProgressiveRegistration.py"}, "SCRIPTS lists files that do not exist"
    assert not any("Scripts/" in s for s in scripts), "command-line scripts must not be in SCRIPTS"


def test_every_resource_file_is_in_resources():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    resources = set(_cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    on_disk |= {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Scripts").rglob("*") if p.is_file()}
    assert on_disk - resources == set(), "resource files missing from RESOURCES"
    assert resources - on_disk == set(), "RESOURCES lists files that do not exist"
    assert "Resources/UI/ProgressiveRegistration.ui" in resources
    assert "Resources/Icons/ProgressiveRegistration.png" in resources


def test_module_cmake_uses_slicer_macros():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    root = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "find_package(Slicer REQUIRED)" in root and "add_subdirectory(ProgressiveRegistration)" in root
    assert "${Slicer_EXTENSION_CPACK}" in root


def _s4ext() -> dict:
    entries = {}
    for line in (ROOT / "ProgressiveRegistration.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            entries[key] = value.strip()
    return entries


def _cmake_set(name: str) -> str:
    m = re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert m, name
    return m.group(1)


def test_s4ext_json_and_cmake_agree():
    s4 = _s4ext()
    required = {"scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled"}
    assert required <= set(s4)
    catalog = json.loads((ROOT / "ProgressiveRegistration.json").read_text(encoding="utf-8"))
    assert catalog["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                         "slicer-extension-catalog-entry-schema-v1")
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "enabled", "tier"}
    assert set(catalog) <= allowed, "the catalog schema forbids other keys"
    assert catalog["category"] == s4["category"] == _cmake_set("EXTENSION_CATEGORY") == "Registration"
    assert catalog["scm_url"] == s4["scmurl"]
    assert catalog["scm_revision"] == s4["scmrevision"]
    assert catalog["scm_type"] == s4["scm"]
    assert catalog["build_subdirectory"] == s4["build_subdirectory"]
    assert catalog["enabled"] == (s4["enabled"] == "1")
    deps = [] if s4["depends"] == "NA" else s4["depends"].split()
    assert catalog["build_dependencies"] == deps == _cmake_set("EXTENSION_DEPENDS").split()
    assert "PyTorch" in deps  # torch comes through the PyTorch extension's PyTorchUtils
    assert s4["homepage"] == _cmake_set("EXTENSION_HOMEPAGE")
    assert s4["iconurl"] == _cmake_set("EXTENSION_ICONURL")
    assert s4["description"] == _cmake_set("EXTENSION_DESCRIPTION")
    assert s4["screenshoturls"] == _cmake_set("EXTENSION_SCREENSHOTURLS")
    assert s4["status"] == _cmake_set("EXTENSION_STATUS")
    # The icon and screenshot the URLs point at exist in the repository.
    for url in (s4["iconurl"], s4["screenshoturls"]):
        path = url.split("/main/", 1)[1]
        assert (ROOT / path).is_file(), path


# What each GUI connector of Slicer's parameter node wrapper accepts, read from
# Base/Python/slicer/parameterNodeWrapper/guiConnectors.py (Slicer v5.6.2 and v5.8.1 agree):
# the widget's exact class (`type(widget) == ...`) and the unannotated data type, plus the
# annotations a connector requires. Slicer raises "Unable to create GUI connector" (and
# binds nothing) in `connectGui` for any pair not listed here.
GUI_CONNECTORS = {
    "QCheckBox": ({"bool"}, set()),  # QCheckBoxToBoolConnector
    "QPushButton": ({"bool"}, set()),  # QCheckablePushButtonToBoolConnector
    "QSlider": ({"int"}, {"WithinRange"}),  # QSliderOrSpinBoxToIntConnector: a slider must be bounded
    "QSpinBox": ({"int"}, set()),
    "QDoubleSpinBox": ({"float"}, set()),  # QDoubleSpinBoxCtkSliderWidgetToFloatConnector
    "ctkSliderWidget": ({"float"}, {"WithinRange"}),
    "QComboBox": ({"int", "float", "str", "bool"}, {"Choice"}),  # QComboBoxToStringableConnector (or an Enum)
    "QLineEdit": ({"str"}, set()),  # QLineEditToStrConnector
    "QTextEdit": ({"str"}, set()),  # QTextEditPlainTextToStrConnector
    "ctkPathLineEdit": ({"pathlib.Path", "Path"}, set()),  # ctkPathLineEditToPathConnector: Path types only
    "ctkDirectoryButton": ({"pathlib.Path", "Path"}, set()),  # ctkDirectoryButtonToPathConnector
    "qMRMLNodeComboBox": ({"<node>"}, set()),  # qMRMLNodeComboBoxToNodeConnector
}


def _parameter_fields() -> dict[str, tuple[str, set[str]]]:
    """name -> (unannotated type, annotation names) of the module's @parameterNodeWrapper class,
    read from its source (the module imports Slicer, so it cannot be imported here)."""
    import ast

    tree = ast.parse((MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list))
    fields = {}
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann, annotations = stmt.annotation, set()
        if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Annotated":
            base, *extra = ann.slice.elts
            annotations = {ast.unparse(e.func) for e in extra if isinstance(e, ast.Call)}
            ann = base
        name = ast.unparse(ann)
        fields[stmt.target.id] = ("<node>" if name.startswith("vtkMRML") else name, annotations)
    return fields


def _binding_problems(fields: dict[str, tuple[str, set[str]]], widget_of: dict[str, str]) -> list[str]:
    """What Slicer's connectGui would fail on, one line per parameter."""
    problems = []
    if set(widget_of) != set(fields):
        problems.append(f"parameters without a widget or widgets without a parameter: {set(widget_of) ^ set(fields)}")
    for name in set(fields) & set(widget_of):
        (datatype, annotations), widget = fields[name], widget_of[name]
        if widget not in GUI_CONNECTORS:
            problems.append(f"{name}: Slicer has no GUI connector for a {widget}")
            continue
        types, required = GUI_CONNECTORS[widget]
        if datatype not in types:
            problems.append(f"{name}: a {widget} binds {sorted(types)}, not {datatype}")
        elif not required <= annotations:
            problems.append(f"{name}: a {widget} needs the {sorted(required)} annotation")
    return problems


def _ui_bindings() -> dict[str, str]:
    """SlicerParameterName -> widget class, from the module's .ui file."""
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    return {prop.find("string").text: w.get("class") for w in tree.iter("widget") for prop in w.findall("property")
            if prop.get("name") == "SlicerParameterName"}


def test_every_parameter_binds_to_its_widget_as_slicer_would():
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    names = {w.get("name") for w in tree.iter("widget")}
    assert {"applyButton", "cancelButton", "progressBar", "statusLabel", "logTextEdit", "fixedVolumeSelector",
            "movingVolumeSelector", "outputTransformSelector", "refineCheckBox"} <= names
    assert _binding_problems(_parameter_fields(), _ui_bindings()) == []


def test_the_check_catches_the_bindings_that_broke_setup():
    """`modelPath: str` on a ctkPathLineEdit and a bare `device: str` on a QComboBox made
    connectGui raise in Slicer; the check above must flag exactly those."""
    fields = {**_parameter_fields(), "modelPath": ("str", set()), "device": ("str", set())}
    problems = _binding_problems(fields, _ui_bindings())
    assert len(problems) == 2 and any(p.startswith("modelPath: a ctkPathLineEdit") for p in problems)
    assert any(p.startswith("device: a QComboBox needs the ['Choice']") for p in problems)


def test_module_code_is_python39():
    """Slicer 5.6-5.8 run Python 3.9: the module and the library must compile there."""
    import glob
    import shutil

    candidates = [*sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python"))), shutil.which("python3.9")]
    python39 = next((c for c in candidates if c and subprocess.run([c, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
                                                                    capture_output=True).returncode == 0), None)
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter found (ruff's py39 target still applies)")
    files = [str(MODULE_DIR / "ProgressiveRegistration.py"), str(MODULE_DIR / "Scripts" / "train.py"),
             *map(str, sorted((MODULE_DIR / "ProgressiveRegistrationLib").rglob("*.py")))]
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')"
    r = subprocess.run([python39, "-c", code, *files], capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr


def test_module_file_has_slicer_classes_and_imports_no_algorithm():
    """The four classes Slicer looks for, with Slicer's base classes; and the module file
    does none of the work itself (the library does)."""
    import ast

    tree = ast.parse((MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8"))
    bases = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in bases["ProgressiveRegistration"]
    assert "ScriptedLoadableModuleWidget" in bases["ProgressiveRegistrationWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["ProgressiveRegistrationLogic"]
    assert "ScriptedLoadableModuleTest" in bases["ProgressiveRegistrationTest"]
    # At load time (module level) nothing of the algorithm; torch is only probed by the dependency check.
    imported = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"torch", "SimpleITK", "numba", "ProgressiveRegistrationLib"}, imported
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not used & {"nn", "grid_sample", "Resample", "register_images"}, used & {"nn", "grid_sample"}


def test_library_imports_without_slicer_or_qt():
    code = ("import sys, ProgressiveRegistrationLib.cli, ProgressiveRegistrationLib.training.trainer; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('slicer', 'qt', 'ctk', 'PythonQt', 'vtk')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_help_lists_subcommands():
    from pathlib import Path

    commands = [[sys.executable, "-m", "ProgressiveRegistrationLib", "--help"]]
    exe = Path(sys.executable).parent / "progreg"
    if exe.exists():
        commands.append([str(exe), "--help"])
    for cmd in commands:
        r = subprocess.run(cmd, cwd=MODULE_DIR, capture_output=True, text=True, encoding="utf-8")
        assert r.returncode == 0, r.stderr
        for sub in ("tre", "dirlab", "synth", "train", "series", "register", "demo"):
            assert re.search(rf"^\s+{sub}\s", r.stdout, re.M), sub


def test_console_script_entry_point():
    import importlib.metadata as md

    eps = [e for e in md.entry_points(group="console_scripts") if e.name == "progreg"]
    assert eps and eps[0].value == "ProgressiveRegistrationLib.cli:main"


def test_ruff_passes():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    test_cmd = [c.strip() for c in commands if "Testing/run.sh" in c]
    assert test_cmd, "README shows the test command"
    assert test_cmd[0].splitlines()[-1] in ci
