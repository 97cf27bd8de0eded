"""Remake docs/unfamiliar.png: a crack map with unfamiliar tiles hatched, and one crack tile's Grad-CAM.

    python docs/unfamiliar.py [--model models/model.keras] [--data data/prepared] [--images DIR]

The "photo" is four test-split patches of the dataset (two cracked, two not: images the
model never trained on; CC BY 4.0, see the README) beside scikit-image's brick wall (CC0),
cut as ``crackclf predict`` cuts a whole photo. Left: its crack map, the brick tiles hatched
as unfamiliar. Right: the first cracked patch with its Grad-CAM heat map (``--explain``).
``--images`` is the folder holding the dataset's Positive/ and Negative/ JPEGs (default: the
developers' sample beside the repo). Needs a model that evaluate has fitted the score for.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1200  # of the whole picture, px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "model.keras")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "crack-sample")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "unfamiliar.png")
    args = ap.parse_args()

    import skimage.data
    from PIL import Image

    from crackclf import dataset, explain, inference, plots, predict, unfamiliar

    model = inference.load_model(args.model, "keras")
    scorer = unfamiliar.find(args.model, print)
    threshold = inference.default_threshold(args.model, print)
    test = dataset.read_manifest(args.data, "test")
    cracked = [r["file"] for r in test if r["label"] == "1"][:2]
    plain = [r["file"] for r in test if r["label"] == "0"][:2]
    photo = Image.new("L", (4 * 227, 2 * 227))
    for i, name in enumerate([cracked[0], plain[0], plain[1], cracked[1]]):
        photo.paste(Image.open(args.images / name).convert("L"), ((i % 2) * 227, (i // 2) * 227))
    photo.paste(Image.fromarray(skimage.data.brick()).convert("L").resize((454, 454), Image.Resampling.BOX), (454, 0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "concrete-and-bricks.png"
        photo.save(path)
        pred = next(predict.predict_files(model, [path], threshold, 227, 227, 64, print, previews=1,
                                          preview_px=predict.MAP_PREVIEW_PX, scorer=scorer))
    left = plots.prediction_map(pred, threshold)

    patch_path = args.images / cracked[0]
    tile = next(predict.predict_files(model, [patch_path], threshold, 227, 227, 64, print, scorer=scorer))
    tile.preview = np.asarray(Image.open(patch_path).convert("L"))
    x = predict.decode(patch_path, model.size, 227, 227).tiles
    tile.heat = explain.photo_heat(explain.heat_maps(model.net, x), tile.tile_table.boxes,
                                   tile.tile_table.probabilities, tile.image_size, tile.preview.shape)
    right = plots.explain_map(tile, threshold)

    height = 560
    left = left.resize((round(left.width * height / left.height), height), Image.Resampling.LANCZOS)
    right = right.resize((round(right.width * height / right.height), height), Image.Resampling.LANCZOS)
    sheet = Image.new("RGB", (left.width + right.width + 20, height), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + 20, 0))
    if sheet.width > WIDTH:
        sheet = sheet.resize((WIDTH, round(height * WIDTH / sheet.width)), Image.Resampling.LANCZOS)
    sheet.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)  # small
    print(f"{args.out}: {sheet.width}x{sheet.height}, {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
