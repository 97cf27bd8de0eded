"""Train stage: the reference CNN on the prepared splits, every run tracked in MLflow.

Input: the preprocess stage's uint8 arrays, held in memory as uint8 (4x smaller
than float32; the model rescales inside itself). With the TensorFlow backend they
flow through tf.data (cached, reshuffled every epoch, batched, prefetched while the
previous batch trains); other backends (JAX on GPU machines has no TensorFlow)
get a ``keras.utils.PyDataset`` over the same arrays. Either way epoch ``e``'s order
depends only on ``(seed, e)``, so a resumed run sees the batches an uninterrupted
one would have seen.

Safety: after every epoch the weights, optimizer state, history and early-stopping
state go to a checkpoint folder beside the model (``models/.model.keras.checkpoint/``),
so an interrupted run (Ctrl-C, SIGTERM, a crash) resumes from its last finished
epoch, unless ``--fresh``. Outputs are written to temporary names and renamed, and the
checkpoint is removed once they all exist. The MLflow run of an interrupted try ends
FAILED, never RUNNING (one killed outright, SIGKILL, is marked FAILED by the next try).
Under DVC, training also stops when the dvc process is killed alone.

Devices: all GPUs of the host through tf.distribute.MirroredStrategy (``train.distribute``),
mixed float16 on GPUs with tensor cores (``train.mixed_precision: auto``). Multi-host
training is refused with a clear error: Keras 3's fit() fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585).

Outputs: the model (float32, without augmentation layers: what evaluate, predict and
serving load), ``metrics/train.json`` (final and best epoch, epochs, images/s, wall
time), the per-epoch history CSV that ``dvc plots`` draws, and the run file through
which evaluate logs into the same MLflow run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import select
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import keras
import mlflow
import numpy as np

from crackclf import CrackclfError, config, dataset, files, tracking, usable_cpus
from crackclf.config import ConfigError, Params
from crackclf.model import build_model, compile_model

METRICS = ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc")
HISTORY_COLUMNS = ("epoch", *METRICS)
# Params that do not change what a finished epoch holds: a checkpoint stays good across them.
_NOT_IN_FINGERPRINT = {
    "train.epochs", "train.early_stopping_patience", "train.deterministic",
    "train.experiment_name", "train.registered_model",
}


def main(args, params: Params) -> int:
    with _sigterm_as_interrupt() as stop:
        _stop_with_dvc()
        result = run(params, args.data_dir, args.model, args.metrics, args.history, args.run_file,
                     fresh=args.fresh, callbacks=[stop])
    best, info = result["metrics"]["best"], result["run"]
    scores = ", ".join(f"{k} {best[k]:.4f}" for k in ("val_loss", "val_accuracy", "val_auc") if k in best)
    print(
        f"{args.model}: best epoch {result['metrics']['best_epoch']} of {result['metrics']['epochs']} ({scores}); "
        f"MLflow run {info['run_id']}, model {info['registered_model']} version {info['model_version']}"
    )
    return 0


def run(
    params: Params,
    data_dir: str | Path,
    model_path: str | Path,
    metrics_path: str | Path,
    history_path: str | Path,
    run_file: str | Path,
    fresh: bool = False,
    callbacks: list | tuple = (),
) -> dict:
    """Train, write the outputs and log the MLflow run.

    Returns ``{"metrics": <metrics JSON>, "history": [per-epoch rows], "run": <run file>}``.
    ``callbacks`` are extra Keras callbacks, called after the checkpoint of each epoch is saved.
    """
    train, size = params.train, params.preprocess.image_size
    model_path = Path(model_path)
    tracking.check_store(tracking.tracking_uri(), must_exist=False)  # before minutes of work, not after
    x, y = dataset.load_split(data_dir, "train")
    xv, yv = dataset.load_split(data_dir, "val")
    _check_shapes(data_dir, x, xv, size)

    strategy = _strategy(train.distribute)
    keras.utils.set_random_seed(params.seed)
    if train.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    gpus = _gpus()
    policy_before = keras.mixed_precision.global_policy()
    try:
        policy = _set_precision(train.mixed_precision, gpus)
        checkpoint = Checkpoint(model_path, _fingerprint(params, data_dir, policy))
        stale_run = checkpoint.last_run()  # read first: --fresh or other params remove the checkpoint
        if fresh:
            checkpoint.remove()
        state = checkpoint.load()
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = compile_model(build_model(train, size, params.seed), train)
            if state:
                checkpoint.restore(model)
        history = list(state["history"]) if state else []
        inputs = Inputs(x, y, xv, yv, train.batch_size, params.seed, first_epoch=len(history), epochs=train.epochs)
        device = _device_tags(gpus, strategy, policy)
        _say(
            f"training on {device['device']}, {device['distribute']}, {policy}: {len(x):,} train / {len(xv):,} val "
            f"images of {size} px, {inputs.steps} steps of {train.batch_size} per epoch"
            + (f"; resuming after epoch {len(history)} (--fresh to start over)" if history else "")
        )
        return _tracked_run(
            model, inputs, params, history, state, checkpoint, device, callbacks,
            model_path, Path(metrics_path), Path(history_path), Path(run_file), stale_run,
        )
    finally:
        keras.mixed_precision.set_global_policy(policy_before)


def _tracked_run(model, inputs, params, history, state, checkpoint, device, callbacks,
                 model_path, metrics_path, history_path, run_file, stale_run) -> dict:
    train = params.train
    uri = tracking.configure()
    experiment_id = tracking.experiment_id(train.experiment_name)
    if stale_run:  # a try killed too hard to end its own run (SIGKILL, power cut)
        tracking.fail_if_running(stale_run)
    tags = {**tracking.run_tags(), **device}
    if state:
        tags.update({"resumed_from_run": state.get("run_id") or "", "resumed_after_epoch": str(len(history))})
    # MLflow's generated names come from Python's seeded RNG: same seed, same name. Use the clock instead.
    run_name = os.environ.get("DVC_EXP_NAME") or time.strftime("train-%Y%m%d-%H%M%S")
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as active:
        run_id = active.info.run_id
        checkpoint.started(run_id)
        _say(f"MLflow run {run_id} in {uri}")
        sizes = {"data.train_images": len(inputs.y), "data.val_images": len(inputs.yv)}
        mlflow.log_params({**config.flatten(params), **sizes})
        for row in history:  # the epochs of the interrupted try, so this run's curves are whole
            mlflow.log_metrics(_epoch_metrics(row, len(inputs.y)), step=row["epoch"])
        try:
            _fit(model, inputs, params, history, state, checkpoint, run_id, callbacks)
        except KeyboardInterrupt:
            # From the checkpoint, not ``history``: an interrupt while it was saved leaves one epoch less.
            if saved := checkpoint.load():
                _say(f"interrupted: epochs 1-{len(saved['history'])} are kept in {checkpoint.dir}; "
                     "run again to resume")
            raise

        metrics = _summary(history, len(inputs.y), inputs.monitor, resumed=len(state["history"]) if state else 0)
        export = _inference_model(model, params)
        run_file.unlink(missing_ok=True)  # written last: a run file always belongs to the model beside it
        _save_model(export, model_path)
        info = tracking.log_keras_model(export, inputs.example(), train.registered_model)
        _write_history(history, history_path)
        files.write_json(metrics_path, metrics)
        mlflow.log_metrics({
            "best_epoch": metrics["best_epoch"], "epochs": metrics["epochs"],
            "images_per_s": metrics["images_per_s"], "wall_time_s": metrics["wall_time_s"],
            **{f"best_{k}": v for k, v in metrics["best"].items()},
        })
        run_info = {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "tracking_uri": uri,
            "registered_model": train.registered_model,
            "model_version": int(info.registered_model_version) if info.registered_model_version else None,
        }
        tracking.write_run_file(run_file, run_info)
    checkpoint.remove()
    return {"metrics": metrics, "history": history, "run": run_info}


def _fit(model, inputs, params, history, state, checkpoint, run_id, callbacks) -> None:
    """``model.fit`` from epoch ``len(history) + 1``; appends to ``history`` as epochs finish."""
    train = params.train
    stopping = _EarlyStopping(
        state and state.get("early_stopping"), checkpoint.best_weights(),
        monitor=inputs.monitor, patience=train.early_stopping_patience, restore_best_weights=True,
    )
    steps = [_ProgressBar(inputs.steps)] if sys.stderr.isatty() else []  # first: closed before the epoch's line
    steps += [
        stopping,
        _Recorder(history, len(inputs.y), train.epochs),
        _Checkpointer(checkpoint, history, stopping, run_id),
    ]
    done = bool(state and state.get("stopped"))  # early stopping had ended the interrupted try
    model.fit(
        inputs.train,
        validation_data=inputs.val,
        epochs=len(history) if done else train.epochs,
        initial_epoch=len(history),
        steps_per_epoch=inputs.steps if inputs.tf else None,
        callbacks=[*steps, *callbacks],
        shuffle=False,  # the inputs shuffle themselves, by (seed, epoch)
        verbose=0,
    )


# --- devices -----------------------------------------------------------------------------------------


def _strategy(mode: str):
    """The ``tf.distribute`` strategy for ``train.distribute``; None for one device or another backend."""
    backend = keras.backend.backend()
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    hosts = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if mode == "multi_worker" or (mode == "auto" and hosts > 1):
        # Keras 3 (3.15 included) cannot fit() under MultiWorkerMirroredStrategy: its first step
        # reduces the input batch across workers and fails (keras-team/keras issue 20585).
        raise ConfigError(
            "train.distribute: multi-host training (TF_CONFIG) is not supported by Keras 3's fit() "
            "(keras-team/keras#20585); train on one host with 'mirrored' (all its GPUs) or 'auto'"
        )
    if backend != "tensorflow":
        if mode == "mirrored":
            raise ConfigError(
                f"train.distribute: 'mirrored' needs the TensorFlow backend (KERAS_BACKEND is {backend}); "
                "use auto or none"
            )
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored":  # all GPUs, else all (logical) CPUs
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if mode == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return None  # the default strategy: one device


def _gpus() -> list[tuple[str, tuple[int, int]]]:
    """(name, compute capability) of each visible GPU."""
    backend = keras.backend.backend()
    with contextlib.suppress(Exception):  # a missing driver is not an error: we train on the CPU
        if backend == "tensorflow":
            import tensorflow as tf

            out = []
            for d in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(d)
                out.append((details.get("device_name", d.name), tuple(details.get("compute_capability", (0, 0)))))
            return out
        if backend == "jax":
            import jax

            return [
                (d.device_kind, tuple(int(v) for v in str(getattr(d, "compute_capability", "0.0")).split(".")[:2]))
                for d in jax.devices() if d.platform == "gpu"
            ]
        if backend == "torch":
            import torch

            return [(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                    for i in range(torch.cuda.device_count())]
    return []


def _set_precision(mode: str, gpus: list) -> str:
    """mixed_float16 when asked, or (auto) on GPUs with tensor cores (compute capability 7.0+)."""
    mixed = mode == "on" or (mode == "auto" and bool(gpus) and all(cc >= (7, 0) for _, cc in gpus))
    policy = "mixed_float16" if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _device_tags(gpus, strategy, policy) -> dict[str, str]:
    if gpus:
        names = sorted({name for name, _ in gpus})
        tags = {"device": f"{len(gpus)} x {', '.join(names)}", "device.type": "gpu", "device.count": str(len(gpus))}
        tags.update(_cuda_versions())
    else:
        cores = usable_cpus()
        cpu = _cpu_model()
        tags = {"device": f"CPU {cpu} ({cores} cores)", "device.type": "cpu", "device.count": "1",
                "cpu.model": cpu, "cpu.cores": str(cores)}
    replicas = strategy.num_replicas_in_sync if strategy else 1
    tags["distribute"] = f"{type(strategy).__name__ if strategy else 'none'} ({replicas} replica{'s' * (replicas > 1)})"
    tags["mixed_precision"] = policy
    return tags


def _cuda_versions() -> dict[str, str]:
    with contextlib.suppress(Exception):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            info = tf.sysconfig.get_build_info()  # the versions this TensorFlow was built against
            libs = [lib for lib in ("cuda", "cudnn") if info.get(f"{lib}_version")]
            return {f"{lib}.version": str(info[f"{lib}_version"]) for lib in libs}
        if keras.backend.backend() == "jax":
            import jax

            return {"cuda.version": str(jax.devices()[0].client.platform_version)}
    return {}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    import platform

    return platform.processor() or platform.machine()


# --- input pipeline ------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of (seed, epoch) only, so resuming repeats it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Inputs:
    """Training and validation batches from the uint8 arrays, for whichever backend runs."""

    def __init__(self, x, y, xv, yv, batch_size: int, seed: int, first_epoch: int, epochs: int):
        self.y, self.yv = np.asarray(y, np.float32), np.asarray(yv, np.float32)
        self.x, self.xv = x, xv
        self.steps = math.ceil(len(x) / batch_size)
        self.tf = keras.backend.backend() == "tensorflow"
        if self.tf:
            self.train = tf_train_dataset(x, self.y, batch_size, seed, range(first_epoch, epochs))
            self.val = tf_eval_dataset(xv, self.yv, batch_size) if len(xv) else None
        else:
            self.train = ArrayBatches(x, self.y, batch_size, seed, first_epoch)
            self.val = ArrayBatches(xv, self.yv, batch_size) if len(xv) else None

    @property
    def monitor(self) -> str:
        """What early stopping and the best epoch go by: validation loss, training loss without a val split."""
        return "val_loss" if len(self.yv) else "loss"

    def example(self) -> np.ndarray:
        """One image of each class (validation split if any): the logged model's input example."""
        x, y = (self.xv, self.yv) if len(self.yv) else (self.x, self.y)
        idx = [int(np.argmax(y == c)) for c in (1, 0) if (y == c).any()]
        return np.asarray(x[idx], np.float32)


