"""Image grids in physical space (LPS, mm), lung-field crops and the network's N³ grids.

Conventions (docs/CONVENTIONS.md):

* Physical coordinates are LPS millimetres, as in ITK and every file format. Slicer's RAS
  is ``diag(-1, -1, 1) @ lps``; only the MRML layer converts.
* A :class:`Grid` maps a continuous voxel index ``(i, j, k)`` (ITK order: column, row,
  slice) to LPS: ``x = origin + D @ (spacing * ijk)``.
* numpy/torch arrays of a grid are indexed ``[k, j, i]`` (shape ``(nz, ny, nx)``);
  vectors (indices, displacements) are always ordered ``(x, y, z) = (i, j, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError

#: Radius of the scanner-bore disc in a 512x512 slice, in pixels (paper Sec. II-F).
BORE_RADIUS_PX = 250.0
BORE_SLICE_PX = 512.0


@dataclass(frozen=True)
class Grid:
    """A regular 3D grid in physical space.

    Attributes:
        size: voxels along (i, j, k).
        spacing_mm: voxel size along (i, j, k), mm.
        origin_lps: LPS position of voxel (0, 0, 0), mm.
        direction: 3x3 direction cosines, row-major (column c is the LPS direction of axis c).
    """

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)`` of an image on this grid."""
        return self.size[2], self.size[1], self.size[0]

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def index_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping a continuous (i, j, k) index to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing_mm)
        m[:3, 3] = self.origin_lps
        return m

    @property
    def lps_to_index(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_lps)

    def points_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """(n, 3) continuous indices -> (n, 3) LPS mm."""
        m = self.index_to_lps
        return np.asarray(ijk, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def points_to_index(self, lps: np.ndarray) -> np.ndarray:
        """(n, 3) LPS mm -> (n, 3) continuous indices."""
        m = self.lps_to_index
        return np.asarray(lps, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty SimpleITK image on this grid (for resampling)."""
        ref = sitk.Image([int(s) for s in self.size], pixel_type)
        self.apply_to(ref)
        return ref

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_lps)
        image.SetDirection(self.direction)
        return image

    def bounding_box_lps(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounds (min, max) of the voxel centres' hull."""
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in self.size], indexing="ij")).reshape(3, -1).T
        pts = self.points_to_lps(corners)
        return pts.min(0), pts.max(0)

    def subsampled(self, stride: tuple[int, int, int]) -> Grid:
        """A coarser grid with the same origin that still reaches the last voxel centre.

        Sample n of axis a sits at index ``n * stride[a]``; the size is chosen so that the
        last sample lies at or beyond ``size[a] - 1`` (a displacement-field transform is
        zero outside its grid, so the grid must cover the whole image).
        """
        size = tuple(int(np.ceil((n - 1) / s)) + 1 for n, s in zip(self.size, stride))
        spacing = tuple(sp * s for sp, s in zip(self.spacing_mm, stride))
        return Grid(size, spacing, self.origin_lps, self.direction)


@dataclass(frozen=True)
class Box:
    """A box of voxels in an image's index space: ``start`` (i, j, k) and ``size``."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def clipped_to(self, image_size: tuple[int, int, int]) -> Box:
        lo = np.clip(self.start, 0, np.asarray(image_size) - 1)
        hi = np.clip(np.asarray(self.start) + self.size, lo + 1, image_size)
        return Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))


def crop_grid(grid: Grid, box: Box, n: int) -> Grid:
    """The N³ grid that samples ``box`` of ``grid`` with cell-centred alignment.

    The N³ voxels tile exactly the physical extent of the box's voxels, so the spacing is
    ``spacing * box.size / n`` and new index ``m`` sits at old continuous index
    ``start - 0.5 + (m + 0.5) * box.size / n``.
    """
    scale = np.asarray(box.size, dtype=np.float64) / n
    spacing = np.asarray(grid.spacing_mm) * scale
    first_index = np.asarray(box.start, dtype=np.float64) - 0.5 + 0.5 * scale
    origin = grid.points_to_lps(first_index[None])[0]
    return Grid((n, n, n), tuple(float(v) for v in spacing), tuple(float(v) for v in origin), grid.direction)


def resample(image: sitk.Image, grid: Grid, default_value: float = -1024.0, linear: bool = True) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (identity transform, linear or nearest), as float32."""
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.Resample(image, grid.reference_image(), sitk.Transform(), interp, default_value, sitk.sitkFloat32)


@dataclass
class ThoraxMasks:
    """Lung field and body of a CT on a coarse working grid (``shrink`` voxels per cell)."""

    lungs: sitk.Image
    body: sitk.Image
    shrink: tuple[int, int, int]


