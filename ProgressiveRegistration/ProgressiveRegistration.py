"""ProgressiveRegistration: lung CT registration with a progressively trained 3D U-Net.

The Slicer side only: GUI wiring (Widget), a thin Logic that runs the Qt-free
``ProgressiveRegistrationLib`` in a background process and loads its results into the
scene, and the module's self-test. No algorithm lives here.

Written for the Python of Slicer 5.6-5.8 (3.9): no ``X | Y`` annotations at run time.
"""

import importlib
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, GuiConnector, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

log = logging.getLogger("ProgressiveRegistration")
#: The library's loggers whose notes the log area shows, beside the module's own.
LIBRARY_LOGGERS = ("ProgressiveRegistrationLib.slicer.mrml",)


class ProgressiveRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Progressive Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = ["Sequences", "Segmentations"]  # 4DCT input and propagated contours
        self.parent.contributors = ["ProgressiveRegistration developers"]
        self.parent.helpText = _(
            "Deformable registration of inhale/exhale lung CT of one patient: one forward pass of a "
            "progressively trained 3D U-Net, without affine pre-registration, then a short refinement on the "
            "images (on by default). Produces a grid transform that aligns the moving volume to the fixed one, "
            "a Jacobian determinant map with the folding percentage, and a landmark TRE table. For a 4DCT (a "
            "Sequence of phases): every phase to a reference phase, with ventilation maps, a table per phase and "
            "contours carried between phases. "
            '<a href="https://github.com/progressive-registration/SlicerProgressiveRegistration">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "Implements Eppenhof, Lafarge, Veta, Pluim: Progressively trained convolutional neural networks for "
            "deformable image registration, IEEE TMI 2019.")
        # Once Slicer has started: the work folders of earlier runs that no process uses any more,
        # and this module's samples in the Sample Data module.
        slicer.app.connect("startupCompleted()", removeStaleWorkFolders)
        slicer.app.connect("startupCompleted()", registerSampleData)


#: The Sample Data module's category for this module's samples.
SAMPLE_CATEGORY = "Lung CT registration"
#: (sample name, thumbnail in Resources/Icons, what ProgressiveRegistrationLogic.loadSample loads)
SAMPLES = (
    ("Lung CT (bundled)", "SampleLungCT.png", "ct"),
    ("Lung CT inhale/exhale pair (simulated)", "SamplePair.png", "pair"),
    ("Lung 4DCT (simulated)", "Sample4DCT.png", "phases"),
)


def registerSampleData():
    """This module's samples in the Sample Data module: the lung CT the extension carries, an
    inhale/exhale pair simulated from it with landmark lists, and a 4DCT (a Sequence of four
    phases). Nothing is downloaded: the CT's source is the bundled file (a file:// uri, which
    Sample Data's urlretrieve copies, so ``SampleData.downloadSample`` loads it too); the
    simulated samples have a custom downloader that makes their nodes (the uri and file name a
    source must have name the bundled CT)."""
    import SampleData

    from ProgressiveRegistrationLib.io.resources import BUNDLED_SAMPLE

    icons = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    ct = pathlib.Path(BUNDLED_SAMPLE)
    for name, thumbnail, kind in SAMPLES:
        made = {} if kind == "ct" else {"customDownloader": lambda source, kind=kind: loadSample(kind)}
        # Keyword arguments only: the positional order changed between Slicer 5.6 and 5.8.
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=SAMPLE_CATEGORY, sampleName=name, thumbnailFileName=os.path.join(icons, thumbnail),
            uris=ct.as_uri(), fileNames=ct.name, nodeNames="lung CT" if kind == "ct" else None, **made)


def loadSample(kind):
    """The Sample Data button's action: load the sample, or say in a dialog why it could not be."""
    with slicer.util.tryWithErrorDisplay(_("Failed to load the sample."), waitCursor=True):
        ProgressiveRegistrationLogic().loadSample(kind)


def removeStaleWorkFolders():
    """Remove the work folders in Slicer's temporary folder that an earlier run left behind
    (Slicer ended during a run, or a file was still locked when the run ended): those whose
    processes have all ended (``jobs.sweep_stale_work_dirs``)."""
    try:
        jobs = ProgressiveRegistrationLogic._lib("jobs")
        for folder in jobs.sweep_stale_work_dirs(slicer.app.temporaryPath):
            log.info("removed the work folder of an earlier run: %s", folder)
    except Exception:  # noqa: BLE001 - a leftover folder must not stop Slicer's start-up
        logging.exception("could not remove the work folders of earlier runs")


#: Where "Keep result files" puts each run's files: a folder of its own in here.
RESULTS_FOLDER_NAME = "ProgressiveRegistration results"
#: Where each run's quality report is kept when its result files are not (in Slicer's temporary folder).
REPORTS_FOLDER_NAME = "ProgressiveRegistration reports"
#: Raw parameter-node attribute set once the device has had its default (cuda where torch sees a GPU).
DEVICE_DEFAULTED_ATTRIBUTE = "ProgressiveRegistration.deviceDefaulted"
#: Application setting (qt.QSettings): the optional packages the user declined (or that failed
#: to install), comma-separated: they are not offered again.
DECLINED_PACKAGES_SETTING = "ProgressiveRegistration/declinedOptionalPackages"


# Every field is bound to the widget of the same SlicerParameterName in the .ui file, through
# the connectors of Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py:
# qMRMLNodeComboBox <-> node, QCheckBox <-> bool, QSpinBox <-> int (without a Minimum or a
# WithinRange its range is set to the whole int range), ctkPathLineEdit <-> pathlib.Path
# (only; modelPath has a connector of its own, _ModelPathConnector), QComboBox <-> a type
# annotated with Choice (only). Testing/test_extension_layout.py checks it.
@parameterNodeWrapper
class ProgressiveRegistrationParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    # Optional: the user's lung masks (replacing the computed lung fields) and a transform to
    # start from (e.g. a rigid registration's, or a manual alignment).
    fixedMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    movingMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    initialTransform: vtkMRMLTransformNode
    outputTransform: vtkMRMLGridTransformNode
    outputInverse: vtkMRMLGridTransformNode  # optional: none, no inverse
    outputVolume: vtkMRMLScalarVolumeNode
    outputJacobian: vtkMRMLScalarVolumeNode
    outputTable: vtkMRMLTableNode
    # The quality checks (AAPM TG-132: a table with PASS / WARN / FAIL) and the doubt map.
    outputQualityTable: vtkMRMLTableNode
    outputQualityMap: vtkMRMLScalarVolumeNode
    applyToMoving: bool = True
    keepFiles: bool = False
    refine: bool = True
    modelPath: pathlib.Path  # "." (pathlib's empty path): the bundled model
    device: Annotated[str, Choice(["cpu", "cuda"])] = "cpu"
    # All phases of a 4DCT (phase numbers are positions in the Sequence, from 0):
    phases: vtkMRMLSequenceNode
    referencePhase: Annotated[int, Minimum(0)] = 0
    phasePoints: vtkMRMLMarkupsFiducialNode
    phaseSegmentation: vtkMRMLSegmentationNode
    segmentationPhase: Annotated[int, Minimum(0)] = 0
    targetPhase: Annotated[int, Minimum(0)] = 0


