"""Image grids in physical space (LPS, mm), boxes of voxels and the network's N³ crop grids.

Conventions (docs/CONVENTIONS.md):

* Physical coordinates are LPS millimetres, as in ITK and every file format. Slicer's RAS
  is ``diag(-1, -1, 1) @ lps``; only the MRML layer converts.
* A :class:`Grid` maps a continuous voxel index ``(i, j, k)`` (ITK order: column, row,
  slice) to LPS: ``x = origin + D @ (spacing * ijk)``.
* numpy/torch arrays of a grid are indexed ``[k, j, i]`` (shape ``(nz, ny, nx)``);
  vectors (indices, displacements) are always ordered ``(x, y, z) = (i, j, k)``.
* The network's crops have the LPS axes (:data:`LPS_AXES`) whatever the storage of the
  images they are cut from: a flipped, permuted or rotated copy of an image gives the
  network the same crop (docs/CONVENTIONS.md, "Orientation").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: The direction of a grid whose axes i, j, k point to patient left, posterior, superior.
LPS_AXES = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


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

    def extent_lps(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounds (min, max) of the voxels themselves (centres ± half a voxel), mm."""
        lo, hi = self.bounding_box_lps()
        half = self.half_voxel_lps()
        return lo - half, hi + half

    def half_voxel_lps(self) -> np.ndarray:
        """Half the LPS extent of one voxel along L, P and S (mm): its bounding box's half-widths."""
        return 0.5 * np.abs(self.direction_matrix) @ np.asarray(self.spacing_mm)

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


def box_grid_lps(lo_lps: np.ndarray, hi_lps: np.ndarray, n: int) -> Grid:
    """The N³ grid with the LPS axes whose voxels tile the LPS box [lo, hi] (mm) exactly:
    spacing ``(hi - lo) / n``, first voxel centre half a voxel inside ``lo``."""
    lo, hi = np.asarray(lo_lps, dtype=np.float64), np.asarray(hi_lps, dtype=np.float64)
    spacing = (hi - lo) / n
    return Grid((n, n, n), tuple(float(v) for v in spacing), tuple(float(v) for v in lo + 0.5 * spacing), LPS_AXES)


def stored_near_lps(image: sitk.Image) -> sitk.Image:
    """``image`` with its voxels permuted and flipped (no resampling) so that its axes are the
    ones nearest to L, P and S; ``image`` itself when they already are. World positions and
    values are unchanged: only the storage order is."""
    if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "LPS":
        return image
    return sitk.DICOMOrient(image, "LPS")


def resample(image: sitk.Image, grid: Grid, default_value: float = -1024.0, linear: bool = True) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (identity transform, linear or nearest), as float32."""
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    return sitk.Resample(image, grid.reference_image(), sitk.Transform(), interp, default_value, sitk.sitkFloat32)


def whole_box(image: sitk.Image) -> Box:
    return Box((0, 0, 0), tuple(int(s) for s in image.GetSize()))