def thorax_masks(image: sitk.Image, air_hu: float = -400.0, min_fraction: float = 0.002,
                 outside_air_hu: float = -960.0, working_mm: float = 4.0) -> ThoraxMasks:
    """Lung field and body of a CT image in HU, on a ~``working_mm`` copy of the image.

    Body: the largest connected component brighter than ``air_hu``, holes filled slice by
    slice (lungs are enclosed in every axial slice of a full field of view, but open to
    the airway in 3D). Lungs: the air enclosed by the body, plus every air component whose
    median is denser than pure air (``outside_air_hu``): parenchyma sits around -850 HU,
    air outside the body at -1000, and crops that cut through the chest enclose nothing.
    Components smaller than ``min_fraction`` of the image are dropped (bowel gas, noise).
    """
    spacing = np.asarray(image.GetSpacing())
    shrink = tuple(max(1, int(round(working_mm / s))) for s in spacing)
    small = sitk.Cast(image, sitk.sitkFloat32)
    if max(shrink) > 1:
        small = sitk.BinShrink(small, shrink)
    air = sitk.BinaryThreshold(small, -1100.0, air_hu, 1, 0)
    body = sitk.BinaryThreshold(small, air_hu, 1e9, 1, 0)
    body = sitk.Equal(sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True), 1)
    filled = fill_holes_per_slice(body)
    min_voxels = max(1, int(min_fraction * np.prod(small.GetSize())))
    enclosed = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.And(filled, air)), minimumObjectSize=min_voxels)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(air), minimumObjectSize=min_voxels)
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(labels, small)
    keep = [lab for lab in stats.GetLabels() if stats.GetMedian(lab) > outside_air_hu]
    lungs_arr = np.isin(sitk.GetArrayViewFromImage(labels), keep) | (sitk.GetArrayViewFromImage(enclosed) > 0)
    lungs = sitk.GetImageFromArray(lungs_arr.astype(np.uint8))
    lungs.CopyInformation(small)
    body_arr = (sitk.GetArrayViewFromImage(filled) > 0) | lungs_arr
    body_img = sitk.GetImageFromArray(body_arr.astype(np.uint8))
    body_img.CopyInformation(small)
    return ThoraxMasks(lungs, body_img, shrink)


def fill_holes_per_slice(mask: sitk.Image) -> sitk.Image:
    """Fill the holes of every axial slice of a binary mask, in one 3D call.

    All-foreground slices interleaved between (and around) the real ones stop the
    background from connecting across slices, so a hole is background enclosed in its own
    slice — what a per-slice BinaryFillhole would find, without a Python loop.
    """
    arr = sitk.GetArrayViewFromImage(mask)
    stacked = np.ones((2 * arr.shape[0] + 1, *arr.shape[1:]), dtype=np.uint8)
    stacked[1::2] = arr
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(stacked), fullyConnected=False))
    out = sitk.GetImageFromArray(np.ascontiguousarray(filled[1::2]))
    out.CopyInformation(mask)
    return out


def lung_mask(image: sitk.Image, **kwargs) -> sitk.Image:
    """The lung field of :func:`thorax_masks` on ``image``'s own grid (uint8)."""
    lungs = thorax_masks(image, **kwargs).lungs
    return sitk.Resample(lungs, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def lung_box(image: sitk.Image, margin_mm: float = 8.0, masks: ThoraxMasks | None = None) -> Box | None:
    """Bounding box (in ``image``'s voxels) of the lung field plus a margin, or None."""
    masks = masks or thorax_masks(image)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(masks.lungs)
    if not stats.GetLabels():
        return None
    bb = np.asarray(stats.GetBoundingBox(1))
    f = np.asarray(masks.shrink)
    margin = np.ceil(margin_mm / np.asarray(image.GetSpacing())).astype(int)
    start = bb[:3] * f - margin
    size = bb[3:] * f + 2 * margin
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in size)).clipped_to(image.GetSize())


def whole_box(image: sitk.Image) -> Box:
    return Box((0, 0, 0), tuple(int(s) for s in image.GetSize()))


def bore_mask_zyx(image_grid: Grid, target: Grid) -> np.ndarray:
    """Scanner-bore disc of the paper, evaluated on ``target`` (array ``[k, j, i]``, float32).

    The disc has radius 250/512 of the image's in-plane field of view and is centred on the
    centre of each axial slice of ``image_grid`` (the original CT), so it scales with the
    actual geometry. Its axis is the slice normal.
    """
    nx, ny, _ = image_grid.size
    centre_ijk = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, 0.0])
    fov_mm = min(nx * image_grid.spacing_mm[0], ny * image_grid.spacing_mm[1])
    radius_mm = BORE_RADIUS_PX / BORE_SLICE_PX * fov_mm
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in target.size], indexing="ij"), -1).reshape(-1, 3)
    # In-plane offset from the slice centre, measured in the original image's axes.
    rel = image_grid.points_to_index(target.points_to_lps(idx)) - centre_ijk
    rel_mm = rel[:, :2] * np.asarray(image_grid.spacing_mm[:2])
    inside = (rel_mm**2).sum(1) <= radius_mm**2
    return inside.reshape(target.size).transpose(2, 1, 0).astype(np.float32)


def check_volume(image: sitk.Image, what: str) -> None:
    """Raise InputError unless ``image`` is a finite, non-constant 3D scalar volume."""
    if image.GetDimension() != 3:
        raise InputError(f"{what}: expected a 3D volume, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what}: expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(image.GetSize()) < 2:
        raise InputError(f"{what}: a 3D volume needs at least 2 voxels along every axis, got size {image.GetSize()}")
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{what}: the image contains NaN or infinite values")
    if arr.min() == arr.max():
        raise InputError(f"{what}: the image is empty (every voxel is {arr.min()})")
