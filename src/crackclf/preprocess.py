"""Preprocess stage: the downloaded archive -> de-duplicated, split uint8 arrays.

Every image under ``Positive/`` and ``Negative/`` is read once from the archive
(``archive.iter_images``, in this process), hashed, and, if its bytes are new,
sent in chunks to worker processes that decode it with ``imaging.load_patch``
(the decode path predict uses too, so training and serving see the same pixels).

Byte-identical files are collapsed before the split (the real dataset has about
3,100 of them), so no image sits in both train and test: the lowest name of each
group is kept. A group whose copies sit under both classes cannot be labelled,
so all its copies are dropped and listed as conflicting. Corrupt, truncated and
non-image files are listed in ``skipped.csv`` with the reason, never a crash.

The split is stratified by class, seeded by ``seed``, and comes in two kinds
(``preprocess.split_by``):

- ``block`` (default): runs of ``block_size`` file numbers (the leading integer
  of the base name: ``00123.jpg`` and ``00123_1.jpg`` are both 123) go to one
  split together, per class. Neighbouring numbers are patches cut from one photo,
  so this keeps near-duplicates out of test: its scores are the honest estimate
  for new photos. Fractions are met as closely as whole blocks allow.
- ``file``: each image goes its own way. Patches of one photo then land in train
  and test alike, so test scores are optimistic (partly a memory test of photos
  seen in training); useful to compare with published figures that split this way.

Every split whose fraction is above 0 gets at least one image of each class, or
the stage stops with a one-line error; a fraction of 0 gives an empty split.

Output (see ``dataset``): ``{split}_images.npy`` / ``{split}_labels.npy``,
``manifest.csv`` with rows in array order (sorted by label, then file name,
within each split), ``skipped.csv``, ``duplicates.csv`` (each dropped copy and
the file kept for it) and the metrics JSON. Same inputs and params give
byte-identical files; the output folder is swapped in whole, never half-written.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import multiprocessing
import os
import re
import signal
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, archive, dataset, imaging, progress, say, usable_cpus
from crackclf.files import atomic_dir, walk_files, write_csv, write_json
from crackclf.process import StopRequest

CHUNK_SIZE = 64  # images per worker task: amortises the IPC, still balances the workers
CHUNK_BYTES = 4 << 20  # and at most this much decoded pixels per task (large image_size)
CONFLICT_REASON = "identical bytes under both classes: label unknown, all copies dropped"
_WRITE_BATCH = 256  # images per pwrite when saving the arrays
_WORKER_DIED = "a decoding worker process died (killed for lack of memory?)"
_LEADING_NUMBER = re.compile(r"\d+")
DATASET_SOURCE = "dataset"  # the manifest's ``source`` of the downloaded dataset's images
EXTRA_ROOT = "data/extra"  # a dependency of the preprocess stage in dvc.yaml
PHOTO_SEPARATOR = "__"  # ``<photo>__<where>.png``: what ``crackclf tiles`` names a photo's tiles


def run(params, raw_dir: str | Path, out_dir: str | Path, metrics_path: str | Path) -> dict:
    """Preprocess the dataset in ``raw_dir`` (and ``preprocess.extra``) into ``out_dir``; write and return
    the data metrics."""
    pp = params.preprocess
    source = find_source(raw_dir)
    sources = [(DATASET_SOURCE, source), *extra_sources(pp.extra)]
    workers = pp.workers or usable_cpus()
    read = read_and_decode(sources, params.download.max_unpacked_bytes, pp.image_size, workers)
    files = collapse(read)
    main = [im for im in files.kept if im.source == DATASET_SOURCE]
    if not main:
        raise CrackclfError(f"{source}: no readable images under Positive/ or Negative/")
    splits = split(main, pp.val_fraction, pp.test_fraction, pp.split_by, pp.block_size, params.seed)
    extra = split_by_photo([im for im in files.kept if im.source != DATASET_SOURCE],
                           pp.val_fraction, pp.test_fraction, params.seed)
    splits = {s: sorted(splits[s] + extra[s], key=_array_order) for s in dataset.SPLITS}
    train, dataset_times = oversampled(splits["train"], pp.extra_oversample, pp.extra_balance,
                                       pp.dataset_oversample, pp.extra_balance_ratio)
    metrics = _metrics(files, splits, pp, dataset_times)
    splits["train"] = train
    with atomic_dir(out_dir) as tmp:
        _write_outputs(tmp, read, files, splits, pp.image_size, workers)
    write_json(metrics_path, metrics)
    return metrics


def main(args, params, stop: StopRequest | None = None) -> int:
    m = run(params, args.raw_dir, args.out_dir, args.metrics)
    counts = " / ".join(f"{s} {m['splits'][s]['total']:,}" for s in dataset.SPLITS)
    print(
        f"{args.out_dir}: {m['images']:,} images ({counts}) from {m['files']:,} files; "
        f"{m['duplicates']:,} duplicates collapsed, {m['skipped']:,} skipped (see skipped.csv)"
    )
    return 0


# --- reading and decoding --------------------------------------------------------------------------


def extra_sources(dirs: list[str]) -> list[tuple[str, Path]]:
    """``preprocess.extra``: (source name, folder) pairs; the name is the folder's, made unique."""
    out: list[tuple[str, Path]] = []
    for d in dirs:
        path = Path(d)
        if not path.is_dir():
            raise CrackclfError(f"preprocess.extra: {d}: no such folder (make one with `crackclf tiles`)")
        if not path.resolve().is_relative_to(Path(EXTRA_ROOT).resolve()):
            say(f"preprocess.extra: {d} is outside {EXTRA_ROOT}/, so DVC will not rerun preprocess when it changes")
        name, n = path.name or "extra", 1
        while name in {DATASET_SOURCE, *(s for s, _ in out)}:
            n += 1
            name = f"{path.name}-{n}"
        out.append((name, path))
    return out


