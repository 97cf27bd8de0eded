"""Benchmark: the photo levers (README "The levers, measured"), each a full `dvc repro`, side by side in one run.

Each lever is a fresh workspace (the project's files, params.yaml with the lever over the defaults) in
which `dvc repro` downloads the 2,000-image sample, trains and scores the photos; then
`crackclf score-photos` scores half B of the photos. Printed per lever: tile F1 (precision / recall)
on all photos and on half B, tile ROC AUC on both, the dataset's test accuracy (its own share of the
test split when extra tiles are trained on), formwork joints called crack (crack-free tiles with and
without the set's planking masks, from `crackclf predict --tiles`), the epochs run and the wall time;
with --thresholds, the same model's figures on all photos and the dataset at other thresholds;
with several --seeds, a line per seed and one with the means (min to max): one seed moves these
figures a lot.

Halves: the photos sorted by name with a drone frame's crops kept together (DSC00552 and DSC00552b);
the first half of the photos is A, the rest B. The `*own*` levers cut A with `crackclf tiles` into the
workspace's data/extra/A and train on it (preprocess.extra), so B is never seen in training. With
--upscale, every photo and mask is resized first, so that each is cut into hundreds of tiles, most of
them without a crack, as large inspection photos are, and A's tiles outnumber the sample's.

Needs ../shared beside the repo (the sample and uav75); takes 1 to 3 minutes a run on 2 cores (4 to 7
at `image_size: 227`; 9 to 11 on a machine of that class 6 times slower).

    python bench/levers.py [baseline default own ...] [--seeds 42 43 44] [--thresholds 0.3 0.7]
                           [--sample DIR] [--photos DIR] [--keep DIR] [--upscale 6]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"  # ../shared beside the repo
sys.path.insert(0, str(REPO / "tests"))

from workspace import crackclf, make_workspace, merge, run  # noqa: E402

PLAIN = {"augment_zoom": 0, "augment_brightness": 0, "augment_contrast": 0, "augment_gamma": 0,
         "augment_blur": 0, "augment_noise": 0, "augment_jpeg": 0, "plain_negatives": 0}
OWN = {"extra": ["data/extra/A"]}  # preprocess.*
OWN_X3 = {**OWN, "extra_oversample": 3}  # preprocess.*: half A's tiles, each three times
UNCENTRED = {"center_inputs": False}  # train.*: pixels 0..1 into conv1, as before centring
WIDE = {"conv_filters": [32, 64, 64], "dense_units": 128}  # train.*: twice the filters and dense units
LEVERS = {  # over today's params.yaml; "tiles": options of `crackclf tiles` for half A, not params
    "baseline": {"train": {**PLAIN, **UNCENTRED, "epochs": 10}},  # before augmentation: flips and rotations
    "augmentation": {"train": {**UNCENTRED, "plain_negatives": 0}},  # before plain negatives
    "uncentred": {"train": UNCENTRED},  # augmentation and plain negatives, before centring
    "default": {},  # augmentation, plain negatives, centred inputs
    "patience3": {"train": {"early_stopping_patience": 3}},  # the default before patience 5
    "joints": {"train": {"joint_negatives": 0.1}},  # formwork joints drawn on own no-crack images
    "wide": {"train": WIDE},
    "uncentred-size227": {"preprocess": {"image_size": 227}, "train": {**UNCENTRED, "learning_rate": 0.0003}},
    "size227": {"preprocess": {"image_size": 227}},  # the native patch size: thin cracks keep their width
    "own-x3-size227": {"preprocess": {**OWN_X3, "image_size": 227}},
    # Each image's exposure and contrast removed: a tile's spread alone tells the sample's cracks from
    # its plain concrete (ROC AUC 0.99), but not uav75's (0.51). The spread is floored at 0.04 or 0.01.
    "standardize": {"train": {"standardize_inputs": 0.04}},
    "standardize-0.01": {"train": {"standardize_inputs": 0.01}},
    # No-crack images stretched to the crack patches' spread: "contrast is crack" no longer holds.
    "contrast": {"train": {"contrast_negatives": 0.2}},
    "own-contrast": {"preprocess": OWN, "train": {"contrast_negatives": 0.2}},
    # Position: a dataset patch is cut around its crack, a photo tile holds one anywhere.
    "translate": {"train": {"augment_translate": 0.25}},  # shifted by up to a quarter of the side
    "maxpool": {"train": {"global_pooling": "max"}},  # the head sees each feature's max over the image
    "own-translate": {"preprocess": OWN, "train": {"augment_translate": 0.25}},
    "own-maxpool": {"preprocess": OWN, "train": {"global_pooling": "max"}},
    # Contrast factor in [0.3, 1.7] instead of [0.7, 1.3]: uav75's crack tiles spread 12.7 grey levels
    # (median), the sample's crack patches 18 to 40; recall on the fainter half of the tiles is a third.
    "contrast-wide": {"train": {"augment_contrast": 0.7}},
    "own-contrast-wide": {"preprocess": OWN, "train": {"augment_contrast": 0.7}},
    # Crack images faded to the no-crack patches' spread: a faint crack on smooth concrete is a crack.
    "faint": {"train": {"faint_positives": 0.2}},
    "own-faint": {"preprocess": OWN, "train": {"faint_positives": 0.2}},
    "own-faint-0.1": {"preprocess": OWN, "train": {"faint_positives": 0.1}},
    "own-faint-0.05": {"preprocess": OWN, "train": {"faint_positives": 0.05}},
    # Both sides at once: neither a tile's contrast nor its faintness says crack.
    "own-faint-contrast": {"preprocess": OWN, "train": {"faint_positives": 0.2, "contrast_negatives": 0.2}},
    # Only the crack faded, the concrete's texture and spread kept: faint cracks without "smooth is crack".
    "faint-cracks": {"train": {"faint_cracks": 0.2}},
    "faint-cracks-0.1": {"train": {"faint_cracks": 0.1}},
    # Own labels as before train.faint_cracks: auto (which is 0.1 with own tiles, so `own` has them now).
    "own-no-faint-cracks": {"preprocess": OWN, "train": {"faint_cracks": 0}},
    "own-faint-cracks": {"preprocess": OWN, "train": {"faint_cracks": 0.2}},
    "own-faint-cracks-0.5": {"preprocess": OWN, "train": {"faint_cracks": 0.5}},
    "own-x2-faint-cracks": {"preprocess": {**OWN, "extra_oversample": 2}, "train": {"faint_cracks": 0.2}},
    "own-faint-cracks-0.1": {"preprocess": OWN, "train": {"faint_cracks": 0.1}},
    "own-x3-faint-cracks": {"preprocess": OWN_X3, "train": {"faint_cracks": 0.2}},
    # Both kinds of faint crack: the faded patches for recall, the faded cracks for ranking.
    "own-faint-both": {"preprocess": OWN, "train": {"faint_positives": 0.1, "faint_cracks": 0.2}},
    "own": {"preprocess": OWN},  # half A's tiles: the defaults (at x 1 each once)
    # Own labels as before preprocess.dataset_oversample: auto, which repeats the sample's patches when own
    # tiles outnumber them: only with --upscale here (at x 1 auto repeats nothing and `own` is this lever).
    "own-no-dataset-oversample": {"preprocess": {**OWN, "dataset_oversample": 1, "extra_balance": False}},
    # Own tiles of large photos are mostly plain concrete (9 to 16 % crack at --upscale 4 to 6): each folder's
    # crack tiles repeated as often as its no-crack ones, the dataset's patches as often as all of them.
    # extra_balance: auto (the default) does that only where crack is the rarer class: at --upscale 4 `own`
    # is `own-balance` with the threshold evaluate.threshold: auto then picks, at x 1 (uav75's tiles
    # two-thirds crack) it is `own-no-balance`. Both at 0.5, as measured before threshold auto.
    "own-balance": {"preprocess": {**OWN, "extra_balance": True}, "evaluate": {"threshold": 0.5}},
    "own-no-balance": {"preprocess": {**OWN, "extra_balance": False}, "evaluate": {"threshold": 0.5}},
    # Part way: crack tiles up to half the no-crack ones (at x 4 each twice instead of four times).
    "own-balance-half": {"preprocess": {**OWN, "extra_balance_ratio": 0.5}, "evaluate": {"threshold": 0.5}},
    # The F1-best threshold on the validation split whatever the own tiles' mix (threshold auto takes it
    # only where training rebalanced them).
    "own-threshold-f1": {"preprocess": OWN, "evaluate": {"threshold": "f1"}},
    "own-x2": {"preprocess": {**OWN, "extra_oversample": 2}},
    "own-x3": {"preprocess": OWN_X3},
    "own-x3-long": {"preprocess": OWN_X3, "train": {"epochs": 40, "early_stopping_patience": 6}},
    "own-x3-wide": {"preprocess": OWN_X3, "train": WIDE},
    "own-dense": {"preprocess": OWN, "tiles": ["--stride", "76"]},  # A cut into overlapping tiles: 2.8x as many
    "scale2": {"predict": {"photo_scale": 2}},  # tiles of 114 photo px: thin cracks twice as wide at the input
    "own-scale2": {"preprocess": OWN, "predict": {"photo_scale": 2}},  # A cut, trained and B scored at that scale
    "own-balanced": {"preprocess": {**OWN_X3, "extra_balance": True}, "evaluate": {"threshold": 0.5}},
    "uncentred-own": {"preprocess": OWN, "train": UNCENTRED},
    "uncentred-own-x3": {"preprocess": OWN_X3, "train": UNCENTRED},
    "uncentred-own-balanced": {"preprocess": {**OWN_X3, "extra_balance": True}, "train": UNCENTRED,
                               "evaluate": {"threshold": 0.5}},
}


def halves(photos: Path, tmp: Path) -> tuple[Path, Path]:
    """Photo sets A and B of ``photos`` (links, never copies), split by drone frame."""
    frames: dict[str, list[str]] = {}
    for image in sorted((photos / "images").iterdir()):
        frames.setdefault(re.sub(r"[a-z]$", "", image.stem), []).append(image.name)
    half = sum(map(len, frames.values())) // 2
    chosen: dict[str, list[str]] = {"A": [], "B": []}
    for frame in sorted(frames):
        chosen["A" if len(chosen["A"]) < half else "B"].extend(frames[frame])
    for name, images in chosen.items():
        for sub in ("images", "masks"):
            (tmp / name / sub).mkdir(parents=True)
        for image in images:
            mask = f"{Path(image).stem}.png"
            (tmp / name / "images" / image).symlink_to(photos / "images" / image)
            (tmp / name / "masks" / mask).symlink_to(photos / "masks" / mask)
    return tmp / "A", tmp / "B"


def upscaled(photos: Path, factor: float, root: Path) -> Path:
    """``photos`` resized by ``factor`` (images Lanczos, masks nearest): a stand-in for large photos cut
    into hundreds of tiles each, where own tiles outnumber the sample's and few of them hold a crack."""
    from PIL import Image

    out = root / f"x{factor:g}"
    for sub in ("images", "masks", "extras/planking_masks"):
        if not (photos / sub).is_dir():
            continue
        (out / sub).mkdir(parents=True)
        for path in sorted((photos / sub).iterdir()):
            with Image.open(path) as img:
                size = (round(img.width * factor), round(img.height * factor))
                if sub == "images":
                    img.convert("RGB").resize(size, Image.LANCZOS).save(out / sub / f"{path.stem}.png")
                else:
                    img.resize(size, Image.NEAREST).save(out / sub / path.name)
    return out