class _ModelPathConnector(GuiConnector):
    """ctkPathLineEdit <-> ``modelPath`` that shows the bundled model's path where the
    parameter is the empty path (``pathlib.Path()``, stored as ``"."``), and reads an empty
    field or the bundled model's path back as that empty path.

    Slicer's own ctkPathLineEditToPathConnector (guiConnectors.py, v5.6.2 to v5.10.0) writes
    ``str(value)`` into the field, which is ``"."`` for the empty path, and reads the field
    back as ``Path(text)``. The parameter keeps "empty" for the bundled model, so that a
    saved scene opens with the bundled model of whatever installation loads it."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return False  # used explicitly (connectParametersToGui), never picked by type

    @staticmethod
    def create(widget, datatype):
        return None

    def __init__(self, widget, bundled: str):
        super().__init__()
        self._widget = widget
        self._bundled = bundled

    def _connect(self):
        self._widget.currentPathChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentPathChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self):
        text = self._widget.currentPath
        return pathlib.Path() if text in ("", ".") or os.path.normpath(text) == os.path.normpath(self._bundled) \
            else pathlib.Path(text)

    def write(self, value) -> None:
        text = "" if value is None else str(value)
        self._widget.currentPath = self._bundled if text in ("", ".") else text


class ProgressiveRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the GUI to the parameter node; the Logic does the work."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._uiWidget = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedInputs = []
        self._starting = False
        self._updating = False
        self._logHandler = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._uiWidget = slicer.util.loadUI(self.resourcePath("UI/ProgressiveRegistration.ui"))
        self.layout.addWidget(self._uiWidget)
        self.ui = slicer.util.childWidgetVariables(self._uiWidget)
        # qMRMLWidget::setMRMLScene only emits mrmlSceneChanged (Libs/MRML/Widgets/qMRMLWidget.cxx,
        # v5.6.2 to v5.10.0); each qMRML widget gets the scene through its connection to that
        # signal in the .ui file (Testing/test_extension_layout.py checks that each has one).
        self._uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ProgressiveRegistrationLogic()
        self.logic.declinedOptional = ProgressiveRegistrationLogic._lib("requirements").parse_names(
            qt.QSettings().value(DECLINED_PACKAGES_SETTING, ""))

        # The module's log (the background process's whole stderr among it) in the log area.
        self._logHandler = _TextEditLogHandler(self.ui.logTextEdit)
        log.addHandler(self._logHandler)
        log.setLevel(logging.INFO)
        # The logic's notes (e.g. an output of another pair kept, a new node made) too.
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).addHandler(self._logHandler)
            logging.getLogger(name).setLevel(logging.INFO)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.applyPhasesButton.connect("clicked(bool)", self.onApplyPhasesButton)
        self.ui.openResultsButton.connect("clicked(bool)", self.onOpenResultsButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReportButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedCollapsed)
        self.initializeParameterNode()

    def cleanup(self):
        if self.logic:
            self.logic.cancel()
        if self._logHandler:
            log.removeHandler(self._logHandler)
            for name in LIBRARY_LOGGERS:
                logging.getLogger(name).removeHandler(self._logHandler)
            self._logHandler = None
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        """The GUI stays connected to the parameter node while another module is shown:
        ``disconnectGui`` leaves the parameter node's ModifiedEvent observer that
        ``connectParametersToGui`` added (Base/Python/slicer/parameterNodeWrapper/wrapper.py,
        v5.6.2 to v5.10.0), so that disconnecting at every exit and connecting at every enter
        would add one more observer each time. It is disconnected when the scene closes and
        in ``cleanup``."""

    def onReload(self):
        """Reload the library too: Slicer's ``reloadScriptedModule`` reloads this file only
        (Base/Python/slicer/util.py, v5.6.2 to v5.10.0), and its imports of
        ``ProgressiveRegistrationLib`` would find the modules loaded before. Dropped from
        ``sys.modules``, they are imported afresh by the reloaded module (``cleanup``, which
        cancels a running registration, is called by the reload before that)."""
        for name in [m for m in sys.modules if m == "ProgressiveRegistrationLib" or m.startswith("ProgressiveRegistrationLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        # A running job would attach its results to nodes of a scene that is gone.
        if self.logic and self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
            self.ui.progressBar.visible = False
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode):
        """Connect the GUI to ``inputParameterNode`` (None: disconnect), once per parameter node.

        ``connectParametersToGui`` returns the tag that ``disconnectGui`` needs on every
        Slicer version; ``connectGui`` returned None up to Slicer 5.8
        (Base/Python/slicer/parameterNodeWrapper/wrapper.py, v5.6.2 and v5.8.1; fixed by
        commit b5a65a49a0, in v5.10.0), so that every enter, setup and scene close added
        another set of connectors, stale ones among them writing to the parameters."""
        if inputParameterNode is not None and self._parameterNode is not None \
                and self._parameterNodeGuiTag is not None \
                and inputParameterNode.parameterNode is self._parameterNode.parameterNode:
            return  # already connected to this node
        if self._parameterNode is not None:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._guiMapping())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._updateDeviceChoices()
        self._onParameterNodeModified()

    def _guiMapping(self):
        """SlicerParameterName -> widget (what connectGui collects, wrapper.py ``_connectGui``),
        with the model path's own connector."""
        mapping = {}
        for widget in self._uiWidget.findChildren(qt.QWidget):
            name = widget.property("SlicerParameterName")
            if name:
                mapping[name] = widget
        mapping["modelPath"] = _ModelPathConnector(mapping["modelPath"], self.logic.bundledModelPath())
        return mapping

    def _onParameterNodeModified(self, caller=None, event=None):
        if self._updating:
            return
        self._updating = True
        try:
            self._observeInputs()
            self._updatePhaseControls()
            self._updateButtons()
        finally:
            self._updating = False

    def _observeInputs(self):
        """Observe the selected landmark lists and Sequence: the Apply buttons depend on their
        content (numbers of points and phases), and the parameter node only references them
        (NodeSerializer: SetNodeReferenceID, not SetAndObserveNodeReferenceID;
        parameterNodeWrapper/serializers.py, v5.6.2 to v5.10.0): their edits do not modify it."""
        wanted = []
        p = self._parameterNode
        if p is not None:
            for node in (p.fixedLandmarks, p.movingLandmarks, p.phasePoints):
                if node is not None:
                    wanted += [(node, slicer.vtkMRMLMarkupsNode.PointAddedEvent),
                               (node, slicer.vtkMRMLMarkupsNode.PointRemovedEvent)]
            if p.phases is not None:
                wanted.append((p.phases, vtk.vtkCommand.ModifiedEvent))
        for node, event in self._observedInputs:
            if not any(node is n and event == e for n, e in wanted):
                self.removeObserver(node, event, self._onInputModified)
        for node, event in wanted:
            if not self.hasObserver(node, event, self._onInputModified):
                self.addObserver(node, event, self._onInputModified)
        self._observedInputs = wanted

    def _onInputModified(self, caller=None, event=None):
        self._onParameterNodeModified()

    def _updatePhaseControls(self):
        """Bound the phase spin boxes to the selected Sequence (positions 0 to n - 1) and name
        the chosen phase beside its position, as the Sequence names it."""
        p = self._parameterNode
        sequence = p.phases if p is not None else None
        labels = self.logic.phaseLabels(sequence)
        for spinBox in (self.ui.referencePhaseSpinBox, self.ui.segmentationPhaseSpinBox, self.ui.targetPhaseSpinBox):
            spinBox.minimum = 0
            spinBox.maximum = max(len(labels) - 1, 0)
            spinBox.suffix = f"  ({labels[spinBox.value]})" if spinBox.value < len(labels) else ""
            spinBox.enabled = len(labels) > 0

    def _updateButtons(self):
        """Apply turns into Cancel while its run goes on (as SlicerElastix's panel does); while
        it cannot run, it is disabled and its tooltip says what is missing (as the scripted
        module template's ``_checkCanApply`` does); nothing can be started while a run starts."""
        p = self._parameterNode
        running = self.logic.runningKind()
        for button, kind, problemOf, label, tip in (
                (self.ui.applyButton, "pair", self.logic.inputProblem, _("Apply"),
                 _("Register the moving volume to the fixed volume.")),
                (self.ui.applyPhasesButton, "phases", self.logic.phasesProblem, _("Register all phases"),
                 _("Register every phase to the reference phase."))):
            if self._starting:
                button.enabled, button.text, button.toolTip = False, label, _("Preparing the registration.")
            elif running:
                mine = running == kind
                button.enabled = mine
                button.text = _("Cancel") if mine else label
                button.toolTip = _("Stop the registration and everything it started.") if mine else \
                    _("A registration is running.")
            else:
                problem = problemOf(p) if p is not None else _("No parameters")
                button.enabled = problem is None
                button.text = label
                button.toolTip = tip if problem is None else problem
        self.ui.openResultsButton.enabled = self.logic.lastResultsFolder is not None
        self.ui.openResultsButton.toolTip = self.logic.lastResultsFolder or _("No result files kept yet.")
        self.ui.openReportButton.enabled = self.logic.lastReport is not None
        self.ui.openReportButton.toolTip = self.logic.lastReport or _("No quality report yet.")
        problem = self.logic.dicomExportProblem(p.outputTransform) if p is not None else _("No parameters")
        self.ui.exportDicomButton.enabled = problem is None and not running
        self.ui.exportDicomButton.toolTip = problem or _(
            "Save the output transform as a DICOM Deformable Spatial Registration object (registration.dcm) "
            "referencing the fixed and moving series, for radiotherapy planning systems.")

    def _updateDeviceChoices(self, probe=False):
        """List cuda only where torch sees a GPU (and make it the default there, once per
        parameter node: ProgressiveRegistrationLogic.defaultDevice). Unknown until torch is
        imported: it is probed when the Advanced section is opened, and by every run."""
        cuda = self.logic.cudaAvailable(probe=probe)
        if cuda is None or self._parameterNode is None:
            return
        self.logic.defaultDevice(self._parameterNode, cuda)
        combo = self.ui.deviceComboBox
        index = combo.findText("cuda")
        if not cuda and index >= 0:
            combo.removeItem(index)  # the connector (Choice ["cpu", "cuda"]) still reads index 0 as "cpu"

    def onAdvancedCollapsed(self, collapsed):
        if not collapsed:
            with slicer.util.tryWithErrorDisplay(_("Failed to look for a GPU."), waitCursor=True):
                self._updateDeviceChoices(probe=True)

    def onApplyButton(self):
        if self.logic.runningKind() == "pair":
            self.onCancel()
        else:
            self._startWith(self.logic.start)

    def onApplyPhasesButton(self):
        if self.logic.runningKind() == "phases":
            self.onCancel()
        else:
            self._startWith(self.logic.startPhases)

    def _startWith(self, start):
        # Both buttons are disabled before the dependency step: pip_install processes events
        # while it runs (slicer.util.logProcessOutput, Base/Python/slicer/util.py, v5.6.2 to v5.10.0).
        self._starting = True
        self._updateButtons()
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
                self.ui.resultsLabel.text = ""
                self.ui.logTextEdit.clear()
                self.ui.progressBar.visible = True
                self.ui.progressBar.value = 0
                start(self._parameterNode, self.onProgress, self.onFinished)
        finally:
            self._starting = False
            self.ui.progressBar.visible = self.logic.isRunning()
            self._saveDeclinedPackages()
            self._updateDeviceChoices()
            self._updateButtons()

    def _saveDeclinedPackages(self):
        """Remember the optional packages declined (or not installable) in the application
        settings: they are not offered again, in this session or the next."""
        value = ",".join(sorted(self.logic.declinedOptional))
        settings = qt.QSettings()
        if value != (settings.value(DECLINED_PACKAGES_SETTING, "") or ""):
            settings.setValue(DECLINED_PACKAGES_SETTING, value)

    def onCancel(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel the registration."), waitCursor=True):
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelled.")
            self.ui.progressBar.visible = False
            self._updateButtons()

    def onOpenReportButton(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to open the quality report."), waitCursor=False):
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self.logic.lastReport))

    def onExportDicomButton(self):
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Save the DICOM registration object"),
            os.path.join(slicer.app.defaultScenePath, "registration.dcm"), _("DICOM files (*.dcm)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the DICOM registration object."), waitCursor=True):
            self.logic.exportDicomRegistration(self._parameterNode.outputTransform, path)
            self.ui.statusLabel.text = _("Saved {path}").format(path=path)

    def onOpenResultsButton(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to open the result folder."), waitCursor=False):
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self.logic.lastResultsFolder))

    def onProgress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def onFinished(self, result, error):
        self.ui.progressBar.visible = False
        self._updateButtons()
        if error:
            self.ui.statusLabel.text = _("Registration failed.")
            slicer.util.errorDisplay(_("Registration failed:\n{error}").format(error=error),
                                     detailedText="\n".join(self.logic.lastLog))
            return
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s.").format(seconds=result.seconds)
        self.ui.resultsLabel.text = result.describe()
        with slicer.util.tryWithErrorDisplay(_("Failed to show the results."), waitCursor=True):
            self.logic.showResult(result)


