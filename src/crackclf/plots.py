"""Figures shared by evaluate and predict: image grids with their predictions, saved atomically.

Panels sit at fixed sizes in inches, so a PNG's size depends only on how many
images it shows (``grid_pixels``); a whole photo in a grid gets its crack heat map.

A whole photo's own crack map (``crack_map``: a PIL image; ``map_png``: its PNG
bytes, for a web page; ``save_crack_map``: a file) is drawn with Pillow, not
matplotlib: the photo at least ``MAP_MIN_PX`` on its long side (small photos are
enlarged), in grey, under a translucent heat map of crack probability (tiles
averaged per pixel where they overlap), the area at or above the threshold
outlined, and a legend. Grey keeps the photo's own colours from reading as heat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
    if len(preds) == 1 and preds[0].whole_photo and preds[0].preview is not None and not title:
        save_crack_map(path, preds[0], threshold)
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
    ax.set_axis_off()
    if pred.preview is not None:
        w, h = pred.image_size if pred.whole_photo else pred.preview.shape[::-1]
        ax.imshow(pred.preview, cmap="gray", vmin=0, vmax=255, extent=(0, w, h, 0), interpolation="lanczos")
        if pred.whole_photo and pred.tile_table is not None:
            rows, cols = pred.preview.shape
            heat = probability_map(pred.tile_table, pred.image_size, (cols, rows))
            ax.imshow(heat_rgba(heat), extent=(0, w, h, 0), interpolation="bilinear")
    name = "/".join(Path(pred.path).parts[-2:])
    caption = f"{pred.label} {pred.probability:.2f}"
    if pred.whole_photo:
        caption += f" ({pred.crack_tiles}/{pred.tiles} tiles)"
    if pred.unfamiliar:
        caption += ", unfamiliar"
    if pred.truth is not None:
        caption += f"\ntrue: {dataset.LABEL_NAMES[pred.truth]}"
    right = pred.truth is None or (pred.label == dataset.LABEL_NAMES[pred.truth])
    color = "black" if pred.truth is None else ("tab:green" if right else "tab:red")
    ax.set_title(f"{_shorten(name, 60 if big else 28)}\n{caption}", fontsize=11 if big else 8, color=color)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


# --- whole-photo crack maps (Pillow) -------------------------------------------------------------

MAP_MIN_PX = 1600  # a crack map's photo is at least this long: small photos are enlarged
MAP_MAX_PX = 2400  # and at most this long: a 4032 px photo's map stays a few MB
HEAT_ALPHA = 0.65  # opacity of the heat map at probability 1 (0 at probability 0)
_HEAT_STOPS = ((0.0, (255, 255, 178)), (0.35, (254, 204, 92)), (0.6, (253, 141, 60)), (0.8, (240, 59, 32)),
               (1.0, (189, 0, 38)))  # yellow to dark red (ColorBrewer YlOrRd)
OUTLINE = (0, 170, 255)  # the edge of the area at or above the threshold: blue, apart from the heat colours


def _heat_lut() -> np.ndarray:
    """256 RGBA colours for probabilities 0..1."""
    p = np.linspace(0, 1, 256)
    xs = [x for x, _ in _HEAT_STOPS]
    rgb = np.stack([np.interp(p, xs, [c[i] for _, c in _HEAT_STOPS]) for i in range(3)], axis=1)
    return np.concatenate([rgb, 255 * HEAT_ALPHA * p[:, None]], axis=1).round().astype(np.uint8)


def heat_rgba(probability):
    """A (h, w) probability map as (h, w, 4) uint8 RGBA heat colours, transparent at 0."""
    index = np.clip(np.rint(np.asarray(probability, np.float64) * 255), 0, 255).astype(np.intp)
    return _heat_lut()[index]


def probability_map(table, image_size: tuple[int, int], out_size: tuple[int, int]):
    """Crack probability per pixel of an ``out_size`` (w, h) picture of the image: the mean of every
    tile over the pixel (tiles overlap where the stride is below the tile size, and at the right and
    bottom edges). ``table`` is an ``inference.TileTable`` in the image's pixels."""
    (w, h), (ow, oh) = image_size, out_size
    fx, fy = ow / w, oh / h
    total = np.zeros((oh, ow), np.float64)
    count = np.zeros((oh, ow), np.int32)
    for (x, y, bw, bh), p in zip(table.boxes, table.probabilities):
        x0, y0 = int(round(x * fx)), int(round(y * fy))
        x1, y1 = max(x0 + 1, int(round((x + bw) * fx))), max(y0 + 1, int(round((y + bh) * fy)))
        total[y0:y1, x0:x1] += p
        count[y0:y1, x0:x1] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _map_size(image_size: tuple[int, int]) -> tuple[int, int]:
    w, h = image_size
    long = max(MAP_MIN_PX, min(max(w, h), MAP_MAX_PX))
    f = long / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def _edge(above, width: int):
    """Pixels of the True area within ``width`` px of its border."""
    padded = np.pad(above, width)  # outside the image counts as outside the area: the outline closes
    inside = above.copy()
    h, w = above.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dx * dx + dy * dy <= width * width:
                inside &= padded[width + dy:width + dy + h, width + dx:width + dx + w]
    return above & ~inside


