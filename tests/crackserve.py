"""``crackclf serve`` in a process of its own on a free loopback port, and the files tests send it.

Shared by tests/test_serve.py (API), tests/test_web.py (the page in Chromium) and
docs/web_screenshot.py.
"""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from httpserver import free_port
from mlflow_server import running, server_env
from PIL import Image

import synth

GRID = (3, 4)  # rows, cols of 227 px patches in a synthetic 908x681 photo
CRACKED = {(0, 1), (1, 2), (2, 0)}  # where its patches show a crack


@contextlib.contextmanager
def serving(model: str | Path, log_path: Path, params: dict | None = None, timeout: float = 120,
            extra: tuple[str, ...] = ()) -> Iterator[str]:
    """``crackclf serve --model MODEL --port P`` with ``params`` (merged over the defaults) in a
    params file of its own; yields its URL once ``/api/health`` answers, stops it after."""
    port = free_port()
    params_file = log_path.with_suffix(".params.yaml")
    params_file.write_text(yaml.safe_dump(params or {}), encoding="utf-8")
    cmd = [sys.executable, "-m", "crackclf", "serve", "--model", str(model), "--params", str(params_file),
           "--host", "127.0.0.1", "--port", str(port), *extra]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, f"{url}/api/health", log_path, timeout=timeout, env=server_env()):
        yield url


def photo(seed: int = 3) -> Image.Image:
    """A 908x681 RGB photo of synthetic concrete: 3x4 patches, cracks in those of ``CRACKED``."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (GRID[1] * 227, GRID[0] * 227))
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            img.paste(synth.patch(rng, (r, c) in CRACKED), (c * 227, r * 227))
    return img


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A small PNG (about 50 KB) that decodes to ``side`` x ``side`` black pixels: a decompression
    bomb. Written by hand, row by row, so that making it does not take the memory it claims."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    rows = (b"\0" * (1 + (side + 7) // 8)) * 500  # filter byte + 1-bit pixels, 500 rows at a time
    body = b"".join(packer.compress(rows) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
