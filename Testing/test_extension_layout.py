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
    "QSpinBox": ({"int"}, set()),  # (unbounded it gets the whole int range: see BOUNDED_WIDGETS)
    "QDoubleSpinBox": ({"float"}, set()),  # QDoubleSpinBoxCtkSliderWidgetToFloatConnector
    "ctkSliderWidget": ({"float"}, {"WithinRange"}),
    "QComboBox": ({"int", "float", "str", "bool"}, {"Choice"}),  # QComboBoxToStringableConnector (or an Enum)
    "QLineEdit": ({"str"}, set()),  # QLineEditToStrConnector
    "QTextEdit": ({"str"}, set()),  # QTextEditPlainTextToStrConnector
    "ctkPathLineEdit": ({"pathlib.Path", "Path"}, set()),  # ctkPathLineEditToPathConnector: Path types only
    "ctkDirectoryButton": ({"pathlib.Path", "Path"}, set()),  # ctkDirectoryButtonToPathConnector
    "qMRMLNodeComboBox": ({"<node>"}, set()),  # qMRMLNodeComboBoxToNodeConnector
}


# Widgets that Slicer's connector makes accept any value unless the field is bounded: the
# QSliderOrSpinBoxToIntConnector sets the whole int range without a WithinRange, Minimum or
# Maximum annotation (guiConnectors.py, v5.6.2 to v5.10.0), overriding the .ui's range. This
# module's rule: every such field has a lower bound at least (upper ones come from the data).
BOUNDED_WIDGETS = {"QSpinBox": ({"WithinRange"}, {"Minimum"})}


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
        if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Union":
            # A Union of node classes (and None) is a node too: isNodeOrUnionOfNodes, util.py v5.6.2 to v5.10.0.
            members = [ast.unparse(e) for e in ann.slice.elts if ast.unparse(e) != "None"]
            if all(m.startswith("vtkMRML") for m in members):
                name = "vtkMRML"
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
        elif widget in BOUNDED_WIDGETS and not any(a <= annotations for a in BOUNDED_WIDGETS[widget]):
            problems.append(f"{name}: a {widget} bound without WithinRange or Minimum accepts any int")
    return problems


def _ui_bindings() -> dict[str, str]:
    """SlicerParameterName -> widget class, from the module's .ui file."""
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    return {prop.find("string").text: w.get("class") for w in tree.iter("widget") for prop in w.findall("property")
            if prop.get("name") == "SlicerParameterName"}


def test_every_parameter_binds_to_its_widget_as_slicer_would():
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    names = {w.get("name") for w in tree.iter("widget")}
    assert {"applyButton", "applyPhasesButton", "openResultsButton", "progressBar", "statusLabel", "logTextEdit",
            "fixedVolumeSelector", "movingVolumeSelector", "outputTransformSelector", "outputVolumeSelector",
            "keepFilesCheckBox", "refineCheckBox", "advancedCollapsibleButton"} <= names
    assert "cancelButton" not in names  # Apply turns into Cancel while it runs
    assert _binding_problems(_parameter_fields(), _ui_bindings()) == []


def test_the_check_catches_the_bindings_that_broke_setup():
    """`modelPath: str` on a ctkPathLineEdit and a bare `device: str` on a QComboBox made
    connectGui raise in Slicer; the check above must flag exactly those."""
    fields = {**_parameter_fields(), "modelPath": ("str", set()), "device": ("str", set())}
    problems = _binding_problems(fields, _ui_bindings())
    assert len(problems) == 2 and any(p.startswith("modelPath: a ctkPathLineEdit") for p in problems)
    assert any(p.startswith("device: a QComboBox needs the ['Choice']") for p in problems)


def test_the_check_catches_an_unbounded_phase_spin_box():
    """`referencePhase: int` on a QSpinBox let the panel take negative and huge phases."""
    fields = {**_parameter_fields(), "referencePhase": ("int", set())}
    assert _binding_problems(fields, _ui_bindings()) == [
        "referencePhase: a QSpinBox bound without WithinRange or Minimum accepts any int"]


