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

import contextlib
import csv
import io
import json
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, archive, dataset, files, imaging, quiet_import, usable_cpus

THRESHOLD_FILE = "threshold.json"  # written by evaluate beside the model file
THRESHOLD_ARTIFACT = "eval/threshold.json"  # the same file in the training's MLflow run
DEFAULT_THRESHOLD = 0.5
PLOT_MAX_PANELS = 64
CELL_INCHES = (2.4, 2.9)  # one panel of a grid plot: the image and its three-line caption
IMAGE_INCHES = 2.2
TITLE_INCHES = 0.45
TITLE_MIN_WIDTH = 7.2
PLOT_DPI = 100
DEFAULT_EXAMPLES_CSV = Path("predictions/example.csv")
DEFAULT_EXAMPLES_PNG = Path("predictions/example.png")


class ModelError(CrackclfError):
    """No usable model: nothing can be predicted, so it is a usage error."""

    exit_code = 2


class UsageError(CrackclfError):
    exit_code = 2


@dataclass
class Prediction:
    path: str
    probability: float
    label: str
    tiles: int
    crack_tiles: int
    tile_probs: np.ndarray | None = None  # (rows, cols) for a whole photo, None for a patch
    tile_size: int = 0
    stride: int = 0
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the decoded image
    truth: int | None = None  # known from a Positive/ or Negative/ folder, or the manifest
    preview: np.ndarray | None = None  # 2-D uint8, for plots only

    def row(self) -> dict:
        return {
            "path": self.path, "probability": round(self.probability, 6), "label": self.label,
            "tiles": self.tiles, "crack_tiles": self.crack_tiles,
        }


ROW_FIELDS = ("path", "probability", "label", "tiles", "crack_tiles")


# --- the model -------------------------------------------------------------------------------

def load_model(spec: str | Path):
    """A ``.keras`` file or an MLflow registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""
    spec = str(spec)
    if spec.startswith("models:/"):
        return _load_registered(spec)
    path = Path(spec)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (run `dvc repro train`, or pass --model)")
    keras = quiet_import("keras")
    quiet_import("crackclf.model")  # registers the custom layers before loading
    try:
        model = keras.saving.load_model(path)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a usable model
        raise ModelError(f"{path}: not a readable Keras model ({first_line(err)})") from None
    input_size(model)
    return model


def resolve_model(spec: str | Path) -> str:
    """``models:/NAME@ALIAS`` as the version it names now (``models:/NAME/VERSION``), so that the
    model and its threshold come from one version even if evaluate moves the alias meanwhile."""
    spec = str(spec)
    name, _, alias = spec.removeprefix("models:/").partition("@")
    if not spec.startswith("models:/") or not alias:
        return spec
    import mlflow

    _registry(spec)
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{spec}: cannot load ({first_line(err)})") from None
    return f"models:/{name}/{version}"


def _registry(spec: str) -> None:
    """Point MLflow at the user's store; a store that is not there is a missing model (exit 2)."""
    from crackclf import tracking

    try:
        tracking.check_store(tracking.configure())
    except CrackclfError as err:
        raise ModelError(f"{spec}: {err}") from None


def _load_registered(uri: str):
    import mlflow

    quiet_import("crackclf.model")  # Keras, and the custom layers
    _registry(uri)
    try:
        with _no_mlflow_progress_bars():
            model = mlflow.keras.load_model(uri)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{uri}: cannot load ({first_line(err)})") from None
    input_size(model)
    return model


@contextlib.contextmanager
def _no_mlflow_progress_bars():
    """MLflow draws a download bar for every small file; predict's output stays rows and errors."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ.setdefault(key, "false")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def input_size(model) -> int:
    """The square grayscale input size the model was built for."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or not shape[1]:
        raise ModelError(f"model input {shape} is not (batch, size, size, 1): not a crackclf model")
    return int(shape[1])


def predict_proba(model, images: np.ndarray, batch_size: int, progress: bool = False) -> np.ndarray:
    """Crack probability of each (size, size, 1) image, batch by batch.

    ``predict_on_batch`` runs the compiled graph without ``model.predict``'s
    per-call set-up: about 1.5 ms for one image against 44 ms.
    """
    from tqdm import tqdm

    out = np.empty(len(images), np.float64)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", file=sys.stderr, leave=False,
                      disable=None if progress and len(starts) > 4 else True):
        batch = np.asarray(images[start:start + batch_size], np.float32)
        out[start:start + len(batch)] = np.asarray(model.predict_on_batch(batch)).reshape(-1)
    return out


