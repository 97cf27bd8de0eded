"""The preprocess stage's output format, shared by train, evaluate and predict.

``data/prepared/`` holds, per split, ``{split}_images.npy`` (uint8, N x size x size x 1)
and ``{split}_labels.npy`` (uint8, N; crack = 1, no crack = 0), plus ``manifest.csv``
(``file,label,split,source``, rows in array order) and ``skipped.csv`` (``file,reason``).
Plain .npy files load memory-mapped, so a split never has to fit in memory twice.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from crackclf import CrackclfError

SPLITS = ("train", "val", "test")
CLASS_FOLDERS = {"negative": 0, "positive": 1}  # folder name, lower-cased -> label
LABEL_NAMES = ("no_crack", "crack")


def class_of(name: str) -> int | None:
    """Label of a file (an archive member's or a path's posix name) from its nearest class folder, or None."""
    for part in reversed(PurePosixPath(name).parts[:-1]):
        label = CLASS_FOLDERS.get(part.lower())
        if label is not None:
            return label
    return None


def images_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}_images.npy"


def labels_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}_labels.npy"


def load_split(data_dir: str | Path, split: str, mmap: bool = True,
               size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, size, size, 1) uint8 and labels (N,) uint8 of one split; with ``size``, the
    model's input size, images of another size are refused rather than scored."""
    x_path, y_path = images_path(data_dir, split), labels_path(data_dir, split)
    if not x_path.exists() or not y_path.exists():
        raise CrackclfError(f"{x_path.parent}: no '{split}' split here (run `dvc repro preprocess` first)")
    x = np.load(x_path, mmap_mode="r" if mmap else None)
    y = np.load(y_path)
    if x.ndim != 4 or x.shape[0] != y.shape[0]:
        raise CrackclfError(f"{x_path}: unexpected shape {x.shape} for {y.shape[0]} labels")
    if size is not None and x.shape[1:3] != (size, size):
        raise CrackclfError(f"{x_path.parent}: images are {x.shape[1]} px but the model takes {size} px "
                            "(preprocess.image_size changed since training? run `dvc repro`)")
    return x, y


def read_manifest(data_dir: str | Path, split: str | None = None) -> list[dict[str, str]]:
    """Rows of manifest.csv (in array order), optionally of one split only."""
    with open(Path(data_dir) / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r["split"] == split]


def _kind(row: dict[str, str]) -> tuple[str, str]:
    """(source, label) of a manifest row; manifests before sources had no source column."""
    return row.get("source", ""), row["label"]


def _repeats(rows: list[dict[str, str]]) -> dict[tuple[str, str], float]:
    """How often the train split repeats each image of a (source, label), from manifest rows."""
    train = [(_kind(r), r["file"]) for r in rows if r["split"] == "train"]
    times, distinct = Counter(k for k, _ in train), Counter(k for k, _ in set(train))
    return {k: times[k] / distinct[k] for k in distinct}


def train_repeats(data_dir: str | Path, split: str = "val") -> np.ndarray | None:
    """For each image of ``split`` (array order), how often the train split repeats images of its source
    and class; None when it repeats none (or there is no manifest).

    Validation weighs its images by this, so that val_loss, by which early stopping picks the epoch,
    scores the class mix that training fits: with ``preprocess.extra_balance`` the own tiles' cracks
    repeated 4 times, an unweighted val split (own tiles mostly plain) stopped one run at epoch 7 of 20
    while its val AUC still rose (README, Many own tiles).
    """
    if not (Path(data_dir) / "manifest.csv").exists():
        return None
    rows = read_manifest(data_dir)
    repeats = _repeats(rows)
    weights = np.array([repeats.get(_kind(r), 1.0) for r in rows if r["split"] == split], np.float32)
    return weights if (weights != 1).any() else None


def rebalanced(data_dir: str | Path) -> bool:
    """Whether training repeated one class of a source more often than the other
    (``preprocess.extra_balance``): then the model's 0.5 answers for a mix that photos do not hold."""
    if not (Path(data_dir) / "manifest.csv").exists():
        return False
    repeats = _repeats(read_manifest(data_dir))
    return any(repeats[source, "0"] != repeats[source, "1"]
               for source, label in repeats if label == "1" and (source, "0") in repeats)