def lever(name: str, overrides: dict, sample: Path, photos: Path, half_a: Path, half_b: Path, root: Path,
          thresholds: list[float]) -> dict:
    ws = root / f"{name}-{overrides.get('seed', 'default')}"
    ws.mkdir()
    params = {key: value for key, value in overrides.items() if key != "tiles"}
    make_workspace(ws, merge({"download": {"url": str(sample)}, "photos": {"dir": str(photos)}}, params))
    t = time.perf_counter()
    if "extra" in params.get("preprocess", {}):
        cut = crackclf(ws, "tiles", half_a, ws / "data" / "extra" / "A", *overrides.get("tiles", []))
        assert cut.returncode == 0, cut.stderr
    run(ws, "dvc", "repro", timeout=3600)
    wall = time.perf_counter() - t
    scored_b = crackclf(ws, "score-photos", half_b)
    assert scored_b.returncode == 0, scored_b.stderr
    evaluation = json.loads((ws / "metrics" / "eval.json").read_text())
    planking = (photos / "extras" / "planking_masks").is_dir()
    table = tiles(ws, photos) if planking or thresholds else None  # `crackclf predict` only when needed
    return {
        "all": json.loads((ws / "metrics" / "photos.json").read_text()),
        "B": json.loads(scored_b.stdout),
        "accuracy": evaluation.get("sources", {}).get("dataset", evaluation)["accuracy"],
        "train": json.loads((ws / "metrics" / "train.json").read_text()),
        "joints": joints(table) if table is not None else None,
        "thresholds": at_thresholds(table, ws, thresholds) if thresholds else [],
        "wall": wall,
    }