def default_threshold(model_spec: str | Path, warn: Callable[[str], None]) -> float:
    """The threshold evaluate chose for this model, else 0.5.

    For a file, ``threshold.json`` beside it counts only if it names this very
    file (sha256): a model retrained without re-evaluation must not inherit a
    stale threshold. For a registry URI, the one evaluate logged to the run.
    """
    spec = str(model_spec)
    if spec.startswith("models:/"):
        return _registered_threshold(resolve_model(spec), warn)
    path = Path(spec).with_name(THRESHOLD_FILE)
    if not path.is_file():
        return DEFAULT_THRESHOLD
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(info["threshold"])
    except (ValueError, KeyError, TypeError):
        warn(f"{path}: unreadable, using threshold {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD
    if info.get("model_sha256") and info["model_sha256"] != files.sha256(spec):
        warn(f"{path} was written for another model (rerun `crackclf evaluate`); "
             f"using threshold {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD
    return threshold


def _registered_threshold(uri: str, warn: Callable[[str], None]) -> float:
    """``uri`` as ``resolve_model`` returns it: ``models:/NAME/VERSION``."""
    import mlflow

    name, _, number = uri.removeprefix("models:/").partition("/")
    try:
        version = mlflow.MlflowClient().get_model_version(name, number)
        with _no_mlflow_progress_bars():
            info = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{THRESHOLD_ARTIFACT}")
        return float(info["threshold"])
    except Exception:  # noqa: BLE001 - not evaluated yet, or another URI form: the documented default
        warn(f"{uri}: no threshold logged by evaluate, using {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD


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


def truth_from_path(path: str | Path) -> int | None:
    """Label from the nearest Positive/ or Negative/ folder, as in the dataset; else unknown."""
    return archive.class_of(Path(path).as_posix())


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
            found = list(archive.walk_files(path, prune=lambda name: name.startswith(".")))
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

    size = input_size(model)
    workers = min(8, usable_cpus())
    window = max(4 * workers, batch_size // 2)

    def work(item: tuple[int, Path]) -> Decoded:
        index, path = item
        return decode(path, size, tile_size, stride, preview_px=1024 if index < previews else 0)

    ready: list[tuple[Path, Decoded]] = []

    def flush() -> Iterator[Prediction]:
        probs = predict_proba(model, np.concatenate([d.tiles for _, d in ready]), batch_size)
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
        image_size=d.image_size, truth=truth_from_path(path), preview=d.preview,
    )


def label_name(probability: float, threshold: float) -> str:
    return dataset.LABEL_NAMES[int(probability >= threshold)]


def patch_prediction(name: str, probability: float, threshold: float, truth: int | None,
                     image: np.ndarray) -> Prediction:
    """The prediction for one preprocessed (size, size, 1) patch, such as a test image."""
    probability = float(probability)
    return Prediction(path=name, probability=probability, label=label_name(probability, threshold), tiles=1,
                      crack_tiles=int(probability >= threshold), image_size=(image.shape[1], image.shape[0]),
                      truth=truth, preview=np.asarray(image[:, :, 0]))


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
        files.write_json(output, rows)
    else:
        files.write_csv(output, ROW_FIELDS, rows)


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


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- the pipeline's example prediction -----------------------------------------------------

def examples(params, data_dir: Path, model, threshold: float, stride: int,
             on_error: Callable[[str], None]) -> list[Prediction]:
    """``predict.images``, or the first ``examples_per_class`` test images of each class (manifest order)."""
    cfg = params.predict
    if cfg.images:
        files, errors, _ = collect(cfg.images)
        for message in errors:
            on_error(message)
        return list(predict_files(model, files, threshold, cfg.tile_size, stride, cfg.batch_size,
                                  on_error, previews=PLOT_MAX_PANELS))
    x, y = dataset.load_split(data_dir, "test", size=input_size(model))
    names = [r["file"] for r in dataset.read_manifest(data_dir, "test")]
    picked = [i for label in (1, 0) for i in np.flatnonzero(y == label)[: cfg.examples_per_class]]
    if not picked:
        raise CrackclfError(f"{data_dir}: the test split is empty")
    images = np.asarray(x[picked])
    probs = predict_proba(model, images, cfg.batch_size)
    return [patch_prediction(names[i], p, threshold, int(y[i]), im) for i, p, im in zip(picked, probs, images)]


# --- command line -----------------------------------------------------------------------------

def main(args, params) -> int:
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
        preds = examples(params, args.examples, model, threshold, stride, on_error)
        write_rows(preds, output or DEFAULT_EXAMPLES_CSV)
        plot_predictions(preds, args.plot or DEFAULT_EXAMPLES_PNG, threshold,
                         ncols=params.predict.examples_per_class,
                         title=f"crack probability, threshold {threshold:.3f} (green: right, red: wrong)")
        return 1 if failures else 0

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