class _TextEditLogHandler(logging.Handler):
    """Appends log records to a QPlainTextEdit."""

    def __init__(self, textEdit):
        super().__init__(logging.INFO)
        self._textEdit = textEdit
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record):
        try:
            self._textEdit.appendPlainText(self.format(record))
        except Exception:  # noqa: BLE001 - the widget may be gone while the module unloads
            pass


class ProgressiveRegistrationLogic(ScriptedLoadableModuleLogic):
    """Runs ``progreg register`` in a background ``PythonSlicer`` process (a
    ``ProgressiveRegistrationLib.slicer.jobs.BackgroundJob``, polled by a timer) and loads its
    results with the Qt-free MRML functions of ``ProgressiveRegistrationLib.slicer.mrml``.

    For scripting, call ``ProgressiveRegistrationLib.register_volume_nodes(slicer.mrmlScene, ...)``
    directly: it runs in-process and returns the output nodes.
    """

    POLL_MS = 300
    _cuda = None  # whether torch sees a GPU, once known (one answer while Slicer runs)
    _optionalNoted = False  # the log says once while Slicer runs which optional packages are missing

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None
        self._kind = None
        self._load = None
        self._keep = None
        self._timer = None
        self._callbacks = None
        self._sceneObserver = None
        self.lastLog = []
        self.lastResultsFolder = None
        #: the last run's report.html (kept with the result files, or in Slicer's temporary folder)
        self.lastReport = None
        #: names of the optional packages not to offer (declined, or failed to install); the
        #: widget keeps them in the application settings (DECLINED_PACKAGES_SETTING)
        self.declinedOptional = set()

    def getParameterNode(self):
        return ProgressiveRegistrationParameterNode(super().getParameterNode())

    # --- environment -------------------------------------------------------------------
    @staticmethod
    def libraryPath():
        return os.path.dirname(os.path.abspath(__file__))

    @classmethod
    def _lib(cls, name):
        """A light module of the library (``jobs``, ``requirements``: standard library only)."""
        if cls.libraryPath() not in sys.path:
            sys.path.insert(0, cls.libraryPath())
        return importlib.import_module(f"ProgressiveRegistrationLib.slicer.{name}")

    @classmethod
    def bundledModelPath(cls):
        """The bundled model file (what an empty model path means)."""
        if cls.libraryPath() not in sys.path:
            sys.path.insert(0, cls.libraryPath())
        from ProgressiveRegistrationLib.io.resources import BUNDLED_MODEL

        return str(BUNDLED_MODEL)

    def ensureDependencies(self, askUser=True, install=True):
        """Make every package the library needs importable, each checked on its own.

        Torch through the PyTorch extension (``PyTorchUtils``, which picks the CPU or CUDA
        build) with a minimum version, as MONAIAuto3DSeg does; the others by pip; nothing
        Slicer bundles (numpy, SimpleITK), except numpy below 2 on Intel macOS (see
        ``requirements.numpy_requirement``). numba is optional: offered with the others,
        and once declined (or failed to install) not offered again (``declinedOptional``);
        without it the registration is slower. Versions are read from the package metadata,
        so a torch that is too old is never imported (an imported torch cannot be upgraded
        without a restart). An installation that fails says whether the package index could
        be reached (``requirements.install_failure``). ``install=False`` (scripts) only reports.
        """
        requirements = self._lib("requirements")

        self._ensureNumpy(requirements, askUser, install)
        problem = requirements.torch_problem()
        if requirements.installed_version("torch") is None:
            if not install:
                raise RuntimeError(problem + _(": open the module and press Apply once to install it."))
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("{problem}, and the PyTorch extension is not installed: install "
                                     "'PyTorch' from the Extensions Manager, restart Slicer and try again.")
                                   .format(problem=problem)) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            try:
                torch = torchLogic.installTorch(askConfirmation=askUser,
                                                torchVersionRequirement=f">={requirements.TORCH_MINIMUM}")
            except Exception as err:  # noqa: BLE001 - pip's bare error: say why, and what to do
                raise RuntimeError(requirements.install_failure(["PyTorch"], err)) from err
            problem = requirements.torch_problem() if torch is not None else _("PyTorch was not installed")
        if problem:
            # Too old (or not installed): as TotalSegmentator and MONAIAuto3DSeg do, the user
            # upgrades in PyTorch Utils and restarts Slicer.
            raise RuntimeError(problem)
        problem = requirements.torch_import_problem()
        if problem:
            raise RuntimeError(problem)

        missing = requirements.missing_pip_packages()
        optional = requirements.missing_pip_packages(optional=True)
        offered = [r for r in optional if requirements.requirement_name(r) not in self.declinedOptional]
        if optional and not offered and not ProgressiveRegistrationLogic._optionalNoted:
            ProgressiveRegistrationLogic._optionalNoted = True
            log.info("not installed, and not offered again: %s (the registration is slower without it; to install it, "
                     "run slicer.util.pip_install(%r) in the Python console)", ", ".join(optional), optional)
        if not missing and not offered:
            return True
        if not install:
            if missing:
                raise RuntimeError(_("Missing Python packages: {packages}").format(packages=", ".join(missing)))
            log.warning("optional Python packages not installed (the registration is slower without them): %s",
                        ", ".join(offered))
            return True
        if askUser and not slicer.util.confirmOkCancelDisplay(self._installQuestion(missing, offered)):
            self._decline(requirements, offered)
            if missing:
                raise RuntimeError(_("Required Python packages were not installed: {packages}")
                                   .format(packages=", ".join(missing)))
            return True
        # pip_install takes a string (split as a shell would) or a list of arguments
        # (Base/Python/slicer/util.py, v5.6.2 to v5.10.0): a list, one requirement each.
        if missing:
            try:
                slicer.util.pip_install(list(missing))
            except Exception as err:  # noqa: BLE001 - pip's bare error: say why, and what to do
                raise RuntimeError(requirements.install_failure(missing, err)) from err
        for requirement in offered:
            try:
                slicer.util.pip_install([requirement])
            except Exception as err:  # noqa: BLE001 - optional: the library runs without it
                self._decline(requirements, [requirement])
                log.warning("%s (the registration runs without it, slower; not offered again)",
                            requirements.install_failure([requirement], err))
        still = requirements.missing_pip_packages()
        if still:
            raise RuntimeError(_("Could not install: {packages}").format(packages=", ".join(still)))
        return True

    @staticmethod
    def _installQuestion(missing, optional):
        lines = []
        if missing:
            lines.append(_("This module needs these Python packages, which are not installed: {packages}.")
                         .format(packages=", ".join(missing)))
        if optional:
            lines.append(_("Optional, to make the registration faster: {packages} (if you decline, it is not offered "
                           "again).").format(packages=", ".join(optional)))
        return "\n".join([*lines, _("Install them now?")])

    def _decline(self, requirements, optional):
        """Offer ``optional`` no more (the widget keeps ``declinedOptional`` in the settings)."""
        self.declinedOptional |= {requirements.requirement_name(r) for r in optional}

    @staticmethod
    def _ensureNumpy(requirements, askUser, install):
        """Intel macOS: numpy below 2 before torch is imported, then a restart (as SlicerTotalSegmentator does)."""
        needed = requirements.numpy_requirement()
        loaded = sys.modules.get("numpy")
        if needed is None and loaded is not None and \
                requirements.numpy_requirement(numpy_version=getattr(loaded, "__version__", "0")):
            raise RuntimeError(_("numpy 1 is installed, but Slicer still runs numpy {version}: restart Slicer.")
                               .format(version=loaded.__version__))
        if needed is None:
            return
        message = _("On Intel macOS the newest PyTorch (2.2) needs numpy below 2, and this Slicer has numpy {version}.")\
            .format(version=requirements.installed_version("numpy"))
        if not install or (askUser and not slicer.util.confirmOkCancelDisplay(
                message + " " + _("Install numpy below 2 now (Slicer then restarts)?"))):
            raise RuntimeError(message + " " + _("Install '{requirement}' (pip) and restart Slicer.")
                               .format(requirement=needed))
        slicer.util.pip_install([needed])
        if askUser and slicer.util.confirmOkCancelDisplay(_("numpy was installed: Slicer must restart. Restart now?")):
            slicer.util.restart()
        raise RuntimeError(_("Restart Slicer to use the numpy just installed."))

    @classmethod
    def cudaAvailable(cls, probe=False):
        """Whether torch sees a GPU: True or False once known, None while torch has not been
        imported and ``probe`` is False (importing torch takes seconds, and a torch that is
        too old is never imported: it could not be upgraded until Slicer restarts)."""
        if cls._cuda is None and (probe or "torch" in sys.modules):
            requirements = cls._lib("requirements")
            if requirements.torch_problem() or requirements.torch_import_problem():
                return False  # (not remembered: torch may be installed later while Slicer runs)
            import torch

            cls._cuda = bool(torch.cuda.is_available())
        return cls._cuda

    @classmethod
    def defaultDevice(cls, p, cuda):
        """Give ``p.device`` its default once per parameter node: cuda where torch sees a GPU.
        Where it sees none, a saved cuda becomes cpu (the combo box offers cuda no more). A
        change is one line in the log (``jobs.default_device``)."""
        node = p.parameterNode
        defaulted = node.GetAttribute(DEVICE_DEFAULTED_ATTRIBUTE) is not None
        device, note = cls._lib("jobs").default_device(p.device, bool(cuda), defaulted)
        if cuda and not defaulted:
            node.SetAttribute(DEVICE_DEFAULTED_ATTRIBUTE, "cuda")
        if device != p.device:
            p.device = device
        if note:
            log.info(note)

    @classmethod
    def phaseLabels(cls, sequence):
        """Each phase's name, as the Sequence names it (``jobs.phase_label``); [] without one."""
        if sequence is None:
            return []
        jobs = cls._lib("jobs")
        return [jobs.phase_label(sequence.GetNthIndexValue(k), sequence.GetIndexUnit() or "",
                                 sequence.GetIndexName() or "") for k in range(sequence.GetNumberOfDataNodes())]

    # --- validation --------------------------------------------------------------------
    @staticmethod
    def modelFile(p):
        """The chosen model file, or None for the bundled model (an empty path)."""
        path = p.modelPath
        return None if path is None or str(path) in ("", ".") else str(path)

    @classmethod
    def inputProblem(cls, p):
        """None if the inputs can be registered, else what is missing (the Apply button's text)."""
        if not p.fixedVolume or not p.movingVolume:
            return _("Select the fixed and moving volumes")
        if p.fixedVolume == p.movingVolume:
            return _("Fixed and moving volumes must differ")
        if bool(p.fixedLandmarks) != bool(p.movingLandmarks):
            return _("Select both landmark lists, or neither")
        if p.fixedLandmarks and (p.fixedLandmarks.GetNumberOfControlPoints()
                                 != p.movingLandmarks.GetNumberOfControlPoints()):
            return _("The landmark lists have different numbers of points")
        model = cls.modelFile(p)
        if model and not os.path.isfile(model):
            return _("The model file does not exist")
        return None

    @classmethod
    def phasesProblem(cls, p):
        """None if all phases can be registered, else what is missing (the button's text)."""
        if not p.phases:
            return _("Select a Sequence of volumes (one per phase)")
        wrong = cls._lib("jobs").phases_problem(p.phases)
        if wrong:
            return wrong
        n = p.phases.GetNumberOfDataNodes()
        if n < 2:
            return _("The Sequence needs at least two phases")
        if not 0 <= p.referencePhase < n:
            return _("Choose a reference phase of the Sequence")
        if p.phaseSegmentation and not (0 <= p.segmentationPhase < n and 0 <= p.targetPhase < n):
            return _("Choose the segmentation's phases in the Sequence")
        model = cls.modelFile(p)
        if model and not os.path.isfile(model):
            return _("The model file does not exist")
        return None

    # --- background run ----------------------------------------------------------------
    def isRunning(self):
        return self._job is not None

    def runningKind(self):
        """The kind of the running registration ("pair" or "phases"); None while none runs."""
        return self._kind if self._job is not None else None

    def start(self, p, onProgress, onFinished):
        """Export the inputs, start ``progreg register`` in PythonSlicer, poll it with a timer."""
        problem = self.inputProblem(p)
        if problem:
            raise ValueError(problem)

        def export(workDir, device):
            from ProgressiveRegistrationLib.slicer import mrml

            job = mrml.export_job(slicer.mrmlScene, p.fixedVolume, p.movingVolume, workDir, p.fixedLandmarks,
                                  p.movingLandmarks, p.fixedMask, p.movingMask, p.initialTransform)

            def load():
                result = mrml.load_results(slicer.mrmlScene, job, transform=p.outputTransform,
                                           jacobian=p.outputJacobian, table=p.outputTable,
                                           apply_to_moving=p.applyToMoving, volume=p.outputVolume,
                                           quality_table=p.outputQualityTable, quality_map=p.outputQualityMap,
                                           inverse=p.outputInverse)
                p.outputTransform, p.outputJacobian = result.transform, result.jacobian
                if result.inverse:
                    p.outputInverse = result.inverse
                if result.table:
                    p.outputTable = result.table
                if result.quality_table:
                    p.outputQualityTable = result.quality_table
                if result.quality_map:
                    p.outputQualityMap = result.quality_map
                if result.volume:
                    p.outputVolume = result.volume
                for note in result.warnings:
                    log.warning(note)
                return result

            command = job.command(self._python(), self.modelFile(p), device, p.refine,
                                  warped=p.outputVolume is not None, overview=p.keepFiles,
                                  inverse=p.outputInverse is not None)
            return job, command, load, p.movingVolume.GetName()

        self._launch(p, "pair", export, onProgress, onFinished)

    def startPhases(self, p, onProgress, onFinished):
        """Export every phase, start ``progreg register-4d`` in PythonSlicer, poll it with a timer."""
        problem = self.phasesProblem(p)
        if problem:
            raise ValueError(problem)

        def export(workDir, device):
            from ProgressiveRegistrationLib.slicer import mrml4d

            segmentation = p.phaseSegmentation
            job = mrml4d.export_4d_job(slicer.mrmlScene, p.phases, p.referencePhase, workDir, p.phasePoints,
                                       segmentation, p.segmentationPhase if segmentation else None,
                                       p.targetPhase if segmentation else None)
            command = job.command(self._python(), self.modelFile(p), device, p.refine)
            return job, command, lambda: mrml4d.load_4d_results(slicer.mrmlScene, job), p.phases.GetName()

        self._launch(p, "phases", export, onProgress, onFinished)

    @staticmethod
    def _python():
        return shutil.which("PythonSlicer") or sys.executable

    def _launch(self, p, kind, export, onProgress, onFinished):
        """``export(workDir, device)`` writes the inputs and gives (job, command, load, name); the
        command runs in the background on ``device``, ``load()`` turns the job's output folder
        into nodes when it has finished (and with ``p.keepFiles`` the folder is kept, named after
        ``name``)."""
        if self.isRunning():
            raise RuntimeError(_("A registration is already running."))
        self.ensureDependencies()
        jobs = self._lib("jobs")
        # Whether torch sees a GPU is known here only if torch is already imported: a run does not
        # import it into Slicer's process (seconds, with the GUI waiting); the child decides instead.
        cuda = self.cudaAvailable()
        if cuda is not None:
            self.defaultDevice(p, cuda)
        device = jobs.run_device(p.device, cuda, p.parameterNode.GetAttribute(DEVICE_DEFAULTED_ATTRIBUTE) is not None)

        # A new folder in Slicer's temporary path, claimed at once: a folder that outlives its
        # processes is removed at the next start-up (removeStaleWorkFolders).
        workDir = slicer.util.tempDirectory(jobs.WORK_DIR_PREFIX)
        jobs.claim_work_dir(workDir, [os.getpid()])
        try:
            job, command, self._load, name = export(workDir, device)
        except Exception:
            jobs.remove_tree(workDir)
            raise
        self._keep = (job.out_dir, name) if p.keepFiles else None
        self._outDir, self._reportName = job.out_dir, name
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([self.libraryPath(), env.get("PYTHONPATH", "")])
        self.lastLog = []
        # A process that cannot start removes its work folder (BackgroundJob) and raises here;
        # BackgroundJob sets the child's output encoding (UTF-8, as it reads it).
        self._job = jobs.BackgroundJob(command, env=env, work_dir=workDir)
        self._kind = kind
        self._callbacks = (onProgress, onFinished)
        # Closing the scene while running: cancel (results would go to nodes that are gone).
        self._sceneObserver = slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent,
                                                           lambda caller, event: self.cancel())
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self):
        onProgress, onFinished = self._callbacks
        found = self._job.poll()
        self.lastLog += found.log
        for line in found.log:
            log.info(line)
        for fraction, message in found.progress:
            onProgress(fraction, message)
        if not self._job.finished:
            return
        job, self._job = self._job, None
        self._stopPolling()
        result, error = None, job.error()
        try:
            if error is None:
                result = self._load()
                if self._keep is not None:
                    outDir, name = self._keep
                    root = os.path.join(slicer.app.defaultScenePath, RESULTS_FOLDER_NAME)
                    self.lastResultsFolder = str(self._lib("jobs").keep_results(outDir, root, name))
                    log.info("result files kept in %s", self.lastResultsFolder)
                    report = os.path.join(self.lastResultsFolder, "report.html")
                    self.lastReport = report if os.path.isfile(report) else None
                elif os.path.isfile(os.path.join(self._outDir, "report.html")):
                    # The report outlives the work folder: the person who signs it opens it later.
                    reports = os.path.join(slicer.app.temporaryPath, REPORTS_FOLDER_NAME)
                    self.lastReport = self._lib("jobs").keep_report(self._outDir, reports, self._reportName)
                    log.info("quality report: %s", self.lastReport)
            else:
                log.error("registration failed: %s", error)
        except Exception as err:  # noqa: BLE001 - reported to the user in the GUI
            logging.exception("loading the registration results failed")
            error = str(err)
        finally:
            job.cleanup()
        onFinished(result, error)

    def _stopPolling(self):
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._sceneObserver is not None:
            slicer.mrmlScene.RemoveObserver(self._sceneObserver)
            self._sceneObserver = None

    def cancel(self):
        """Stop a running registration: its whole process tree, and once it has ended, its work
        folder (``BackgroundJob.cancel``)."""
        if self._job is not None:
            job, self._job = self._job, None
            self._stopPolling()
            job.cancel()
            log.info("registration cancelled")

    # --- results in the views ----------------------------------------------------------
    @staticmethod
    def showResult(result):
        """After a 4DCT run: the browser's toolbar, the current phase with its ventilation map
        over it (colour map, as the foreground layer) and the phase table in the layout."""
        browser = getattr(result, "browser", None)
        if browser is None:
            return
        # qSlicerSequencesModule::showSequenceBrowser (Modules/Loadable/Sequences/qSlicerSequencesModule.h, v5.6.2 to v5.10.0)
        slicer.modules.sequences.showSequenceBrowser(browser)
        phase = browser.GetProxyNode(result.source) if result.source is not None else None
        ventilation = browser.GetProxyNode(result.ventilation)
        slicer.util.setSliceViewerLayers(background=phase if phase is not None else "keep-current",
                                         foreground=ventilation, foregroundOpacity=0.5)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(result.table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    # --- samples -----------------------------------------------------------------------
    def loadSample(self, kind):
        """Put a sample in the scene and show it: ``"ct"`` the bundled lung CT; ``"pair"`` it as
        the fixed (inhale) volume and a simulated exhale as the moving one, with landmark lists F
        and M; ``"phases"`` a 4DCT Sequence of it and three simulated exhales (5, 10, 15 mm).
        The simulations need the registration's packages (installed after asking). Returns the nodes."""
        if kind not in ("ct", "pair", "phases"):
            raise ValueError(f"unknown sample {kind!r}")
        from ProgressiveRegistrationLib.slicer import mrml, mrml4d

        if kind == "ct":  # (no simulation: the CT alone needs no torch)
            nodes = (mrml.sample_ct_node(slicer.mrmlScene),)
            slicer.util.setSliceViewerLayers(background=nodes[0], fit=True)
            return nodes
        self.ensureDependencies()
        from ProgressiveRegistrationLib.slicer import inprocess

        if kind == "pair":
            nodes = inprocess.sample_pair_nodes(slicer.mrmlScene)
            slicer.util.setSliceViewerLayers(background=nodes[0], foreground=nodes[1], foregroundOpacity=0.5, fit=True)
            return nodes
        sequence = inprocess.sample_phase_sequence(slicer.mrmlScene)
        browser = mrml4d.browse(slicer.mrmlScene, sequence)
        # qSlicerSequencesModule::showSequenceBrowser (Modules/Loadable/Sequences/qSlicerSequencesModule.h, v5.6.2 to v5.10.0)
        slicer.modules.sequences.showSequenceBrowser(browser)
        slicer.util.setSliceViewerLayers(background=browser.GetProxyNode(sequence), fit=True)
        return sequence, browser

    @classmethod
    def dicomExportProblem(cls, transform):
        """Why ``transform`` cannot be exported as a DICOM registration object (None: it can)."""
        if transform is None:
            return _("Register first: the output transform is exported")
        for role, volume in ((_("fixed"), transform.GetNodeReference(transform.GetFixedNodeReferenceRole())),
                             (_("moving"), transform.GetNodeReference(transform.GetMovingNodeReferenceRole()))):
            if volume is None:
                return _("The output transform is not a registration result with its volumes")
            if not volume.GetAttribute("DICOM.instanceUIDs"):
                return _("The {role} volume was not loaded from DICOM").format(role=role)
        return None

    def exportDicomRegistration(self, transform, path):
        """Write ``transform`` (a registration result) as a DICOM Deformable Spatial Registration
        object to ``path``, referencing the series of its fixed and moving volumes."""
        from ProgressiveRegistrationLib.slicer import mrml

        mrml.export_dicom_registration(slicer.mrmlScene, transform, path, slicer.dicomDatabase.fileForInstance)
        log.info(f"DICOM registration object written: {path}")

    # --- synchronous, for scripts and tests ---------------------------------------------
    def process(self, fixedVolume, movingVolume, fixedLandmarks=None, movingLandmarks=None, model=None,
                device="cpu", applyToMoving=True, refine=True, outputVolume=None):
        """Register in-process (blocks); returns the Lib's result with the output nodes."""
        self.ensureDependencies(install=False)
        import ProgressiveRegistrationLib
        from ProgressiveRegistrationLib.registration.refine_config import RefineConfig

        return ProgressiveRegistrationLib.register_volume_nodes(
            slicer.mrmlScene, fixedVolume, movingVolume, fixed_landmarks=fixedLandmarks,
            moving_landmarks=movingLandmarks, model=model, device=device, apply_to_moving=applyToMoving,
            refinement=RefineConfig() if refine else None, volume=outputVolume)


class ProgressiveRegistrationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the widget path (panel -> parameter node -> Apply -> background
    process -> loaded results) and the scripting path, on the bundled sample.

    Slicer's ctest loads the test methods by name (``slicer.testing.runUnitTest``:
    ``unittest.TestLoader().loadTestsFromName``, Base/Python/slicer/testing.py, v5.6.2 to
    v5.10.0), so ``runTest`` runs only from Reload and Test: each test prepares itself in
    ``setUp``. The module's Python dependencies are installed there, once per class; where
    they cannot be, the tests that need them are skipped with the reason."""

    #: None until setUp has tried to install the dependencies; then "" if they are there,
    #: else why they are not (one try per class: installing is slow, and fails the same way)
    dependencyProblem = None
    #: the tests that need no torch (they run even where it cannot be installed)
    WITHOUT_DEPENDENCIES = ("test_PanelIsConnected",)

    def setUp(self):
        slicer.mrmlScene.Clear()
        cls = type(self)
        if cls.dependencyProblem is None:
            try:
                ProgressiveRegistrationLogic().ensureDependencies(askUser=False, install=True)
                cls.dependencyProblem = ""
            except Exception as err:  # noqa: BLE001 - the reason is the skip message
                cls.dependencyProblem = str(err) or type(err).__name__
                logging.error("the module's Python dependencies could not be installed: %s", cls.dependencyProblem)
        if cls.dependencyProblem and self._testMethodName not in self.WITHOUT_DEPENDENCIES:
            self.skipTest(f"the module's Python dependencies could not be installed: {cls.dependencyProblem}")

    def runTest(self):
        self.setUp()
        self.test_PanelIsConnected()
        self.setUp()
        self.test_WidgetPath()
        self.setUp()
        self.test_RegisterSample()
        self.setUp()
        self.test_BadInput()
        self.setUp()
        self.test_PhasesWidgetPath()
        self.setUp()
        self.test_Samples()

    def _widget(self):
        slicer.util.selectModule("ProgressiveRegistration")
        return slicer.modules.progressiveregistration.widgetRepresentation().self()

    def _waitFor(self, logic, minutes):
        """Let the GUI's event loop run (the logic's timer polls the job) until it has finished.
        time.sleep: Slicer 5.6's PythonQt does not wrap QThread.msleep (a protected static)."""
        deadline = time.monotonic() + 60 * minutes
        while logic.isRunning() and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertFalse(logic.isRunning(), f"the registration did not finish in {minutes} minutes")

    def test_Samples(self):
        """The three samples from the Sample Data module: the CT by name, as a script would load
        it, and each through the logic, as its button does."""
        import SampleData

        self.delayDisplay("The samples in the Sample Data module")
        registerSampleData()  # (Slicer did at start-up; registering again adds nothing)
        ct = SampleData.downloadSample(SAMPLES[0][0])
        self.assertTrue(ct.IsA("vtkMRMLScalarVolumeNode"))
        self.assertEqual(slicer.util.arrayFromVolume(ct).shape, (64, 78, 57))
        logic = ProgressiveRegistrationLogic()
        fixed, moving, fixedPoints, movingPoints = logic.loadSample("pair")
        self.assertEqual(fixedPoints.GetNumberOfControlPoints(), movingPoints.GetNumberOfControlPoints())
        sequence, browser = logic.loadSample("phases")
        self.assertEqual(sequence.GetNumberOfDataNodes(), 4)
        self.assertIsNotNone(browser.GetProxyNode(sequence))

    def _sampleVolumes(self):
        from ProgressiveRegistrationLib.slicer import inprocess

        return inprocess.sample_pair_nodes(slicer.mrmlScene)

    def test_PanelIsConnected(self):
        """Every qMRML widget of the panel has the scene (each needs its own mrmlSceneChanged
        connection in the .ui), and entering the module again adds no second set of connectors."""
        widget = self._widget()
        bound = [child for child in widget._uiWidget.findChildren(qt.QWidget)
                 if child.className().startswith("qMRML") and hasattr(child, "mrmlScene")]
        self.assertIn(widget.ui.phasesSelector, bound)
        for child in bound:
            self.assertIs(child.mrmlScene(), slicer.mrmlScene, child.objectName)
        phases = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "probe phases")
        widget.ui.phasesSelector.setCurrentNode(phases)
        p = widget.logic.getParameterNode()
        self.assertIs(p.phases, phases)
        tag = widget._parameterNodeGuiTag
        self.assertIsNotNone(tag)
        widget.exit()
        widget.enter()
        widget.enter()
        self.assertIsNotNone(widget._parameterNodeGuiTag)
        self.assertEqual(len(widget._parameterNode._parameterGUIs), 1)
        # A device choice survives the combo box being rebuilt (a stale connector used to set cpu back),
        # and cuda is offered only where torch sees a GPU.
        combo = widget.ui.deviceComboBox
        offered = [combo.itemText(i) for i in range(combo.count)]
        self.assertEqual("cuda" in offered, bool(widget.logic.cudaAvailable(probe=True)), offered)
        p.device = offered[-1]
        widget.exit()
        widget.enter()
        self.assertEqual(p.device, offered[-1])
        self.assertEqual(combo.currentText, offered[-1])
        # The phase spin boxes are bounded by the Sequence.
        self.assertEqual(widget.ui.referencePhaseSpinBox.maximum, 0)
        self.assertEqual(widget.ui.referencePhaseSpinBox.minimum, 0)

    def test_WidgetPath(self):
        self.delayDisplay("Apply through the module panel (background process)")
        fixed, moving, fixedPoints, movingPoints = self._sampleVolumes()
        widget = self._widget()
        p = widget.logic.getParameterNode()
        widget.ui.fixedVolumeSelector.setCurrentNode(fixed)
        widget.ui.movingVolumeSelector.setCurrentNode(moving)
        widget.ui.fixedLandmarksSelector.setCurrentNode(fixedPoints)
        self.assertFalse(widget.ui.applyButton.enabled)  # one landmark list only: Apply says so
        widget.ui.movingLandmarksSelector.setCurrentNode(movingPoints)
        self.assertIs(p.movingLandmarks, movingPoints)
        self.assertTrue(widget.ui.applyButton.enabled, widget.ui.applyButton.text)
        movingPoints.AddControlPoint(0.0, 0.0, 0.0)  # an edit of the list, not of the parameter node
        self.assertFalse(widget.ui.applyButton.enabled, "Apply did not follow the landmark list")
        movingPoints.RemoveNthControlPoint(movingPoints.GetNumberOfControlPoints() - 1)
        self.assertTrue(widget.ui.applyButton.enabled, widget.ui.applyButton.text)
        p.refine = True
        widget.onApplyButton()
        self.assertTrue(widget.logic.isRunning())
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        self.assertFalse(widget.ui.applyPhasesButton.enabled)
        self._waitFor(widget.logic, minutes=10)
        self.assertIsNotNone(p.outputTransform, widget.ui.statusLabel.text)
        self.assertEqual(moving.GetParentTransformNode(), p.outputTransform)
        self.assertIs(p.outputTransform.GetNodeReference(p.outputTransform.GetFixedNodeReferenceRole()), fixed)
        table = p.outputTable.GetTable()
        after = table.GetValue(table.GetNumberOfRows() - 2, 3).ToDouble()  # the 'mean' row
        before = table.GetValue(table.GetNumberOfRows() - 2, 1).ToDouble()
        self.assertLess(after, 0.5 * before)
        self.delayDisplay("Widget path passed")

    def test_RegisterSample(self):
        self.delayDisplay("Registering the bundled sample in-process")
        fixed, moving, fixedPoints, movingPoints = self._sampleVolumes()
        result = ProgressiveRegistrationLogic().process(fixed, moving, fixedPoints, movingPoints)
        self.assertEqual(moving.GetParentTransformNode(), result.transform)
        self.assertIs(result.transform.GetNodeReference(result.transform.GetMovingNodeReferenceRole()), moving)
        self.assertLess(result.tre_after_mm["mean"], result.tre_network_mm["mean"])
        self.assertEqual(result.jacobian.GetImageData().GetDimensions(), fixed.GetImageData().GetDimensions())
        self.delayDisplay("Test passed")

    def test_BadInput(self):
        fixed, moving, _fixedPoints, _movingPoints = self._sampleVolumes()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            ProgressiveRegistrationLogic().process(fixed, fixed)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_PhasesWidgetPath(self):
        self.delayDisplay("All phases of a sample 4DCT through the module panel (background process)")
        from ProgressiveRegistrationLib.slicer import inprocess

        phases = inprocess.sample_phase_sequence(slicer.mrmlScene)
        widget = self._widget()
        p = widget.logic.getParameterNode()
        widget.ui.phasesSelector.setCurrentNode(phases)  # through the panel: the selector must have the scene
        self.assertIs(p.phases, phases)
        self.assertEqual(widget.ui.referencePhaseSpinBox.maximum, phases.GetNumberOfDataNodes() - 1)
        widget.ui.referencePhaseSpinBox.value = 0
        self.assertIn("phase 0", widget.ui.referencePhaseSpinBox.suffix)
        self.assertTrue(widget.ui.applyPhasesButton.enabled, widget.ui.applyPhasesButton.text)
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSequenceNode")
        widget.onApplyPhasesButton()
        self._waitFor(widget.logic, minutes=15)
        # Three new sequences (transforms, two ventilation maps), one row per phase, shrinking lungs.
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSequenceNode"), before + 3)
        table = slicer.mrmlScene.GetNodesByClass("vtkMRMLTableNode").GetItemAsObject(0).GetTable()
        self.assertEqual(table.GetNumberOfRows(), 4)
        change = table.GetColumnByName("volume_change_percent")
        self.assertLess(change.GetValue(3), change.GetValue(1))
        # A second run refills the first run's nodes.
        count = slicer.mrmlScene.GetNumberOfNodes()
        widget.onApplyPhasesButton()
        self._waitFor(widget.logic, minutes=15)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Phases widget path passed")
