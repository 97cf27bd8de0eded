"""crackclf predict: crack probabilities for the user's own images, from one patch to a whole photo.

Every image goes through ``imaging`` (the decode path preprocess uses), so the
model sees the pixels it was trained on. An image is a whole photo when one side
is at least twice ``predict.tile_size`` and the other at least one tile; any
other image is one patch, resized whole to the model's input size (one tile,
``0,0,width,height``).

Scale (``predict.photo_scale``): the dataset's 227 px patches were cut from
4032x3024 photos, so a crack shows at that scale in pixels. A whole photo is
cut as if first resized by a factor: ``auto`` makes its long side 4032 px,
a number is a fixed factor, ``none`` is 1. It is not resized whole: each tile
covers ``round(tile_size / factor)`` photo pixels (the square it would come
from), is cropped from the photo and resized straight to the model's input, so
tile coordinates are always the original photo's pixels.

Every pixel is covered: tiles start every ``stride`` (in the same scaled
pixels) from the top-left corner, and where the last one would stop short of
the right or bottom edge one more tile is added flush with that edge (shifted,
not padded: padding would show the model a black or mirrored border it never
saw in training; a black patch reads as a crack). That last column or row
overlaps its neighbour, and a stride below the tile size overlaps them all;
the crack map averages overlapping tiles per pixel. A stride above the tile
size would skip pixels and is refused. The photo's probability is its highest
tile probability; per-tile results are the prediction's ``TileTable``.

Folders are walked recursively and sorted; image files are chosen by extension,
hidden files skipped. A file that cannot be decoded gets one line on stderr and
no row, the others are still predicted, and the exit code is 1.

Images are decoded in a thread pool (Pillow releases the GIL) while the model
runs on batches of ``predict.batch_size`` tiles, so a folder of patches runs at
batch speed. The model's input size comes from the model itself, not params.

With the unfamiliar-input score evaluate fitted for the model (``unfamiliar``), every
tile also gets a score and an ``unfamiliar`` flag from the same pass of the model (its
features output); a photo is unfamiliar when more than half its tiles are, and one line
says so when most images are. ``--explain`` draws Grad-CAM over the crack tiles
(``explain``, TensorFlow backend).

``--examples DATA_DIR`` is the pipeline's stage: a few fixed test images of
each class (or ``predict.images``), drawn with their true labels.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, UsageError, dataset, imaging, progress, unfamiliar, usable_cpus
from crackclf.files import walk_files, write_csv, write_json
from crackclf.inference import (ROW_FIELDS, TILE_FIELDS, Model, Prediction, TileTable, default_threshold,
                                csv_row, label_name, load_model, patch_prediction, resolve_model)
from crackclf.plots import PLOT_MAX_PANELS, plot_predictions
from crackclf.process import StopRequest

DEFAULT_EXAMPLES_CSV = Path("predictions/example.csv")
DEFAULT_EXAMPLES_PNG = Path("predictions/example.png")


# --- images ----------------------------------------------------------------------------------

REFERENCE_LONG_SIDE = 4032  # the long side of the photos the dataset's patches were cut from
PREVIEW_PX = 512  # long side of a picture kept for a contact sheet
MAP_PREVIEW_PX = 2400  # long side of a picture kept for a whole photo's crack map


def is_whole_photo(width: int, height: int, tile_size: int) -> bool:
    """At least twice the patch size on one side, and a whole tile on the other (original pixels)."""
    return max(width, height) >= 2 * tile_size and min(width, height) >= tile_size


def check_stride(stride: int, tile_size: int, what: str = "--stride") -> None:
    """A stride above the tile size would leave pixels between tiles unseen: bad usage (exit 2)."""
    if stride <= 0:
        raise UsageError(f"{what} {stride}: must be a positive number of pixels")
    if stride > tile_size:
        raise UsageError(f"{what} {stride}: above the tile size {tile_size}, tiles would skip pixels; "
                         f"use at most {tile_size}")


def scale_factor(photo_scale: str | float | None, width: int, height: int) -> float:
    """The factor a whole photo is seen at (``predict.photo_scale``): above 1 enlarges, below 1 reduces."""
    if photo_scale is None:
        photo_scale = _default_photo_scale()
    if photo_scale == "none":
        return 1.0
    if photo_scale == "auto":
        return REFERENCE_LONG_SIDE / max(width, height)
    return float(photo_scale)


def _default_photo_scale():
    from crackclf.config import PredictParams

    return PredictParams.model_fields["photo_scale"].default


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Where tiles start along one side so that every pixel is in one: every ``stride`` from 0,
    plus one flush with the far edge when the last would stop short of it."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_boxes(width: int, height: int, tile: int, stride: int) -> np.ndarray:
    """(n, 4) int boxes ``x, y, width, height`` covering every pixel, row by row from the top left."""
    xs, ys = tile_starts(width, tile, stride), tile_starts(height, tile, stride)
    return np.array([(x, y, min(tile, width), min(tile, height)) for y in ys for x in xs], np.int64).reshape(-1, 4)


@dataclass(frozen=True)
class Layout:
    """How one image is cut: its tiles in its own (EXIF-upright) pixels."""

    whole_photo: bool
    scale: float  # the factor the photo is seen at; 1 for a patch
    tile_px: int  # a tile's side in photo pixels; 0 for a patch
    stride_px: int
    boxes: np.ndarray  # (n, 4) x, y, width, height


def layout(width: int, height: int, tile_size: int, stride: int,
           photo_scale: str | float | None = None) -> Layout:
    """The tiles of a ``width`` x ``height`` image: one patch, or a whole photo's covering tiles.

    A tile is ``round(tile_size / scale)`` photo pixels (at most the photo's short
    side), every ``stride`` scaled likewise.
    """
    check_stride(stride, tile_size)
    if not is_whole_photo(width, height, tile_size):
        return Layout(False, 1.0, 0, 0, np.array([[0, 0, width, height]], np.int64))
    scale = scale_factor(photo_scale, width, height)
    tile = max(1, min(round(tile_size / scale), width, height))
    step = max(1, min(tile, round(stride * tile / tile_size)))
    return Layout(True, scale, tile, step, tile_boxes(width, height, tile, step))


def cut(img, boxes: np.ndarray, size: int) -> np.ndarray:
    """The (n, size, size, 1) uint8 tiles of a mode-"L" image at ``boxes``, each resized like a patch."""
    if len(boxes) == 0:
        return np.empty((0, size, size, 1), np.uint8)
    return np.stack([imaging.resize(img.crop((int(x), int(y), int(x + w), int(y + h))), size)
                     for x, y, w, h in boxes])


def upright_size(header) -> tuple[int, int]:
    """(width, height) of an opened image as viewers show it: EXIF orientations 5 to 8 swap the sides."""
    width, height = header.size
    try:
        turned = header.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the decoder ignores it too
        turned = False
    return (height, width) if turned else (width, height)


@dataclass
class Decoded:
    tiles: np.ndarray  # (n, size, size, 1) uint8
    layout: Layout
    image_size: tuple[int, int]  # (width, height), upright
    preview: np.ndarray | None  # 2-D uint8, for plots

    @property
    def boxes(self) -> np.ndarray:
        return self.layout.boxes


def decode(source: str | Path | bytes, size: int, tile_size: int, stride: int, preview_px: int = 0,
           photo_scale: str | float | None = None) -> Decoded:
    """One image (a file, or its bytes) to model inputs: one patch, or the tiles of a whole photo.

    ``photo_scale`` None is ``predict.photo_scale``'s default. ``preview_px``: keep a
    picture at most that long (a patch: its model input) for plots.
    """
    from PIL import Image

    name = None if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()  # read once, parsed twice
    except OSError:
        data = source  # load_patch below raises the one-line ImageError
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as header:  # header only
            width, height = upright_size(header)
    except Exception:  # noqa: BLE001 - likewise
        width = height = 0
    plan = layout(width, height, tile_size, stride, photo_scale)
    if not plan.whole_photo:
        patch = imaging.load_patch(data, size, name)
        return Decoded(patch[None], plan, (width, height), patch[:, :, 0] if preview_px else None)
    img = imaging.open_gray(data, name=name)  # full resolution, EXIF orientation applied
    preview = None
    if preview_px:
        thumb = img.copy()
        thumb.thumbnail((preview_px, preview_px), imaging.RESAMPLE)
        preview = np.asarray(thumb)
    return Decoded(cut(img, plan.boxes, size), plan, img.size, preview)


def collect(paths: Iterable[str | Path]) -> tuple[list[Path], list[str], list[Path]]:
    """Files to predict, in the order given (folders walked recursively, sorted).

    Returns (files, errors, skipped): in folders, only image files by extension
    are taken; hidden files (such as macOS ``._`` copies) and others are skipped.
    A file named explicitly is always tried, whatever its extension.
    """
    files: list[Path] = []
    errors: list[str] = []
    skipped: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = list(walk_files(path, prune=lambda name: name.startswith(".")))
            images = sorted(f for f in found if imaging.is_image_path(f) and not f.name.startswith("."))
            skipped.extend(sorted(set(found) - set(images)))
            if not images:
                errors.append(f"{path}: no image files in this folder")
            files.extend(images)
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return files, errors, skipped


def _ordered(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, window: int) -> Iterator[tuple[object, Future]]:
    """pool.map in order, at most ``window`` tasks ahead, so memory stays bounded."""
    pending: deque[tuple[object, Future]] = deque()
    items = iter(items)
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            break
    while pending:
        item, future = pending.popleft()
        nxt = next(items, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fn, nxt)))
        yield item, future


def predict_files(model, files: Sequence[Path], threshold: float, tile_size: int, stride: int,
                  batch_size: int, on_error: Callable[[str], None], previews: int = 0, *,
                  photo_scale: str | float | None = None, preview_px: int = PREVIEW_PX,
                  scorer: unfamiliar.Scorer | None = None) -> Iterator[Prediction]:
    """Predictions for image files, in order; a file that fails to decode goes to ``on_error``.

    The first ``previews`` files keep a picture (at most ``preview_px`` long) for plots.
    ``photo_scale`` None is ``predict.photo_scale``'s default. With a ``scorer`` every tile
    also gets its unfamiliar-input score and flag, from the same pass of the model.
    """
    size = model.size
    workers = min(8, usable_cpus())
    window = max(4 * workers, batch_size // 2)

    def work(item: tuple[int, Path]) -> Decoded:
        index, path = item
        return decode(path, size, tile_size, stride, preview_px=preview_px if index < previews else 0,
                      photo_scale=photo_scale)

    ready: list[tuple[Path, Decoded]] = []

    def flush() -> Iterator[Prediction]:
        probs, scores = unfamiliar.run(model, np.concatenate([d.tiles for _, d in ready]), batch_size, scorer)
        start = 0
        for path, d in ready:
            p = probs[start:start + len(d.tiles)]
            s = None if scores is None else scores[start:start + len(d.tiles)]
            start += len(d.tiles)
            yield unfamiliar.annotate(_prediction(path, p, d, threshold), s, scorer)
        ready.clear()

    bar = progress.Progress(len(files), "predict", "img", leave=False, disable=None if len(files) > 50 else True)
    with bar, ThreadPoolExecutor(workers) as pool:
        n_tiles = 0
        for (_, path), future in _ordered(pool, work, list(enumerate(files)), window):
            bar.update()
            try:
                decoded = future.result()
            except imaging.ImageError as err:
                on_error(str(err))
                continue
            ready.append((path, decoded))
            n_tiles += len(decoded.tiles)
            if n_tiles >= batch_size:
                yield from flush()
                n_tiles = 0
        if ready:
            yield from flush()


def _prediction(path: Path, probs: np.ndarray, d: Decoded, threshold: float) -> Prediction:
    probability = float(probs.max())
    return Prediction(
        path=str(path), probability=probability, label=label_name(probability, threshold),
        tiles=len(probs), crack_tiles=int((probs >= threshold).sum()),
        tile_table=TileTable(d.boxes, np.asarray(probs, np.float64)), whole_photo=d.layout.whole_photo,
        image_size=d.image_size, truth=dataset.class_of(Path(path).as_posix()), preview=d.preview,
    )


def predict_image(model, data: bytes, name: str, threshold: float, params, preview_px: int = 0,
                  scorer: unfamiliar.Scorer | None = None) -> Prediction:
    """One image's bytes to its prediction, exactly as ``crackclf predict`` makes it from a file
    (decode, tiling, scale, threshold): the path of the web API (``crackclf.serve``) and of the
    MLflow images model (``crackclf.pyfunc``). Raises ``imaging.ImageError`` for bytes that are not
    a readable image. ``model`` is anything with ``size`` and ``predict(images, batch_size)``."""
    cfg = params.predict
    d = decode(data, model.size, cfg.tile_size, cfg.stride, preview_px=preview_px,
               photo_scale=cfg.photo_scale)
    probs, scores = unfamiliar.run(model, d.tiles, cfg.batch_size, scorer)
    return unfamiliar.annotate(_prediction(Path(name), probs, d, threshold), scores, scorer)


# --- output ----------------------------------------------------------------------------------

def write_rows(predictions: Sequence[Prediction], output: Path | None) -> None:
    """CSV to stdout or FILE.csv, or a JSON list to FILE.json."""
    rows = [p.row() for p in predictions]
    if output is None:
        try:
            w = csv.DictWriter(sys.stdout, ROW_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(map(csv_row, rows))
            sys.stdout.flush()
        except BrokenPipeError:  # `crackclf predict ... | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif output.suffix.lower() == ".json":
        write_json(output, rows)
    else:
        write_csv(output, ROW_FIELDS, map(csv_row, rows))


# --- the pipeline's example prediction -----------------------------------------------------

def examples(params, data_dir: Path, model: Model, threshold: float, stride: int,
             scorer: unfamiliar.Scorer | None = None) -> list[Prediction]:
    """``predict.images``, or the first ``examples_per_class`` test images of each class (manifest order).

    A stage output: an image of ``predict.images`` that cannot be read stops it before anything is written.
    """
    cfg = params.predict
    if cfg.images:
        paths, errors, _ = collect(cfg.images)

        def fail(message: str) -> None:
            raise CrackclfError(f"predict.images: {message}")

        for message in errors:
            fail(message)
        return list(predict_files(model, paths, threshold, cfg.tile_size, stride, cfg.batch_size,
                                  fail, previews=PLOT_MAX_PANELS, photo_scale=cfg.photo_scale, scorer=scorer))
    x, y = dataset.load_split(data_dir, "test", size=model.size)
    names = [r["file"] for r in dataset.read_manifest(data_dir, "test")]
    picked = [i for label in (1, 0) for i in np.flatnonzero(y == label)[: cfg.examples_per_class]]
    if not picked:
        raise CrackclfError(f"{data_dir}: the test split is empty")
    images = np.asarray(x[picked])
    probs, scores = unfamiliar.run(model, images, cfg.batch_size, scorer)
    return [unfamiliar.annotate(patch_prediction(names[i], p, threshold, int(y[i]), im),
                                None if scores is None else scores[j:j + 1], scorer)
            for j, (i, p, im) in enumerate(zip(picked, probs, images))]


# --- command line -----------------------------------------------------------------------------

def main(args, params, stop: StopRequest | None = None) -> int:
    def warn(message: str) -> None:
        print(f"crackclf predict: {message}", file=sys.stderr)

    failures = 0

    def on_error(message: str) -> None:
        nonlocal failures
        failures += 1
        warn(message)

    output = args.output
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--output {output}: name a .csv or .json file")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be from 0 to 1")
    stride = params.predict.stride if args.stride is None else args.stride
    check_stride(stride, params.predict.tile_size)
    tiles_csv, plot_dir = getattr(args, "tiles", None), getattr(args, "plot_dir", None)
    if tiles_csv is not None and tiles_csv.suffix.lower() != ".csv":
        raise UsageError(f"--tiles {tiles_csv}: name a .csv file")
    explain_to = getattr(args, "explain", None)
    if explain_to is not None:
        from crackclf import explain

        if args.examples is not None:
            raise UsageError("--explain explains the PATHs given, not --examples")
        explain.check_backend()  # before any work: other backends cannot do Grad-CAM (exit 2)
    if args.examples is None and not args.paths:
        raise UsageError("name image files or folders to predict (or --examples DATA_DIR); see --help")
    if args.examples is not None and args.paths:
        raise UsageError("--examples predicts the pipeline's examples: give no paths with it")

    model_spec = resolve_model(args.model)
    # first: without a model nothing else matters (exit 2); ONNX unless --runtime keras or no valid copy
    model = load_model(model_spec, getattr(args, "runtime", "auto"), warn)
    scorer = unfamiliar.find(model_spec, warn)  # None (and one line) when evaluate fitted none for it
    if args.examples is not None:
        threshold = args.threshold if args.threshold is not None else default_threshold(model_spec, warn)
        preds = examples(params, args.examples, model, threshold, stride, scorer)
        write_rows(preds, output or DEFAULT_EXAMPLES_CSV)
        plot_predictions(preds, args.plot or DEFAULT_EXAMPLES_PNG, threshold,
                         ncols=params.predict.examples_per_class,
                         title=f"crack probability, threshold {threshold:.3f} (green: right, red: wrong)")
        return 0

    files, errors, skipped = collect(args.paths)
    for message in errors:
        on_error(message)
    if skipped:
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warn(f"skipped {len(skipped)} hidden or non-image file{'s' if len(skipped) != 1 else ''} "
             f"in folders ({names})")
    if not files:
        return 1
    if explain_to is not None:
        explain.check_target(explain_to, len(files))
    threshold = args.threshold if args.threshold is not None else default_threshold(model_spec, warn)
    cfg = params.predict
    if plot_dir is not None or (args.plot is not None and len(files) == 1):
        previews, preview_px = len(files), MAP_PREVIEW_PX  # crack maps: a large picture of each photo
    else:
        previews, preview_px = (PLOT_MAX_PANELS if args.plot else 0), PREVIEW_PX
    preds, tile_rows, maps = [], [], MapWriter(plot_dir, threshold) if plot_dir is not None else None
    for pred in predict_files(model, files, threshold, cfg.tile_size, stride, cfg.batch_size, on_error,
                              previews=previews, preview_px=preview_px, photo_scale=cfg.photo_scale,
                              scorer=scorer):
        if tiles_csv is not None:
            tile_rows += pred.tile_table.rows(pred.path, threshold)
        if maps is not None:
            maps.add(pred)
        if args.plot is None or len(preds) >= PLOT_MAX_PANELS:
            pred.preview = None  # drawn already, or never: memory stays flat on large folders
        elif len(files) > 1 and pred.preview is not None:
            pred.preview = _shrink(pred.preview, PREVIEW_PX)  # a contact sheet's panel
        preds.append(pred)
    write_rows(preds, output)
    if line := unfamiliar.summary_line(preds):
        warn(line)
    if tiles_csv is not None:
        write_csv(tiles_csv, TILE_FIELDS, map(csv_row, tile_rows))
    if maps is not None:
        maps.close()
    if args.plot is not None and preds:
        if len(preds) > PLOT_MAX_PANELS:
            warn(f"{args.plot}: shows the first {PLOT_MAX_PANELS} of {len(preds)} images")
        plot_predictions(preds, args.plot, threshold)
    if explain_to is not None:
        done = explain.explain_files(model, preds, explain_to, threshold, cfg.tile_size, stride, cfg.photo_scale,
                                     cfg.batch_size)
        warn(f"{explain_to}: Grad-CAM of {len(done)} image{'s' if len(done) != 1 else ''}"
             + ("" if done or explain_to.suffix else " (no image has a crack tile)"))
    return 1 if failures else 0


def _shrink(picture: np.ndarray, longest: int) -> np.ndarray:
    if max(picture.shape) <= longest:
        return picture
    from PIL import Image

    img = Image.fromarray(picture)
    img.thumbnail((longest, longest), imaging.RESAMPLE)
    return np.asarray(img)


class MapWriter:
    """``--plot-dir``: each whole photo's crack map as it is predicted (``DIR/<name>.png``, ``<name>-2.png``
    for a name seen before), and the patches on one contact sheet, ``DIR/patches.png``."""

    def __init__(self, folder: Path, threshold: float):
        from crackclf.plots import save_crack_map

        self.folder, self.threshold, self.save = folder, threshold, save_crack_map
        self.names: set[str] = set()
        self.patches: list[Prediction] = []
        self.written = 0

    def add(self, pred: Prediction) -> None:
        if not pred.whole_photo:
            if len(self.patches) < PLOT_MAX_PANELS:
                self.patches.append(pred)
            return
        stem, n = Path(pred.path).stem, 1
        name = f"{stem}.png"
        while name in self.names or name == "patches.png":
            n += 1
            name = f"{stem}-{n}.png"
        self.names.add(name)
        self.save(self.folder / name, pred, self.threshold)
        self.written += 1

    def close(self) -> None:
        if self.patches:
            plot_predictions(self.patches, self.folder / "patches.png", self.threshold)