def _scene_problems(tree: ET.ElementTree) -> list[str]:
    """qMRML widgets of a .ui that never get the scene. qMRMLWidget::setMRMLScene only emits
    mrmlSceneChanged (Libs/MRML/Widgets/qMRMLWidget.cxx, v5.6.2 to v5.10.0), and the parameter
    node's qMRMLNodeComboBox connector sets nodeTypes only (guiConnectors.py): each qMRML
    widget needs its own connection from the top-level widget's mrmlSceneChanged(vtkMRMLScene*)
    to its setMRMLScene(vtkMRMLScene*), else its list stays empty."""
    root = tree.getroot().find("widget")
    top = root.get("name")
    connected = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("sender") == top and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget") if w is not root}
    problems = [f"{name} ({cls}) never gets the scene" for name, cls in sorted(widgets.items())
                if cls.startswith("qMRML") and name not in connected]
    problems += [f"a scene connection to {name}, which is not a qMRML widget of this panel"
                 for name in sorted(connected) if not widgets.get(name, "").startswith("qMRML")]
    return problems


def test_every_qmrml_widget_gets_the_scene():
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    assert _scene_problems(tree) == []
    bound = {name for name, cls in _ui_bindings().items() if cls.startswith("qMRML")}
    assert {"phases", "phasePoints", "phaseSegmentation", "outputVolume"} <= bound


def test_the_scene_check_catches_the_selectors_that_had_no_scene():
    """The three 4DCT selectors had no scene connection: the check must name exactly them."""
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    connections = tree.getroot().find("connections")
    for c in list(connections):
        if c.findtext("receiver") in ("phasesSelector", "phasePointsSelector", "phaseSegmentationSelector"):
            connections.remove(c)
    assert _scene_problems(tree) == [f"{n} (qMRMLNodeComboBox) never gets the scene"
                                     for n in ("phasePointsSelector", "phaseSegmentationSelector", "phasesSelector")]


def _gui_connection_problems(source: str) -> list[str]:
    """How the module connects its parameter node to the GUI, read from its source.

    ``connectGui`` returns None up to Slicer 5.8 (Base/Python/slicer/parameterNodeWrapper/
    wrapper.py, v5.6.2 and v5.8.1; commit b5a65a49a0 returns the tag from v5.10.0), so its
    connectors can never be disconnected there: only ``connectParametersToGui``, whose tag is
    kept in ``self._parameterNodeGuiTag``, which every ``disconnectGui`` gets and then clears."""
    import ast

    tree = ast.parse(source)
    problems = []
    tag = "self._parameterNodeGuiTag"
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        where = f"line {node.lineno}"
        if node.func.attr == "connectGui":
            problems.append(f"{where}: connectGui (its tag is None before Slicer 5.10)")
        elif node.func.attr == "connectParametersToGui":
            parent = parents.get(node)
            if not (isinstance(parent, ast.Assign) and [ast.unparse(t) for t in parent.targets] == [tag]):
                problems.append(f"{where}: the tag of connectParametersToGui is not kept in {tag}")
        elif node.func.attr == "disconnectGui":
            if [ast.unparse(a) for a in node.args] != [tag]:
                problems.append(f"{where}: disconnectGui is not given {tag}")
            statement = parents[node]
            block = parents[statement]
            body = next(b for b in (getattr(block, "body", []), getattr(block, "orelse", [])) if statement in b)
            rest = body[body.index(statement) + 1:]
            if not any(isinstance(s, ast.Assign) and [ast.unparse(t) for t in s.targets] == [tag]
                       and ast.unparse(s.value) == "None" for s in rest):
                problems.append(f"{where}: {tag} is not cleared after disconnectGui")
    connects = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "connectParametersToGui"]
    if len(connects) != 1:
        problems.append(f"{len(connects)} places connect the GUI (one, in setParameterNode, connects once)")
    return problems