def _overlay(gray, table, image_size: tuple[int, int], threshold: float, size: tuple[int, int],
             outline: bool = True):
    """The photo at ``size`` in grey with the heat map over it and (``outline``) the crack area outlined (RGB)."""
    from PIL import Image

    photo = gray if isinstance(gray, Image.Image) else Image.fromarray(np.asarray(gray, np.uint8), "L")
    photo = photo.resize(size, Image.Resampling.LANCZOS if size[0] > photo.width else Image.Resampling.BOX)
    heat = probability_map(table, image_size, size)
    out = Image.alpha_composite(photo.convert("RGBA"), Image.fromarray(heat_rgba(heat), "RGBA")).convert("RGB")
    out = shade_unfamiliar(out, table, image_size)
    if not outline:
        return out
    edge = _edge(heat >= threshold, max(2, round(max(size) / 800)))
    pixels = np.asarray(out).copy()
    pixels[edge] = OUTLINE
    return Image.fromarray(pixels, "RGB")


def crack_map(gray, table, image_size: tuple[int, int], threshold: float, title: str = "",
              subtitle: str = ""):
    """A whole photo's crack map as a PIL RGB image: a title band, the photo (at least MAP_MIN_PX long)
    with its heat map and the at-or-above-threshold area outlined, and a legend band.

    ``gray``: the photo (a mode-"L" PIL image or 2-D uint8 array, any resolution, e.g. a preview);
    ``table``: its ``TileTable``; ``image_size``: the photo's (w, h), the table's pixels.
    """
    from PIL import Image, ImageDraw

    size = _map_size(image_size)
    body = _overlay(gray, table, image_size, threshold, size)
    unit = max(18, round(max(size) / 80))  # text size
    top = round(unit * (3.2 if subtitle else 1.9))
    bottom = round(unit * 4.2)
    canvas = Image.new("RGB", (size[0], top + size[1] + bottom), "white")
    canvas.paste(body, (0, top))
    draw = ImageDraw.Draw(canvas)
    pad = round(unit * 0.6)
    draw.text((pad, round(unit * 0.45)), title, fill="black", font=_font(unit))
    if subtitle:
        draw.text((pad, round(unit * 1.75)), subtitle, fill=(70, 70, 70), font=_font(round(unit * 0.8)))
    _legend(draw, canvas, (pad, top + size[1] + round(unit * 0.5)), size[0] - 2 * pad, unit, threshold,
            unfamiliar=_any_unfamiliar(table))
    return canvas