def _tf_cached(x, y, chunk_bytes: int = 1 << 24):
    """One split as tf.data elements, cached in memory as uint8 on the first pass.

    The first pass reads the memory map in ~16 MB chunks; later epochs never touch the disk.
    """
    import tensorflow as tf

    chunk = max(1, chunk_bytes // max(1, x[0].nbytes if len(x) else 1))

    def chunks():
        for i in range(0, len(x), chunk):
            yield np.asarray(x[i : i + chunk]), y[i : i + chunk]

    spec = (tf.TensorSpec((None, *x.shape[1:]), tf.uint8), tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(chunks, output_signature=spec).cache().unbatch()


def tf_train_dataset(x, y, batch_size: int, seed: int, epochs: range):
    """All remaining epochs back to back, epoch e shuffled with ``epoch_seed(seed, e)``.

    ``model.fit`` then takes ``steps_per_epoch`` batches per epoch from one iterator.
    """
    import tensorflow as tf

    source = _tf_cached(x, y)
    steps = math.ceil(len(x) / batch_size)
    per_epoch = [source.shuffle(len(x), seed=epoch_seed(seed, e)).batch(batch_size) for e in epochs]
    if not per_epoch:
        return source.batch(batch_size).take(0)
    order = tf.data.Dataset.from_tensor_slices(np.repeat(np.arange(len(per_epoch), dtype=np.int64), steps))
    ds = tf.data.Dataset.choose_from_datasets(per_epoch, order)
    return ds.prefetch(tf.data.AUTOTUNE)


def tf_eval_dataset(x, y, batch_size: int):
    import tensorflow as tf

    ds = _tf_cached(x, y).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(len(x) / batch_size)))


