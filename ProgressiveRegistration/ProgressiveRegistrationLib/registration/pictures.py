"""Pictures drawn as pixel arrays: slices through colour maps, layered, enlarged to the size they
are shown at, with letters at the edges, a millimetre scale bar, markers, lines, colour bars,
histograms, and sheets of titled panels. numpy and Pillow; matplotlib lends only its colour maps
and its DejaVu fonts (``import matplotlib``, never pyplot).

Why not matplotlib's figures: the registration's pictures are many image panels (the report's
review has twenty), and matplotlib's axes, ticks and layout machinery spent seconds per sheet
before a pixel was drawn; drawn here they take tens of milliseconds.

Coordinates: an array is ``[row, column]`` as the picture shows it (rows downwards); a point in
it is ``(x, y)`` = (column, row) in its pixels, continuous, pixel centres at integers.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (110, 110, 110)
#: Text sizes (px) of titles, notes and tick labels.
TITLE_PX, TEXT_PX, TICK_PX = 13, 12, 11
#: Space between a sheet's cells (px).
GAP_PX = 10


@functools.cache
def lut(name: str) -> np.ndarray:
    """matplotlib's colour map ``name`` as a ``(256, 4)`` float32 table (RGBA in 0..1)."""
    import matplotlib

    return matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256)).astype(np.float32)


