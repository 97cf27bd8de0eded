"""Benchmark: `crackclf predict` on a folder of 1,000 images against one image at a time.

Prints, measured in the same run on the same model and images:
  - the CLI end to end (a subprocess: import, model load, decode, predict, CSV);
  - predict.predict_files in a warm process (decode pool + batches: the stage's own speed);
  - a loop calling the model on one image at a time (model.predict, and predict_on_batch);
  - the wall time of one single-image `crackclf predict` from a cold start (median of 3).

Images: ../shared/data/crack-sample beside the repo (linked, never copied) if present, else synthetic.
Model: --model (default models/model.keras); if missing, a quick one is trained here
(default params, 1 epoch on 400 images) and the output says so.

    python bench/predict.py [--model FILE] [--images DIR] [-n 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "crack-sample"  # ../shared beside the repo


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


def cli(args: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crackclf", "predict", *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"crackclf predict failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.keras")
    ap.add_argument("--images", type=Path, help="folder with Positive/ and Negative/ (default: the shared sample)")
    ap.add_argument("-n", type=int, default=1000, help="images in the folder")
    opts = ap.parse_args()

    from crackclf import config, imaging, inference, predict

    params = config.load(REPO / "params.yaml") if (REPO / "params.yaml").exists() else config.parse({})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, described = image_folder(opts.images, opts.n, tmp)
        files = sorted(p for p in folder.rglob("*") if imaging.is_image_path(p))
        for f in files:  # every contender reads the files from the page cache, not the first one only
            f.read_bytes()
        model_path = opts.model
        if model_path.is_file():
            which = f"{model_path}"
        else:
            model_path = tmp / "quick.keras"
            t = time.perf_counter()
            quick_model(folder, model_path)
            which = (f"quick model trained here ({model_path.name}: default params, 1 epoch on 400 images, "
                     f"{time.perf_counter() - t:.0f} s), since {opts.model} is missing")

        model = inference.load_model(model_path)
        size = model.size
        print(f"images: {described}\nmodel:  {which} ({size} px input)\n"
              f"predict.batch_size {params.predict.batch_size}, {os.cpu_count()} CPU cores\n")

        # The CLI end to end, then the same work in this warm process.
        wall = cli([str(folder), "--model", str(model_path), "--output", str(tmp / "out.csv")])
        rows = sum(1 for _ in open(tmp / "out.csv")) - 1
        assert rows == len(files), (rows, len(files))
        cfg = params.predict

        def batched() -> list:
            return list(predict.predict_files(model, files, 0.5, cfg.tile_size, cfg.stride, cfg.batch_size,
                                              on_error=print))

        batched()  # warm-up: graph tracing for the batch shapes
        t = time.perf_counter()
        batched()
        warm = time.perf_counter() - t

        import numpy as np

        def one_at_a_time(call, subset: int) -> float:
            """Seconds for all the files, timed on the first ``subset`` of them."""
            call(imaging.load_patch(files[0], size)[None].astype(np.float32))  # warm-up
            t = time.perf_counter()
            for f in files[:subset]:
                call(imaging.load_patch(f, size)[None].astype(np.float32))
            return (time.perf_counter() - t) * len(files) / min(subset, len(files))

        # model.predict sets up a data pipeline per call (~50 ms): timed on 200 images, scaled up.
        loop_predict = one_at_a_time(lambda x: model.net.predict(x, verbose=0), 200)
        loop_pob = one_at_a_time(model.net.predict_on_batch, len(files))

        single = files[0]
        cold = [cli([str(single), "--model", str(model_path)]) for _ in range(3)]

    n = len(files)
    print(f"{'what':62s} {'images/s':>9s} {'seconds':>8s}")
    for name, secs in [
        (f"crackclf predict FOLDER (CLI, cold process, {n} images)", wall),
        ("predict.predict_files, warm process (decode pool + batches)", warm),
        ("one image at a time: load_patch + model.predict (200 timed)", loop_predict),
        ("one image at a time: load_patch + model.predict_on_batch", loop_pob),
    ]:
        print(f"{name:62s} {n / secs:9.0f} {secs:8.2f}")
    print(f"\nbatched vs one at a time with model.predict: {loop_predict / warm:.1f}x faster "
          f"(vs predict_on_batch loop: {loop_pob / warm:.1f}x)")
    print(f"one image, `crackclf predict FILE` from a cold start (import included): "
          f"median {statistics.median(cold):.2f} s (runs: {', '.join(f'{c:.2f}' for c in cold)})")


if __name__ == "__main__":
    main()