def tiles(ws: Path, photos: Path) -> dict:
    """Every tile of the photo set as the workspace's model calls it (`crackclf predict --tiles`, at
    the run's threshold), as arrays: its tile-rule label, probability, whether it was called crack and,
    where the set has planking masks (``extras/planking_masks``), whether one covers at least 0.5 % of
    it (else ``joint`` is None)."""
    import csv

    import numpy as np

    from crackclf.photos import CRACK_FRACTION, crack_fractions, photo_size, read_mask, tile_labels

    tiles_csv = ws / "tiles.csv"
    cut = crackclf(ws, "predict", photos / "images", "--tiles", tiles_csv, "--output", ws / "rows.csv")
    assert cut.returncode == 0, cut.stderr
    planking = photos / "extras" / "planking_masks"
    by_photo: dict[str, list[dict]] = {}
    with open(tiles_csv, newline="") as f:
        for row in csv.DictReader(f):
            by_photo.setdefault(row["path"], []).append(row)
    parts: dict[str, list] = {"label": [], "probability": [], "called": [], "joint": []}
    for path, rows in by_photo.items():
        size, stem = photo_size(Path(path)), Path(path).stem
        boxes = np.array([[int(r[k]) for k in ("x", "y", "width", "height")] for r in rows])
        parts["label"].append(tile_labels(read_mask(photos / "masks" / f"{stem}.png", size), boxes)[0])
        parts["probability"].append(np.array([float(r["probability"]) for r in rows]))
        parts["called"].append(np.array([r["label"] == "crack" for r in rows]))
        if planking.is_dir():
            parts["joint"].append(crack_fractions(read_mask(planking / f"{stem}.png", size), boxes) >= CRACK_FRACTION)
    return {key: np.concatenate(value) if value else None for key, value in parts.items()}


