"""Benchmark: `crackclf predict` on ONNX Runtime against Keras, side by side in one run.

Prints, for both runtimes, on the same model and images:
  - one image from a cold start: `crackclf predict FILE` in a new process, imports included
    (median of --cold runs, the two runtimes taking turns), and `crackclf --version` as the floor;
  - a folder of patches through the CLI end to end (new process: import, load, decode, predict, CSV);
  - the same in a warm process (predict.predict_files: decode pool + batches);
  - the model alone on preloaded arrays (batches of predict.batch_size), and one image at a time;
  - whole photos (predict_files: tiles per second);
  - how far apart the two runtimes' probabilities are on all of it.

Images: ../shared/data/crack-sample beside the repo (linked, never copied) if present, else synthetic;
photos: ../shared/data/photos/uav75/images if present, else synthetic 908x681 photos.
Model: --model (default models/model.keras) with its ONNX copy; a model without a valid copy is
copied to a temporary folder and exported there. If the model is missing, a quick one is trained
here (default params, 1 epoch on 400 images) and the output says so.

    python bench/predict.py [--model FILE] [--images DIR] [--photos DIR] [-n 1000] [--cold 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"  # ../shared beside the repo
SAMPLE = SHARED / "crack-sample"
PHOTOS = SHARED / "photos" / "uav75" / "images"
RUNTIMES = ("onnx", "keras")


def image_folder(source: Path | None, n: int, tmp: Path) -> tuple[Path, str]:
    """A folder of n images: symlinks to the sample (half per class), or synthetic JPEGs."""
    source = source or (SAMPLE if SAMPLE.is_dir() else None)
    out = tmp / "images"
    if source is not None:
        for folder in ("Positive", "Negative"):
            (out / folder).mkdir(parents=True)
            for f in sorted((source / folder).glob("*.jpg"))[: n // 2]:
                (out / folder / f.name).symlink_to(f)
        return out, f"{sum(1 for _ in out.rglob('*.jpg'))} JPEGs from {source}"
    sys.path.insert(0, str(REPO / "tests"))
    import synth

    synth.write_dataset(out, n // 2)
    return out, f"{n} synthetic 227x227 JPEGs"


def photo_folder(source: Path | None, tmp: Path) -> tuple[list[Path], str]:
    source = source or (PHOTOS if PHOTOS.is_dir() else None)
    if source is not None:
        photos = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return photos, f"{len(photos)} photos from {source}"
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np
    from PIL import Image

    import synth

    rng = np.random.default_rng(0)
    out = tmp / "photos"
    out.mkdir()
    for i in range(8):
        photo = Image.new("L", (908, 681))
        for r in range(3):
            for c in range(4):
                photo.paste(synth.patch(rng, rng.random() < 0.3).convert("L"), (c * 227, r * 227))
        photo.save(out / f"photo{i}.jpg", quality=90)
    return sorted(out.iterdir()), "8 synthetic 908x681 photos"


def quick_model(images: Path, path: Path) -> None:
    import keras
    import numpy as np

    from crackclf import config, imaging
    from crackclf.model import build_model, compile_model

    params = config.parse({})
    size = params.preprocess.image_size
    files = [(f, 1) for f in sorted((images / "Positive").glob("*.jpg"))[:200]]
    files += [(f, 0) for f in sorted((images / "Negative").glob("*.jpg"))[:200]]
    x = np.stack([imaging.load_patch(f, size) for f, _ in files]).astype("float32")
    y = np.array([label for _, label in files])
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(params.train, size, 0), params.train)
    model.fit(x, y, batch_size=params.train.batch_size, epochs=1, shuffle=True, verbose=0)
    model.save(path)


def model_with_copy(path: Path, folder: Path, tmp: Path) -> tuple[Path, str]:
    """``path`` if its ONNX copy is valid; else a temporary copy of it, exported here."""
    from crackclf import inference
    from crackclf.export import save_onnx_copy

    if not path.is_file():
        model_path = tmp / "quick.keras"
        t = time.perf_counter()
        quick_model(folder, model_path)
        which = (f"quick model trained here ({model_path.name}: default params, 1 epoch on 400 images, "
                 f"{time.perf_counter() - t:.0f} s), since {path} is missing")
    else:
        lines: list[str] = []
        if inference.load_model(path, "auto", lines.append).runtime == "onnx":
            return path, f"{path} with its ONNX copy"
        model_path = tmp / path.name
        shutil.copyfile(path, model_path)
        which = f"{path}, exported to ONNX here ({lines[0] if lines else 'no valid copy'})"
    t = time.perf_counter()
    save_onnx_copy(inference.load_model(model_path, "keras").net, model_path)
    return model_path, f"{which}; export {time.perf_counter() - t:.1f} s"


def cli(args: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of ``crackclf ARGS`` in a new process; its CPU seconds (user + system) go to ``cpu``:
    on a shared machine, CPU time shows the work done while wall time also shows the waiting."""
    # As a user runs it: Python caches bytecode (this machine class sets PYTHONDONTWRITEBYTECODE, which
    # would recompile crackclf's sources, about 0.1 s, in every "cold" start; the first run writes the cache).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crackclf", *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"crackclf {' '.join(args[:1])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def timed(fn, rounds: int) -> tuple[float, object]:
    """Median seconds of ``rounds`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.keras")
    ap.add_argument("--images", type=Path, help="folder with Positive/ and Negative/ (default: the shared sample)")
    ap.add_argument("--photos", type=Path, help="folder of whole photos (default: the shared uav75 images)")
    ap.add_argument("-n", type=int, default=1000, help="images in the folder")
    ap.add_argument("--cold", type=int, default=5, help="cold single-image runs per runtime")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each warm measurement (median)")
    opts = ap.parse_args()

    import numpy as np

    from crackclf import config, imaging, inference, predict, progress, usable_cpus

    progress.disable()  # the table is the output
    params = config.load(REPO / "params.yaml") if (REPO / "params.yaml").exists() else config.parse({})
    cfg = params.predict
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {r: {} for r in RUNTIMES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, described = image_folder(opts.images, opts.n, tmp)
        files = sorted(p for p in folder.rglob("*") if imaging.is_image_path(p))
        photos, photos_described = photo_folder(opts.photos, tmp)
        for f in [*files, *photos]:  # every contender reads the files from the page cache, not the first one only
            f.read_bytes()
        model_path, which = model_with_copy(opts.model, folder, tmp)
        models = {r: inference.load_model(model_path, r) for r in RUNTIMES}
        size = models["onnx"].size
        print(f"images: {described}\nphotos: {photos_described}\nmodel:  {which} ({size} px input)\n"
              f"predict.batch_size {cfg.batch_size}, {usable_cpus()} usable CPUs, "
              f"load average {load_before[0]:.1f} at the start\n")

        # Cold: a new process per run, the runtimes taking turns so that both see the same machine.
        single = files[0]
        cold = {r: [] for r in ("floor", *RUNTIMES)}
        cold_cpu = {r: [] for r in cold}
        for r in RUNTIMES:  # untimed: writes the bytecode cache and warms the page cache, as any earlier use has
            cli(["predict", str(single), "--model", str(model_path), "--runtime", r])
        for _ in range(opts.cold):
            cold["floor"].append(cli(["--version"], cold_cpu["floor"]))
            for r in RUNTIMES:
                cold[r].append(cli(["predict", str(single), "--model", str(model_path), "--runtime", r], cold_cpu[r]))
        for r in RUNTIMES:
            results[r]["cold"] = statistics.median(cold[r])
            results[r]["cold_cpu"] = statistics.median(cold_cpu[r])
            out = tmp / f"out-{r}.csv"
            results[r]["cli_folder"] = cli(["predict", str(folder), "--model", str(model_path), "--runtime", r,
                                            "--output", str(out)])
            assert sum(1 for _ in open(out)) - 1 == len(files)

        x = np.stack([imaging.load_patch(f, size) for f in files])
        probs, tile_probs = {}, {}
        for r, model in models.items():
            results[r]["files"], _ = timed(lambda: list(predict.predict_files(
                model, files, 0.5, cfg.tile_size, cfg.stride, cfg.batch_size, on_error=print)), opts.rounds)
            results[r]["arrays"], probs[r] = timed(lambda: model.predict(x, cfg.batch_size), opts.rounds)
            one = x[:200]
            results[r]["one"], _ = timed(lambda: [model.predict(one[i:i + 1], 1) for i in range(len(one))], 1)
            results[r]["one"] /= len(one)
            results[r]["photos"], preds = timed(lambda: list(predict.predict_files(
                model, photos, 0.5, cfg.tile_size, cfg.stride, cfg.batch_size, on_error=print)), opts.rounds)
            tile_probs[r] = np.concatenate([_tiles(p) for p in preds])
        n_tiles = len(tile_probs["onnx"])
    load_after = os.getloadavg()

    n = len(files)
    o, k = results["onnx"], results["keras"]
    rows = [
        (f"cold `crackclf predict FILE`, one patch (median of {opts.cold})", f"{o['cold']:.2f} s",
         f"{k['cold']:.2f} s", k["cold"] / o["cold"]),
        (f"  the same, CPU time (user + system; median of {opts.cold})", f"{o['cold_cpu']:.2f} s",
         f"{k['cold_cpu']:.2f} s", k["cold_cpu"] / o["cold_cpu"]),
        (f"cold `crackclf --version` (the CLI's own imports; median of {opts.cold})",
         f"{statistics.median(cold['floor']):.2f} s", "", None),
        (f"cold `crackclf predict FOLDER`, {n} patches, CLI end to end", _rate(n, o["cli_folder"]),
         _rate(n, k["cli_folder"]), k["cli_folder"] / o["cli_folder"]),
        (f"warm predict_files, {n} patches (decode pool + batches)", _rate(n, o["files"]), _rate(n, k["files"]),
         k["files"] / o["files"]),
        (f"warm model only, {n} preloaded patches, batches of {cfg.batch_size}", _rate(n, o["arrays"]),
         _rate(n, k["arrays"]), k["arrays"] / o["arrays"]),
        ("warm model only, one image at a time (200 images)", f"{o['one'] * 1e3:.2f} ms", f"{k['one'] * 1e3:.2f} ms",
         k["one"] / o["one"]),
        (f"warm whole photos: {len(photos)} photos, {n_tiles:,} tiles (predict_files)",
         _rate(n_tiles, o["photos"], "tiles"), _rate(n_tiles, k["photos"], "tiles"), k["photos"] / o["photos"]),
    ]
    print(f"{'what':74s} {'ONNX Runtime':>20s} {'Keras':>20s} {'ONNX faster':>11s}")
    for name, a, b, ratio in rows:
        print(f"{name:74s} {a:>20s} {b:>20s} {'' if ratio is None else f'{ratio:.2f}x':>11s}")
    print(f"\nruns of the cold single-image predict: ONNX {', '.join(f'{c:.2f}' for c in cold['onnx'])} s; "
          f"Keras {', '.join(f'{c:.2f}' for c in cold['keras'])} s")
    print(f"runtimes agree: max |p_onnx - p_keras| = {np.abs(probs['onnx'] - probs['keras']).max():.2g} on "
          f"{n} patches, {np.abs(tile_probs['onnx'] - tile_probs['keras']).max():.2g} on {n_tiles:,} photo tiles")
    print(f"load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end "
          "(other jobs on the machine slow both runtimes alike)")
    with tempfile.TemporaryDirectory() as tmp:
        whole_photo_paths(models["onnx"], photos, Path(tmp), cfg, opts.rounds)


def whole_photo_paths(model, small: list[Path], tmp: Path, cfg, rounds: int) -> None:
    """Whole photos: today's path (a tile grid from the top-left corner that leaves the right and
    bottom strips out, scale 1) against the new defaults (every pixel covered, predict.photo_scale),
    in the same run, on the small photos given and on 4032x3024 mosaics of dataset patches."""
    from crackclf import predict

    big = mosaic_photos(tmp, 6)

    def old_starts(length: int, tile: int, stride: int) -> list[int]:
        return list(range(0, length - tile + 1, stride)) or [0]

    def run(photos: list[Path], old: bool) -> tuple[float, int]:
        new_starts = predict.tile_starts
        if old:
            predict.tile_starts = old_starts
        try:
            seconds, preds = timed(lambda: list(predict.predict_files(
                model, photos, 0.5, cfg.tile_size, cfg.stride, cfg.batch_size, on_error=print,
                photo_scale="none" if old else cfg.photo_scale)), rounds)
        finally:
            predict.tile_starts = new_starts
        return seconds, sum(p.tiles for p in preds)

    print(f"\nwhole photos ({model.runtime}): today's path (edge strips left out, scale 1) against the new "
          f"defaults (every pixel covered, photo_scale {cfg.photo_scale})")
    print(f"{'photos':44s} {'today':>28s} {'new defaults':>28s} {'time new/today':>15s}")
    for name, photos in ((f"{len(small)} small photos ({_size(small[0])})", small),
                         (f"{len(big)} mosaics of dataset patches ({_size(big[0])})", big)):
        (t_old, n_old), (t_new, n_new) = run(photos, True), run(photos, False)
        print(f"{name:44s} {_rate(n_old, t_old, 'tiles'):>28s} {_rate(n_new, t_new, 'tiles'):>28s} "
              f"{t_new / t_old:14.2f}x")


def mosaic_photos(tmp: Path, n: int) -> list[Path]:
    """``n`` 4032x3024 JPEGs (the dataset's photo size) pasted from the sample's patches, else synthetic ones."""
    import numpy as np
    from PIL import Image

    patches = sorted(SAMPLE.glob("*/*.jpg")) if SAMPLE.is_dir() else []
    rng = np.random.default_rng(0)
    out = tmp / "mosaics"
    out.mkdir()
    if not patches:
        sys.path.insert(0, str(REPO / "tests"))
        import synth

        patches = [synth.patch(rng, bool(i % 2)) for i in range(40)]
    paths = []
    for i in range(n):
        photo = Image.new("RGB", (4032, 3024))
        for y in range(0, 3024, 227):
            for x in range(0, 4032, 227):
                pick = patches[rng.integers(len(patches))]
                photo.paste(Image.open(pick) if isinstance(pick, Path) else pick, (x, y))
        paths.append(out / f"mosaic{i}.jpg")
        photo.save(paths[-1], quality=90)
    return paths


def _size(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return f"{img.width}x{img.height}"


def _tiles(pred):
    import numpy as np

    table = getattr(pred, "tile_table", None)
    if table is not None:
        return np.asarray(table.probabilities, np.float64).ravel()
    grid = getattr(pred, "tile_probs", None)
    return np.asarray(grid if grid is not None else [pred.probability], np.float64).ravel()


def _rate(count: int, seconds: float, unit: str = "images") -> str:
    return f"{count / seconds:,.0f} {unit}/s ({seconds:.2f} s)"


if __name__ == "__main__":
    main()
