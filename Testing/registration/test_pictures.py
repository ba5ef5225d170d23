"""Pictures drawn as arrays (registration/pictures.py): colours as matplotlib maps them, square
millimetres, lines and bars where the values put them, and no pyplot in a registration's writing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import MODULE_DIR, SAMPLE


@pytest.mark.parametrize("cmap, vmin, vmax", [("PuOr_r", 0.0, 2.0), ("magma", 0.0, 500.0), ("gray", -1000.0, 300.0)])
def test_colours_are_matplotlibs(cmap, vmin, vmax):
    """A layer's colours are matplotlib's ScalarMappable colours for the same map and range
    (clipped below and above), NaN transparent, the layer's opacity elsewhere."""
    import matplotlib
    from matplotlib.colors import Normalize

    from ProgressiveRegistrationLib.registration.pictures import layer

    rng = np.random.default_rng(0)
    values = rng.uniform(vmin - 0.2 * (vmax - vmin), vmax + 0.2 * (vmax - vmin), (40, 50)).astype(np.float32)
    values[3, 4] = np.nan
    ours = layer(values, cmap, vmin, vmax, alpha=0.7)
    theirs = matplotlib.cm.ScalarMappable(Normalize(vmin, vmax), matplotlib.colormaps[cmap]).to_rgba(values)
    finite = ~np.isnan(values)
    # float32 against float64 at a bin's edge may pick the neighbouring entry: at most one step.
    same = np.all(np.abs(ours[finite, :3] - theirs[finite, :3]) < 1e-6, axis=-1)
    assert same.mean() > 0.995
    step = np.abs(np.diff(matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3], axis=0)).max()
    assert np.abs(ours[finite, :3] - theirs[finite, :3]).max() <= step + 1e-6
    assert ours[3, 4, 3] == 0.0 and np.all(ours[finite, 3] == np.float32(0.7))


def test_panels_have_square_millimetres_and_fit_their_box():
    """A 20-row × 10-column slice of 2.5 mm rows and 1 mm columns is 5 times as tall as wide
    on screen, fitted into the box; each voxel is a block of equal pixels when enlarged."""
    from ProgressiveRegistrationLib.registration.pictures import panel

    rgb = np.zeros((20, 10, 3), np.uint8)
    rgb[:, :, 0] = np.arange(10, dtype=np.uint8)[None, :] * 20
    p = panel(rgb, 2.5, (300, 300))
    w, h = p.image.size
    assert h == 300 and w == 60 and p.scale == (6.0, 15.0)
    row = np.asarray(p.image)[0, :, 0]
    assert np.array_equal(row, np.repeat(np.arange(10) * 20, 6))


def test_level_lines_lie_where_the_values_cross_the_levels():
    """Lines of ``values`` = the column index every 6 columns, on a picture enlarged 4 times:
    vertical lines at the display columns where the interpolated index crosses 6, 12, 18."""
    from PIL import Image

    from ProgressiveRegistrationLib.registration.pictures import Panel, level_lines

    cols, rows = 24, 5
    p = Panel(Image.new("RGB", (cols * 4, rows * 4)), (4.0, 4.0))
    values = np.tile(np.arange(cols, dtype=np.float32), (rows, 1))
    level_lines(p, values, 6.0, colour=(255, 255, 255), alpha=1.0)
    on = np.asarray(p.image)[:, :, 0] == 255
    columns = np.nonzero(on.all(axis=0))[0]
    # Display column c samples the index (c + 0.5) / 4 - 0.5 (the edge value held beyond the
    # first and last centres); a line where that crosses a multiple of 6.
    index = np.clip((np.arange(cols * 4) + 0.5) / 4 - 0.5, 0, cols - 1)
    expected = np.nonzero(np.floor(index[:-1] / 6) != np.floor(index[1:] / 6))[0]
    assert columns.tolist() == expected.tolist() and len(expected) == 3
    assert not on[:, ~np.isin(np.arange(cols * 4), expected)].any()


def test_histogram_bars_are_as_tall_as_their_counts():
    """Two bins with 40 and 10 values: the first bar's pixel column is four times as tall."""
    from ProgressiveRegistrationLib.registration.pictures import histogram

    values = np.r_[np.full(40, 0.5), np.full(10, 1.5)]
    image = np.asarray(histogram([(values, "values", (255, 0, 0))], np.array([0.0, 1.0, 2.0]), "x", "n",
                                 size=(400, 300), alpha=1.0))
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    red[:, 300:] = False  # (the legend's swatch is in the upper right)
    first, second = red[:, 100].sum(), red[:, 250].sum()
    assert first > 100 and abs(first / second - 4.0) < 0.1


def test_sheet_cells_are_as_wide_as_their_titles():
    """A title wider than its picture widens its column, so it never runs into the next cell."""
    from PIL import Image

    from ProgressiveRegistrationLib.registration.pictures import GAP_PX, TITLE_PX, Panel, font, sheet

    title = "a title much wider than the picture below it"
    narrow = Panel(Image.new("RGB", (30, 30), (255, 0, 0)), title=title)
    other = Panel(Image.new("RGB", (30, 30), (0, 0, 255)))
    image = np.asarray(sheet([[narrow, other]]))
    blue = np.nonzero((image[..., 2] > 200) & (image[..., 0] < 50))[1]
    assert blue.min() >= GAP_PX + font(TITLE_PX).getlength(title) + GAP_PX - 1


def test_registration_pictures_do_not_load_pyplot(tiny_model, tmp_path):
    """A registration with its report and overview never imports matplotlib's pyplot (a
    second's start-up, and its figures hold the GIL while the images are written)."""
    code = ("import sys\n"
            "from ProgressiveRegistrationLib.registration.pipeline import register_files\n"
            f"register_files({str(SAMPLE)!r}, {str(SAMPLE)!r}, {str(tmp_path / 'out')!r}, model={tiny_model!r},"
            " refinement=None)\n"
            "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "no pyplot"
    assert (tmp_path / "out" / "overview.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "report.html").stat().st_size > 50_000
