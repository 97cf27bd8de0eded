"""Non-concrete textures, drawn on the fly: what a user might point the model at by mistake.

Bricks, tiles, text, grass and wood grain, as 8-bit grayscale images of any size, for the
unfamiliar-input tests and ``bench/unfamiliar.py``. Bricks and tiles have dark, straight joints
that a crack model readily takes for cracks; none of them is concrete. Nothing here is a copy
of any dataset.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    return rng.normal(0, sigma, (size, size))


def _finish(arr: np.ndarray, blur: float = 0.7) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(blur))


def bricks(rng: np.random.Generator, size: int = 227) -> Image.Image:
    """A running-bond brick wall: bricks of varying tone between light or dark mortar joints."""
    scale = rng.uniform(0.6, 1.6) * size / 227
    h, w, joint = 32 * scale, 90 * scale, max(2, int(rng.uniform(4, 8) * scale))
    mortar = rng.choice([rng.uniform(40, 80), rng.uniform(170, 220)])
    img = Image.new("L", (size, size), int(mortar))
    draw = ImageDraw.Draw(img)
    base = rng.uniform(90, 150)
    for row in range(int(size / h) + 2):
        offset = (row % 2) * w / 2 - rng.uniform(0, w)
        x = offset
        while x < size:
            draw.rectangle((x, row * h, x + w - joint, row * h + h - joint), fill=int(base + rng.normal(0, 15)))
            x += w
    arr = np.asarray(img, np.float64) + _noise(rng, size, 10)
    return _finish(arr)


def tiles(rng: np.random.Generator, size: int = 227) -> Image.Image:
    """Square floor or wall tiles: even, smooth faces and thin grout lines."""
    pitch = rng.uniform(40, 110) * size / 227
    grout = max(2, int(rng.uniform(2, 5) * size / 227))
    face, line = rng.uniform(150, 230), rng.uniform(50, 120)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    shift = rng.uniform(0, pitch, 2)
    on_line = ((xx + shift[0]) % pitch < grout) | ((yy + shift[1]) % pitch < grout)
    arr = np.where(on_line, line, face) + _noise(rng, size, 3)
    return _finish(arr, 0.5)


def text(rng: np.random.Generator, size: int = 227) -> Image.Image:
    """Lines of printed characters on paper."""
    img = Image.new("L", (size, size), int(rng.uniform(200, 245)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(rng.uniform(12, 26) * size / 227))
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;-"
    step = font.size * 1.4
    for row in range(int(size / step) + 1):
        line = "".join(rng.choice(list(letters), 40))
        draw.text((rng.uniform(-20, 5), row * step + 2), line, fill=int(rng.uniform(0, 60)), font=font)
    return _finish(np.asarray(img, np.float64) + _noise(rng, size, 4), 0.4)


def grass(rng: np.random.Generator, size: int = 227) -> Image.Image:
    """Blades of grass: many short, mostly upright strokes, light and dark."""
    img = Image.new("L", (size, size), int(rng.uniform(60, 100)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(900 * (size / 227) ** 2)):
        x, y = rng.uniform(-10, size + 10, 2)
        length = rng.uniform(10, 35) * size / 227
        angle = rng.normal(np.pi / 2, 0.35)
        end = (x + length * np.cos(angle), y - length * np.sin(angle))
        draw.line((x, y, *end), fill=int(rng.uniform(30, 200)), width=max(1, int(rng.uniform(1, 3) * size / 227)))
    return _finish(np.asarray(img, np.float64), 0.6)


def wood(rng: np.random.Generator, size: int = 227) -> Image.Image:
    """Wood grain: long, wavy, parallel growth rings."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    coarse = Image.fromarray(rng.normal(0, 1, (9, 9)).astype(np.float32), "F").resize((size, size),
                                                                                      Image.Resampling.BICUBIC)
    warp = np.asarray(coarse) * rng.uniform(0.02, 0.06)
    rings = np.sin(2 * np.pi * rng.uniform(8, 20) * (xx + warp + 0.15 * np.sin(2 * np.pi * yy * rng.uniform(0.3, 1))))
    arr = rng.uniform(110, 170) + 35 * rings + _noise(rng, size, 6)
    img = _finish(arr, 0.8)
    return img.transpose(Image.Transpose.TRANSPOSE) if rng.random() < 0.5 else img


KINDS = {"bricks": bricks, "tiles": tiles, "text": text, "grass": grass, "wood": wood}


def texture(kind: str, rng: np.random.Generator, size: int = 227) -> Image.Image:
    """One ``size`` x ``size`` grayscale image of ``kind`` (a key of ``KINDS``)."""
    return KINDS[kind](rng, size)