class ArrayBatches(keras.utils.PyDataset):
    """Batches from in-memory arrays, for backends without tf.data; reshuffled every epoch if seeded.

    ``model.fit`` calls ``on_epoch_end`` once before its first epoch (Keras 3.15), so under fit
    0-based epoch ``e`` is shuffled with ``epoch_seed(seed, e + 1)``, not ``e``. A resumed run
    shifts alike, so it still sees the batches an uninterrupted one would.
    """

    def __init__(self, x, y, batch_size: int, seed: int | None = None, first_epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = np.ascontiguousarray(x), np.asarray(y, np.float32)  # one read of the memory map
        self.batch_size, self.seed, self.epoch = batch_size, seed, first_epoch
        self.on_epoch_begin()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def on_epoch_begin(self) -> None:
        n = len(self.x)
        if self.seed is None:
            self.order = np.arange(n)
        else:
            self.order = np.random.default_rng(epoch_seed(self.seed, self.epoch)).permutation(n)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])  # sorted: faster gather
        return self.x[idx], self.y[idx]


def _check_shapes(data_dir, x, xv, size: int) -> None:
    if len(x) == 0:
        raise CrackclfError(f"{data_dir}: the train split is empty")
    for split, arr in (("train", x), ("val", xv)):
        if len(arr) and arr.shape[1:] != (size, size, 1):
            raise CrackclfError(
                f"{data_dir}: {split} images are {'x'.join(map(str, arr.shape[1:]))}, but "
                f"preprocess.image_size is {size} (run `dvc repro preprocess`)"
            )


