"""crackclf predict: crack probabilities for the user's own images, from one patch to a whole photo.

Every image goes through ``imaging`` (the decode path preprocess uses), so the
model sees the pixels it was trained on. An image is a whole photo when one side
is at least twice ``predict.tile_size`` and the other at least one tile; any
other image is one patch, resized whole to the model's input size. A photo is
cut into ``tile_size`` tiles every ``stride`` pixels from the top-left corner;
each tile is resized like a patch, and the photo's probability is its highest
tile probability. The grid holds ``(width - tile_size) // stride + 1`` columns
(rows likewise), so a strip narrower than a stride at the right and bottom edges
is not classified (173 and 73 px of a 4032x3024 photo); the plot hatches it. A
smaller ``--stride`` narrows that strip.

Folders are walked recursively and sorted; image files are chosen by extension,
hidden files skipped. A file that cannot be decoded gets one line on stderr and
no row, the others are still predicted, and the exit code is 1.

Images are decoded in a thread pool (Pillow releases the GIL) while the model
runs on batches of ``predict.batch_size`` tiles, so a folder of patches runs at
batch speed. The model's input size comes from the model itself, not params.

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

from crackclf import CrackclfError, UsageError, dataset, imaging, usable_cpus
from crackclf.files import walk_files, write_csv, write_json
from crackclf.inference import (ROW_FIELDS, Model, Prediction, default_threshold, label_name, load_model,
                                patch_prediction, resolve_model)
from crackclf.plots import PLOT_MAX_PANELS, plot_predictions
from crackclf.process import StopRequest

DEFAULT_EXAMPLES_CSV = Path("predictions/example.csv")
DEFAULT_EXAMPLES_PNG = Path("predictions/example.png")


# --- images ----------------------------------------------------------------------------------

def is_whole_photo(width: int, height: int, tile_size: int) -> bool:
    """At least twice the patch size on one side, and a whole tile on the other."""
    return max(width, height) >= 2 * tile_size and min(width, height) >= tile_size


def tile_grid(width: int, height: int, tile_size: int, stride: int) -> tuple[int, int]:
    """(rows, cols) of tiles from the top-left corner; the remainder at the edges is left out."""
    return (height - tile_size) // stride + 1, (width - tile_size) // stride + 1


@dataclass
class Decoded:
    tiles: np.ndarray  # (n, size, size, 1) uint8
    grid: tuple[int, int] | None  # (rows, cols) for a whole photo
    image_size: tuple[int, int]
    preview: np.ndarray | None


def decode(source: str | Path | bytes, size: int, tile_size: int, stride: int, preview_px: int = 0) -> Decoded:
    """One image (a file, or its bytes) to model inputs: one patch, or the tiles of a whole photo."""
    from PIL import Image

    name = None if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()  # read once, parsed twice
    except OSError:
        data = source  # load_patch below raises the one-line ImageError
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as header:  # header only
            width, height = header.size
    except Exception:  # noqa: BLE001 - likewise
        width = height = 0
    if not is_whole_photo(width, height, tile_size):
        patch = imaging.load_patch(data, size, name)
        return Decoded(patch[None], None, (width, height), patch[:, :, 0] if preview_px else None)
    img = imaging.open_gray(data, name=name)  # full resolution, EXIF orientation applied
    rows, cols = tile_grid(img.width, img.height, tile_size, stride)
    tiles = np.stack([
        imaging.resize(img.crop((c * stride, r * stride, c * stride + tile_size, r * stride + tile_size)), size)
        for r in range(rows) for c in range(cols)
    ])
    preview = None
    if preview_px:
        thumb = img.copy()
        thumb.thumbnail((preview_px, preview_px))
        preview = np.asarray(thumb)
    return Decoded(tiles, (rows, cols), img.size, preview)


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
                  batch_size: int, on_error: Callable[[str], None], previews: int = 0) -> Iterator[Prediction]:
    """Predictions for image files, in order; a file that fails to decode goes to ``on_error``.

    The first ``previews`` files keep a picture (at most 1024 px) for plots.
    """
    from tqdm import tqdm

    size = model.size
    workers = min(8, usable_cpus())
    window = max(4 * workers, batch_size // 2)

    def work(item: tuple[int, Path]) -> Decoded:
        index, path = item
        return decode(path, size, tile_size, stride, preview_px=1024 if index < previews else 0)

    ready: list[tuple[Path, Decoded]] = []

    def flush() -> Iterator[Prediction]:
        probs = model.predict(np.concatenate([d.tiles for _, d in ready]), batch_size)
        start = 0
        for path, d in ready:
            p = probs[start:start + len(d.tiles)]
            start += len(d.tiles)
            yield _prediction(path, p, d, threshold, tile_size, stride)
        ready.clear()

    bar = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr, leave=False,
               disable=None if len(files) > 50 else True)
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


def _prediction(path: Path, probs: np.ndarray, d: Decoded, threshold: float,
                tile_size: int, stride: int) -> Prediction:
    probability = float(probs.max())
    return Prediction(
        path=str(path), probability=probability, label=label_name(probability, threshold),
        tiles=len(probs), crack_tiles=int((probs >= threshold).sum()),
        tile_probs=probs.reshape(d.grid) if d.grid else None,
        tile_size=tile_size if d.grid else 0, stride=stride if d.grid else 0,
        image_size=d.image_size, truth=dataset.class_of(Path(path).as_posix()), preview=d.preview,
    )


# --- output ----------------------------------------------------------------------------------

def write_rows(predictions: Sequence[Prediction], output: Path | None) -> None:
    """CSV to stdout or FILE.csv, or a JSON list to FILE.json."""
    rows = [p.row() for p in predictions]
    if output is None:
        try:
            w = csv.DictWriter(sys.stdout, ROW_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            sys.stdout.flush()
        except BrokenPipeError:  # `crackclf predict ... | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif output.suffix.lower() == ".json":
        write_json(output, rows)
    else:
        write_csv(output, ROW_FIELDS, rows)


# --- the pipeline's example prediction -----------------------------------------------------

def examples(params, data_dir: Path, model: Model, threshold: float, stride: int) -> list[Prediction]:
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
                                  fail, previews=PLOT_MAX_PANELS))
    x, y = dataset.load_split(data_dir, "test", size=model.size)
    names = [r["file"] for r in dataset.read_manifest(data_dir, "test")]
    picked = [i for label in (1, 0) for i in np.flatnonzero(y == label)[: cfg.examples_per_class]]
    if not picked:
        raise CrackclfError(f"{data_dir}: the test split is empty")
    images = np.asarray(x[picked])
    probs = model.predict(images, cfg.batch_size)
    return [patch_prediction(names[i], p, threshold, int(y[i]), im) for i, p, im in zip(picked, probs, images)]


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
    if stride <= 0:
        raise UsageError(f"--stride {stride}: must be a positive number of pixels")
    if args.examples is None and not args.paths:
        raise UsageError("name image files or folders to predict (or --examples DATA_DIR); see --help")
    if args.examples is not None and args.paths:
        raise UsageError("--examples predicts the pipeline's examples: give no paths with it")

    model_spec = resolve_model(args.model)
    model = load_model(model_spec)  # first: without a model nothing else matters (exit 2)
    if args.examples is not None:
        threshold = args.threshold if args.threshold is not None else default_threshold(model_spec, warn)
        preds = examples(params, args.examples, model, threshold, stride)
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
    threshold = args.threshold if args.threshold is not None else default_threshold(model_spec, warn)
    cfg = params.predict
    preds = list(predict_files(model, files, threshold, cfg.tile_size, stride, cfg.batch_size,
                               on_error, previews=PLOT_MAX_PANELS if args.plot else 0))
    write_rows(preds, output)
    if args.plot is not None and preds:
        if len(preds) > PLOT_MAX_PANELS:
            warn(f"{args.plot}: shows the first {PLOT_MAX_PANELS} of {len(preds)} images")
        plot_predictions(preds, args.plot, threshold)
    return 1 if failures else 0