@functools.cache
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (matplotlib's own font, so that every picture reads alike) at ``size`` px."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def layer(values: np.ndarray, cmap: str, vmin: float, vmax: float, alpha: float = 1.0) -> np.ndarray:
    """``values`` (2D) through colour map ``cmap`` over [vmin, vmax] (clipped at both ends, as
    matplotlib shows them), as an RGBA float32 layer of opacity ``alpha``; NaN is transparent."""
    values = np.asarray(values, dtype=np.float32)
    missing = np.isnan(values)
    index = np.clip((np.nan_to_num(values) - vmin) * (256.0 / (vmax - vmin)), 0, 255).astype(np.intp)
    rgba = lut(cmap)[index]
    rgba[..., 3] = np.where(missing, 0.0, alpha)
    return rgba


def rgb_layer(rgb: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """An RGB float array (0..1, ``(rows, cols, 3)``) as an opaque (or ``alpha``) layer."""
    return np.concatenate([np.asarray(rgb, np.float32), np.full(rgb.shape[:2] + (1,), alpha, np.float32)], -1)


def flatten(*layers: np.ndarray) -> np.ndarray:
    """Layers (RGBA float, bottom first) composited over black: ``(rows, cols, 3)`` uint8."""
    out = np.zeros(layers[0].shape[:2] + (3,), np.float32)
    for top in layers:
        a = top[..., 3:]
        out = out * (1.0 - a) + top[..., :3] * a
    return np.round(out * 255.0).astype(np.uint8)


@dataclasses.dataclass
class Panel:
    """One picture of a sheet: ``image`` at the size it is shown, ``scale`` its display pixels
    per array column and per array row, a ``title`` above it and an optional colour bar beside."""

    image: Image.Image
    scale: tuple[float, float] = (1.0, 1.0)
    title: str = ""
    colour_bar: Image.Image | None = None

    @property
    def draw(self) -> ImageDraw.ImageDraw:
        return ImageDraw.Draw(self.image)

    def at(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Array coordinates (x = column, y = row; pixel centres at integers) in display pixels."""
        return (np.asarray(x, float) + 0.5) * self.scale[0], (np.asarray(y, float) + 0.5) * self.scale[1]


def panel(rgb: np.ndarray, aspect: float, box_px: tuple[int, int], title: str = "") -> Panel:
    """A ``(rows, cols, 3)`` uint8 picture as a panel fitted into ``box_px`` (width, height),
    its rows ``aspect`` times as tall as its columns are wide (the pixel spacing's ratio), so that
    millimetres are square. Enlarged with nearest neighbours (each voxel a visible block, as it
    is), reduced by averaging."""
    rows, cols = rgb.shape[:2]
    f = min(box_px[0] / cols, box_px[1] / (rows * aspect))
    size = (max(1, round(cols * f)), max(1, round(rows * aspect * f)))
    resample = Image.Resampling.NEAREST if f * min(1.0, aspect) >= 1.0 else Image.Resampling.BOX
    image = Image.fromarray(np.ascontiguousarray(rgb)).resize(size, resample)
    return Panel(image, (size[0] / cols, size[1] / rows), title)


def note(text: str) -> Panel:
    """A cell holding text only (black on white, lines as given), as large as the text."""
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font(TEXT_PX), spacing=4)
    image = Image.new("RGB", (box[2] + 8, box[3] + 8), WHITE)
    ImageDraw.Draw(image).multiline_text((4, 4), text, fill=BLACK, font=font(TEXT_PX), spacing=4)
    return Panel(image)


def outlined_text(p: Panel, xy, text: str, anchor: str, size: int = TEXT_PX, bold: bool = True) -> None:
    """White text outlined in black at display position ``xy`` (readable on any image)."""
    p.draw.text(xy, text, fill=WHITE, font=font(size, bold), anchor=anchor, stroke_width=2, stroke_fill=BLACK)


def edge_labels(p: Panel, letters: dict[str, str]) -> None:
    """``letters`` (``left``, ``right``, ``top``, ``bottom``) at the middle of each edge."""
    w, h = p.image.size
    m = 3
    outlined_text(p, (m, h / 2), letters["left"], "lm")
    outlined_text(p, (w - m, h / 2), letters["right"], "rm")
    outlined_text(p, (w / 2, m), letters["top"], "mt")
    outlined_text(p, (w / 2, h - m), letters["bottom"], "mb")


def scale_bar_mm(width_mm: float) -> int | None:
    """The scale bar's length: the longest round length up to a third of the picture's width."""
    fits = [mm for mm in (5, 10, 20, 50, 100, 200) if mm <= width_mm / 3]
    return fits[-1] if fits else None


def scale_bar(p: Panel, mm_per_column: float) -> None:
    """A bar of a round number of millimetres in the lower left corner, its length above it."""
    w, h = p.image.size
    columns = w / p.scale[0]
    length = scale_bar_mm(columns * mm_per_column)
    if length is None:
        return
    x0, y = 0.06 * w, 0.91 * h
    x1 = x0 + length / mm_per_column * p.scale[0]
    p.draw.line([(x0, y), (x1, y)], fill=BLACK, width=6)
    p.draw.line([(x0 + 1, y), (x1 - 1, y)], fill=WHITE, width=3)
    outlined_text(p, ((x0 + x1) / 2, y - 5), f"{length} mm", "mb", size=TICK_PX, bold=False)


def circles(p: Panel, x, y, radius_px: float = 6.0, colour=(255, 0, 0)) -> None:
    """Open circles at array coordinates ``(x, y)``."""
    draw = p.draw
    for cx, cy in zip(*p.at(x, y)):
        draw.ellipse([cx - radius_px, cy - radius_px, cx + radius_px, cy + radius_px], outline=colour, width=2)


def cross(p: Panel, x: float, y: float, colour=(0, 255, 255), half_px: float = 6.0) -> None:
    """A + at array coordinates ``(x, y)``."""
    (cx,), (cy,) = p.at([x], [y])
    p.draw.line([(cx - half_px, cy), (cx + half_px, cy)], fill=colour, width=2)
    p.draw.line([(cx, cy - half_px), (cx, cy + half_px)], fill=colour, width=2)


def level_lines(p: Panel, values: np.ndarray, every: float, colour=WHITE, alpha: float = 0.8) -> None:
    """The lines where ``values`` (an array of the panel's array shape) crosses a multiple of
    ``every``, drawn one pixel wide: ``values`` is interpolated linearly to the display size and a
    pixel is on a line where its multiple differs from its right or lower neighbour's."""
    w, h = p.image.size
    rows, cols = values.shape
    # Sample at the display pixels' centres in array coordinates (edge values held).
    y = np.clip((np.arange(h) + 0.5) / p.scale[1] - 0.5, 0, rows - 1)
    x = np.clip((np.arange(w) + 0.5) / p.scale[0] - 0.5, 0, cols - 1)
    y0, x0 = np.minimum(y.astype(int), rows - 2 if rows > 1 else 0), np.minimum(x.astype(int), cols - 2 if cols > 1 else 0)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    y1, x1 = np.minimum(y0 + 1, rows - 1), np.minimum(x0 + 1, cols - 1)
    v = values.astype(np.float32)
    fine = ((v[y0][:, x0] * (1 - fx) + v[y0][:, x1] * fx) * (1 - fy)
            + (v[y1][:, x0] * (1 - fx) + v[y1][:, x1] * fx) * fy)
    band = np.floor(fine / every)
    on = np.zeros((h, w), bool)
    on[:, :-1] |= band[:, :-1] != band[:, 1:]
    on[:-1, :] |= band[:-1, :] != band[1:, :]
    pixels = np.asarray(p.image, dtype=np.float32)
    pixels[on] = pixels[on] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    p.image = Image.fromarray(np.round(pixels).astype(np.uint8))


def nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [low, high], about ``count``."""
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.array([low])
    raw = (high - low) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(s * power for s in (1, 2, 2.5, 5, 10) if s * power >= raw)
    start = math.ceil(low / step - 1e-9) * step
    ticks = np.arange(start, high + step * 1e-6, step)
    return np.round(ticks, 10)


def tick_label(value: float) -> str:
    text = f"{value:g}"
    return "0" if text == "-0" else text


def colour_bar(cmap: str, vmin: float, vmax: float, label: str, height_px: int, alpha: float = 1.0) -> Image.Image:
    """A vertical colour bar ``height_px`` tall: the map from ``vmin`` (bottom) to ``vmax``, its
    tick values at the right and ``label`` turned along its side."""
    bar_w, tick_w = 12, 4
    ticks = nice_ticks(vmin, vmax, 5)
    labels = [tick_label(t) for t in ticks]
    text_w = max(int(font(TICK_PX).getlength(s)) for s in labels) + 3
    label_img = Image.new("RGB", (int(font(TICK_PX).getlength(label)) + 4, TICK_PX + 4), WHITE)
    ImageDraw.Draw(label_img).text((2, 1), label, fill=BLACK, font=font(TICK_PX))
    label_img = label_img.rotate(90, expand=True)
    pad = TICK_PX // 2 + 1
    width = 2 + bar_w + tick_w + text_w + 4 + label_img.size[0]
    image = Image.new("RGB", (width, height_px), WHITE)
    inner = height_px - 2 * pad
    gradient = np.linspace(vmax, vmin, inner, dtype=np.float32)[:, None].repeat(bar_w, 1)
    image.paste(Image.fromarray(flatten(rgb_layer(np.ones((inner, bar_w, 3), np.float32)),
                                        layer(gradient, cmap, vmin, vmax, alpha))), (2, pad))
    draw = ImageDraw.Draw(image)
    draw.rectangle([2, pad, 2 + bar_w - 1, pad + inner - 1], outline=GREY)
    for t, s in zip(ticks, labels):
        y = pad + (vmax - t) / (vmax - vmin) * (inner - 1)
        draw.line([(2 + bar_w, y), (2 + bar_w + tick_w - 1, y)], fill=BLACK)
        draw.text((2 + bar_w + tick_w + 1, y), s, fill=BLACK, font=font(TICK_PX), anchor="lm")
    image.paste(label_img, (width - label_img.size[0], max(0, (height_px - label_img.size[1]) // 2)))
    return image


def histogram(series: list[tuple[np.ndarray, str, tuple[int, int, int]]], bins: np.ndarray, xlabel: str, ylabel: str,
              size: tuple[int, int] = (520, 300), log: bool = False, alpha: float = 0.55) -> Image.Image:
    """Histograms of each ``(values, legend label, RGB colour)`` over the same ``bins`` (edges),
    drawn over each other with opacity ``alpha``; a log count axis with ``log`` (empty bins
    then drawn as nothing); the legend in the upper right corner."""
    counts = [np.histogram(np.asarray(v, float), bins)[0] for v, _, _ in series]
    top = max([int(c.max()) for c in counts] + [1])
    image = Image.new("RGBA", size, WHITE + (255,))
    left, right, upper, lower = 56, 12, 10, 42
    x0, x1, y0, y1 = left, size[0] - right, upper, size[1] - lower

    def to_x(v):
        return x0 + (v - bins[0]) / (bins[-1] - bins[0]) * (x1 - x0)

    if log:
        top_decade = 10 ** math.ceil(math.log10(max(top, 1) * 1.05))

        def to_y(c):
            return y1 - math.log10(max(c, 1)) / math.log10(top_decade) * (y1 - y0)

        y_ticks = [10 ** k for k in range(0, int(round(math.log10(top_decade))) + 1)]
    else:
        y_ticks = nice_ticks(0, top * 1.05, 5)
        y_max = max(top * 1.05, y_ticks[-1])

        def to_y(c):
            return y1 - c / y_max * (y1 - y0)

    for (_, _, colour), c in zip(series, counts):
        overlay = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for k, n in enumerate(c):
            if n > 0:
                draw.rectangle([to_x(bins[k]), to_y(n), to_x(bins[k + 1]) - 1, y1],
                               fill=(*colour, round(255 * alpha)))
        image = Image.alpha_composite(image, overlay)
    draw = ImageDraw.Draw(image)
    draw.rectangle([x0, y0, x1, y1], outline=BLACK)
    for t in nice_ticks(bins[0], bins[-1], 6):
        x = to_x(t)
        draw.line([(x, y1), (x, y1 + 4)], fill=BLACK)
        draw.text((x, y1 + 6), tick_label(t), fill=BLACK, font=font(TICK_PX), anchor="mt")
    for t in y_ticks:
        y = to_y(t)
        if y0 - 0.5 <= y <= y1 + 0.5:
            draw.line([(x0 - 4, y), (x0, y)], fill=BLACK)
            text = tick_label(t) if not log else (f"{t:.0f}" if t < 1e6 else f"1e{round(math.log10(t))}")
            draw.text((x0 - 6, y), text, fill=BLACK, font=font(TICK_PX), anchor="rm")
    draw.text(((x0 + x1) / 2, size[1] - 3), xlabel, fill=BLACK, font=font(TEXT_PX), anchor="mb")
    label = Image.new("RGB", (int(font(TEXT_PX).getlength(ylabel)) + 4, TEXT_PX + 5), WHITE)
    ImageDraw.Draw(label).text((2, 1), ylabel, fill=BLACK, font=font(TEXT_PX))
    label = label.rotate(90, expand=True)
    image.paste(label, (2, max(0, (y0 + y1 - label.size[1]) // 2)))
    # The legend: a swatch and a label per series, upper right.
    width = max((font(TICK_PX).getlength(name) for _, name, _ in series), default=0) + 26
    for k, (_, name, colour) in enumerate(series):
        y = y0 + 8 + k * (TICK_PX + 6)
        sx = x1 - width - 6
        draw.rectangle([sx, y - 5, sx + 14, y + 5], fill=tuple(round(255 - alpha * (255 - c)) for c in colour))
        draw.text((sx + 20, y), name, fill=BLACK, font=font(TICK_PX), anchor="lm")
    return image.convert("RGB")


def sheet(rows: list[list[Panel | None]], heading: str = "") -> Image.Image:
    """Panels in a grid, each under its title with its colour bar to its right; ``None`` leaves a
    cell empty. Columns are as wide as their widest cell, rows as tall as their tallest;
    ``heading``: a line of text across the top."""
    def cell_size(p: Panel | None) -> tuple[int, int]:
        if p is None:
            return 0, 0
        w, h = p.image.size
        bar = p.colour_bar.size[0] + 4 if p.colour_bar is not None else 0
        title = math.ceil(font(TITLE_PX).getlength(p.title)) if p.title else 0
        return max(w + bar, title), h + (TITLE_PX + 6 if p.title else 0)

    ncol = max(len(r) for r in rows)
    widths = [max((cell_size(r[c])[0] for r in rows if c < len(r)), default=0) for c in range(ncol)]
    heights = [max((cell_size(p)[1] for p in r), default=0) for r in rows]
    head = TITLE_PX + 10 if heading else 0
    image = Image.new("RGB", (sum(widths) + GAP_PX * (ncol + 1), head + sum(heights) + GAP_PX * (len(rows) + 1)), WHITE)
    draw = ImageDraw.Draw(image)
    if heading:
        draw.text((GAP_PX, GAP_PX), heading, fill=BLACK, font=font(TITLE_PX))
    y = head + GAP_PX
    for r, row in enumerate(rows):
        x = GAP_PX
        for c in range(ncol):
            p = row[c] if c < len(row) else None
            if p is not None:
                top = y
                if p.title:
                    draw.text((x, y), p.title, fill=BLACK, font=font(TITLE_PX))
                    top += TITLE_PX + 6
                image.paste(p.image, (x, top))
                if p.colour_bar is not None:
                    image.paste(p.colour_bar, (x + p.image.size[0] + 4, top + max(0, (p.image.size[1]
                                                                                     - p.colour_bar.size[1]) // 2)))
            x += widths[c] + GAP_PX
        y += heights[r] + GAP_PX
    return image


def beside(*images: Image.Image, gap_px: int = GAP_PX) -> Image.Image:
    """Images side by side, centred vertically, on white."""
    width = sum(i.size[0] for i in images) + gap_px * (len(images) - 1)
    height = max(i.size[1] for i in images)
    out = Image.new("RGB", (width, height), WHITE)
    x = 0
    for i in images:
        out.paste(i, (x, (height - i.size[1]) // 2))
        x += i.size[0] + gap_px
    return out


#: PNG compression (zlib level): Pillow's default.
PNG_COMPRESS_LEVEL = 6


def png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
