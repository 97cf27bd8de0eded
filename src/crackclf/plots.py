"""Figures shared by evaluate and predict: image grids with their predictions, saved atomically.

Panels sit at fixed sizes in inches, so a PNG's size depends only on how many
images it shows (``grid_pixels``), and a whole photo is drawn with its tile grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from crackclf import dataset, files
from crackclf.inference import Prediction

PLOT_MAX_PANELS = 64
CELL_INCHES = (2.4, 2.9)  # one panel of a grid plot: the image and its three-line caption
IMAGE_INCHES = 2.2
TITLE_INCHES = 0.45
TITLE_MIN_WIDTH = 7.2
PLOT_DPI = 100


def save_figure(fig, path: Path) -> None:
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PLOT_DPI)


def grid_layout(n: int, ncols: int, title: bool = False) -> tuple[int, int, float, float]:
    """(cols, rows, width, height in inches) of a grid plot of ``n`` panels."""
    cols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / cols))
    width = max(cols * CELL_INCHES[0], TITLE_MIN_WIDTH if title else 0.0)
    return cols, rows, width, rows * CELL_INCHES[1] + (TITLE_INCHES if title else 0.0)


def grid_pixels(n: int, ncols: int, title: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that ``plot_predictions`` writes for ``n`` panels."""
    _, _, width, height = grid_layout(n, ncols, title)
    return round(width * PLOT_DPI), round(height * PLOT_DPI)


def plot_predictions(predictions: Sequence[Prediction], path: Path, threshold: float,
                     ncols: int | None = None, title: str | None = None) -> None:
    """A grid of images with label and probability (green: right, red: wrong, when known).

    Whole photos get their crack tiles shaded by probability; a single photo is
    drawn large. Panels sit at fixed sizes in inches, so the PNG's size depends
    only on the number of panels (``grid_pixels``).
    """
    from matplotlib.figure import Figure

    preds = list(predictions)[:PLOT_MAX_PANELS]
    if len(preds) == 1 and preds[0].tile_probs is not None and not title:
        w, h = preds[0].image_size
        fig = Figure(figsize=(10, 9.6 * h / w + 0.7))
        ax = fig.add_axes((0.02, 0.1 / fig.get_figheight(), 0.96, 1 - 0.7 / fig.get_figheight()))
        _draw(ax, preds[0], threshold, big=True)
        save_figure(fig, path)
        return
    ncols = ncols or math.ceil(math.sqrt(max(1, len(preds))))
    cols, rows, width, height = grid_layout(len(preds), ncols, bool(title))
    fig = Figure(figsize=(width, height))
    if title:
        fig.text(0.5, 1 - 0.12 / height, title, ha="center", va="top", fontsize=10)
    if not preds:
        fig.text(0.5, 0.45, "nothing to show", ha="center", va="center", color="grey")
    x0 = (width - cols * CELL_INCHES[0]) / 2
    pad = (CELL_INCHES[0] - IMAGE_INCHES) / 2
    for i, pred in enumerate(preds):
        r, c = divmod(i, cols)
        left = x0 + c * CELL_INCHES[0] + pad
        bottom = height - (TITLE_INCHES if title else 0.0) - (r + 1) * CELL_INCHES[1] + pad
        ax = fig.add_axes((left / width, bottom / height, IMAGE_INCHES / width, IMAGE_INCHES / height))
        _draw(ax, pred, threshold)
    save_figure(fig, path)


def _draw(ax, pred: Prediction, threshold: float, big: bool = False) -> None:
    from matplotlib.patches import Rectangle

    ax.set_axis_off()
    if pred.preview is not None:
        w, h = pred.image_size if pred.tile_probs is not None else pred.preview.shape[::-1]
        ax.imshow(pred.preview, cmap="gray", vmin=0, vmax=255, extent=(0, w, h, 0), interpolation="lanczos")
    if pred.tile_probs is not None:
        t, s = pred.tile_size, pred.stride
        rows, cols = pred.tile_probs.shape
        for r in range(rows):
            for c in range(cols):
                p = float(pred.tile_probs[r, c])
                cracked = p >= threshold
                ax.add_patch(Rectangle(  # light enough to keep the crack itself visible
                    (c * s, r * s), t, t, linewidth=0.8 if big else 0.4,
                    edgecolor=(1, 0.2, 0.1, 0.9) if cracked else (1, 1, 1, 0.35),
                    facecolor=(1, 0.1, 0.0, 0.1 + 0.35 * p) if cracked else "none",
                ))
                if big and cracked:
                    ax.text(c * s + t / 2, r * s + t / 2, f"{p:.2f}", color="white", ha="center",
                            va="center", fontsize=8, fontweight="bold",
                            bbox={"facecolor": (0.6, 0, 0, 0.6), "edgecolor": "none", "pad": 1})
        # The edge strips no tile covers: hatched, so nobody reads them as "no crack".
        w, h = pred.image_size
        covered_w, covered_h = (cols - 1) * s + t, (rows - 1) * s + t
        for x, y, dx, dy in ((covered_w, 0, w - covered_w, h), (0, covered_h, covered_w, h - covered_h)):
            if dx > 0 and dy > 0:
                ax.add_patch(Rectangle((x, y), dx, dy, facecolor=(1, 1, 1, 0.4), edgecolor=(0, 0, 0, 0.4),
                                       hatch="//", linewidth=0))
    name = "/".join(Path(pred.path).parts[-2:])
    caption = f"{pred.label} {pred.probability:.2f}"
    if pred.tile_probs is not None:
        caption += f" ({pred.crack_tiles}/{pred.tiles} tiles)"
    if pred.truth is not None:
        caption += f"\ntrue: {dataset.LABEL_NAMES[pred.truth]}"
    right = pred.truth is None or (pred.label == dataset.LABEL_NAMES[pred.truth])
    color = "black" if pred.truth is None else ("tab:green" if right else "tab:red")
    ax.set_title(f"{_shorten(name, 60 if big else 28)}\n{caption}", fontsize=11 if big else 8, color=color)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]