# --- callbacks -------------------------------------------------------------------------------------


def _epoch_metrics(row: dict, n_train: int) -> dict[str, float]:
    out = {k: row[k] for k in METRICS if k in row}
    if row.get("train_s"):
        out["epoch_images_per_s"] = n_train / row["train_s"]
    return out


class _Recorder(keras.callbacks.Callback):
    """Per epoch: times the training phase, keeps the history row, logs it to MLflow, prints a line."""

    def __init__(self, history: list, n_train: int, epochs: int):
        super().__init__()
        self.history, self.n_train, self.epochs = history, n_train, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_s = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.train_s is None:
            self.train_s = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        epoch_s = time.perf_counter() - self.start
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in METRICS if k in (logs or {})}}
        row.update(train_s=self.train_s or epoch_s, epoch_s=epoch_s)
        self.history.append(row)
        mlflow.log_metrics(_epoch_metrics(row, self.n_train), step=row["epoch"])
        scores = "  ".join(f"{k} {row[k]:.4f}" for k in METRICS if k in row)
        speed = self.n_train / row["train_s"]
        _say(f"epoch {epoch + 1}/{self.epochs}  {scores}  ({epoch_s:.1f} s, {speed:,.0f} images/s)")


class _ProgressBar(keras.callbacks.Callback):
    """A tqdm bar over the batches of each epoch, on terminals only (batch hooks cost a sync per step)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm import tqdm

        self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}", unit=" batch", leave=False, file=sys.stderr)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs and batch % 10 == 0:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class _EarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose state (patience count, best value and weights) survives an interruption."""

    def __init__(self, resume: dict | None, best_weights: list | None, **kwargs):
        super().__init__(**kwargs)
        self.resume, self.resume_weights = resume, best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume:
            self.wait, self.best, self.best_epoch = self.resume["wait"], self.resume["best"], self.resume["best_epoch"]
            self.best_weights = self.resume_weights

    def state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": self.wait, "best": best, "best_epoch": self.best_epoch}