def find_source(raw_dir: str | Path) -> Path:
    """What to read: ``raw_dir`` itself if it holds class folders (or is a file), else its one archive.

    Class folders may sit at any depth (``raw/concrete/Positive/``), as ``archive.iter_images`` finds them.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.is_file():
        return raw_dir
    if not raw_dir.is_dir():
        raise CrackclfError(f"{raw_dir}: not found (run `crackclf download` or `dvc repro download` first)")
    if any(dataset.class_of(p.relative_to(raw_dir).as_posix()) is not None for p in walk_files(raw_dir)):
        return raw_dir  # walked as iter_images walks it: linked folders too
    entries = [p for p in sorted(raw_dir.iterdir()) if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file()]
    if len(files) != 1:
        names = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
        raise CrackclfError(
            f"{raw_dir}: expected one archive file or Positive/ and Negative/ folders, "
            f"found {len(files)} files" + (f" ({names})" if files else "")
        )
    return files[0]


@dataclass
class Read:
    """Every file read (archive order) and the decoded pixels of each distinct content."""

    chunk_size: int
    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    contents: list[int] = field(default_factory=list)  # per file: the number of its distinct content
    chunks: list[np.ndarray] = field(default_factory=list)  # content c: chunks[c // CHUNK][c % CHUNK]
    errors: dict[int, str] = field(default_factory=dict)  # content number -> why it is unreadable

    def save_images(self, arrays: dict[Path, list[int]], size: int, threads: int) -> None:
        """Write one .npy per path, holding these contents in this order, in parallel slices.

        No split is ever assembled in memory (that would be one more copy of every
        image, and first writes to fresh memory are slow on virtual machines); slices
        of 256 images are gathered into per-thread buffers and written with pwrite,
        which releases the GIL, so the kernel's copies run on every core.
        """
        per_image = size * size
        positional = hasattr(os, "pwrite")
        local = threading.local()
        tasks = []

        def write(task: tuple[int, int, list[int]]) -> None:
            fd, offset, contents = task
            if not hasattr(local, "buf"):
                local.buf = np.empty((_WRITE_BATCH, size, size, 1), np.uint8)
            buf = local.buf[: len(contents)]
            for i, c in enumerate(contents):
                buf[i] = self.chunks[c // self.chunk_size][c % self.chunk_size]
            view = memoryview(buf).cast("B")
            while view:
                if positional:
                    written = os.pwrite(fd, view, offset)
                else:  # no pwrite (Windows): one thread, seek and write
                    os.lseek(fd, offset, os.SEEK_SET)
                    written = os.write(fd, view)
                view, offset = view[written:], offset + written

        fds = []
        try:
            for path, contents in arrays.items():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
                fds.append(fd)
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {
                    "descr": "|u1", "fortran_order": False, "shape": (len(contents), size, size, 1)})
                os.write(fd, header.getvalue())
                tasks += [(fd, len(header.getvalue()) + start * per_image, contents[start:start + _WRITE_BATCH])
                          for start in range(0, len(contents), _WRITE_BATCH)]
            with ThreadPoolExecutor(max(1, threads) if positional else 1) as pool:
                list(pool.map(write, tasks))
        finally:
            for fd in fds:
                os.close(fd)


def read_and_decode(sources: list[tuple[str, Path]], max_unpacked_bytes: int, size: int, workers: int) -> Read:
    """Read each (name, archive or folder) in this process; decode each distinct content once, over
    ``workers`` processes. Files of an extra source are named ``<source>/<member>``.

    Byte-identical files are found by hash here, so a copy costs a hash, not a decode.
    """
    read = Read(chunk_size=max(1, min(CHUNK_SIZE, CHUNK_BYTES // (size * size))))
    seen: dict[bytes, int] = {}

    def members() -> Iterator[tuple[str, str, int, bytes]]:
        for source_name, source in sources:
            prefix = "" if source_name == DATASET_SOURCE else f"{source_name}/"
            for name, label, data in archive.iter_images(source, max_unpacked_bytes):
                yield source_name, prefix + name, label, data

    def new_contents(bar) -> Iterator[bytes]:
        for source_name, name, label, data in members():
            bar.update()
            read.names.append(name)
            read.sources.append(source_name)
            read.labels.append(label)
            digest = hashlib.sha256(data).digest()
            content = seen.get(digest)
            if content is None:
                content = seen[digest] = len(seen)
                yield data
            read.contents.append(content)

    counts = [_expected_files(source) for _, source in sources]
    total = None if None in counts else sum(counts)
    # Workers fork before a terminal bar starts its monitor thread: forking a process with threads is fragile.
    with _Decoder(size, workers, read.chunk_size) as decoder, \
            progress.Progress(total, "preprocess", "files") as bar:
        for pixels, errors in decoder.map(_chunks(new_contents(bar), read.chunk_size)):
            base = len(read.chunks) * read.chunk_size
            read.errors.update((base + row, reason) for row, reason in errors)
            read.chunks.append(pixels)
    return read


def _expected_files(source: Path) -> int | None:
    """About how many files ``iter_images`` will yield, from a zip's or RAR's index (cheap: nothing is
    decompressed); None for other sources. Only the progress ETA uses it: archives nested inside
    are not counted, and a count that runs past it just shows no total."""
    try:
        fmt = archive.sniff(source) if source.is_file() else None
        if fmt == "zip":
            import zipfile

            with zipfile.ZipFile(source) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
        elif fmt == "rar":
            names = [h.name for h in archive._rar_headers(source, str(source)) if not h.is_dir and h.link is None]
        else:
            return None
    except Exception:  # noqa: BLE001 - a hint: the real read reports what is wrong with the archive
        return None
    names = [n.replace("\\", "/") for n in names]
    return sum(dataset.class_of(n) is not None and not archive._skipped(n) for n in names) or None


def _chunks(items: Iterable[bytes], n: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode_into(out: np.ndarray, datas: list[bytes], size: int) -> list[tuple[int, str]]:
    """Decode image files into ``out[i]``; returns ``(i, reason)`` for the unreadable ones (left black)."""
    errors = []
    for row, data in enumerate(datas):
        try:
            out[row] = imaging.load_patch(data, size)
        except imaging.ImageError as err:
            out[row] = 0
            errors.append((row, err.detail))
    return errors


class _Decoder:
    """``map(chunks)`` yields ``(pixels, errors)`` per chunk, in order, decoded here or in forked workers.

    A worker gets a chunk's file bytes over its pipe and writes the pixels into a slot
    of a ring in shared memory, so only compressed bytes and error lists cross pipes:
    pickling 16 KiB of pixels back per image (multiprocessing.Pool) cost the main
    process several times more than reading the archive. Up to ``2 * workers + 1``
    chunks are in flight, so the archive is read while the workers decode and memory
    stays bounded. Without ``fork`` (Windows) everything runs in this process.
    """

    def __init__(self, size: int, workers: int, chunk_size: int):
        forkable = "fork" in multiprocessing.get_all_start_methods()
        self.size, self.chunk_size = size, chunk_size
        self.workers = workers if forkable else 1
        self.slots = 2 * self.workers + 1
        self.ring: np.ndarray | None = None
        self.procs: list = []
        self.conns: list = []

    def __enter__(self) -> _Decoder:
        if self.workers > 1:
            from PIL import Image

            Image.preinit()  # Pillow's format plugins: imported once here, not again in every worker
            shape = (self.slots, self.chunk_size, self.size, self.size, 1)
            self.ring = np.ndarray(shape, np.uint8, buffer=mmap.mmap(-1, int(np.prod(shape))))
            ctx = multiprocessing.get_context("fork")
            for _ in range(self.workers):
                conn, child_conn = ctx.Pipe()
                # The child also inherits the main ends of earlier workers' pipes: it closes them, so
                # that each worker sees the end of its pipe when the main process goes away.
                args = (child_conn, list(self.conns), self.ring, self.size)
                proc = ctx.Process(target=_worker, args=args, daemon=True)
                proc.start()
                child_conn.close()  # so a dead worker shows as EOF here instead of a hang
                self.procs.append(proc)
                self.conns.append(conn)
        return self

    def __exit__(self, exc_type, *_) -> None:
        for conn, proc in zip(self.conns, self.procs):
            if exc_type is None:
                conn.send(None)
            else:
                proc.terminate()
            conn.close()
        for proc in self.procs:
            proc.join()
        self.ring = None

    def map(self, chunks: Iterable[list[bytes]]) -> Iterator[tuple[np.ndarray, list[tuple[int, str]]]]:
        if self.ring is None:
            for chunk in chunks:
                pixels = np.empty((len(chunk), self.size, self.size, 1), np.uint8)
                yield pixels, decode_into(pixels, chunk, self.size)
            return
        pending: deque = deque()
        for k, chunk in enumerate(chunks):
            if len(pending) == self.slots:
                yield self._collect(pending.popleft())
            slot, conn = k % self.slots, self.conns[k % self.workers]
            try:
                conn.send((slot, chunk))
            except OSError:  # broken pipe
                raise CrackclfError(_WORKER_DIED) from None
            pending.append((slot, len(chunk), conn))
        while pending:
            yield self._collect(pending.popleft())

    def _collect(self, task) -> tuple[np.ndarray, list[tuple[int, str]]]:
        slot, n, conn = task
        try:
            errors = conn.recv()
        except EOFError:
            raise CrackclfError(_WORKER_DIED) from None
        if isinstance(errors, BaseException):
            raise errors
        return self.ring[slot, :n].copy(), errors


def _worker(conn, inherited: list, ring: np.ndarray, size: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    for other in inherited:
        other.close()
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the main process is gone
            return
        if task is None:
            return
        slot, chunk = task
        try:
            conn.send(decode_into(ring[slot, : len(chunk)], chunk, size))
        except Exception as err:  # a bug, not a bad image: let the main process raise it
            conn.send(err)


# --- de-duplication --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    label: int
    content: int
    source: str = DATASET_SOURCE


@dataclass
class Files:
    """The fate of every file read: kept, dropped as a duplicate, or skipped."""

    kept: list[Entry]
    duplicates: list[tuple[str, str]]  # (dropped copy, the file kept for it), by name
    skipped: list[tuple[str, str]]  # (file, reason), by name
    duplicate_groups: int
    conflicting: int
    files: int


def collapse(read: Read) -> Files:
    """Keep the lowest name of each group of byte-identical files; list the rest and the unreadable."""
    groups: dict[int, list[int]] = {}
    for i, content in enumerate(read.contents):
        groups.setdefault(content, []).append(i)
    kept, duplicates, skipped, duplicate_groups, conflicting = [], [], [], 0, 0
    for content, members in groups.items():
        members.sort(key=lambda i: read.names[i])
        if content in read.errors:
            skipped += [(read.names[i], read.errors[content]) for i in members]
        elif len({read.labels[i] for i in members}) > 1:
            skipped += [(read.names[i], CONFLICT_REASON) for i in members]
            conflicting += len(members)
        else:
            first = members[0]
            kept.append(Entry(read.names[first], read.labels[first], content, read.sources[first]))
            duplicates += [(read.names[i], read.names[first]) for i in members[1:]]
            duplicate_groups += len(members) > 1
    return Files(
        kept=sorted(kept, key=lambda im: (im.label, im.name)),
        duplicates=sorted(duplicates),
        skipped=sorted(skipped),
        duplicate_groups=duplicate_groups,
        conflicting=conflicting,
        files=len(read.names),
    )


# --- the split -------------------------------------------------------------------------------------


def block_key(name: str, block_size: int) -> tuple:
    """Neighbouring file numbers share a block: ``00123_1.jpg`` -> 123 // block_size; no number: its own."""
    m = _LEADING_NUMBER.match(name.rpartition("/")[2])
    return (0, int(m.group()) // block_size, "") if m else (1, 0, name)


def split(images: list[Entry], val_fraction: float, test_fraction: float, split_by: str,
          block_size: int, seed: int) -> dict[str, list[Entry]]:
    """Stratified split into ``dataset.SPLITS``, whole units (files or blocks) at a time.

    Each split's images come sorted by (label, name): the array order.
    """
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    rng = np.random.default_rng(seed)
    out: dict[str, list[Entry]] = {s: [] for s in dataset.SPLITS}
    for label in range(len(dataset.LABEL_NAMES)):  # a class with no images stops here, too
        units: dict[tuple, list[Entry]] = {}
        for im in images:
            if im.label == label:
                key = block_key(im.name, block_size) if split_by == "block" else (im.name,)
                units.setdefault(key, []).append(im)
        keys = sorted(units)
        shuffled = [units[keys[i]] for i in rng.permutation(len(keys))]
        by_block = split_by == "block"
        for s, members in _assign(shuffled, fractions, by_block, dataset.LABEL_NAMES[label]).items():
            out[s] += [im for unit in members for im in unit]
    return {s: sorted(ims, key=_array_order) for s, ims in out.items()}


def _array_order(im: Entry) -> tuple:
    return im.label, im.name


def photo_of(name: str) -> str:
    """The photo a tile was cut from: ``<photo>__x0227_y0454.png`` -> ``<photo>``; else the file's stem."""
    stem = name.rpartition("/")[2].rpartition(".")[0] or name
    return stem.split(PHOTO_SEPARATOR, 1)[0]


def split_by_photo(images: list[Entry], val_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, list[Entry]]:
    """Extra sources' tiles into splits, one photo's tiles (of both classes) always in one split.

    Photos are dealt in a seeded order to the split furthest below its share of tiles;
    a split may stay empty when there are few photos.
    """
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    photos: dict[tuple[str, str], list[Entry]] = {}
    for im in images:
        photos.setdefault((im.source, photo_of(im.name)), []).append(im)
    keys = sorted(photos)
    order = np.random.default_rng([seed, 1]).permutation(len(keys))
    n = len(images)
    got = {s: 0 for s in dataset.SPLITS}
    out: dict[str, list[Entry]] = {s: [] for s in dataset.SPLITS}
    for i in order:
        tiles = photos[keys[i]]
        s = max((s for s in dataset.SPLITS if fractions[s] > 0), key=lambda s: n * fractions[s] - got[s])
        out[s] += tiles
        got[s] += len(tiles)
    return out


def _assign(units: list[list[Entry]], fractions: dict[str, float], by_block: bool,
            label_name: str) -> dict[str, list[list[Entry]]]:
    """Deal units (in the given order) to the split furthest below its target, then fill any empty split."""
    wanted = [s for s in dataset.SPLITS if fractions[s] > 0]  # a fraction of 0 asks for an empty split
    n = sum(len(u) for u in units)
    target = {s: round(n * fractions[s]) for s in ("val", "test")}
    target["train"] = n - target["val"] - target["test"]
    got = {s: 0 for s in dataset.SPLITS}
    dealt: dict[str, list[list[Entry]]] = {s: [] for s in dataset.SPLITS}
    for unit in units:
        s = max(wanted, key=lambda s: target[s] - got[s])  # ties: the first in SPLITS
        dealt[s].append(unit)
        got[s] += len(unit)
    for s in wanted:
        if dealt[s]:
            continue
        if len(units) < len(wanted):
            unit = "block" if by_block else "image"
            advice = "more images, a smaller preprocess.block_size, or preprocess.split_by: file" if by_block \
                else "more images"
            raise CrackclfError(
                f"{len(units)} {label_name} {unit}{'s' if len(units) != 1 else ''} cannot fill "
                f"{len(wanted)} splits: the {s} split would get none of them (use {advice})"
            )
        donor = max(wanted, key=lambda d: len(dealt[d]))
        smallest = min(range(len(dealt[donor])), key=lambda i: len(dealt[donor][i]))
        dealt[s].append(dealt[donor].pop(smallest))
    return dealt


# --- output ----------------------------------------------------------------------------------------


def oversampled(train: list[Entry], oversample: int, balance: bool | str,
                dataset_oversample: int | str = 1, ratio: float = 1.0) -> tuple[list[Entry], int]:
    """The train split with extra sources' tiles repeated ``oversample`` times, so a few thousand photo
    tiles still count beside the dataset's patches; with ``balance``, each extra source's rarer class
    ``oversample`` x (commoner / rarer) times, rounded, so its tiles do not tilt the model to one class;
    ``auto``: only where crack is the rarer class, as in whole photos' tiles (mostly plain concrete),
    which tilted the model to miss most cracks, while balancing crack-rich tiles cost F1 (README, Many
    own tiles). ``ratio`` below 1 balances part way: the rarer class up to that share of the commoner.
    The dataset's patches appear ``dataset_oversample`` times; ``auto``: as many times as the repeated
    extra tiles outnumber them (rounded, at least once), since thousands of own tiles beside a 2,000-patch
    sample taught the model to call the dataset's plain concrete crack (README, Many own tiles). Also
    returns that number."""
    counts = Counter((im.source, im.label) for im in train if im.source != DATASET_SOURCE)

    def times(im: Entry) -> int:
        if not balance or (balance == "auto" and counts[im.source, 1] >= counts[im.source, 0]):
            return oversample
        commoner = max(counts[im.source, label] for label in (0, 1))
        own = counts[im.source, im.label]
        return max(1, round(oversample * (ratio if own < commoner else 1.0) * commoner / own))

    repeats = [None if im.source == DATASET_SOURCE else times(im) for im in train]
    if dataset_oversample == "auto":
        patches = repeats.count(None)
        dataset_oversample = max(1, round(sum(filter(None, repeats)) / patches)) if patches else 1
    return [im for im, n in zip(train, repeats) for _ in range(n or dataset_oversample)], dataset_oversample


def _metrics(files: Files, splits: dict[str, list[Entry]], pp, dataset_times: int) -> dict:
    def per_class(images: list[Entry]) -> dict[str, int]:
        counts = {name: sum(im.label == label for im in images) for label, name in enumerate(dataset.LABEL_NAMES)}
        return {**counts, "total": len(images)}

    return {
        "files": files.files,  # read under the class folders
        "images": len(files.kept),  # distinct readable images, all in the arrays
        "duplicates": len(files.duplicates),  # byte-identical copies collapsed into a kept file
        "duplicate_groups": files.duplicate_groups,
        "skipped": len(files.skipped),  # rows of skipped.csv: unreadable and conflicting files
        "conflicting": files.conflicting,  # identical bytes under both classes
        "classes": per_class(files.kept),
        "splits": {s: per_class(ims) for s, ims in splits.items()},
        "sources": {src: {s: per_class([im for im in ims if im.source == src]) for s, ims in splits.items()}
                    for src in sorted({im.source for im in files.kept})},
        "extra_oversample": pp.extra_oversample,  # extra sources' train tiles appear this many times in train
        "extra_balance": pp.extra_balance,  # ... and their rarer class more, as often as the commoner one
        "extra_balance_ratio": pp.extra_balance_ratio,  # ... or up to this share of it
        "dataset_oversample": dataset_times,  # the dataset's train patches appear this many times
    }


def _write_outputs(out: Path, read: Read, files: Files, splits: dict[str, list[Entry]], size: int,
                   threads: int) -> None:
    """The arrays and their manifest, in the same order."""
    arrays = {dataset.images_path(out, s): [im.content for im in images] for s, images in splits.items()}
    read.save_images(arrays, size, threads)
    for s, images in splits.items():
        np.save(dataset.labels_path(out, s), np.array([im.label for im in images], np.uint8))
    write_csv(out / "manifest.csv", ["file", "label", "split", "source"],
              ({"file": im.name, "label": im.label, "split": s, "source": im.source}
               for s, images in splits.items() for im in images))
    write_csv(out / "skipped.csv", ["file", "reason"], ({"file": f, "reason": r} for f, r in files.skipped))
    write_csv(out / "duplicates.csv", ["file", "kept"], ({"file": f, "kept": k} for f, k in files.duplicates))
