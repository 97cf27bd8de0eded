"""Photos with crack masks: the tile rule, crack maps scored on them, and the user's own training tiles.

A photo set is a folder with ``images/NAME.jpg|png|...`` (any image Pillow reads)
and ``masks/NAME.png``: the same size as the (EXIF-upright) photo, crack where
the mask is 255 (any grey level from 128 up), background 0. A missing,
unreadable or wrongly sized mask stops the work with one line naming the file.

The tile rule (issue 11, so that figures compare): a tile is each rectangle
predict classifies, in the photo's own pixels (``predict.decode`` with
``predict.tile_size``, ``stride`` and ``photo_scale``). A tile is **crack** when
at least 0.5 % of its pixels are crack in the mask, **no crack** when none are;
tiles in between are left out. ``tile_labels`` is that rule, used by scoring
and by ``crackclf tiles`` alike.

- ``score`` / ``crackclf score-photos DIR``: tile precision, recall, F1 (crack
  class, over every scored tile of every photo), ROC AUC over scored tiles, and
  the mean absolute error per photo between the cracked tiles predict reports
  (all its tiles at the threshold) and the crack tiles of the mask. In the
  pipeline (stage ``photos``, after evaluate) it scores ``photos.dir`` into
  ``metrics/photos.json``, ``plots/photos/photos.csv`` (per photo) and
  ``plots/photos/worst.png``, and logs ``photo_*`` metrics and those files to
  the training's MLflow run. ``photos.dir`` without an ``images/`` folder (the
  default ``data/photos`` holds only a README) means no photo set: one line
  says so and the metrics file is ``{"photos": null, "reason": ...}``.
- ``crackclf tiles PHOTO_SET OUT``: every tile the rule labels, cut as predict
  cuts it and saved at ``tile_size`` px (what the dataset's patches are) to
  ``OUT/Positive/`` or ``OUT/Negative/`` as ``<photo>__x0123_y0456.png``
  (``x``, ``y``: the tile's top-left corner in the photo), so that preprocess
  keeps one photo's tiles in one split; ``OUT/tiles.csv`` lists them all.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, UsageError, first_line, imaging, progress, say
from crackclf.files import atomic_dir, atomic_path, write_csv, write_json
from crackclf.process import StopRequest

CRACK_FRACTION = 0.005  # a tile is crack when at least this share of its pixels is crack in the mask
MASK_ON = 128  # mask grey levels from here up are crack (255 in a clean mask)
CRACK, NO_CRACK, LEFT_OUT = 1, 0, -1
TILE_RULE = "crack: >= 0.5 % of the tile's pixels crack in the mask; no crack: none; left out: in between"
PHOTO_SEPARATOR = "__"  # <photo>__x0123_y0456.png, as preprocess.photo_of reads it
PHOTO_FIELDS = ("photo", "width", "height", "scale", "tile_px", "tiles", "scored", "left_out", "crack_tiles",
                "predicted_crack_tiles", "count_error", "tp", "fp", "fn", "tn", "f1", "max_probability")
TILES_CSV_FIELDS = ("file", "photo", "x", "y", "width", "height", "crack_fraction", "label")


# --- photo sets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Photo:
    name: str
    image: Path
    mask: Path


def photo_set(folder: str | Path, check: bool = True) -> list[Photo]:
    """The photos of a set with their masks, sorted by name; with ``check``, every mask is read once
    and compared with its photo's size, so a bad one stops the work before any prediction."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        raise CrackclfError(f"{folder}: not a photo set (no images/ folder; expected images/NAME.jpg "
                            "and masks/NAME.png)")
    photos: dict[str, Photo] = {}
    for image in sorted(images_dir.iterdir()):
        if image.name.startswith(".") or not image.is_file() or not imaging.is_image_path(image):
            continue
        if image.stem in photos:
            raise CrackclfError(f"{image}: two photos named {image.stem} in {images_dir} "
                                "(their masks would share masks/{image.stem}.png)")
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise CrackclfError(f"{mask}: missing (the mask of {image})")
        photos[image.stem] = Photo(image.stem, image, mask)
    if not photos:
        raise CrackclfError(f"{images_dir}: no images")
    if check:
        for photo in photos.values():
            read_mask(photo.mask, photo_size(photo.image))
    return list(photos.values())


