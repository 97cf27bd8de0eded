"""One decode-and-resize path for training and serving, so both see the same pixels.

Images become 8-bit grayscale with Pillow: EXIF orientation applied, 16-bit and
alpha images handled, JPEGs decoded straight to grayscale in draft mode (much
faster than decoding RGB and converting).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from crackclf import CrackclfError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
RESAMPLE = Image.Resampling.BOX  # area average: antialiased, and the fastest good downscale


class ImageError(CrackclfError):
    """A file that is not a readable image (corrupt, truncated, unknown format).

    ``detail`` is the message without the file's name, for lists that name it their own way."""

    def __init__(self, name: str, detail: str):
        super().__init__(f"{name}: {detail}")
        self.detail = detail


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_gray(source: str | Path | bytes, draft_size: tuple[int, int] | None = None,
              name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes; ``name`` for messages) to a loaded mode-"L" image.

    A path is read into memory first: Pillow keeps a file it opened by path open after
    ``load()`` (multi-frame images) or a decode error, and these images are small.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft("L", draft_size or img.size)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: otherwise it copies every upright image
        return _to_gray(img)
    except Exception as err:  # noqa: BLE001 - untrusted bytes: any decoder failure means "unreadable"
        raise ImageError(name, f"not a readable image ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    # Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" holds a memory
    # address: keep messages free of it, so the list of skipped files is reproducible.
    if isinstance(err, UnidentifiedImageError):
        return "unknown or damaged image format"
    return str(err) or type(err).__name__


def _to_gray(img: Image.Image) -> Image.Image:
    if img.mode == "L":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit (I;16) and 32-bit images: scale the 16-bit range to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 1.0
        return Image.fromarray(np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("L")  # RGB, RGBA (alpha dropped), palette, CMYK, 1-bit


def resize(img: Image.Image, size: int) -> np.ndarray:
    """Grayscale image to a (size, size, 1) uint8 array, the model's input."""
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)[:, :, None]


def load_patch(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """Decode one patch-sized image to the model's (size, size, 1) uint8 input."""
    return resize(open_gray(source, (size, size), name), size)
