"""Benchmark: the unfamiliar-input flag, how well it separates and what it costs.

Prints, for a trained model with its fitted score (``models/unfamiliar.npz``, written by evaluate):
  - the test split: accuracy, and the share flagged (the goal: at most 5 %);
  - non-concrete textures: scikit-image's bundled sample images (brick, grass, gravel, text, ...)
    cut into patches at three scales, and the textures tests/textures.py draws (bricks, tiles, text,
    grass, wood): the share flagged, the share called crack, and the ROC AUC of the score between
    test patches and all textures;
  - with --photos DIR (a folder of images, e.g. concrete photos of another source): the share of
    their 227 px tiles flagged;
  - speed: ``predict.predict_files`` on the same image files with and without the score, in the same
    run (median of rounds, interleaved), and the cost of the score on top of prediction (goal: 25 %).

    python bench/unfamiliar.py [--model models/model.keras] [--data data/prepared] [--photos DIR] [-n 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SKIMAGE_IMAGES = ("brick", "grass", "gravel", "text", "page", "camera", "coins", "moon")


def crops(img, size: int, sides=(227, 150, 320), per_side: int = 4) -> list[np.ndarray]:
    """Square crops of a PIL image on a grid at several scales, resized to the model's input."""
    from crackclf import imaging

    out = []
    for side in sides:
        if side > min(img.size):
            continue
        for y in np.linspace(0, img.height - side, per_side).astype(int):
            for x in np.linspace(0, img.width - side, per_side).astype(int):
                out.append(imaging.resize(img.crop((x, y, x + side, y + side)), size))
    return out


def texture_sets(size: int, n: int = 40) -> dict[str, np.ndarray]:
    from PIL import Image

    import textures

    sets = {}
    try:
        import skimage.data
    except ImportError:
        print("scikit-image not installed (pip install -r requirements-dev.txt): its sample images are left out")
    else:
        for name in SKIMAGE_IMAGES:
            img = Image.fromarray(getattr(skimage.data, name)()).convert("L")
            if min(img.size) < 227:
                f = 300 / min(img.size)
                img = img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BICUBIC)
            sets[f"skimage {name}"] = np.stack(crops(img, size))
    rng = np.random.default_rng(1)
    for kind in textures.KINDS:
        sets[f"drawn {kind}"] = np.stack([np.asarray(crops(textures.texture(kind, rng), size, (227,), 1)[0])
                                          for _ in range(n)])
    return sets


def photo_tiles(folder: Path, size: int) -> np.ndarray:
    from crackclf import imaging, predict

    tiles = []
    for path in sorted(p for p in folder.rglob("*") if imaging.is_image_path(p)):
        tiles.append(predict.decode(path, size, 227, 227).tiles)
    return np.concatenate(tiles)


def speed(model, scorer, data: Path, n: int, rounds: int = 3) -> tuple[float, float, int]:
    """Seconds per image of predict_files without and with the score (medians), and the image count."""
    from PIL import Image

    from crackclf import dataset, predict

    x, _ = dataset.load_split(data, "test")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n):  # files, as users give them: decode included
            path = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(np.asarray(x[i % len(x)])[:, :, 0]).save(path)
            files.append(path)
        plain, scored = [], []
        for _ in range(rounds + 1):
            for use, times in ((None, plain), (scorer, scored)):
                start = time.perf_counter()
                list(predict.predict_files(model, files, 0.5, 227, 227, 256, print, scorer=use))
                times.append(time.perf_counter() - start)
    return statistics.median(plain[1:]) / n, statistics.median(scored[1:]) / n, n  # the first round warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.keras")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "prepared")
    ap.add_argument("--photos", type=Path, help="a folder of other images: the share of their tiles flagged")
    ap.add_argument("-n", type=int, default=1000, help="images for the speed comparison")
    ap.add_argument("--runtime", default="auto", choices=("auto", "onnx", "keras"))
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from crackclf import dataset, inference, unfamiliar

    model = inference.load_model(args.model, args.runtime, print)
    scorer = unfamiliar.find(args.model, print)
    if scorer is None:
        sys.exit("no fitted unfamiliar-input score for this model: run `crackclf evaluate` first")
    threshold = inference.default_threshold(args.model, print)
    print(f"model {args.model} ({model.runtime}); score: k {scorer.k}, {len(scorer.bank)} training images, "
          f"threshold {scorer.threshold:.6f} ({scorer.info.get('percentile')}th percentile of "
          f"{scorer.info.get('n_val')} validation images)")

    x, y = dataset.load_split(args.data, "test", size=model.size)
    probs, feats = model.predict_with_features(np.asarray(x), 256)
    test_scores = scorer.score(feats)
    print(f"\ntest split: {len(y)} images, accuracy {np.mean((probs >= threshold) == y):.4f} "
          f"(threshold {threshold:.3f}), flagged {scorer.flag(test_scores).mean():.1%}")

    print(f"\n{'textures':<18} {'patches':>7} {'flagged':>8} {'called crack':>13}")
    every = []
    for name, images in texture_sets(model.size).items():
        p, f = model.predict_with_features(images, 256)
        s = scorer.score(f)
        every.append(s)
        print(f"{name:<18} {len(images):>7} {scorer.flag(s).mean():>8.1%} {np.mean(p >= threshold):>13.1%}")
    every = np.concatenate(every)
    auc = roc_auc_score(np.r_[np.zeros(len(test_scores)), np.ones(len(every))], np.r_[test_scores, every])
    print(f"{'all textures':<18} {len(every):>7} {scorer.flag(every).mean():>8.1%}")
    print(f"ROC AUC of the score, test patches against textures: {auc:.4f}")

    if args.photos:
        tiles = photo_tiles(args.photos, model.size)
        p, f = model.predict_with_features(tiles, 256)
        print(f"\n{args.photos}: {len(tiles)} tiles of 227 px, flagged {scorer.flag(scorer.score(f)).mean():.1%}, "
              f"called crack {np.mean(p >= threshold):.1%}")

    plain, scored, n = speed(model, scorer, args.data, args.n)
    print(f"\nspeed, predict_files on {n} PNG files (decode included), median of 3 rounds, same run:")
    print(f"  without the score  {1 / plain:8.0f} images/s")
    print(f"  with the score     {1 / scored:8.0f} images/s   (+{scored / plain - 1:.1%} time; goal at most +25 %)")
    tiles = np.asarray(x[np.arange(1024) % len(x)])
    model_s = _median_s(lambda: model.predict(tiles, 256))
    for rows in sorted({len(scorer.bank), 5000}):  # this model's bank, and the default cap on the full dataset
        bank = scorer.bank[np.arange(rows) % len(scorer.bank)]
        big = unfamiliar.Scorer(bank, scorer.k, scorer.threshold)
        score_s = _median_s(lambda: big.score(feats[np.arange(1024) % len(feats)]))  # noqa: B023
        print(f"  score alone, 1,024 tiles against {rows:,} training images: {score_s * 1e3:.0f} ms "
              f"({score_s / model_s:.1%} of the model's {model_s * 1e3:.0f} ms for the same tiles)")


def _median_s(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
