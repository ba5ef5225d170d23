"""ProgressiveRegistration: lung CT registration with a progressively trained 3D U-Net.

The Slicer side only: GUI wiring (Widget), a thin Logic that runs the Qt-free
``ProgressiveRegistrationLib`` in a background process and loads its results into the
scene, and the module's self-test. No algorithm lives here.

Written for the Python of Slicer 5.6-5.8 (3.9): no ``X | Y`` annotations at run time.
"""

import logging
import os
import pathlib
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

log = logging.getLogger("ProgressiveRegistration")


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


# Every field is bound to the widget of the same SlicerParameterName in the .ui file, through
# the connectors of Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py:
# qMRMLNodeComboBox <-> node, QCheckBox <-> bool, ctkPathLineEdit <-> pathlib.Path (only),
# QComboBox <-> a type annotated with Choice (only). Testing/test_extension_layout.py checks it.
@parameterNodeWrapper
class ProgressiveRegistrationParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    outputTransform: vtkMRMLGridTransformNode
    outputJacobian: vtkMRMLScalarVolumeNode
    outputTable: vtkMRMLTableNode
    applyToMoving: bool = True
    refine: bool = True
    modelPath: pathlib.Path
    device: Annotated[str, Choice(["cpu", "cuda"])] = "cpu"
    # All phases of a 4DCT:
    phases: vtkMRMLSequenceNode
    referencePhase: int = 0
    phasePoints: vtkMRMLMarkupsFiducialNode
    phaseSegmentation: vtkMRMLSegmentationNode
    segmentationPhase: int = 0
    targetPhase: int = 0


class ProgressiveRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the GUI to the parameter node; the Logic does the work."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._logHandler = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ProgressiveRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ProgressiveRegistrationLogic()

        # The module's log (the background process's whole stderr among it) in the log area.
        self._logHandler = _TextEditLogHandler(self.ui.logTextEdit)
        log.addHandler(self._logHandler)
        log.setLevel(logging.INFO)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.applyPhasesButton.connect("clicked(bool)", self.onApplyPhasesButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.initializeParameterNode()

    def cleanup(self):
        if self.logic:
            self.logic.cancel()
        if self._logHandler:
            log.removeHandler(self._logHandler)
            self._logHandler = None
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

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
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        problem = self.logic.inputProblem(self._parameterNode) if self._parameterNode else _("No parameters")
        running = self.logic.isRunning()
        self.ui.applyButton.enabled = problem is None and not running
        self.ui.applyButton.toolTip = problem or _("Register the moving volume to the fixed volume.")
        problem = self.logic.phasesProblem(self._parameterNode) if self._parameterNode else _("No parameters")
        self.ui.applyPhasesButton.enabled = problem is None and not running
        self.ui.applyPhasesButton.toolTip = problem or _("Register every phase to the reference phase.")
        self.ui.cancelButton.enabled = running

    def onApplyButton(self):
        self._startWith(self.logic.start)

    def onApplyPhasesButton(self):
        self._startWith(self.logic.startPhases)

    def _startWith(self, start):
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
            self.ui.resultsLabel.text = ""
            self.ui.logTextEdit.clear()
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            try:
                start(self._parameterNode, self.onProgress, self.onFinished)
            finally:
                self.ui.progressBar.visible = self.logic.isRunning()
                self._checkCanApply()

    def onCancelButton(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel the registration."), waitCursor=True):
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelled.")
            self.ui.progressBar.visible = False
            self._checkCanApply()

    def onProgress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def onFinished(self, result, error):
        self.ui.progressBar.visible = False
        self._checkCanApply()
        if error:
            self.ui.statusLabel.text = _("Registration failed.")
            slicer.util.errorDisplay(_("Registration failed:\n{error}").format(error=error),
                                     detailedText="\n".join(self.logic.lastLog))
            return
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s.").format(seconds=result.seconds)
        self.ui.resultsLabel.text = result.describe()


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

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None
        self._load = None
        self._timer = None
        self._callbacks = None
        self._sceneObserver = None
        self.lastLog = []

    def getParameterNode(self):
        return ProgressiveRegistrationParameterNode(super().getParameterNode())

    # --- environment -------------------------------------------------------------------
    @staticmethod
    def libraryPath():
        return os.path.dirname(os.path.abspath(__file__))

    def ensureDependencies(self, askUser=True, install=True):
        """Make every package the library needs importable, each checked on its own.

        Torch through the PyTorch extension (``PyTorchUtils``, which picks the CPU or CUDA
        build) with a minimum version, as MONAIAuto3DSeg does; the others by pip; nothing
        Slicer bundles (numpy, SimpleITK). ``install=False`` (scripts, tests) only reports.
        """
        if self.libraryPath() not in sys.path:
            sys.path.insert(0, self.libraryPath())
        from ProgressiveRegistrationLib.slicer import requirements

        problem = requirements.torch_problem()
        if problem:
            if not install:
                raise RuntimeError(problem + _(": open the module and press Apply once to install it."))
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("{problem}, and the PyTorch extension is not installed: install "
                                     "'PyTorch' from the Extensions Manager, restart Slicer and try again.")
                                   .format(problem=problem)) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            torch = torchLogic.installTorch(askConfirmation=askUser,
                                            torchVersionRequirement=f">={requirements.TORCH_MINIMUM}")
            if torch is None or requirements.torch_problem():
                raise RuntimeError(_("PyTorch is required and was not installed."))
        missing = requirements.missing_pip_packages()
        if missing:
            if not install:
                raise RuntimeError(_("Missing Python packages: {packages}").format(packages=", ".join(missing)))
            if askUser and not slicer.util.confirmOkCancelDisplay(
                    _("This module needs these Python packages, which are not installed: {packages}. "
                      "Install them now?").format(packages=", ".join(missing))):
                raise RuntimeError(_("Required Python packages were not installed."))
            # A string: pip_install splits it on spaces (Base/Python/slicer/util.py), a list it cannot take.
            slicer.util.pip_install(" ".join(missing))
            still = requirements.missing_pip_packages()
            if still:
                raise RuntimeError(_("Could not install: {packages}").format(packages=", ".join(still)))
        return True

    @staticmethod
    def cudaAvailable():
        """Whether torch sees a GPU (imports torch: call it on demand, not in setup)."""
        try:
            import torch

            return bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - missing or broken torch: no GPU for us
            return False

    # --- validation --------------------------------------------------------------------
    @staticmethod
    def modelFile(p):
        """The chosen model file, or None for the bundled model (an empty path)."""
        path = p.modelPath
        return None if path is None or str(path) in ("", ".") else str(path)

    @classmethod
    def inputProblem(cls, p):
        """None if the inputs can be registered, else a reason for the Apply tooltip."""
        if not p.fixedVolume or not p.movingVolume:
            return _("Select a fixed and a moving volume.")
        if p.fixedVolume == p.movingVolume:
            return _("Fixed and moving volumes must be different nodes.")
        if bool(p.fixedLandmarks) != bool(p.movingLandmarks):
            return _("Select both landmark lists, or neither.")
        if p.fixedLandmarks and (p.fixedLandmarks.GetNumberOfControlPoints()
                                 != p.movingLandmarks.GetNumberOfControlPoints()):
            return _("The landmark lists have different numbers of points.")
        model = cls.modelFile(p)
        if model and not os.path.isfile(model):
            return _("The model file {path} does not exist.").format(path=model)
        return None

    # --- background run ----------------------------------------------------------------
    def isRunning(self):
        return self._job is not None

    @staticmethod
    def phasesProblem(p):
        """None if all phases can be registered, else a reason for the button's tooltip."""
        if not p.phases:
            return _("Select a Sequence of volumes (one per phase).")
        n = p.phases.GetNumberOfDataNodes()
        if n < 2:
            return _("The sequence holds {n} volume; at least two phases are needed.").format(n=n)
        if not 0 <= p.referencePhase < n:
            return _("Reference phase {k}: the sequence has phases 0 to {last}.").format(k=p.referencePhase, last=n - 1)
        if p.phaseSegmentation and not (0 <= p.segmentationPhase < n and 0 <= p.targetPhase < n):
            return _("The segmentation phases must be between 0 and {last}.").format(last=n - 1)
        return None

    def start(self, p, onProgress, onFinished):
        """Export the inputs, start ``progreg register`` in PythonSlicer, poll it with a timer."""
        problem = self.inputProblem(p)
        if problem:
            raise ValueError(problem)

        def export(workDir):
            from ProgressiveRegistrationLib.slicer import mrml

            job = mrml.export_job(slicer.mrmlScene, p.fixedVolume, p.movingVolume, workDir, p.fixedLandmarks,
                                  p.movingLandmarks)

            def load():
                result = mrml.load_results(slicer.mrmlScene, job, transform=p.outputTransform,
                                           jacobian=p.outputJacobian, table=p.outputTable,
                                           apply_to_moving=p.applyToMoving)
                p.outputTransform, p.outputJacobian = result.transform, result.jacobian
                if result.table:
                    p.outputTable = result.table
                for note in result.warnings:
                    log.warning(note)
                return result

            return job, load

        self._launch(p, export, onProgress, onFinished)

    def startPhases(self, p, onProgress, onFinished):
        """Export every phase, start ``progreg register-4d`` in PythonSlicer, poll it with a timer."""
        problem = self.phasesProblem(p)
        if problem:
            raise ValueError(problem)

        def export(workDir):
            from ProgressiveRegistrationLib.slicer import mrml4d

            segmentation = p.phaseSegmentation
            job = mrml4d.export_4d_job(slicer.mrmlScene, p.phases, p.referencePhase, workDir, p.phasePoints,
                                       segmentation, p.segmentationPhase if segmentation else None,
                                       p.targetPhase if segmentation else None)
            return job, lambda: mrml4d.load_4d_results(slicer.mrmlScene, job)

        self._launch(p, export, onProgress, onFinished)

    def _launch(self, p, export, onProgress, onFinished):
        """``export(workDir)`` writes the inputs and gives (job, load); the job's command runs in
        the background, ``load()`` turns its output folder into nodes when it has finished."""
        if self.isRunning():
            raise RuntimeError(_("A registration is already running."))
        self.ensureDependencies()
        from ProgressiveRegistrationLib.slicer import jobs

        workDir = slicer.util.tempDirectory("ProgressiveRegistration-")  # a new folder in Slicer's temporary path
        try:
            job, self._load = export(workDir)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        python = shutil.which("PythonSlicer") or sys.executable
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([self.libraryPath(), env.get("PYTHONPATH", "")])
        self.lastLog = []
        self._job = jobs.BackgroundJob(job.command(python, self.modelFile(p), p.device, p.refine), env=env,
                                       work_dir=workDir)
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
        """Stop a running registration: its whole process tree, then its work folder."""
        if self._job is not None:
            job, self._job = self._job, None
            self._stopPolling()
            job.cancel()
            log.info("registration cancelled")

    # --- synchronous, for scripts and tests ---------------------------------------------
    def process(self, fixedVolume, movingVolume, fixedLandmarks=None, movingLandmarks=None, model=None,
                device="cpu", applyToMoving=True, refine=True):
        """Register in-process (blocks); returns the Lib's result with the output nodes."""
        self.ensureDependencies(install=False)
        import ProgressiveRegistrationLib
        from ProgressiveRegistrationLib.registration.refine import RefineConfig

        return ProgressiveRegistrationLib.register_volume_nodes(
            slicer.mrmlScene, fixedVolume, movingVolume, fixed_landmarks=fixedLandmarks,
            moving_landmarks=movingLandmarks, model=model, device=device, apply_to_moving=applyToMoving,
            refinement=RefineConfig() if refine else None)


class ProgressiveRegistrationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the widget path (parameter node -> Apply -> background process ->
    loaded results) and the scripting path, on the bundled sample."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        logic = ProgressiveRegistrationLogic()
        try:
            logic.ensureDependencies(install=False)
        except RuntimeError as err:
            self.delayDisplay(f"Skipped: {err}")
            return
        self.setUp()
        self.test_WidgetPath()
        self.setUp()
        self.test_RegisterSample()
        self.setUp()
        self.test_BadInput()
        self.setUp()
        self.test_PhasesWidgetPath()

    def _waitFor(self, logic, minutes):
        """Let the GUI's event loop run (the logic's timer polls the job) until it has finished."""
        timer = qt.QElapsedTimer()
        timer.start()
        while logic.isRunning() and timer.elapsed() < minutes * 60000:
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        self.assertFalse(logic.isRunning(), f"the registration did not finish in {minutes} minutes")

    def _sampleVolumes(self):
        from ProgressiveRegistrationLib.slicer import mrml

        return mrml.sample_pair_nodes(slicer.mrmlScene)

    def test_WidgetPath(self):
        self.delayDisplay("Apply through the module panel (background process)")
        fixed, moving, fixedPoints, movingPoints = self._sampleVolumes()
        slicer.util.selectModule("ProgressiveRegistration")
        widget = slicer.modules.progressiveregistration.widgetRepresentation().self()
        p = widget.logic.getParameterNode()
        p.fixedVolume, p.movingVolume = fixed, moving
        p.fixedLandmarks, p.movingLandmarks = fixedPoints, movingPoints
        p.refine = True
        self.assertTrue(widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip)
        widget.onApplyButton()
        self.assertTrue(widget.logic.isRunning())
        self.assertTrue(widget.ui.cancelButton.enabled)
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
        from ProgressiveRegistrationLib.slicer import mrml4d

        phases = mrml4d.sample_phase_sequence(slicer.mrmlScene)
        slicer.util.selectModule("ProgressiveRegistration")
        widget = slicer.modules.progressiveregistration.widgetRepresentation().self()
        p = widget.logic.getParameterNode()
        p.phases, p.referencePhase = phases, 0
        self.assertTrue(widget.ui.applyPhasesButton.enabled, widget.ui.applyPhasesButton.toolTip)
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSequenceNode")
        widget.onApplyPhasesButton()
        self._waitFor(widget.logic, minutes=15)
        # Three new sequences (transforms, two ventilation maps), one row per phase, shrinking lungs.
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSequenceNode"), before + 3)
        table = slicer.mrmlScene.GetNodesByClass("vtkMRMLTableNode").GetItemAsObject(0).GetTable()
        self.assertEqual(table.GetNumberOfRows(), 4)
        change = table.GetColumnByName("volume_change_percent")
        self.assertLess(change.GetValue(3), change.GetValue(1))
        self.delayDisplay("Phases widget path passed")