class _Checkpointer(keras.callbacks.Callback):
    def __init__(self, checkpoint: Checkpoint, history: list, stopping: _EarlyStopping, run_id: str):
        super().__init__()
        self.checkpoint, self.history, self.stopping, self.run_id = checkpoint, history, stopping, run_id

    def on_epoch_end(self, epoch, logs=None):
        state = {
            "history": self.history, "early_stopping": self.stopping.state(),
            "stopped": bool(self.model.stop_training), "run_id": self.run_id,
        }
        self.checkpoint.save(self.model, state, self.stopping.best_weights)


# --- checkpoint --------------------------------------------------------------------------------------


def _fingerprint(params: Params, data_dir: str | Path, policy: str) -> str:
    """What a checkpoint belongs to: the params that shape the weights, the data files' identity, and
    the precision policy ``mixed_precision: auto`` chose (mixed float16 adds loss-scale optimizer state)."""
    flat = {k: v for k, v in config.flatten(params).items()
            if (k.startswith("train.") or k in ("seed", "preprocess.image_size")) and k not in _NOT_IN_FINGERPRINT}
    data = []
    for split in ("train", "val"):
        for path in (dataset.images_path(data_dir, split), dataset.labels_path(data_dir, split)):
            st = path.stat()
            data.append([path.name, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"params": flat, "data": data, "backend": keras.backend.backend(), "policy": policy},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _rng_states(model: keras.Model) -> list:
    """The dropout and augmentation RNG states: model variables that ``save_weights`` leaves out."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class Checkpoint:
    """The last finished epoch of a run, in ``<model folder>/.<model name>.checkpoint/epoch-NNNN/``.

    Each epoch is written to a temporary folder and renamed, so the newest complete
    one is always whole; ``state.json`` is written last and marks it complete.
    """

    def __init__(self, model_path: str | Path, fingerprint: str):
        model_path = Path(model_path)
        self.dir = model_path.parent / f".{model_path.name}.checkpoint"
        self.fingerprint = fingerprint
        self.path: Path | None = None

    def started(self, run_id: str) -> None:
        """Name the try's MLflow run before its first epoch ends: a try killed even then is ended by the next."""
        self._create()
        files.write_json(self.dir / "run.json", {"run_id": run_id})

    def _create(self) -> None:
        """A .gitignore keeps the checkpoint out of ``git status``."""
        if not (self.dir / ".gitignore").exists():
            files.write_text(self.dir / ".gitignore", "*\n")

    def last_run(self) -> str | None:
        """The MLflow run of the last try that started here, if its checkpoint was not removed."""
        try:
            return json.loads((self.dir / "run.json").read_text(encoding="utf-8"))["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    def _epochs(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("epoch-*") if p.is_dir() and (p / "state.json").exists())

    def load(self) -> dict | None:
        """The newest complete epoch's state if it belongs to this fingerprint; a stale one is removed."""
        epochs = self._epochs()
        if not epochs:
            self.path = None
            return None
        state = json.loads((epochs[-1] / "state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") != self.fingerprint:
            _say(f"{self.dir}: checkpoint of other params or data, ignored")
            self.remove()
            return None
        self.path = epochs[-1]
        return state

    def restore(self, model: keras.Model) -> None:
        model.optimizer.build(model.trainable_variables)  # so its saved slots have somewhere to go
        model.load_weights(self.path / "model.weights.h5")
        with np.load(self.path / "rng.npz") as npz:
            for i, var in enumerate(_rng_states(model)):
                var.assign(npz[f"arr_{i}"])

    def best_weights(self) -> list | None:
        path = self.path / "best.npz" if self.path else None
        if not path or not path.exists():
            return None
        with np.load(path) as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]

    def save(self, model: keras.Model, state: dict, best_weights: list | None) -> None:
        final = self.dir / f"epoch-{len(state['history']):04d}"
        self._create()
        with files.atomic_dir(final) as tmp:
            model.save_weights(tmp / "model.weights.h5")  # with the optimizer's state
            np.savez(tmp / "rng.npz", *[v.numpy() for v in _rng_states(model)])
            if best_weights is not None:
                np.savez(tmp / "best.npz", *best_weights)
            files.write_json(tmp / "state.json", {**state, "fingerprint": self.fingerprint})
        for old in self._epochs():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.path = None


# --- outputs -----------------------------------------------------------------------------------------


def _summary(history: list[dict], n_train: int, monitor: str, resumed: int = 0) -> dict:
    """metrics/train.json: final and best epoch (the one whose weights were kept), speed, time."""
    best = min(history, key=lambda r: r[monitor])  # first of equals, as EarlyStopping picks
    ran = history[resumed:] or history  # this try's epochs; the first paid for tracing and filling the cache
    steady = ran[1:] or ran
    pick = lambda row: {k: round(row[k], 6) for k in METRICS if k in row}  # noqa: E731
    return {
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "best": pick(best),
        "final": pick(history[-1]),
        "images_per_s": round(n_train * len(steady) / sum(r["train_s"] for r in steady), 1),
        "wall_time_s": round(sum(r["epoch_s"] for r in history), 2),
    }


def _inference_model(model: keras.Model, params: Params) -> keras.Model:
    """The trained weights in a float32 model without augmentation layers.

    It loads anywhere plain Keras does (no custom layers), runs at full speed on CPUs
    (no float16), and no distribution strategy is attached to it.
    """
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        export = build_model(params.train.model_copy(update={"augment": False}), params.preprocess.image_size)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    for layer in export.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return export


def _save_model(model: keras.Model, path: Path) -> None:
    with files.atomic_path(path) as tmp:  # keeps the .keras suffix Keras insists on
        model.save(tmp)


def _write_history(history: list[dict], path: Path) -> None:
    rows = ({"epoch": row["epoch"], **{k: f"{row[k]:.6g}" for k in METRICS if k in row}} for row in history)
    files.write_csv(path, list(HISTORY_COLUMNS), rows)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stop_with_dvc() -> None:
    """Under DVC, get SIGTERM when the dvc process dies (Linux 5.3+).

    DVC passes no signal but the terminal's Ctrl-C on to its stage, so a dvc killed
    alone (``kill``, an IDE's stop button) would leave training running unseen: its
    outputs would never reach dvc.lock, and it would race the user's rerun for the
    same files. DVC runs the stage through ``$SHELL -c``, and a shell that does not
    exec its last command (dash, the usual /bin/sh) sits in between and outlives dvc,
    so the watch is on dvc itself, not on the parent. Not outside DVC, where a parent
    shell may well exit first (``nohup``).
    """
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    dvc = _dvc_process()
    try:
        handle = os.pidfd_open(dvc)  # this process, even once its pid is reused
    except ProcessLookupError:
        signal.raise_signal(signal.SIGTERM)
        return
    except OSError:  # a kernel before 5.3
        return
    if dvc != _dvc_process():  # it died before the handle was taken
        os.close(handle)
        signal.raise_signal(signal.SIGTERM)
        return

    def watch():
        select.select([handle], [], [])  # readable once the process has ended
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-dvc", daemon=True).start()


def _dvc_process() -> int:
    """The nearest ancestor without ``DVC_STAGE`` in its environment: dvc, not the shell it runs
    the stage through (DVC sets the variable for the stage's command only)."""
    pid = os.getppid()
    for _ in range(3):
        try:
            if not any(v.startswith(b"DVC_STAGE=") for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                return pid
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pid


class _StopRequest(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the next batch once SIGTERM came: the signal handler's own
    exception is lost when it lands in code that swallows exceptions (a finalizer, say)."""

    requested = False

    # At batch begin: any batch-end hook turns off Keras's async batch-end dispatch (JAX, torch).
    def on_train_batch_begin(self, batch, logs=None):
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt(grace_s: float = 5.0):
    """SIGTERM (a killed `dvc exp run`, a scheduler) unwinds like Ctrl-C: checkpoint kept, run FAILED.

    Yields a callback for training that makes sure the interrupt lands. Repeats within
    ``grace_s`` are ignored, so they cannot cut short the ending of the MLflow run
    (a scheduler's second SIGTERM, a dvc death that comes with it).
    """
    stop = _StopRequest()
    first = []

    def interrupt(signum, frame):
        if first and time.monotonic() - first[0] < grace_s:
            return
        first[:] = [time.monotonic()]
        stop.requested = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
