"""Benchmark: the preprocess stage against the naive way, on the same images, in one run.

    python bench/preprocess.py [FOLDER] [--copies N] [--workers W] [--rounds R] [--deflated]

FOLDER holds Positive/ and Negative/ JPEGs (default: the shared 2,000-image sample).
The stage is timed end to end, the way ``dvc repro`` runs it: ``preprocess.run`` on a
zip of the folder (reading the archive, hashing, decoding over the worker processes,
splitting and writing the arrays), starting with no output folder as under ``dvc repro``.
The baseline is what the original scripts did: one process, and per file
``Image.open``, ``convert("L")``, ``resize``, ``np.asarray``.

``--copies N`` repeats the images up to N files; each copy gets a JPEG comment so its
bytes differ (otherwise the stage would collapse it as a duplicate and skip its decode).
The two methods run in alternating rounds and the best round of each is compared, so
that load from other processes on the machine affects both alike; each round also
reports the share of the CPUs that other processes took meanwhile (Linux), because
a busy neighbour hurts the two-process stage more than the one-process baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the stage's progress bar would only interleave with the table

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from crackclf import config, dataset, preprocess  # noqa: E402

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "crack-sample"  # ../shared beside the repo


def dataset_files(folder: Path) -> list[tuple[str, Path]]:
    """(name inside the folder, path) of every file under a class folder."""
    named = ((p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file())
    return [(name, p) for name, p in named if dataset.class_of(name) is not None]


def copy_name(name: str, copy: int) -> str:
    """A new file name for copy ``copy``: a new file number, so it falls into its own block."""
    parent, _, base = name.rpartition("/")
    new = f"{copy:03d}{base}" if base[:1].isdigit() else f"copy{copy}_{base}"
    return f"{parent}/{new}" if parent else new


def with_comment(data: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment after SOI: other bytes, same pixels, same decode cost."""
    if not data.startswith(b"\xff\xd8"):
        return data
    comment = text.encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


def build_zip(files: list[tuple[str, Path]], total: int, path: Path, compression: int) -> list[Path]:
    """Write ``total`` files (the originals, then distinct copies) to a zip; returns each entry's source."""
    sources = []
    with zipfile.ZipFile(path, "w", compression) as zf:
        for i in range(total):
            name, src = files[i % len(files)]
            copy = i // len(files)
            data = src.read_bytes()
            if copy:
                name, data = copy_name(name, copy), with_comment(data, f"copy {copy}")
            zf.writestr(name, data)
            sources.append(src)
    return sources


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy seconds of all CPUs, of this process and its children) so far, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                          resource.RUSAGE_CHILDREN)))
    return busy, own


def timed(fn, *args) -> tuple[float, float | None]:
    """Wall seconds of ``fn(*args)``, and the share of all CPUs other processes used meanwhile."""
    before, t = _cpu_seconds(), time.perf_counter()
    fn(*args)
    wall, after = time.perf_counter() - t, _cpu_seconds()
    if before is None or after is None:
        return wall, None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return wall, max(0.0, others / (wall * (os.cpu_count() or 1)))


def naive(sources: list[Path], size: int) -> None:
    for src in sources:
        img = Image.open(src)
        np.asarray(img.convert("L").resize((size, size)))


def warm(paths: set[Path]) -> None:
    """Read files once, so both methods measure decoding, not a disk that memory reclaim made cold."""
    for path in paths:
        path.read_bytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER, help="Positive/ and Negative/ images")
    p.add_argument("--copies", type=int, metavar="N", help="repeat the images up to N files (distinct bytes)")
    p.add_argument("--workers", type=int, default=0, help="preprocess.workers (0: one per core)")
    p.add_argument("--size", type=int, default=128, help="preprocess.image_size")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each method")
    p.add_argument("--deflated", action="store_true",
                   help="deflate the zip like `zip -r` (default: stored, as `crackclf download` packs a folder)")
    args = p.parse_args(argv)

    files = dataset_files(args.folder)
    if not files:
        p.error(f"{args.folder}: no files under Positive/ or Negative/")
    total = max(args.copies or len(files), 1)
    params = config.parse({"seed": 42, "preprocess": {"image_size": args.size, "workers": args.workers}})
    workers = params.preprocess.workers or os.cpu_count()

    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        tmp = Path(tmp)
        (tmp / "raw").mkdir()
        zip_path = tmp / "raw" / "data.zip"
        sources = build_zip(files, total, zip_path, zipfile.ZIP_DEFLATED if args.deflated else zipfile.ZIP_STORED)
        print(f"{total:,} images ({len(files):,} distinct in {args.folder}), "
              f"zip {zip_path.stat().st_size / 2**20:.1f} MiB {'deflated' if args.deflated else 'stored'}, "
              f"{args.size} px, {workers} workers, {os.cpu_count()} CPUs", file=sys.stderr)

        def stage() -> None:
            preprocess.run(params, tmp / "raw", tmp / "prepared", tmp / "data.json")

        methods = {"naive baseline (1 process, Pillow)": lambda: naive(sources, args.size),
                   f"preprocess stage (run(), {workers} workers)": stage}
        rates: dict[str, list[float]] = {name: [] for name in methods}
        busy: list[float] = []
        for r in range(args.rounds):
            shutil.rmtree(tmp / "prepared", ignore_errors=True)  # `dvc repro` removes a stage's outs first too
            warm(set(sources) | {zip_path})
            line = []
            for name, method in methods.items():
                seconds, others = timed(method)
                rates[name].append(total / seconds)
                line.append(f"{rates[name][-1]:,.0f}")
                if others is not None:
                    busy.append(others)
                    line[-1] += f" (others took {others:.0%} of the CPUs)"
            print(f"round {r + 1} images/s: " + ", ".join(line), file=sys.stderr)
        metrics = json.loads((tmp / "data.json").read_text())
        if metrics["images"] != total:  # every file is distinct, so each one must have been decoded
            sys.exit(f"error: the stage kept {metrics['images']:,} of {total:,} images: {metrics}")

    print(f"{'images/s':44s} {'best':>8s} {'median':>8s}")
    for name, values in rates.items():
        print(f"{name:44s} {max(values):8,.0f} {statistics.median(values):8,.0f}")
    base, ours = rates.values()
    print(f"{'ratio':44s} {max(ours) / max(base):7.2f}x {statistics.median(ours) / statistics.median(base):7.2f}x")
    if busy and max(busy) > 0.1:
        print(f"warning: other processes took up to {max(busy):.0%} of the CPUs during the rounds; "
              "rerun on a quiet machine", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