def has_photo_set(folder: str | Path) -> bool:
    return (Path(folder) / "images").is_dir()


def photo_size(path: Path) -> tuple[int, int]:
    """(width, height) of a photo as predict sees it (EXIF-upright), from its header."""
    from PIL import Image

    from crackclf.predict import upright_size

    try:
        with Image.open(path) as header:
            return upright_size(header)
    except Exception as err:  # noqa: BLE001 - any decoder failure
        raise imaging.ImageError(str(path), f"not a readable image ({first_line(err)})") from None


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask as a (height, width) bool array, crack True; it must match its photo's ``size`` (w, h)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img.convert("L")) >= MASK_ON
    except FileNotFoundError:
        raise CrackclfError(f"{path}: missing mask") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure
        raise CrackclfError(f"{path}: not a readable mask ({first_line(err)})") from None
    if mask.shape != (size[1], size[0]):
        raise CrackclfError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its photo is "
                            f"{size[0]}x{size[1]}")
    return mask


# --- the tile rule ---------------------------------------------------------------------------------

def crack_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of crack pixels in each ``x, y, width, height`` box of a bool mask (summed-area table)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    counts = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return counts / np.maximum(1, boxes[:, 2] * boxes[:, 3])


def tile_labels(mask: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tile rule: (labels, crack fractions) of each box; labels CRACK (1) when at least 0.5 % of
    the box is crack, NO_CRACK (0) when none of it is, LEFT_OUT (-1) in between."""
    fractions = crack_fractions(mask, boxes)
    labels = np.where(fractions >= CRACK_FRACTION, CRACK, np.where(fractions == 0, NO_CRACK, LEFT_OUT))
    return labels.astype(np.int8), fractions


# --- scoring ---------------------------------------------------------------------------------------

@dataclass
class PhotoResult:
    photo: Photo
    image_size: tuple[int, int]
    scale: float
    tile_px: int
    table: object  # inference.TileTable
    labels: np.ndarray  # tile rule per tile

    def row(self, threshold: float) -> dict:
        p = self.table.probabilities
        predicted = p >= threshold
        scored = self.labels != LEFT_OUT
        truth = self.labels == CRACK
        tp = int((predicted & truth).sum())
        fp = int((predicted & scored & ~truth).sum())
        fn = int((~predicted & truth).sum())
        tn = int((~predicted & scored & ~truth).sum())
        return {
            "photo": self.photo.name, "width": self.image_size[0], "height": self.image_size[1],
            "scale": round(self.scale, 4), "tile_px": self.tile_px, "tiles": len(p), "scored": int(scored.sum()),
            "left_out": int((~scored).sum()), "crack_tiles": int(truth.sum()),
            "predicted_crack_tiles": int(predicted.sum()), "count_error": int(predicted.sum()) - int(truth.sum()),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "f1": round(2 * tp / (2 * tp + fp + fn), 6) if tp + fp + fn else None,
            "max_probability": round(float(p.max()), 6),
        }


@dataclass
class Scores:
    metrics: dict
    rows: list[dict]  # one per photo, PHOTO_FIELDS
    results: list[PhotoResult] = field(repr=False, default_factory=list)

    def worst(self, n: int) -> list[PhotoResult]:
        """Photos with wrong tiles, most first (then the largest count error)."""
        order = sorted(range(len(self.rows)), key=lambda i: (-(self.rows[i]["fp"] + self.rows[i]["fn"]),
                                                             -abs(self.rows[i]["count_error"]), i))
        return [self.results[i] for i in order[:n] if self.rows[i]["fp"] + self.rows[i]["fn"]]


def score(model, photo_dir: str | Path, threshold: float, *, tile_size: int = 227, stride: int = 227,
          photo_scale: str | float | None = None, batch_size: int = 256) -> Scores:
    """Score ``model``'s crack maps on a photo set with the tile rule; ``Scores.metrics`` holds
    precision, recall, f1, roc_auc (over scored tiles), count_mae (per photo) and the counts."""
    from crackclf.predict import check_stride, predict_files

    check_stride(stride, tile_size, "stride")
    photos = photo_set(photo_dir)

    def fail(message: str) -> None:
        raise CrackclfError(message)

    results = []
    preds = predict_files(model, [p.image for p in photos], threshold, tile_size, stride, batch_size, fail,
                          photo_scale=photo_scale)
    for photo, pred in zip(photos, preds, strict=True):  # strict: the generator runs to its end
        labels, _ = tile_labels(read_mask(photo.mask, pred.image_size), pred.tile_table.boxes)
        scale, tile_px = _seen_at(pred, photo_scale)
        results.append(PhotoResult(photo, pred.image_size, scale, tile_px, pred.tile_table, labels))
    rows = [r.row(threshold) for r in results]
    metrics = tile_metrics(results, threshold)
    metrics.update({"tile_size": tile_size, "stride": stride, "photo_scale": _scale_name(photo_scale),
                    "dir": str(photo_dir)})
    return Scores(metrics, rows, results)


def _seen_at(pred, photo_scale) -> tuple[float, int]:
    """(scale, tile side in photo pixels) a prediction was cut at; (1, 0) for a patch."""
    from crackclf.predict import scale_factor

    if not pred.whole_photo:
        return 1.0, 0
    w, h = pred.image_size
    return scale_factor(photo_scale, w, h), int(pred.tile_table.boxes[0, 2])


def _scale_name(photo_scale) -> str:
    from crackclf.predict import _default_photo_scale

    return str(_default_photo_scale() if photo_scale is None else photo_scale)


def tile_metrics(results: list[PhotoResult], threshold: float) -> dict:
    """The set's metrics: tile precision, recall, F1 and ROC AUC over every scored tile, count MAE per photo."""
    labels = np.concatenate([r.labels for r in results]) if results else np.empty(0, np.int8)
    probs = np.concatenate([r.table.probabilities for r in results]) if results else np.empty(0)
    scored = labels != LEFT_OUT
    counts = [abs(int((r.table.probabilities >= threshold).sum()) - int((r.labels == CRACK).sum()))
              for r in results]
    out: dict = {"photos": len(results), "tiles": int(len(labels)), "scored_tiles": int(scored.sum()),
                 "left_out_tiles": int((~scored).sum()), "crack_tiles": int((labels == CRACK).sum())}
    out.update(classification(labels[scored] == CRACK, probs[scored], threshold))
    out["count_mae"] = round(float(np.mean(counts)), 4) if counts else None
    out.update({"threshold": float(threshold), "tile_rule": TILE_RULE})
    return out


def classification(truth: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 and accuracy of the crack class at ``threshold``, ROC AUC and average
    precision over the probabilities (None without both classes), and the four counts."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    predicted = probs >= threshold
    tp, fp = int((predicted & truth).sum()), int((predicted & ~truth).sum())
    fn, tn = int((~predicted & truth).sum()), int((~predicted & ~truth).sum())
    both = 0 < truth.sum() < len(truth)

    def r(value):
        return None if value is None else round(float(value), 6)

    return {
        "precision": r(tp / (tp + fp) if tp + fp else 0.0) if len(truth) else None,
        "recall": r(tp / (tp + fn) if tp + fn else 0.0) if len(truth) else None,
        "f1": r(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0) if len(truth) else None,
        "roc_auc": r(roc_auc_score(truth, probs)) if both else None,
        "average_precision": r(average_precision_score(truth, probs)) if both else None,
        "accuracy": r((tp + tn) / len(truth)) if len(truth) else None,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def summary(metrics: dict) -> str:
    if metrics.get("photos") is None:
        return f"photos: {metrics['reason']}"

    def f(key: str) -> str:
        return "n/a" if metrics.get(key) is None else f"{metrics[key]:.4f}"

    return (f"photos ({metrics['photos']} photos, {metrics['scored_tiles']} scored tiles, "
            f"{metrics['left_out_tiles']} left out, photo_scale {metrics['photo_scale']}, "
            f"threshold {metrics['threshold']:.3f}): precision {f('precision')}, recall {f('recall')}, "
            f"f1 {f('f1')}, roc_auc {f('roc_auc')}, count_mae {f('count_mae')}")


# --- outputs ---------------------------------------------------------------------------------------

def write_outputs(scores: Scores, output: Path | None, plots_dir: Path | None, worst: int) -> list[Path]:
    """The metrics JSON (or stdout), the per-photo CSV and the worst photos' picture; returns the files."""
    import json

    written = []
    if output is not None:
        write_json(output, scores.metrics)
        written.append(output)
    else:
        print(json.dumps(scores.metrics, indent=2))
    if plots_dir is not None:
        write_csv(plots_dir / "photos.csv", list(PHOTO_FIELDS), scores.rows)
        picture = worst_picture(scores, worst)
        with atomic_path(plots_dir / "worst.png") as tmp:
            picture.save(tmp, format="PNG")
        written += [plots_dir / "photos.csv", plots_dir / "worst.png"]
    return written


def worst_picture(scores: Scores, n: int):
    """The ``n`` worst photos drawn with their crack map, mask and tile outcomes (a PIL image)."""
    from crackclf import plots

    panels = []
    threshold = scores.metrics["threshold"]
    for result in scores.worst(n):
        img = imaging.open_gray(result.photo.image)
        mask = read_mask(result.photo.mask, img.size)
        row = result.row(threshold)
        title = (f"{result.photo.name}: {row['fp']} false, {row['fn']} missed, {row['tp']} found "
                 f"of {row['crack_tiles']} crack tiles")
        panels.append(plots.outcome_panel(img, mask, result.table, result.labels, threshold, title))
    if not panels:
        heading = "no photo has a wrong tile" if scores.rows else "no photos"
    else:
        heading = (f"{len(panels)} worst of {scores.metrics['photos']} photos: tile F1 "
                   f"{_fmt(scores.metrics['f1'])}, threshold {threshold:.3f}")
    return plots.panel_sheet(panels, heading)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def no_photo_set(output: Path | None, plots_dir: Path | None, reason: str) -> None:
    """What the pipeline writes when there is no photo set: valid files that say so."""
    import json

    from crackclf import plots

    metrics = {"photos": None, "reason": reason}
    if output is not None:
        write_json(output, metrics)
    else:
        print(json.dumps(metrics, indent=2))
    if plots_dir is not None:
        write_csv(plots_dir / "photos.csv", list(PHOTO_FIELDS), [])
        with atomic_path(plots_dir / "worst.png") as tmp:
            plots.panel_sheet([], f"no photo set: {reason}").save(tmp, format="PNG")


def log_to_mlflow(run_file: Path, metrics: dict, files: list[Path]) -> str:
    """``photo_*`` metrics and the files (under ``photos/``) into the training's run; one summary line."""
    from crackclf import tracking

    from mlflow.entities import Metric, RunTag

    client, run_id, _, _ = tracking.training_run(run_file)
    now = int(time.time() * 1000)
    logged = [Metric(f"photo_{k}", float(v), now, 0) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    tags = [RunTag(f"photo_{k}", str(metrics[k])) for k in ("photo_scale", "dir") if k in metrics]
    client.log_batch(run_id, metrics=logged, tags=tags)
    for path in files:
        if path.is_file():
            client.log_artifact(run_id, str(path), "photos")
    return f"MLflow run {run_id}: {len(logged)} photo_ metrics logged (photo_f1 {metrics.get('f1')})"


# --- crackclf tiles --------------------------------------------------------------------------------

def cut_tiles(photo_dir: str | Path, out_dir: str | Path, *, tile_size: int = 227, stride: int = 227,
              photo_scale: str | float | None = None) -> dict:
    """Cut a photo set into ``out_dir/Positive`` and ``out_dir/Negative`` tiles by the tile rule
    (left-out tiles are not written), replacing ``out_dir`` whole; returns the counts."""
    from crackclf.predict import check_stride, cut, layout

    check_stride(stride, tile_size, "stride")
    photos = photo_set(photo_dir)
    counts = {"photos": len(photos), "crack": 0, "no_crack": 0, "left_out": 0}
    rows = []
    with atomic_dir(out_dir) as tmp, progress.Progress(len(photos), "tiles", "photos", disable=None if len(photos) > 5 else True) as bar:
        for folder in ("Positive", "Negative"):
            (tmp / folder).mkdir()
        for photo in photos:
            img = imaging.open_gray(photo.image)
            plan = layout(img.width, img.height, tile_size, stride, photo_scale)
            labels, fractions = tile_labels(read_mask(photo.mask, img.size), plan.boxes)
            keep = labels != LEFT_OUT
            counts["left_out"] += int((~keep).sum())
            patches = cut(img, plan.boxes[keep], tile_size)
            for (x, y, w, h), label, fraction, patch in zip(plan.boxes[keep], labels[keep], fractions[keep],
                                                            patches):
                name = f"{photo.name}{PHOTO_SEPARATOR}x{x:04d}_y{y:04d}.png"
                folder = "Positive" if label == CRACK else "Negative"
                counts["crack" if label == CRACK else "no_crack"] += 1
                _save_png(patch[:, :, 0], tmp / folder / name)
                rows.append({"file": f"{folder}/{name}", "photo": photo.name, "x": int(x), "y": int(y),
                             "width": int(w), "height": int(h), "crack_fraction": round(float(fraction), 6),
                             "label": "crack" if label == CRACK else "no_crack"})
            bar.update()
        write_csv(tmp / "tiles.csv", list(TILES_CSV_FIELDS), rows)
    return counts


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pixels, "L").save(path, format="PNG")


# --- command line ----------------------------------------------------------------------------------

def _stride(args, params) -> int:
    return params.predict.stride if getattr(args, "stride", None) is None else args.stride


def score_main(args, params, stop: StopRequest | None = None) -> int:
    """``crackclf score-photos [DIR]``: DIR, else ``photos.dir`` (the pipeline's stage)."""
    from crackclf.inference import default_threshold, load_model, resolve_model

    def warn(message: str) -> None:
        print(f"crackclf score-photos: {message}", file=sys.stderr)

    cfg = params.predict
    stride = _stride(args, params)
    from crackclf.predict import check_stride

    check_stride(stride, cfg.tile_size)
    if args.output is not None and args.output.suffix.lower() != ".json":
        raise UsageError(f"--output {args.output}: name a .json file")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be from 0 to 1")
    photo_dir = args.dir if args.dir is not None else Path(params.photos.dir)
    if args.dir is None and not has_photo_set(photo_dir):
        reason = (f"no photo set in {photo_dir} (photos.dir): point photos.dir at a folder with "
                  "images/ and masks/ to score crack maps")
        say(f"crackclf score-photos: {reason}")
        no_photo_set(args.output, args.plots_dir, reason)
        return 0
    spec = resolve_model(args.model)
    model = load_model(spec, "auto", warn)  # ONNX when the model has a valid copy, else Keras
    threshold = args.threshold if args.threshold is not None else default_threshold(spec, warn)
    scores = score(model, photo_dir, threshold, tile_size=cfg.tile_size, stride=stride,
                   photo_scale=cfg.photo_scale, batch_size=cfg.batch_size)
    written = write_outputs(scores, args.output, args.plots_dir, params.photos.worst)
    say(summary(scores.metrics))
    if args.run_file is None:
        return 0
    if not Path(args.run_file).is_file():
        warn(f"MLflow not updated (no run file {args.run_file}: train did not log)")
        return 0
    from mlflow.exceptions import MlflowException

    from crackclf.tracking import TrackingError

    try:
        say(log_to_mlflow(args.run_file, scores.metrics, written))
    except (TrackingError, MlflowException) as err:
        raise TrackingError(f"MLflow not updated ({first_line(err)}); metrics written to {args.output}") from None
    return 0


def tiles_main(args, params, stop: StopRequest | None = None) -> int:
    """``crackclf tiles PHOTO_SET OUT``."""
    cfg = params.predict
    counts = cut_tiles(args.photo_set, args.out_dir, tile_size=cfg.tile_size, stride=_stride(args, params),
                       photo_scale=cfg.photo_scale)
    say(f"{args.out_dir}: {counts['crack']} crack tiles in Positive/, {counts['no_crack']} no-crack tiles in "
        f"Negative/ from {counts['photos']} photos; {counts['left_out']} left out (between 0 and "
        f"{CRACK_FRACTION:.1%} crack)")
    return 0