def _legend(draw, canvas, origin: tuple[int, int], width: int, unit: int, threshold: float,
            unfamiliar: bool = False) -> None:
    """A colour bar of crack probability 0..1 over mid grey, ticks, the threshold, the outline's key
    (and with ``unfamiliar`` the unfamiliar tiles' hatching)."""
    from PIL import Image

    x0, y0 = origin
    bar_w, bar_h = min(width // 2, unit * 24), round(unit * 1.1)
    small = _font(round(unit * 0.75))
    draw.text((x0, y0), "crack probability (tiles averaged per pixel)", fill="black", font=small)
    y_bar = y0 + round(unit * 1.1)
    ramp = heat_rgba(np.tile(np.linspace(0, 1, bar_w), (bar_h, 1)))
    grey = Image.new("RGBA", (bar_w, bar_h), (128, 128, 128, 255))
    canvas.paste(Image.alpha_composite(grey, Image.fromarray(ramp, "RGBA")).convert("RGB"), (x0, y_bar))
    draw.rectangle((x0, y_bar, x0 + bar_w, y_bar + bar_h), outline="black", width=1)
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + round(v * (bar_w - 1))
        draw.line((x, y_bar + bar_h, x, y_bar + bar_h + round(unit * 0.3)), fill="black", width=1)
        draw.text((x, y_bar + bar_h + round(unit * 0.3)), f"{v:g}", fill="black", font=small, anchor="mt")
    xt = x0 + round(threshold * (bar_w - 1))
    draw.line((xt, y_bar - round(unit * 0.25), xt, y_bar + bar_h), fill=OUTLINE, width=max(2, unit // 8))
    kx = x0 + bar_w + unit * 2
    draw.rectangle((kx, y_bar, kx + unit * 2, y_bar + bar_h), outline=OUTLINE, width=max(2, unit // 8))
    draw.text((kx + unit * 2.6, y_bar + bar_h / 2), f"outlined: probability >= threshold {threshold:.2f} (crack)",
              fill="black", font=small, anchor="lm")
    if unfamiliar:
        ky = y_bar + bar_h + round(unit * 0.5)
        key = Image.new("RGB", (unit * 2, bar_h), (128, 128, 128))
        canvas.paste(_hatch(key, np.ones((bar_h, unit * 2), bool), max(8, unit // 2)), (kx, ky))
        draw.text((kx + unit * 2.6, ky + bar_h / 2), "hatched: tiles unlike the training data (unfamiliar: "
                  "answers there are unreliable)", fill="black", font=small, anchor="lm")


UNFAMILIAR = (150, 60, 230)  # hatching over unfamiliar tiles: violet, apart from heat, outline and grey


def _any_unfamiliar(table) -> bool:
    flags = getattr(table, "unfamiliar", None)
    return flags is not None and bool(np.any(flags))


def _hatch(img, area, spacing: int):
    """``img`` (RGB) with ``area`` (bool, its size) washed cool and hatched with violet diagonals."""
    from PIL import Image

    pixels = np.asarray(img, np.float64).copy()
    yy, xx = np.indices(area.shape)
    lines = area & (((xx + yy) % spacing) < max(2, spacing // 4))
    pixels[area] = 0.75 * pixels[area] + 0.25 * np.array([110, 110, 150])
    pixels[lines] = UNFAMILIAR
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def shade_unfamiliar(img, table, image_size: tuple[int, int]):
    """``img`` (RGB, a picture of the whole image) with its unfamiliar tiles hatched: pixels that
    most of their covering tiles call unfamiliar. Unchanged when there are none (or no flags)."""
    if not _any_unfamiliar(table):
        return img
    from types import SimpleNamespace

    flags = SimpleNamespace(boxes=table.boxes, probabilities=np.asarray(table.unfamiliar, np.float64))
    area = probability_map(flags, image_size, img.size) > 0.5
    return _hatch(img, area, max(8, round(max(img.size) / 90)))


def prediction_map(pred: Prediction, threshold: float):
    """``crack_map`` of a whole photo's prediction (its preview, tile table and size) as a PIL image."""
    w, h = pred.image_size
    boxes = pred.tile_table.boxes
    tile = f"{int(boxes[0, 2])} px tiles" if len(boxes) else "no tiles"
    title = f"{_shorten(Path(pred.path).name, 70)}: {pred.label} (highest tile {pred.probability:.2f})"
    subtitle = (f"{w}x{h} px, {pred.tiles} {tile}, {pred.crack_tiles} at or above threshold {threshold:.2f}"
                + (f", {pred.unfamiliar_tiles} unfamiliar" if pred.unfamiliar_tiles else ""))
    return crack_map(pred.preview, pred.tile_table, pred.image_size, threshold, title, subtitle)


def map_png(pred: Prediction, threshold: float) -> bytes:
    """A whole photo's crack map as PNG bytes (for a web page)."""
    import io

    buf = io.BytesIO()
    prediction_map(pred, threshold).save(buf, format="PNG")
    return buf.getvalue()


def save_crack_map(path: Path, pred: Prediction, threshold: float) -> None:
    with files.atomic_path(path) as tmp:
        prediction_map(pred, threshold).save(tmp, format="PNG")


# --- --explain: Grad-CAM over the crack tiles ---------------------------------------------------

EXPLAIN_PATCH_PX = 512  # a patch's explained picture is drawn this long


def explain_map(pred: Prediction, threshold: float):
    """``pred``'s picture (``preview``) in grey under its Grad-CAM heat map (``heat``, 0..1, the
    same size), crack tiles outlined, unfamiliar tiles hatched, with a title and a key (PIL RGB)."""
    from PIL import Image, ImageDraw

    size = _map_size(pred.image_size) if pred.whole_photo else _fit(pred.image_size, EXPLAIN_PATCH_PX)
    photo = Image.fromarray(np.asarray(pred.preview, np.uint8), "L").resize(size, Image.Resampling.LANCZOS)
    heat = np.zeros((size[1], size[0])) if pred.heat is None else np.asarray(
        Image.fromarray(np.asarray(pred.heat, np.float32), "F").resize(size, Image.Resampling.BILINEAR))
    body = Image.alpha_composite(photo.convert("RGBA"), Image.fromarray(heat_rgba(np.clip(heat, 0, 1)), "RGBA"))
    body = shade_unfamiliar(body.convert("RGB"), pred.tile_table, pred.image_size)
    draw = ImageDraw.Draw(body)
    fx, fy = size[0] / pred.image_size[0], size[1] / pred.image_size[1]
    line = max(2, round(max(size) / 700))
    for (x, y, w, h), p in zip(pred.tile_table.boxes, pred.tile_table.probabilities):
        if p >= threshold:
            draw.rectangle((x * fx, y * fy, (x + w) * fx - 1, (y + h) * fy - 1), outline=OUTLINE, width=line)
    unit = max(14, round(max(size) / 80))
    top, bottom = round(unit * 3.2), round(unit * 2.6)
    canvas = Image.new("RGB", (size[0], top + size[1] + bottom), "white")
    canvas.paste(body, (0, top))
    draw = ImageDraw.Draw(canvas)
    pad = round(unit * 0.6)
    title = f"{_shorten(Path(pred.path).name, 60)}: {pred.label} {pred.probability:.2f}"
    draw.text((pad, round(unit * 0.45)), title, fill="black", font=_font(unit))
    draw.text((pad, round(unit * 1.75)), f"{pred.crack_tiles} of {pred.tiles} tiles at or above {threshold:.2f}"
              + (f", {pred.unfamiliar_tiles} unfamiliar" if pred.unfamiliar_tiles else ""),
              fill=(70, 70, 70), font=_font(round(unit * 0.8)))
    key = ("heat: Grad-CAM, where in each outlined crack tile the model sees the crack "
           "(scaled by the tile's probability)")
    draw.text((pad, top + size[1] + round(unit * 0.5)), key, fill="black", font=_font(round(unit * 0.7)))
    if _any_unfamiliar(pred.tile_table):
        draw.text((pad, top + size[1] + round(unit * 1.5)), "hatched: unfamiliar tiles (unlike the training data)",
                  fill=UNFAMILIAR, font=_font(round(unit * 0.7)))
    return canvas


def _fit(image_size: tuple[int, int], longest: int) -> tuple[int, int]:
    w, h = image_size
    f = longest / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def save_explain_map(path: Path, pred: Prediction, threshold: float) -> None:
    with files.atomic_path(path) as tmp:
        explain_map(pred, threshold).save(tmp, format="PNG")


# --- photos scored against masks ---------------------------------------------------------------

OUTCOME_COLOURS = {"missed": (0, 120, 255), "false": (255, 0, 200), "found": (0, 200, 0)}
MASK_COLOUR = (0, 255, 255)
PANEL_PX = 900


def outcome_panel(gray, mask, table, labels, threshold: float, title: str):
    """A scored photo: the heat map, the mask's crack pixels in cyan, and the
    tiles by outcome: magenta false crack, blue missed crack, green found (tile rule labels)."""
    from PIL import Image, ImageDraw

    image_size = (mask.shape[1], mask.shape[0])
    size = (PANEL_PX, max(1, round(PANEL_PX * image_size[1] / image_size[0])))
    if size[1] > PANEL_PX:
        size = (max(1, round(PANEL_PX * image_size[0] / image_size[1])), PANEL_PX)
    body = _overlay(gray, table, image_size, threshold, size, outline=False)
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(size, Image.Resampling.BOX)) > 0
    pixels = np.asarray(body).copy()
    pixels[small_mask] = MASK_COLOUR
    body = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(body)
    fx, fy = size[0] / image_size[0], size[1] / image_size[1]
    predicted = np.asarray(table.probabilities) >= threshold
    for (x, y, w, h), label, hit in zip(table.boxes, labels, predicted):
        outcome = ("found" if hit else "missed") if label == 1 else ("false" if hit and label == 0 else None)
        if outcome is None:
            continue
        inset = 2 if outcome != "found" else 4
        draw.rectangle((x * fx + inset, y * fy + inset, (x + w) * fx - inset, (y + h) * fy - inset),
                       outline=OUTCOME_COLOURS[outcome], width=3)
    unit = 18
    panel = Image.new("RGB", (size[0], size[1] + unit * 2), "white")
    panel.paste(body, (0, unit * 2))
    ImageDraw.Draw(panel).text((4, unit // 3), _shorten(title, 90), fill="black", font=_font(unit))
    return panel


def panel_sheet(panels: list, heading: str, columns: int = 2):
    """Panels (PIL images) in a grid under a heading and a key of the colours: one PIL RGB image."""
    from PIL import Image, ImageDraw

    unit, gap = 22, 12
    cols = max(1, min(columns, len(panels)))
    cell_w = max([p.width for p in panels], default=PANEL_PX)
    cell_h = max([p.height for p in panels], default=0)
    rows = -(-len(panels) // cols) if panels else 0
    width = max(cols * cell_w + (cols + 1) * gap, 900)
    head = unit * 4
    sheet = Image.new("RGB", (width, head + rows * (cell_h + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, gap), heading, fill="black", font=_font(unit))
    x = gap
    key = [("mask: crack", MASK_COLOUR), ("tile: false crack", OUTCOME_COLOURS["false"]),
           ("tile: missed crack", OUTCOME_COLOURS["missed"]), ("tile: found", OUTCOME_COLOURS["found"])]
    small = _font(round(unit * 0.75))
    for text, colour in key:
        draw.rectangle((x, gap + unit * 1.8, x + unit, gap + unit * 2.6), outline=colour, width=3)
        draw.text((x + unit * 1.3, gap + unit * 2.2), text, fill="black", font=small, anchor="lm")
        x += round(unit * 1.5 + draw.textlength(text, font=small) + unit)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        sheet.paste(panel, (gap + c * (cell_w + gap), head + r * (cell_h + gap)))
    return sheet
