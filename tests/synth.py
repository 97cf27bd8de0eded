"""Synthetic concrete patches: a signal that a tiny CNN can really learn.

Both classes share a mottled concrete texture with pores and stains; only
Positive images get a dark, irregular crack that runs from edge to edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# params.yaml values for a model that learns the synthetic data in seconds (48 px input).
TINY_PARAMS = {
    "seed": 0,
    "preprocess": {"image_size": 48},
    "train": {
        "conv_filters": [8, 16], "dense_units": 32, "dropout": 0.0, "learning_rate": 0.002,
        "batch_size": 16, "epochs": 8, "early_stopping_patience": 8,
        # params.yaml trains with augmentation; the tiny test model without (fast, and what tests assert on)
        "augment": False, **{f"augment_{k}": 0 for k in ("zoom", "brightness", "contrast", "gamma", "blur",
                                                         "noise", "jpeg")},
        "plain_negatives": 0,
    },
}


def concrete(rng: np.random.Generator, size: int = 227) -> Image.Image:
    base = rng.uniform(150, 190)
    coarse = Image.fromarray(rng.normal(0, 14, (size // 8 + 1, size // 8 + 1)).astype(np.float32), "F")
    coarse = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))
    fine = rng.normal(0, 9, (size, size))
    img = Image.fromarray(np.clip(base + coarse + fine, 0, 255).astype(np.uint8), "L")
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(5, 25)):  # pores: small dark dots in both classes
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.5, 2.0) * size / 227
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(base - rng.uniform(30, 60)))
    return img


def draw_crack(img: Image.Image, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Draw a crack across ``img``; returns its polyline."""
    size = img.size[0]
    vertical = rng.random() < 0.5
    start, end = rng.uniform(0.1, 0.9, 2) * size
    steps = 12
    t = np.linspace(0, size, steps)
    wobble = np.cumsum(rng.normal(0, size / 30, steps))
    along = np.linspace(start, end, steps) + wobble
    pts = [(a, b) if vertical else (b, a) for a, b in zip(along, t)]
    draw = ImageDraw.Draw(img)
    width = max(3, int(rng.uniform(8, 14) * size / 227))
    darkness = int(rng.uniform(0, 40))
    draw.line(pts, fill=darkness, width=width, joint="curve")
    return pts


def patch(rng: np.random.Generator, crack: bool, size: int = 227) -> Image.Image:
    img = concrete(rng, size)
    if crack:
        draw_crack(img, rng)
    return img.filter(ImageFilter.GaussianBlur(0.6)).convert("RGB")


def write_dataset(root: Path, n_per_class: int, size: int = 227, seed: int = 0, quality: int = 90) -> Path:
    """Positive/ and Negative/ folders of numbered JPEGs, like the real dataset."""
    rng = np.random.default_rng(seed)
    for folder, crack in (("Positive", True), ("Negative", False)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, n_per_class + 1):
            patch(rng, crack, size).save(root / folder / f"{i:05d}.jpg", quality=quality)
    return root


def photo_with_mask(rng: np.random.Generator, width: int, height: int,
                    cracks: list[tuple[int, int, int]]) -> tuple[Image.Image, np.ndarray]:
    """A ``width`` x ``height`` grey concrete photo with a crack drawn across each ``(x, y, side)``
    square, and its crack mask (bool, True where a crack was drawn)."""
    img = concrete(rng, max(width, height)).crop((0, 0, width, height))
    before = np.asarray(img, np.int16).copy()
    for x, y, side in cracks:
        region = img.crop((x, y, x + side, y + side))
        draw_crack(region, rng)
        img.paste(region, (x, y))
    mask = np.abs(np.asarray(img, np.int16) - before) > 40  # the drawn crack: far darker than concrete
    return img.filter(ImageFilter.GaussianBlur(0.6)), mask


def write_photo_set(root: Path, photos: dict[str, tuple[int, int, list[tuple[int, int, int]]]],
                    seed: int = 0) -> Path:
    """A photo set: ``images/NAME.png`` and ``masks/NAME.png`` (255 = crack) for each
    ``NAME: (width, height, cracks)`` (see ``photo_with_mask``)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for name, (width, height, cracks) in photos.items():
        img, mask = photo_with_mask(rng, width, height, cracks)
        img.save(root / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(root / "masks" / f"{name}.png")
    return root