def joints(table: dict) -> dict | None:
    """Formwork joints, a classic false positive: the share of crack-free tiles (no crack pixel in
    the mask) called crack by the workspace's model, split by whether the photo set's planking mask
    covers at least 0.5 % of the tile. None when the set has no planking masks."""
    from crackclf.photos import NO_CRACK

    if table["joint"] is None:
        return None
    free = table["label"] == NO_CRACK
    joint, plain = table["called"][free & table["joint"]], table["called"][free & ~table["joint"]]
    return {"joint_tiles": len(joint), "joint_fp": _share(joint), "plain_tiles": len(plain), "plain_fp": _share(plain)}


def at_thresholds(table: dict, ws: Path, thresholds: list[float]) -> list[dict]:
    """The run's model at other thresholds: tile precision, recall and F1 on all photos (tile rule),
    the share of crack-free tiles called crack (with and without a joint) and the dataset's test
    accuracy (its own patches of plots/eval/predictions.csv, by the manifest's source), one dict per
    threshold."""
    import csv

    import numpy as np

    from crackclf.dataset import read_manifest
    from crackclf.photos import CRACK, LEFT_OUT, classification
    from crackclf.preprocess import DATASET_SOURCE

    scored = table["label"] != LEFT_OUT
    truth, probs = table["label"][scored] == CRACK, table["probability"][scored]
    joint = table["joint"][scored] if table["joint"] is not None else np.zeros_like(truth)
    source = {r["file"]: r["source"] for r in read_manifest(ws / "data" / "prepared", "test")}
    with open(ws / "plots" / "eval" / "predictions.csv", newline="") as f:
        own = [r for r in csv.DictReader(f) if source[r["file"]] == DATASET_SOURCE]
    actual = np.array([r["actual"] == "crack" for r in own])
    dataset = np.array([float(r["probability"]) for r in own])
    out = []
    for th in thresholds:
        called = probs >= th
        out.append({"threshold": th, "scored_tiles": len(truth), **classification(truth, probs, th),
                    "joint_fp": _share(called[~truth & joint]), "plain_fp": _share(called[~truth & ~joint]),
                    "accuracy": float(np.mean((dataset >= th) == actual))})
    return out


