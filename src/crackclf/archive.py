"""Reading the dataset from whatever container it comes in, safely.

Supported: a folder, zip, tar (.gz/.bz2/.xz), RAR (4 and 5, solid or not), and
archives nested in one another (Mendeley's zip that holds the RAR). Class
folders (``Positive``/``Negative``, any case) are found wherever they sit.
Members with absolute paths, ``..`` or links, and archives that expand past a
size cap, are refused with ``ArchiveError``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from crackclf import CrackclfError
from crackclf.dataset import CLASS_FOLDERS


class ArchiveError(CrackclfError):
    """An archive that is unsafe, unreadable, or holds no class folders."""


def class_of(name: str) -> int | None:
    """Label of an archive member from its nearest class folder, or None if it sits in none."""
    for part in reversed(PurePosixPath(name).parts[:-1]):
        label = CLASS_FOLDERS.get(part.lower())
        if label is not None:
            return label
    return None


def iter_images(source: str | Path, max_unpacked_bytes: int) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(member name, label, file bytes)`` for every file under a class folder.

    The name is the member's path inside the container (for a folder: relative
    to it), with forward slashes. Files outside class folders are passed over.
    TODO(download issue): tar, RAR, nesting, safety checks.
    """
    source = Path(source)
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            name = path.relative_to(source).as_posix()
            label = class_of(name)
            if label is not None:
                yield name, label, path.read_bytes()
        return
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            label = class_of(info.filename)
            if not info.is_dir() and label is not None:
                yield info.filename, label, zf.read(info)
