"""Training throughput: the train stage's input pipeline against the model's ceiling, same run.

    python bench/train.py                 # real sample images if present, else synthetic
    python bench/train.py --synthetic --images 4000 --rounds 5

Three ways to feed the same reference CNN (params.yaml's train section) one epoch:

- pipeline: what `crackclf train` runs (uint8 arrays -> tf.data: cache, per-epoch shuffle, batch, prefetch);
- numpy:    Keras fitting one in-memory float32 array (its own slicing and shuffling);
- ceiling:  one float32 batch repeated, so no input work at all: pure training compute;
- no-augment: the pipeline again, with a model without params.yaml's augmentation (train.augment*):
  what the default augmentation costs per epoch.

Epochs are interleaved (pipeline, numpy, ceiling, pipeline, ...) after one warm-up epoch each, so
drifting machine load hits all three alike; the median epoch of each is reported. With a GPU
visible, the three are measured with float32 and with mixed_float16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "crack-sample"


def load_images(sample: Path, size: int, limit: int, synthetic: bool) -> tuple[np.ndarray, np.ndarray, str]:
    if not synthetic and sample.is_dir():
        from crackclf import imaging

        files = [(p, int(folder == "Positive")) for folder in ("Positive", "Negative")
                 for p in sorted((sample / folder).iterdir()) if imaging.is_image_path(p)]
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:limit]]
        x = np.stack([imaging.load_patch(p, size) for p, _ in files])
        return x, np.array([label for _, label in files], np.float32), f"{len(files):,} real images from {sample}"
    sys.path.insert(0, str(REPO / "tests"))
    import synth

    from crackclf import imaging

    rng = np.random.default_rng(0)
    labels = np.arange(limit) % 2
    x = np.stack([imaging.resize(synth.patch(rng, bool(c)).convert("L"), size) for c in labels])
    return x, labels.astype(np.float32), f"{limit:,} synthetic images"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="training images per epoch (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each method (default: %(default)s)")
    p.add_argument("--sample", type=Path, default=SAMPLE, help="Positive/ and Negative/ real images")
    p.add_argument("--synthetic", action="store_true", help="use generated images even if the sample exists")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import tensorflow as tf

    from crackclf import batches, config
    from crackclf.model import build_model, compile_model, without_augmentation

    params = config.load(REPO / "params.yaml")
    t0 = time.perf_counter()
    x, y, source = load_images(args.sample, args.size, args.images, args.synthetic)
    decode_s = time.perf_counter() - t0
    bs, steps = params.train.batch_size, -(-len(x) // params.train.batch_size)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"{source} at {args.size} px (decoded in {decode_s:.1f} s), batch {bs}, {steps} steps per epoch, "
          f"{len(gpus)} GPU(s), {len(os.sched_getaffinity(0))} CPU cores, "
          f"keras {keras.__version__}, tf {tf.__version__}")

    xf = x.astype(np.float32)
    one_batch = tf.data.Dataset.from_tensors((xf[:bs], y[:bs])).repeat()
    feeds = {
        "pipeline": lambda m: m.fit(pipeline, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False),
        "numpy": lambda m: m.fit(xf, y, batch_size=bs, epochs=1, verbose=0, shuffle=True),
        "ceiling": lambda m: m.fit(one_batch, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False),
        "no-augment": lambda m: m.fit(plain, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False),
    }
    trains = {name: params.train for name in feeds} | {"no-augment": without_augmentation(params.train)}
    for policy in ["float32", "mixed_float16"] if gpus else ["float32"]:
        keras.mixed_precision.set_global_policy(policy)
        pipeline = batches.tf_train_dataset(x, y, bs, params.seed, range(args.rounds + 1), params.train.augment_jpeg)
        plain = batches.tf_train_dataset(x, y, bs, params.seed, range(args.rounds + 1))
        models = {}
        for name, feed in feeds.items():  # warm-up: tracing, the pipeline's cache
            keras.utils.set_random_seed(params.seed)
            models[name] = compile_model(build_model(trains[name], args.size, params.seed), trains[name])
            feed(models[name])
        times = {name: [] for name in feeds}
        for _ in range(args.rounds):
            for name, feed in feeds.items():
                start = time.perf_counter()
                feed(models[name])
                times[name].append(time.perf_counter() - start)
        images = {name: len(x) for name in feeds} | {"ceiling": steps * bs}  # the ceiling's batches are all full
        rate = {name: images[name] / statistics.median(t) for name, t in times.items()}
        print(f"\n{policy}: images/s (median of {args.rounds} epochs)")
        for name in feeds:
            print(f"  {name:<10} {rate[name]:>9,.0f}   {rate[name] / rate['ceiling']:.2f} of ceiling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