def _share(called) -> float:
    """The share of True in ``called``; 0 when it is empty."""
    return float(called.mean()) if len(called) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("levers", nargs="*", default=["baseline", "default", "own"], choices=list(LEVERS),
                    help="levers to run (default: baseline default own)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="seed of each run (default: 42)")
    ap.add_argument("--sample", type=Path, default=SHARED / "crack-sample", help="Positive/ and Negative/")
    ap.add_argument("--photos", type=Path, default=SHARED / "photos" / "uav75", help="images/ and masks/")
    ap.add_argument("--keep", type=Path, help="keep the workspaces here (default: a temporary folder)")
    ap.add_argument("--upscale", type=float, default=1,
                    help="resize every photo by this factor first: many tiles a photo, few with a crack")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[],
                    help="also score each run's model at these thresholds (all photos and the dataset)")
    opts = ap.parse_args()
    for need in (opts.sample, opts.photos):
        if not need.is_dir():
            sys.exit(f"levers: {need} is missing (../shared beside the repo, or --sample/--photos)")

    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        photos = opts.photos.resolve()
        if opts.upscale != 1:
            photos = upscaled(photos, opts.upscale, root)
        half_a, half_b = halves(photos, Path(tmp))
        print(f"{opts.photos} (x {opts.upscale:g}): half A {len(list((half_a / 'images').iterdir()))} photos "
              f"(own labels), half B {len(list((half_b / 'images').iterdir()))} photos (never trained on)")
        print("| lever | tile F1 (P / R), all | tile F1 (P / R), half B | ROC AUC all / B | dataset test accuracy "
              "| joint / plain crack-free tiles called crack | epochs (best) | wall |")
        print("|---|---|---|---|---:|---:|---:|---:|")
        for name in opts.levers:
            runs = []
            for seed in opts.seeds:
                r = lever(name, {**LEVERS[name], "seed": seed}, opts.sample.resolve(), photos,
                          half_a, half_b, root, opts.thresholds)
                runs.append(r)
                print(f"| {name}, seed {seed} | {_f1(r['all'])} | {_f1(r['B'])} | {_auc(r['all'])} / {_auc(r['B'])} "
                      f"| {100 * r['accuracy']:.1f} % | {_joints(r['joints'])} "
                      f"| {r['train']['epochs']} ({r['train']['best_epoch']}) "
                      f"| {r['wall'] / 60:.1f} min |", flush=True)
                for t in r["thresholds"]:
                    print(f"| at threshold {t['threshold']:g} | {_f1(t)} | | | {100 * t['accuracy']:.1f} % "
                          f"| {100 * t['joint_fp']:.0f} / {100 * t['plain_fp']:.0f} % | | |", flush=True)
            if len(runs) > 1:
                print(f"| **{name}, mean of {len(runs)}** | {_span(runs, 'all', 'f1')} {_pr(runs, 'all')} "
                      f"| {_span(runs, 'B', 'f1')} {_pr(runs, 'B')} "
                      f"| {_span(runs, 'all', 'roc_auc')} / {_span(runs, 'B', 'roc_auc')} "
                      f"| {_span(runs, None, 'accuracy', 100, '{:.1f}')} % "
                      f"| {_span(runs, 'joints', 'joint_fp', 100, '{:.0f}')} / "
                      f"{_span(runs, 'joints', 'plain_fp', 100, '{:.0f}')} % "
                      f"| | |", flush=True)


def _span(runs: list[dict], half: str | None, key: str, scale: float = 1, fmt: str = "{:.3f}") -> str:
    """Mean (min to max) of one figure over the seeds' runs: how far one seed moves it."""
    values = [scale * v for r in runs if (v := ((r[half] if half else r) or {}).get(key)) is not None]
    if not values:
        return "n/a"
    mean, low, high = (fmt.format(v) for v in (sum(values) / len(values), min(values), max(values)))
    return f"{mean} ({low} to {high})"


def _pr(runs: list[dict], half: str) -> str:
    """Mean precision / recall over the seeds' runs."""
    return "(" + " / ".join(f"{sum(r[half][k] for r in runs) / len(runs):.3f}" for k in ("precision", "recall")) + ")"


def _joints(j: dict | None) -> str:
    if j is None:
        return "n/a"
    return f"{100 * j['joint_fp']:.0f} % of {j['joint_tiles']} / {100 * j['plain_fp']:.0f} % of {j['plain_tiles']}"


def _f1(m: dict) -> str:
    return f"{m['f1']:.3f} ({m['precision']:.3f} / {m['recall']:.3f}) on {m['scored_tiles']}"


def _auc(m: dict) -> str:
    return "n/a" if m.get("roc_auc") is None else f"{m['roc_auc']:.3f}"


if __name__ == "__main__":
    main()
