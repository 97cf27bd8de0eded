"""Dataset archives for tests, built on the fly from a synthetic folder: zip, tar, RAR4/RAR5, nested, and bad ones.

RAR archives are written with the PyPI package ``rars`` (stored, compressed,
solid), read back by the code under test with RARLAB's unrar.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path


def members(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """The dataset's files as {archive member name: bytes}, sorted by name."""
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_zip(dest: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(dest, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return dest


def write_tar(dest: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(dest, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


def write_rar(dest: Path, files: dict[str, bytes], version: int = 5, kind: str = "compressed") -> Path:
    """``kind``: stored, compressed or solid."""
    import rars

    builder = rars.RarBuilder(format="rar50" if version == 5 else "rar4", store=kind == "stored",
                              solid=kind == "solid")
    for name, data in files.items():
        builder.add_bytes(data, name)
    builder.write(str(dest))
    return dest


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
