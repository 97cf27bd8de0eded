"""Outputs are never half-written: each is written beside its final path, then renamed over it.

A crash or Ctrl-C leaves the previous output (or none), so DVC and the user never
see a truncated model, metrics file or split. Every stage writes through here.
What a killed process leaves beside an output is cleaned up by the next writer
of that output, which also puts back an old output that was moved aside.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that look at it); rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path, f".{path.stem}.tmp-", path.suffix)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, fields: list[str], rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out_dir`` to fill; on success it replaces ``out_dir`` whole.

    The old output is moved aside, not deleted, until the new one is in place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out_dir, f".{out_dir.name}.tmp-")
    _clean_leftovers(out_dir, f".{out_dir.name}.old-", restore=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.is_dir() and not out_dir.is_symlink():
            os.rename(out_dir, old)
        elif out_dir.exists() or out_dir.is_symlink():
            out_dir.unlink()
        os.rename(tmp, out_dir)
    except BaseException:
        if old.exists() and not out_dir.exists():
            os.rename(old, out_dir)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks: datasets and models need not fit in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def walk_files(root: Path, prune: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """Files under ``root`` in sorted order, following folder links once (no cycles); folders whose
    name ``prune`` accepts are left out."""
    seen: set[tuple[int, int]] = set()

    def walk(folder: Path) -> Iterator[Path]:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():
                if not prune(entry.name):
                    yield from walk(path)
            elif entry.is_file():
                yield path

    yield from walk(root)


def _clean_leftovers(path: Path, prefix: str, suffix: str = "", restore: bool = False) -> None:
    """Remove what a killed process left beside ``path`` (``prefix<pid>suffix``); a live one's is still in use.

    With ``restore``, a leftover is the old output moved aside just before the crash:
    if ``path`` is missing it is the only copy, so it is put back.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    for leftover in sorted(path.parent.iterdir()):
        m = pattern.fullmatch(leftover.name)
        if not m or not _dead(int(m.group(1))):
            continue
        if restore and not (path.exists() or path.is_symlink()):
            os.rename(leftover, path)
        elif leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _dead(pid: int) -> bool:
    """Whether what process ``pid`` left is stale: ours from before we started, or no such process."""
    if pid == os.getpid():
        return True  # an earlier process with our pid: this one has not written anything yet
    if os.name == "nt":
        return False  # os.kill would terminate the process, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: another user's live process
        return False
    return False
