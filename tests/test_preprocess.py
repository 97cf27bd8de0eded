"""The preprocess stage on small synthetic archives: format, de-duplication, skips, splits, reproducibility."""

from __future__ import annotations

import csv
import hashlib
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import archives
import synth
from crackclf import CrackclfError, cli, config, dataset, imaging, preprocess


def make_zip(folder: Path, zip_path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """Zip a dataset folder (plus extra members) into a folder of its own, like the download stage's output."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    archives.write_zip(zip_path, {**archives.members(folder), **(extra or {})})
    return zip_path.parent


def make_params(**preprocess_params):
    pp = {"image_size": 32, "workers": 1, "split_by": "file", **preprocess_params}
    return config.parse({"seed": 0, "preprocess": pp})


def run(raw: Path, out: Path, **preprocess_params) -> dict:
    return preprocess.run(make_params(**preprocess_params), raw, out / "prepared", out / "data.json")


def member_bytes(raw: Path) -> dict[str, bytes]:
    (zip_path,) = raw.iterdir()
    with zipfile.ZipFile(zip_path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def synth_jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    synth.patch(np.random.default_rng(seed + 1000), bool(seed % 2), 32).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """20 + 20 synthetic 64 px JPEGs, numbered 00001.jpg to 00020.jpg per class."""
    return synth.write_dataset(tmp_path_factory.mktemp("small") / "dataset", 20, size=64)


@pytest.fixture(scope="module")
def small_raw(small, tmp_path_factory) -> Path:
    return make_zip(small, tmp_path_factory.mktemp("raw") / "raw" / "data.zip")


def test_arrays_match_manifest_labels_and_decode_path(small_raw, tmp_path):
    metrics = run(small_raw, tmp_path)
    out = tmp_path / "prepared"
    assert dataset.train_repeats(out, "val") is None  # nothing repeated: validation unweighted
    members = member_bytes(small_raw)
    seen = []
    for split in dataset.SPLITS:
        x, y = dataset.load_split(out, split)
        rows = dataset.read_manifest(out, split)
        assert x.dtype == np.uint8 and y.dtype == np.uint8
        assert x.shape == (len(rows), 32, 32, 1) and y.shape == (len(rows),)
        assert [r["file"] for r in rows] == sorted((r["file"] for r in rows), key=lambda f: ("Positive" in f, f))
        for i, row in enumerate(rows):
            assert int(row["label"]) == y[i] == (1 if row["file"].startswith("Positive/") else 0)
            np.testing.assert_array_equal(x[i], imaging.load_patch(members[row["file"]], 32))
        seen += [r["file"] for r in rows]
    assert sorted(seen) == sorted(members)
    assert metrics["files"] == metrics["images"] == 40
    assert metrics["classes"] == {"no_crack": 20, "crack": 20, "total": 40}
    assert metrics["skipped"] == metrics["duplicates"] == 0


def test_split_is_stratified(tmp_path):
    folder = synth.write_dataset(tmp_path / "dataset", 30, size=48)
    raw = make_zip(folder, tmp_path / "raw" / "data.zip")
    metrics = run(raw, tmp_path, val_fraction=0.2, test_fraction=0.1)
    expected = {"train": 21, "val": 6, "test": 3}
    for split, n in expected.items():
        assert metrics["splits"][split] == {"no_crack": n, "crack": n, "total": 2 * n}
        _, y = dataset.load_split(tmp_path / "prepared", split)
        assert Counter(y.tolist()) == {0: n, 1: n}


def test_duplicates_collapsed_before_the_split(small, tmp_path):
    p3 = (small / "Positive" / "00003.jpg").read_bytes()
    n5 = (small / "Negative" / "00005.jpg").read_bytes()
    p7 = (small / "Positive" / "00007.jpg").read_bytes()
    extra = {
        "Positive/00000_copy.jpg": p3,  # sorts before 00003.jpg: this name is the one kept
        "Positive/99999.jpg": p3,
        "Negative/00090.jpg": n5,
        "Negative/00077.jpg": p7,  # the same bytes under both classes: both copies dropped
    }
    raw = make_zip(small, tmp_path / "raw" / "data.zip", extra)
    metrics = run(raw, tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert metrics["files"] == 44
    assert metrics["duplicates"] == 3 and metrics["duplicate_groups"] == 2
    assert metrics["conflicting"] == 2 and metrics["skipped"] == 2
    assert metrics["images"] == 44 - 3 - 2 == metrics["classes"]["total"]

    out = tmp_path / "prepared"
    rows = dataset.read_manifest(out)
    names = [r["file"] for r in rows]
    assert "Positive/00000_copy.jpg" in names and "Positive/00003.jpg" not in names
    assert "Positive/99999.jpg" not in names and "Negative/00090.jpg" not in names
    assert "Positive/00007.jpg" not in names and "Negative/00077.jpg" not in names
    members = member_bytes(raw)
    digests = [hashlib.sha256(members[n]).digest() for n in names]
    assert len(set(digests)) == len(digests)  # no content twice, so none in two splits
    dups = (out / "duplicates.csv").read_text().splitlines()
    assert dups == ["file,kept", "Negative/00090.jpg,Negative/00005.jpg",
                    "Positive/00003.jpg,Positive/00000_copy.jpg", "Positive/99999.jpg,Positive/00000_copy.jpg"]
    skipped = csv_rows(out / "skipped.csv")
    assert {r["file"] for r in skipped} == {"Positive/00007.jpg", "Negative/00077.jpg"}
    assert all("both classes" in r["reason"] for r in skipped)


def test_unreadable_files_are_skipped_and_listed(small, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "CHUNK_SIZE", 4)  # errors come back from several workers' chunks
    good = (small / "Positive" / "00001.jpg").read_bytes()
    dht = good.index(b"\xff\xc4")  # a Huffman table: damage it and the decoder gives up
    extra = {
        "Positive/00101.jpg": good[:dht + 4] + b"\xff" * 40 + good[dht + 44:],  # corrupt
        "Positive/00102.jpg": good[: len(good) // 2],  # truncated
        "Negative/00103.jpg": b"this is a text file, not a JPEG\n",
        "Negative/00104.jpg": b"",
    }
    raw = make_zip(small, tmp_path / "raw" / "data.zip", extra)
    metrics = run(raw, tmp_path, workers=2)
    assert metrics["files"] == 44 and metrics["images"] == 40 and metrics["skipped"] == 4
    skipped = {r["file"]: r["reason"] for r in csv_rows(tmp_path / "prepared" / "skipped.csv")}
    assert set(skipped) == set(extra)
    assert "truncated" in skipped["Positive/00102.jpg"]
    assert "image format" in skipped["Negative/00103.jpg"]
    assert all("0x" not in reason for reason in skipped.values())  # no memory addresses: reproducible
    names = {r["file"] for r in dataset.read_manifest(tmp_path / "prepared")}
    assert not names & set(extra)


@pytest.fixture(scope="module")
def numbered_raw(tmp_path_factory) -> Path:
    """60 images per class numbered 1..60, plus 00012_1.jpg (block of 12) and an unnumbered name."""
    root = tmp_path_factory.mktemp("numbered")
    folder = synth.write_dataset(root / "dataset", 60, size=32, quality=70)
    extra = {
        "Positive/00012_1.jpg": synth_jpeg(1),
        "Negative/scan-a.jpg": synth_jpeg(2),
    }
    return make_zip(folder, root / "raw" / "data.zip", extra)


def split_of_blocks(out: Path, block_size: int) -> dict[tuple, set[str]]:
    blocks: dict[tuple, set[str]] = {}
    for row in dataset.read_manifest(out):
        key = (row["label"], preprocess.block_key(row["file"], block_size))
        blocks.setdefault(key, set()).add(row["split"])
    return blocks


def test_block_split_keeps_each_block_in_one_split(numbered_raw, tmp_path):
    metrics = run(numbered_raw, tmp_path, split_by="block", block_size=10, val_fraction=0.2, test_fraction=0.2)
    blocks = split_of_blocks(tmp_path / "prepared", 10)
    assert len(blocks) == 2 * 7 + 1  # numbers 1-60 make blocks 0..6 per class; scan-a.jpg is its own
    assert all(len(splits) == 1 for splits in blocks.values())
    rows = {r["file"]: r["split"] for r in dataset.read_manifest(tmp_path / "prepared")}
    assert rows["Positive/00012_1.jpg"] == rows["Positive/00012.jpg"]
    for split in dataset.SPLITS:  # every split has both classes
        assert metrics["splits"][split]["crack"] > 0 and metrics["splits"][split]["no_crack"] > 0


def test_file_split_does_not_keep_blocks(numbered_raw, tmp_path):
    run(numbered_raw, tmp_path, split_by="file", val_fraction=0.2, test_fraction=0.2)
    blocks = split_of_blocks(tmp_path / "prepared", 10)
    assert any(len(splits) > 1 for splits in blocks.values())


def test_every_split_gets_both_classes_even_with_few_blocks(numbered_raw, tmp_path):
    # Blocks of 20 numbers: 4 per class (1-19, 20-39, 40-59, 60), too big for 10 % targets.
    metrics = run(numbered_raw, tmp_path, split_by="block", block_size=20, val_fraction=0.1, test_fraction=0.1)
    for split in dataset.SPLITS:
        assert metrics["splits"][split]["crack"] > 0 and metrics["splits"][split]["no_crack"] > 0
    assert all(len(splits) == 1 for splits in split_of_blocks(tmp_path / "prepared", 20).values())


def test_a_zero_fraction_gives_an_empty_split(small_raw, tmp_path):
    metrics = run(small_raw, tmp_path, val_fraction=0.2, test_fraction=0.0)
    x, y = dataset.load_split(tmp_path / "prepared", "test")
    assert x.shape == (0, 32, 32, 1) and y.shape == (0,)
    assert metrics["splits"]["test"]["total"] == 0
    assert metrics["splits"]["val"] == {"no_crack": 4, "crack": 4, "total": 8}


def test_too_few_blocks_is_a_one_line_error(small_raw, tmp_path):
    with pytest.raises(CrackclfError, match="block_size") as err:
        run(small_raw, tmp_path, split_by="block", block_size=100)  # 20 images per class: one block each
    assert "\n" not in str(err.value)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "data.json").exists()


def test_same_bytes_from_one_or_two_workers(numbered_raw, tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "CHUNK_SIZE", 8)  # 16 chunks: many in flight at once over 2 workers
    pools = []
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: pools.append(a) or get_context(*a))
    one = run(numbered_raw, tmp_path / "a", workers=1, split_by="block", block_size=10)
    assert not pools
    two = run(numbered_raw, tmp_path / "b", workers=2, split_by="block", block_size=10)
    again = run(numbered_raw, tmp_path / "c", workers=2, split_by="block", block_size=10)
    assert len(pools) == 2 and one == two == again
    a, b, c = (archives.members(tmp_path / d) for d in "abc")
    assert len(a) == 10 and a == b == c


def test_failure_midway_keeps_the_previous_output(small_raw, tmp_path, monkeypatch):
    run(small_raw, tmp_path)
    before = archives.members(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(preprocess, "write_csv", broken)  # after the arrays are written
    with pytest.raises(OSError, match="disk full"):
        run(small_raw, tmp_path, image_size=16)
    assert archives.members(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "prepared"]  # no temp folder left


def test_reads_class_folders_directly_and_refuses_a_muddled_raw_dir(small, small_raw, tmp_path):
    from_folder = run(small, tmp_path / "folder")
    from_zip = run(small_raw, tmp_path / "zip")
    assert from_folder == from_zip
    assert archives.members(tmp_path / "folder") == archives.members(tmp_path / "zip")

    (tmp_path / "two").mkdir()
    for name in ("a.zip", "b.zip"):
        (tmp_path / "two" / name).write_bytes(b"PK")
    with pytest.raises(CrackclfError, match="expected one archive file"):
        preprocess.find_source(tmp_path / "two")
    with pytest.raises(CrackclfError, match="not found"):
        preprocess.find_source(tmp_path / "missing")


def test_a_missing_class_is_a_one_line_error(small, tmp_path):
    shutil.copytree(small / "Positive", tmp_path / "raw" / "Positive")
    (tmp_path / "raw" / "Negative").mkdir()
    (tmp_path / "raw" / "Negative" / "00001.jpg").write_bytes(b"not a jpeg")  # every no-crack image unreadable
    with pytest.raises(CrackclfError, match="0 no_crack images") as err:
        run(tmp_path / "raw", tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "data.json").exists()


def test_class_folders_may_sit_deeper_in_the_raw_folder(small, tmp_path):
    shutil.copytree(small, tmp_path / "raw" / "concrete")
    assert preprocess.find_source(tmp_path / "raw") == tmp_path / "raw"
    assert run(tmp_path / "raw", tmp_path / "nested") == run(small, tmp_path / "flat")
    assert all(r["file"].startswith("concrete/") for r in dataset.read_manifest(tmp_path / "nested" / "prepared"))
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "data").symlink_to(tmp_path / "raw", target_is_directory=True)
    assert preprocess.find_source(tmp_path / "linked") == tmp_path / "linked"  # read as iter_images reads it


def test_a_killed_runs_temporary_files_are_removed(small_raw, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid now names no process: what it left is stale
    stale = [tmp_path / f".data.tmp-{proc.pid}.json", tmp_path / f".prepared.tmp-{proc.pid}"]
    stale[0].write_text("{")
    stale[1].mkdir()
    live = tmp_path / f".data.tmp-{os.getppid()}.json"  # a running process's: not ours to touch
    live.write_text("{")
    run(small_raw, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "data.json", "prepared"]


def test_same_output_from_any_container(small, small_raw, tmp_path):
    """A tar.gz and Mendeley's layout (a zip holding a solid RAR5) give the zip's bytes."""
    files = archives.members(small)
    (tmp_path / "tar").mkdir()
    archives.write_tar(tmp_path / "tar" / "data.tar.gz", files)
    (tmp_path / "rar").mkdir()
    rar = archives.write_rar(tmp_path / "data.rar", files, version=5, kind="solid").read_bytes()
    archives.write_zip(tmp_path / "rar" / "file_downloaded", {"5y9wdsg2zt-2/Concrete Crack Images.rar": rar})
    expected = run(small_raw, tmp_path / "zip")
    for kind in ("tar", "rar"):
        assert run(tmp_path / kind, tmp_path / f"{kind}-out") == expected
        assert archives.members(tmp_path / f"{kind}-out") == archives.members(tmp_path / "zip")


def test_cli_runs_the_stage_and_rejects_bad_params(small_raw, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\npreprocess:\n  image_size: 24\n  split_by: file\n  workers: 2\n")
    out, metrics = tmp_path / "prepared", tmp_path / "metrics" / "data.json"
    argv = ["preprocess", str(small_raw), str(out), "--metrics", str(metrics), "--params", str(params)]
    assert cli.main(argv) == 0
    assert dataset.load_split(out, "train")[0].shape[1:] == (24, 24, 1)
    assert '"images": 40' in metrics.read_text()

    params.write_text("preprocess:\n  split_by: random\n")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("crackclf preprocess: error:") and "preprocess.split_by" in err[-1]
    with pytest.raises(config.ConfigError):
        config.parse({"preprocess": {"val_fraction": 0.5, "test_fraction": 0.45}})
    assert config.parse({"download": {"max_unpacked_mb": 3}}).download.max_unpacked_bytes == 3 << 20


def test_progress_in_a_log_is_plain_lines_against_the_archives_count(small, small_raw, tmp_path, capsys,
                                                                      monkeypatch):
    from crackclf import progress

    monkeypatch.setattr(progress, "enabled", True)
    monkeypatch.setattr(progress, "MIN_GAP", 0)
    monkeypatch.setenv(progress.INTERVAL_ENV, "1e-9")  # a line on every file
    run(small_raw, tmp_path / "zip")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("preprocess: 20/40 files (50%), ") and ", ETA " in line for line in lines), err
    assert any(line.startswith("preprocess: 40 files in 0:0") for line in lines), err
    rar = archives.write_rar(tmp_path / "d.rar", archives.members(small, "data/"), version=5, kind="solid")
    assert preprocess._expected_files(rar) == 40
    assert preprocess._expected_files(small) is None  # a folder: no index to count cheaply


def write_tiles(root: Path, photos: int, seed: int = 3) -> Path:
    """What `crackclf tiles` writes: Positive/ and Negative/ tiles named ``<photo>__x<X>_y<Y>.png``."""
    rng = np.random.default_rng(seed)
    for p in range(photos):
        for k in range(4):
            crack = k < 2  # each photo has tiles of both classes
            folder = root / ("Positive" if crack else "Negative")
            folder.mkdir(parents=True, exist_ok=True)
            synth.patch(rng, crack, 64).save(folder / f"site{p:02d}__x{k * 64:04d}_y0000.png")
    return root


def test_extra_sources_are_split_by_photo_and_oversampled(small_raw, tmp_path):
    extra = write_tiles(tmp_path / "tiles-a", photos=10)
    m = run(small_raw, tmp_path, extra=[str(extra)], extra_oversample=3, dataset_oversample="auto",
            val_fraction=0.2, test_fraction=0.2)
    rows = csv_rows(tmp_path / "prepared" / "manifest.csv")
    assert {r["source"] for r in rows} == {"dataset", "tiles-a"}
    ours = [r for r in rows if r["source"] == "tiles-a"]
    assert all(r["file"].startswith("tiles-a/") for r in ours)
    # One photo's tiles, of both classes, sit in one split only; photos reach more than one split.
    splits_of = {}
    for r in ours:
        splits_of.setdefault(preprocess.photo_of(r["file"]), set()).add(r["split"])
    assert len(splits_of) == 10 and all(len(s) == 1 for s in splits_of.values())
    assert len({next(iter(s)) for s in splits_of.values()}) > 1
    # Train repeats each extra tile 3 times, in the arrays and their manifest alike; val and test do not.
    per_split = Counter((r["split"], r["file"]) for r in ours)
    assert {n for (s, _), n in per_split.items() if s == "train"} == {3}
    assert {n for (s, _), n in per_split.items() if s != "train"} <= {1}
    # ... and each dataset patch as often as the extra tiles then outnumber them (auto), not in val and test.
    sources = m["sources"]
    times = round(3 * sources["tiles-a"]["train"]["total"] / sources["dataset"]["train"]["total"])
    assert m["dataset_oversample"] == times > 1
    per_split = Counter((r["split"], r["file"]) for r in rows if r["source"] == "dataset")
    assert {n for (s, _), n in per_split.items() if s == "train"} == {times}
    assert {n for (s, _), n in per_split.items() if s != "train"} == {1}
    # Validation weighs each image as often as train repeats its source and class (train's val_loss).
    weights = dataset.train_repeats(tmp_path / "prepared", "val")
    assert weights.tolist() == [3 if r["source"] == "tiles-a" else times for r in rows if r["split"] == "val"]
    for s in dataset.SPLITS:
        x, y = dataset.load_split(tmp_path / "prepared", s)
        split_rows = [r for r in rows if r["split"] == s]
        assert len(x) == len(split_rows) and [int(r["label"]) for r in split_rows] == y.tolist()
    assert m["sources"]["tiles-a"]["train"]["total"] + m["sources"]["tiles-a"]["val"]["total"] \
        + m["sources"]["tiles-a"]["test"]["total"] == 40
    assert m["sources"]["dataset"]["test"]["total"] == m["splits"]["test"]["total"] - \
        m["sources"]["tiles-a"]["test"]["total"]


def test_oversampling_repeats_extra_tiles_their_rarer_class_and_the_dataset():
    from types import SimpleNamespace as Tile

    train = [Tile(source="dataset", label=i % 2) for i in range(10)] + \
        [Tile(source="a", label=1) for _ in range(6)] + [Tile(source="a", label=0) for _ in range(2)] + \
        [Tile(source="b", label=0) for _ in range(3)] + [Tile(source="b", label=1)]

    def counts(out):
        return Counter((t.source, t.label) for t in out)

    def oversampled(*args):
        out, dataset_times = preprocess.oversampled(train, *args)
        return counts(out), dataset_times

    assert oversampled(2, False) == \
        ({("dataset", 0): 5, ("dataset", 1): 5, ("a", 1): 12, ("a", 0): 4, ("b", 0): 6, ("b", 1): 2}, 1)
    assert oversampled(2, True) == \
        ({("dataset", 0): 5, ("dataset", 1): 5, ("a", 1): 12, ("a", 0): 12, ("b", 0): 6, ("b", 1): 6}, 1)
    assert preprocess.oversampled(train, 1, False) == (train, 1)
    # The dataset's patches repeated: a number as given; auto as often as the extra tiles outnumber them.
    assert oversampled(1, False, 3) == \
        ({("dataset", 0): 15, ("dataset", 1): 15, ("a", 1): 6, ("a", 0): 2, ("b", 0): 3, ("b", 1): 1}, 3)
    assert oversampled(1, False, "auto")[1] == 1  # 12 extra tiles beside 10 patches: no repeat
    assert oversampled(3, False, "auto") == \
        ({("dataset", 0): 20, ("dataset", 1): 20, ("a", 1): 18, ("a", 0): 6, ("b", 0): 9, ("b", 1): 3}, 4)
    assert oversampled(2, True, "auto")[1] == 4  # 36 extra tiles after balancing: 3.6, rounded
    # Balance auto: only where crack is the rarer class (b), not where it is the commoner (a).
    assert oversampled(2, "auto") == \
        ({("dataset", 0): 5, ("dataset", 1): 5, ("a", 1): 12, ("a", 0): 4, ("b", 0): 6, ("b", 1): 6}, 1)
    # Part way: each rarer class up to half its commoner one (a: 2 tiles x 1.5, b: 1 tile x 1.5), times 2.
    assert oversampled(2, True, 1, 0.5) == \
        ({("dataset", 0): 5, ("dataset", 1): 5, ("a", 1): 12, ("a", 0): 6, ("b", 0): 6, ("b", 1): 3}, 1)


def test_photo_of_a_tile_name():
    assert preprocess.photo_of("tiles/Positive/DSC00550b__x0227_y0000.png") == "DSC00550b"
    assert preprocess.photo_of("Negative/00123.jpg") == "00123"


def test_a_missing_extra_folder_is_a_one_line_error(small_raw, tmp_path):
    with pytest.raises(CrackclfError, match="preprocess.extra: .*nope: no such folder"):
        run(small_raw, tmp_path, extra=[str(tmp_path / "nope")])


def test_extra_balance_is_true_false_or_auto():
    refused = "preprocess.extra_balance: must be true, false or 'auto', got 'sometimes'"
    with pytest.raises(config.ConfigError, match=refused):
        config.parse({"preprocess": {"extra_balance": "sometimes"}})
    assert config.parse({}).preprocess.extra_balance == "auto"
    assert config.parse({"preprocess": {"extra_balance": False}}).preprocess.extra_balance is False


@pytest.mark.parametrize("bad", ["often", 0, 2.5, 101, True])
def test_dataset_oversample_must_be_a_whole_number_or_auto(bad):
    refused = "preprocess.dataset_oversample: (must be a whole number from 1 to 100 or 'auto'|got true)"
    with pytest.raises(config.ConfigError, match=refused):
        config.parse({"preprocess": {"dataset_oversample": bad}})
    assert config.parse({"preprocess": {"dataset_oversample": "auto"}}).preprocess.dataset_oversample == "auto"
