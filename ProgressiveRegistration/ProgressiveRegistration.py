"""ProgressiveRegistration: lung CT registration with a progressively trained 3D U-Net.

The Slicer side only: GUI wiring (Widget), a thin Logic that runs the Qt-free
``ProgressiveRegistrationLib`` in a background process and loads its results into the
scene, and the module's self-test. No algorithm lives here.
"""

import json
import os
import shutil
import sys
import tempfile

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class ProgressiveRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Progressive Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["ProgressiveRegistration developers"]
        self.parent.helpText = _(
            "Deformable registration of inhale/exhale lung CT of one patient in a single forward pass of a "
            "progressively trained 3D U-Net, without affine pre-registration. Produces a grid transform that "
            "aligns the moving volume to the fixed one, a Jacobian determinant map with the folding percentage, "
            "and a landmark TRE table. "
            '<a href="https://github.com/progressive-registration/SlicerProgressiveRegistration">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "Implements Eppenhof, Lafarge, Veta, Pluim: Progressively trained convolutional neural networks for "
            "deformable image registration, IEEE TMI 2019.")


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
    modelPath: str = ""
    device: str = "cpu"


class ProgressiveRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the GUI to the parameter node; the Logic does the work."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ProgressiveRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ProgressiveRegistrationLogic()
        if not self.logic.cudaAvailable():
            self.ui.deviceComboBox.removeItem(1)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.initializeParameterNode()

    def cleanup(self):
        if self.logic:
            self.logic.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
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
        self.ui.cancelButton.enabled = running

    def onApplyButton(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
            self.ui.resultsLabel.text = ""
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.logic.start(self._parameterNode, self.onProgress, self.onFinished)
            self._checkCanApply()

    def onCancelButton(self):
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
            slicer.util.errorDisplay(_("Registration failed:\n{error}").format(error=error))
            return
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s.").format(seconds=result.seconds)
        self.ui.resultsLabel.text = result.describe()


class ProgressiveRegistrationLogic(ScriptedLoadableModuleLogic):
    """Runs ``ProgressiveRegistrationLib`` in a background PythonSlicer process and loads the
    results with the Qt-free MRML functions of ``ProgressiveRegistrationLib.mrml``.

    For scripting, call ``ProgressiveRegistrationLib.register_volume_nodes(slicer.mrmlScene, ...)``
    directly: it runs in-process and returns the output nodes.
    """

    POLL_MS = 300

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._process = None
        self._timer = None
        self._workDir = None
        self._job = None

    def getParameterNode(self):
        return ProgressiveRegistrationParameterNode(super().getParameterNode())

    # --- environment -------------------------------------------------------------------
    @staticmethod
    def libraryPath():
        return os.path.dirname(os.path.abspath(__file__))

    def ensureDependencies(self, askUser=True, install=True):
        """Make torch importable: PyTorchUtils when the PyTorch extension is there, else pip.

        ``install=False`` (scripts, tests) never installs: it raises if torch is missing.
        """
        try:
            import torch  # noqa: F401

            return True
        except ImportError:
            if not install:
                raise RuntimeError(_("PyTorch is not installed; open the module once to install it.")) from None
        if askUser and not slicer.util.confirmOkCancelDisplay(
                _("This module needs PyTorch, which is not installed. Install it now (CPU or CUDA build as "
                  "detected)? This may take several minutes.")):
            raise RuntimeError(_("PyTorch is required; it was not installed."))
        try:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        except ImportError:
            slicer.util.pip_install("torch")
        slicer.util.pip_install("SimpleITK matplotlib PyYAML numba")
        return True

    @staticmethod
    def cudaAvailable():
        try:
            import torch

            return torch.cuda.is_available()
        except ImportError:
            return False

    # --- validation --------------------------------------------------------------------
    @staticmethod
    def inputProblem(p):
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
        return None

    # --- background run ----------------------------------------------------------------
    def isRunning(self):
        return self._process is not None

    def start(self, p, onProgress, onFinished):
        """Export the inputs, start ``progreg register`` in PythonSlicer, poll it with a timer."""
        problem = self.inputProblem(p)
        if problem:
            raise ValueError(problem)
        self.ensureDependencies()
        from ProgressiveRegistrationLib import mrml

        self._workDir = tempfile.mkdtemp(prefix="ProgressiveRegistration-")
        self._job = mrml.export_job(slicer.mrmlScene, p.fixedVolume, p.movingVolume, self._workDir,
                                    p.fixedLandmarks, p.movingLandmarks)
        args = ["-m", "ProgressiveRegistrationLib", "register", self._job.fixed_path, self._job.moving_path,
                "--out", self._job.out_dir, "--device", p.device, "--progress-json"]
        if self._job.fixed_landmarks_path:
            args += ["--fixed-landmarks", self._job.fixed_landmarks_path,
                     "--moving-landmarks", self._job.moving_landmarks_path]
        if p.modelPath:
            args += ["--model", p.modelPath]
        self._process = qt.QProcess()
        env = qt.QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONPATH", self.libraryPath() + os.pathsep + env.value("PYTHONPATH"))
        self._process.setProcessEnvironment(env)
        self._process.setProcessChannelMode(qt.QProcess.SeparateChannels)
        self._process.start(shutil.which("PythonSlicer") or sys.executable, args)
        self._callbacks = (onProgress, onFinished, p)
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self):
        onProgress, onFinished, p = self._callbacks
        text = bytes(self._process.readAllStandardOutput().data()).decode(errors="replace")
        for line in text.splitlines():
            try:
                event = json.loads(line)
                onProgress(event.get("fraction", 0.0), event.get("message", ""))
            except ValueError:
                pass
        if self._process.state() != qt.QProcess.NotRunning:
            return
        self._timer.stop()
        code = self._process.exitCode()
        stderr = bytes(self._process.readAllStandardError().data()).decode(errors="replace").strip()
        self._process = None
        result, error = None, None
        try:
            if code != 0:
                error = stderr.splitlines()[-1] if stderr else _("exit code {code}").format(code=code)
            else:
                from ProgressiveRegistrationLib import mrml

                result = mrml.load_results(slicer.mrmlScene, self._job, transform=p.outputTransform,
                                           jacobian=p.outputJacobian, table=p.outputTable,
                                           apply_to_moving=p.applyToMoving)
                p.outputTransform, p.outputJacobian = result.transform, result.jacobian
                if result.table:
                    p.outputTable = result.table
        except Exception as err:  # noqa: BLE001 - reported to the user in the GUI
            error = str(err)
        finally:
            shutil.rmtree(self._workDir, ignore_errors=True)
        onFinished(result, error)

    def cancel(self):
        if self._process is not None:
            self._timer.stop()
            self._process.kill()
            self._process.waitForFinished(3000)
            self._process = None
            shutil.rmtree(self._workDir, ignore_errors=True)

    # --- synchronous, for scripts and tests ---------------------------------------------
    def process(self, fixedVolume, movingVolume, fixedLandmarks=None, movingLandmarks=None, model=None,
                device="cpu", applyToMoving=True):
        """Register in-process (blocks); returns the Lib's result with the output nodes."""
        self.ensureDependencies(install=False)
        import ProgressiveRegistrationLib

        return ProgressiveRegistrationLib.register_volume_nodes(
            slicer.mrmlScene, fixedVolume, movingVolume, fixed_landmarks=fixedLandmarks,
            moving_landmarks=movingLandmarks, model=model, device=device, apply_to_moving=applyToMoving)


class ProgressiveRegistrationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the same path as the CI tests on slicer-core, through the module."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegisterSample()
        self.setUp()
        self.test_BadInput()

    def _sampleVolumes(self):
        from ProgressiveRegistrationLib import mrml

        return mrml.sample_pair_nodes(slicer.mrmlScene)

    def test_RegisterSample(self):
        self.delayDisplay("Registering the bundled sample with a known deformation")
        fixed, moving, fixedPoints, movingPoints = self._sampleVolumes()
        result = ProgressiveRegistrationLogic().process(fixed, moving, fixedPoints, movingPoints)
        self.assertIsNotNone(result.transform)
        self.assertEqual(moving.GetParentTransformNode(), result.transform)
        self.assertIsNotNone(result.transform.GetNodeReference("fixedVolume"))
        self.assertLess(result.tre_after_mm["mean"], result.tre_before_mm["mean"])
        self.assertEqual(result.jacobian.GetImageData().GetDimensions(), fixed.GetImageData().GetDimensions())
        self.delayDisplay("Test passed")

    def test_BadInput(self):
        fixed, moving, _fixedPoints, _movingPoints = self._sampleVolumes()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            ProgressiveRegistrationLogic().process(fixed, fixed)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