def test_the_gui_is_connected_once_and_disconnected_by_its_tag():
    source = (MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8")
    assert _gui_connection_problems(source) == []


def test_the_connection_check_catches_connect_gui_and_a_lost_tag():
    """The pattern that piled up connectors on Slicer 5.6 and 5.8."""
    old = ("class W:\n"
           "    def exit(self):\n"
           "        self._parameterNode.disconnectGui(self._parameterNodeGuiTag)\n"
           "    def setParameterNode(self, node):\n"
           "        self._parameterNodeGuiTag = node.connectGui(self.ui)\n")
    problems = _gui_connection_problems(old)
    assert any("connectGui (its tag is None" in p for p in problems)
    assert any("is not cleared after disconnectGui" in p for p in problems)
    assert any("0 places connect the GUI" in p for p in problems)


def test_path_parameters_have_a_connector_that_never_writes_a_dot():
    """Slicer's ctkPathLineEdit connector shows an empty pathlib.Path as "." (it writes
    str(Path()), guiConnectors.py v5.6.2 to v5.10.0): every Path field gets the module's own."""
    import ast

    source = (MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    replaced = {ast.unparse(t.slice).strip("'\"") for n in ast.walk(tree) if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "mapping"
                and isinstance(n.value, ast.Call) and ast.unparse(n.value.func) == "_ModelPathConnector"}
    paths = {name for name, (datatype, _) in _parameter_fields().items() if datatype in ("pathlib.Path", "Path")}
    assert paths and paths <= replaced, paths - replaced


def test_the_self_test_waits_and_prepares_itself_in_set_up():
    """QThread.msleep is not wrapped by Slicer 5.6's PythonQt. Slicer's ctest loads the test
    methods by name (slicer.testing.runUnitTest: unittest's loadTestsFromName, Base/Python/
    slicer/testing.py, v5.6.2 to v5.10.0), so runTest never runs there: setUp installs the
    dependencies (once per class), or the tests that need them skip with the reason."""
    import ast
    import unittest

    tree = ast.parse((MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8"))
    assert "msleep" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    test = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProgressiveRegistrationTest")
    methods = {f.name: f for f in test.body if isinstance(f, ast.FunctionDef)}
    tests = sorted(name for name in methods if name.startswith("test"))

    # What the loader runs: the test_* methods, each after setUp; runTest only where there are none.
    class Case(unittest.TestCase):
        def runTest(self):
            pass

        def test_one(self):
            pass

    assert [c._testMethodName for c in unittest.TestLoader().loadTestsFromTestCase(Case)] == ["test_one"]

    def ensure_calls(function):
        return [ast.unparse(n) for n in ast.walk(function) if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute) and n.func.attr == "ensureDependencies"]

    assert ensure_calls(methods["runTest"]) == []
    calls = ensure_calls(methods["setUp"])
    assert len(calls) == 1 and "install=True" in calls[0] and "askUser=False" in calls[0], calls
    set_up = ast.unparse(methods["setUp"])
    assert "cls.dependencyProblem is None" in set_up  # once per class
    assert "self.skipTest(" in set_up and "cls.dependencyProblem" in set_up.split("self.skipTest(")[1]
    class_attributes = {t.id for n in test.body if isinstance(n, ast.Assign) for t in n.targets}
    assert {"dependencyProblem", "WITHOUT_DEPENDENCIES"} <= class_attributes
    # Reload and Test runs runTest: every test, each after setUp.
    run = [ast.unparse(n.value.func) for n in methods["runTest"].body if isinstance(n, ast.Expr)]
    assert run[::2] == ["self.setUp"] * len(tests) and sorted(run[1::2]) == [f"self.{n}" for n in tests], run


def _methods_of(class_name: str, *names: str, attributes: str = "", **namespace):
    """The methods ``names`` of the module file's class ``class_name``, compiled on their own
    into a class of that name (with ``attributes``, class-level source lines), where
    ``namespace`` gives the names they use: the module file imports Slicer, so it cannot be
    imported here, but its methods can run on fakes."""
    import ast

    source = (MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    parts = [f"class {class_name}:", *(f"    {a.strip()}" for a in attributes.splitlines() if a.strip())]
    found = set()
    for f in cls.body:
        if isinstance(f, ast.FunctionDef) and f.name in names:
            start = min([f.lineno, *(d.lineno for d in f.decorator_list)])
            parts += lines[start - 1:f.end_lineno]
            found.add(f.name)
    assert found == set(names), set(names) - found
    scope = dict(namespace)
    exec(compile("\n".join(parts), "ProgressiveRegistration.py", "exec"), scope)  # noqa: S102 - the module's own code
    return scope[class_name]


class _FakeRequirements:
    """requirements.py as ensureDependencies sees it, with torch present and ``missing`` /
    ``optional`` pip packages; offline when ``online`` is False."""

    TORCH_MINIMUM = "2.2"

    def __init__(self, missing=(), optional=(), online=True):
        from ProgressiveRegistrationLib.slicer import requirements

        self._real = requirements
        self.missing, self.optional, self.online = list(missing), list(optional), online
        self.requirement_name = requirements.requirement_name

    def numpy_requirement(self, **kwargs):
        return None

    def torch_problem(self):
        return None

    def installed_version(self, name):
        return "2.5.1"

    def torch_import_problem(self):
        return None

    def missing_pip_packages(self, optional=False):
        return list(self.optional if optional else self.missing)

    def install_failure(self, packages, error):
        def connect(address, timeout):
            if not self.online:
                raise OSError(101, "Network is unreachable")
            return type("Socket", (), {"close": lambda self: None})()

        return self._real.install_failure(packages, error, {}, connect)


def _logic_with(requirements, answers, pip_fails=False):
    """ProgressiveRegistrationLogic's dependency step on fakes: ``answers`` are the user's
    replies to the dialogs (each shown dialog takes the next); what pip installs is no longer
    missing, unless ``pip_fails``."""
    import logging
    import subprocess
    import types

    shown, installed = [], []

    def confirm(text):
        shown.append(text)
        return answers.pop(0)

    def pip_install(args):
        if pip_fails:
            raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *args])
        installed.extend(args)
        for r in args:
            for listed in (requirements.missing, requirements.optional):
                if r in listed:
                    listed.remove(r)

    slicer = types.SimpleNamespace(util=types.SimpleNamespace(confirmOkCancelDisplay=confirm, pip_install=pip_install))
    namespace = {"slicer": slicer, "_": lambda text: text, "log": logging.getLogger("ProgressiveRegistration"),
                 "sys": sys}
    cls = _methods_of("ProgressiveRegistrationLogic", "ensureDependencies", "_installQuestion", "_decline",
                      "_ensureNumpy", attributes="_optionalNoted = False", **namespace)
    namespace["ProgressiveRegistrationLogic"] = cls
    logic = cls()
    logic.declinedOptional = set()
    logic._lib = lambda name: requirements
    return logic, shown, installed


def test_numba_declined_is_not_offered_again(caplog):
    """numba was offered at the first Apply of every session: a "no" is kept (the widget saves
    declinedOptional in the application settings) and the log says once how to install it."""
    import logging

    requirements = _FakeRequirements(optional=["numba>=0.59"])
    logic, shown, installed = _logic_with(requirements, answers=[False])
    with caplog.at_level(logging.INFO, logger="ProgressiveRegistration"):
        assert logic.ensureDependencies() is True
        assert logic.declinedOptional == {"numba"} and len(shown) == 1 and "numba>=0.59" in shown[0]
        assert "not offered again" in shown[0]
        assert logic.ensureDependencies() is True and logic.ensureDependencies() is True
    assert len(shown) == 1 and installed == []
    notes = [r.getMessage() for r in caplog.records if "not offered again" in r.getMessage()]
    assert len(notes) == 1 and "slicer.util.pip_install(['numba>=0.59'])" in notes[0], notes
    # A new session (a new logic) with the saved answer asks nothing either.
    again, shown_again, _ = _logic_with(_FakeRequirements(optional=["numba>=0.59"]), answers=[])
    again.declinedOptional = {"numba"}
    assert again.ensureDependencies() is True and shown_again == []


def test_required_and_optional_packages_in_one_dialog():
    requirements = _FakeRequirements(missing=["matplotlib>=3.7"], optional=["numba>=0.59"])
    logic, shown, installed = _logic_with(requirements, answers=[True])
    assert logic.ensureDependencies() is True
    assert len(shown) == 1 and "matplotlib>=3.7" in shown[0] and "numba>=0.59" in shown[0]
    assert installed == ["matplotlib>=3.7", "numba>=0.59"] and logic.declinedOptional == set()
    # Declined with a required package missing: the run stops, and numba is not offered again.
    requirements = _FakeRequirements(missing=["matplotlib>=3.7"], optional=["numba>=0.59"])
    logic, shown, installed = _logic_with(requirements, answers=[False])
    with pytest.raises(RuntimeError, match="Required Python packages were not installed: matplotlib"):
        logic.ensureDependencies()
    assert logic.declinedOptional == {"numba"} and installed == []


def test_offline_the_first_apply_says_there_is_no_connection():
    """pip's own error is only "returned non-zero exit status 1" (slicer.util.logProcessOutput)."""
    requirements = _FakeRequirements(missing=["matplotlib>=3.7"], optional=["numba>=0.59"], online=False)
    logic, shown, _ = _logic_with(requirements, answers=[True], pip_fails=True)
    with pytest.raises(RuntimeError) as raised:
        logic.ensureDependencies()
    message = str(raised.value)
    assert message.startswith("Could not install matplotlib>=3.7: no connection to the package index pypi.org")
    assert "internet" in message and "slicer.util.pip_install" in message
    # An optional package that cannot be installed is a warning, and not offered again.
    requirements = _FakeRequirements(optional=["numba>=0.59"], online=False)
    logic, shown, _ = _logic_with(requirements, answers=[True], pip_fails=True)
    assert logic.ensureDependencies() is True and logic.declinedOptional == {"numba"}


def test_the_declined_packages_are_kept_in_the_application_settings():
    """Read in setup, written after every start (both with qt.QSettings and one key)."""
    import ast

    setup = ast.unparse(_module_function("setup"))
    assert "qt.QSettings().value(DECLINED_PACKAGES_SETTING" in setup and "declinedOptional" in setup
    save = ast.unparse(_module_function("_saveDeclinedPackages"))
    assert "setValue(DECLINED_PACKAGES_SETTING" in save and "self.logic.declinedOptional" in save
    start = _module_function("_startWith")
    final = next(n for n in ast.walk(start) if isinstance(n, ast.Try) and n.finalbody)
    assert "self._saveDeclinedPackages()" in [ast.unparse(s) for s in final.finalbody]


def test_a_device_change_is_logged(caplog):
    """A saved cuda on a machine without a GPU becomes cpu, and a first run on a GPU machine
    gets cuda: each change is one line in the module's log."""
    import logging
    import types

    from ProgressiveRegistrationLib.slicer import jobs

    cls = _methods_of("ProgressiveRegistrationLogic", "defaultDevice", log=logging.getLogger("ProgressiveRegistration"),
                      DEVICE_DEFAULTED_ATTRIBUTE="ProgressiveRegistration.deviceDefaulted")
    cls._lib = classmethod(lambda c, name: jobs)

    class Node:
        def __init__(self):
            self.attributes = {}

        def GetAttribute(self, name):
            return self.attributes.get(name)

        def SetAttribute(self, name, value):
            self.attributes[name] = value

    p = types.SimpleNamespace(device="cuda", parameterNode=Node())
    with caplog.at_level(logging.INFO, logger="ProgressiveRegistration"):
        cls.defaultDevice(p, False)
        assert p.device == "cpu"
        cls.defaultDevice(p, False)
        cls.defaultDevice(p, True)  # a GPU: cuda, once
        assert p.device == "cuda"
        p.device = "cpu"
        cls.defaultDevice(p, True)  # the user's cpu stays
        assert p.device == "cpu"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("Device: cpu") and lines[1].startswith("Device: cuda"), lines


def test_apply_keeps_its_words_and_its_tooltip_says_what_is_missing():
    """Slicer's convention (the scripted module template's _checkCanApply, v5.8.1): a disabled
    Apply with the reason in its tooltip; it turns into Cancel while its run goes on."""
    import types

    cls = _methods_of("ProgressiveRegistrationWidget", "_updateButtons", _=lambda text: text)

    def button():
        return types.SimpleNamespace(enabled=None, text=None, toolTip=None)

    widget = cls()
    widget.ui = types.SimpleNamespace(applyButton=button(), applyPhasesButton=button(), openResultsButton=button(),
                                      openReportButton=button(), exportDicomButton=button())
    problems = {"pair": "Select the fixed and moving volumes", "phases": None, "dicom": "Register first"}
    widget.logic = types.SimpleNamespace(runningKind=lambda: None, inputProblem=lambda p: problems["pair"],
                                         phasesProblem=lambda p: problems["phases"], lastResultsFolder=None,
                                         lastReport=None, dicomExportProblem=lambda t: problems["dicom"])
    widget._parameterNode, widget._starting = types.SimpleNamespace(outputTransform=None), False
    widget._updateButtons()
    apply, phases = widget.ui.applyButton, widget.ui.applyPhasesButton
    assert (apply.enabled, apply.text, apply.toolTip) == (False, "Apply", "Select the fixed and moving volumes")
    assert (phases.enabled, phases.text) == (True, "Register all phases")
    dicom = widget.ui.exportDicomButton
    assert (dicom.enabled, dicom.toolTip) == (False, "Register first")
    problems["dicom"] = None
    widget._updateButtons()
    assert dicom.enabled and "DICOM Deformable Spatial Registration" in dicom.toolTip
    widget._starting = True
    widget._updateButtons()
    assert (apply.enabled, apply.text) == (False, "Apply")
    widget._starting = False
    widget.logic.runningKind = lambda: "pair"
    widget._updateButtons()
    assert (apply.enabled, apply.text) == (True, "Cancel") and (phases.enabled, phases.text) == (False, "Register all phases")
    assert not dicom.enabled  # not while a registration runs


def test_the_gui_stays_connected_across_exit_and_enter():
    """disconnectGui leaves the ModifiedEvent observer that connectParametersToGui adds
    (parameterNodeWrapper/wrapper.py, v5.6.2 to v5.10.0): one more at every exit and enter
    if exit disconnected. It disconnects when the scene closes and in cleanup only."""
    import ast

    exit_ = _module_function("exit")
    assert all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in exit_.body), ast.unparse(exit_)
    for name in ("onSceneStartClose", "cleanup"):
        assert "self.setParameterNode(None)" in ast.unparse(_module_function(name)), name
    assert "self.initializeParameterNode()" in ast.unparse(_module_function("enter"))


def test_reload_reloads_the_library():
    """reloadScriptedModule reloads the module file only (Base/Python/slicer/util.py)."""
    import types

    calls = []

    class ScriptedLoadableModuleWidget:
        def onReload(self):
            calls.append("reloaded")

    modules = {name: types.ModuleType(name) for name in (
        "ProgressiveRegistrationLib", "ProgressiveRegistrationLib.slicer", "ProgressiveRegistrationLib.slicer.jobs",
        "ProgressiveRegistrationLibrary", "ProgressiveRegistration", "numpy")}
    cls = _methods_of("ProgressiveRegistrationWidget", "onReload", ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                      sys=types.SimpleNamespace(modules=modules))
    cls().onReload()
    assert sorted(modules) == ["ProgressiveRegistration", "ProgressiveRegistrationLibrary", "numpy"]
    assert calls == ["reloaded"]


def test_work_folders_are_claimed_and_stale_ones_swept_at_start_up():
    """A cancelled run's folder could stay behind on Windows (rmtree with ignore_errors): the
    module claims each work folder and sweeps stale ones once Slicer has started."""
    import ast

    source = (MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    module = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProgressiveRegistration")
    assert "slicer.app.connect('startupCompleted()', removeStaleWorkFolders)" in ast.unparse(module)
    sweep = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "removeStaleWorkFolders")
    assert "jobs.sweep_stale_work_dirs(slicer.app.temporaryPath)" in ast.unparse(sweep)
    launch = ast.unparse(_module_function("_launch"))
    assert "slicer.util.tempDirectory(jobs.WORK_DIR_PREFIX)" in launch and "jobs.claim_work_dir(workDir" in launch
    for path in (MODULE_DIR / "ProgressiveRegistration.py", LIB / "slicer" / "jobs.py"):
        assert "ignore_errors=True" not in path.read_text(encoding="utf-8"), path


def test_output_volume_selectors_offer_no_label_maps():
    """A labelmap volume is a scalar volume node's subclass: a selector of scalar volumes lists
    label maps unless showChildNodeTypes is false (the parameter node's connector sets nodeTypes
    only, guiConnectors.py v5.6.2 to v5.10.0)."""
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProgressiveRegistration.ui")
    scalar = []
    for w in tree.iter("widget"):
        if w.get("class") != "qMRMLNodeComboBox":
            continue
        props = {p.get("name"): p for p in w.findall("property")}
        types_ = [s.text for s in props["nodeTypes"].iter("string")]
        if types_ == ["vtkMRMLScalarVolumeNode"]:
            scalar.append(w.get("name"))
            shown = props.get("showChildNodeTypes")
            assert shown is not None and shown.findtext("bool") == "false", w.get("name")
    assert {"outputJacobianSelector", "outputQualityMapSelector", "fixedVolumeSelector"} <= set(scalar)


def test_every_process_is_started_without_a_console_window():
    """On Windows a process started from Slicer's GUI opens a console unless it is started
    hidden (slicer.util.launchConsoleProcess, Base/Python/slicer/util.py, v5.6.2 to v5.10.0)."""
    import ast

    for path in sorted(LIB.rglob("slicer/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("subprocess.Popen", "subprocess.run",
                                                                        "subprocess.call", "subprocess.check_call",
                                                                        "subprocess.check_output"):
                hidden = [k for k in node.keywords if k.arg is None and ast.unparse(k.value) == "hidden_window_options()"]
                assert hidden, f"{path.name}:{node.lineno} starts a process that may open a console window"


def test_set_names_initialised_only_where_the_api_needs_it():
    """SetNamesInitialised logs a VTK error from Slicer 5.10 (vtkMRMLColorNode.h, v5.10.0):
    every call sits under `if needs_names_initialised(...)`."""
    import ast

    files = [MODULE_DIR / "ProgressiveRegistration.py", *sorted(LIB.rglob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(n) for g in ast.walk(tree) if isinstance(g, ast.If) and "needs_names_initialised" in ast.unparse(g.test)
                   for n in ast.walk(g)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("SetNamesInitialised", "NamesInitialisedOn"):
                assert id(node) in guarded, f"{path.name}:{node.lineno}"


def _module_function(name: str):
    import ast

    tree = ast.parse((MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8"))
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def test_apply_follows_the_content_of_the_nodes_it_checks():
    """The parameter node only references its nodes (serializers.py: SetNodeReferenceID), so
    adding a landmark or a phase does not modify it: every parameter whose node content
    the Apply checks read (p.X.GetNumberOf...()) must be observed by the widget."""
    import ast

    read = set()
    for name in ("inputProblem", "phasesProblem"):
        for node in ast.walk(_module_function(name)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr.startswith("GetNumberOf") and isinstance(node.func.value, ast.Attribute) \
                    and ast.unparse(node.func.value.value) == "p":
                read.add(node.func.value.attr)
    observed = {n.attr for n in ast.walk(_module_function("_observeInputs"))
                if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "p"}
    assert read and read <= observed, read - observed


def test_nothing_can_be_started_while_a_run_starts():
    """pip_install processes events (slicer.util.logProcessOutput): both Apply buttons are
    disabled before start(), which installs what is missing, is called."""
    import ast

    body = _module_function("_startWith")
    lines = [(ast.unparse(n), n.lineno) for n in ast.walk(body) if isinstance(n, (ast.Assign, ast.Call))]
    starting = min(v for k, v in lines if k.startswith("self._starting = True"))
    update = min(v for k, v in lines if k == "self._updateButtons()")
    start = min(v for k, v in lines if k.startswith("start(self._parameterNode"))
    assert starting < update < start
    buttons = ast.unparse(_module_function("_updateButtons"))
    assert "if self._starting:" in buttons and "button.enabled, button.text, button.toolTip = (False" in buttons


def test_tests_and_experiments_read_model_files_weights_only():
    """torch.load(weights_only=False) runs whatever a file pickles: read model files and
    checkpoints with the library's readers (load_model, read_checkpoint)."""
    import ast

    found = []
    for folder in ("Testing", "experiments", "benchmarks", "ProgressiveRegistration"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("load") and any(
                        k.arg == "weights_only" and ast.unparse(k.value) == "False" for k in node.keywords):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


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


# registerCustomSampleDataSource's keyword arguments (Modules/Scripted/SampleData/SampleData.py):
# v5.6.2 has loadFileType, v5.8.1 and v5.10.0 add loadFileTypes; the rest is common to all three.
SAMPLE_DATA_KEYWORDS = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                        "thumbnailFileName", "loadFiles", "loadFileProperties", "checksums"}


def _module_functions(*names: str, **namespace) -> dict:
    """Module-level functions of the module file, compiled on their own with ``namespace``."""
    import ast

    source = (MODULE_DIR / "ProgressiveRegistration.py").read_text(encoding="utf-8")
    lines, tree = source.splitlines(), ast.parse(source)
    parts = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            parts += lines[node.lineno - 1:node.end_lineno]
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("SAMPLES", "SAMPLE_CATEGORY")
                                                  for t in node.targets):
            parts += lines[node.lineno - 1:node.end_lineno]
    scope = dict(namespace)
    exec(compile("\n".join(parts), "ProgressiveRegistration.py", "exec"), scope)  # noqa: S102 - the module's own code
    return scope


def test_the_samples_are_in_the_sample_data_module():
    """The bundled CT, the simulated pair and the 4DCT are registered with Sample Data at start-up,
    by keyword (valid in Slicer 5.6 to 5.10), each with its thumbnail; the CT as a file Sample
    Data copies itself, the simulations through a downloader that loads them in the logic."""
    import pathlib
    import types
    import urllib.request

    registered, loaded = [], []

    def register(**kwargs):
        assert set(kwargs) <= SAMPLE_DATA_KEYWORDS, set(kwargs) - SAMPLE_DATA_KEYWORDS
        registered.append(kwargs)

    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=register)
    scope = _module_functions("registerSampleData", os=os, pathlib=pathlib, __file__=str(MODULE_DIR / "x.py"),
                              loadSample=loaded.append)
    sys.modules["SampleData"] = sample_data
    try:
        scope["registerSampleData"]()
    finally:
        del sys.modules["SampleData"]
    assert [r["sampleName"] for r in registered] == [s[0] for s in scope["SAMPLES"]]
    assert {r["category"] for r in registered} == {scope["SAMPLE_CATEGORY"]}
    for r in registered:
        assert pathlib.Path(r["thumbnailFileName"]).is_file(), r["thumbnailFileName"]
        assert isinstance(r["uris"], str) and isinstance(r["fileNames"], str)  # one file (SampleDataSource's lists)
    ct = registered[0]
    assert "customDownloader" not in ct and ct["nodeNames"] == "lung CT"
    path, _ = urllib.request.urlretrieve(ct["uris"])  # what Sample Data does with the uri
    assert pathlib.Path(path).read_bytes()[:4] == (LIB / "../Resources/Sample/lung_ct_small.mha").read_bytes()[:4]
    for r in registered[1:]:
        r["customDownloader"](None)
    assert loaded == ["pair", "phases"]
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for r in registered:
        assert f"Resources/Icons/{pathlib.Path(r['thumbnailFileName']).name}" in cmake
