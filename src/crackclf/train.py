"""Train stage: the reference CNN on the prepared splits, every run tracked in MLflow.

The data comes as batches from ``batches`` (uint8, reshuffled by (seed, epoch)), the
devices and precision from ``devices``, and after every epoch ``checkpoint`` saves
what a resumed run needs: an interrupted run (Ctrl-C, SIGTERM, a dead dvc; see
``process``) continues from its last finished epoch unless ``--fresh``. The MLflow run
of an interrupted try ends FAILED, never RUNNING (one killed outright, SIGKILL, is
marked FAILED by the next try).

Outputs: the model (float32, without augmentation layers: what evaluate, predict and
serving load) and its ONNX copy (``export``), ``metrics/train.json`` (final and best
epoch, epochs, images/s, wall time), the per-epoch history CSV that ``dvc plots``
draws, and the run file through which evaluate logs into the same MLflow run. They are written to temporary names
and renamed, and the checkpoint is removed once they all exist.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import keras
import mlflow

from crackclf import CrackclfError, config, dataset, devices, files, progress, say, tracking
from crackclf.batches import Inputs, with_drawn_images
from crackclf.checkpoint import Checkpoint, Checkpointer, ResumableEarlyStopping, fingerprint
from crackclf.config import Params
from crackclf.export import save_onnx_copy
from crackclf.model import build_model, compile_model, without_augmentation
from crackclf.process import StopRequest

METRICS = ("loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc")
HISTORY_COLUMNS = ("epoch", *METRICS)


def main(args, params: Params, stop: StopRequest | None = None) -> int:
    result = run(params, args.data_dir, args.model, args.metrics, args.history, args.run_file,
                 fresh=args.fresh, callbacks=[_StopCheck(stop)] if stop else [])
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
    x, y = with_drawn_images(x, y, train.plain_negatives, train.joint_negatives, train.contrast_negatives,
                             train.faint_positives, params.faint_cracks, seed=params.seed)

    strategy = devices.strategy(train.distribute)
    keras.utils.set_random_seed(params.seed)
    if train.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    gpus = devices.gpus()
    policy_before = keras.mixed_precision.global_policy()
    try:
        policy = devices.set_precision(train.mixed_precision, gpus)
        checkpoint = Checkpoint(model_path, fingerprint(params, data_dir, policy))
        stale_run = checkpoint.last_run()  # read first: --fresh or other params remove the checkpoint
        if fresh:
            checkpoint.remove()
        state = checkpoint.load()
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = compile_model(build_model(train, size, params.seed), train)
            if state:
                checkpoint.restore(model)
        history = list(state["history"]) if state else []
        inputs = Inputs(x, y, xv, yv, train.batch_size, params.seed, first_epoch=len(history), epochs=train.epochs,
                        jpeg=train.augment_jpeg, val_weights=dataset.train_repeats(data_dir, "val"))
        device = devices.device_tags(gpus, strategy, policy)
        say(
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
        say(f"MLflow run {run_id} in {uri}")
        sizes = {"data.train_images": len(inputs.y), "data.val_images": len(inputs.yv)}
        mlflow.log_params({**config.flatten(params), **sizes})
        for row in history:  # the epochs of the interrupted try, so this run's curves are whole
            mlflow.log_metrics(_epoch_metrics(row, len(inputs.y)), step=row["epoch"])
        try:
            _fit(model, inputs, params, history, state, checkpoint, run_id, callbacks)
        except KeyboardInterrupt:
            # From the checkpoint, not ``history``: an interrupt while it was saved leaves one epoch less.
            if saved := checkpoint.load():
                say(f"interrupted: epochs 1-{len(saved['history'])} are kept in {checkpoint.dir}; "
                     "run again to resume")
            raise

        metrics = _summary(history, len(inputs.y), inputs.monitor, resumed=len(state["history"]) if state else 0)
        export = _inference_model(model, params)
        run_file.unlink(missing_ok=True)  # written last: a run file always belongs to the model beside it
        _save_model(export, model_path)
        save_onnx_copy(export, model_path, run_id=run_id, log=True)  # model.onnx: predict without TensorFlow
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
    stopping = ResumableEarlyStopping(
        state and state.get("early_stopping"), checkpoint.best_weights(),
        monitor=inputs.monitor, patience=train.early_stopping_patience, restore_best_weights=True,
    )
    steps = [
        _BatchProgress(inputs.steps),  # first: closed before the epoch's line
        stopping,
        _Recorder(history, len(inputs.y), train.epochs),
        Checkpointer(checkpoint, history, stopping, run_id),
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


def _check_shapes(data_dir, x, xv, size: int) -> None:
    if len(x) == 0:
        raise CrackclfError(f"{data_dir}: the train split is empty")
    for split, arr in (("train", x), ("val", xv)):
        if len(arr) and arr.shape[1:] != (size, size, 1):
            raise CrackclfError(
                f"{data_dir}: {split} images are {'x'.join(map(str, arr.shape[1:]))}, but "
                f"preprocess.image_size is {size} (run `dvc repro preprocess`)"
            )


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
        say(f"epoch {epoch + 1}/{self.epochs}  {scores}  ({epoch_s:.1f} s, {speed:,.0f} images/s)")


class _BatchProgress(keras.callbacks.Callback):
    """Progress within an epoch: a live bar on a terminal, a line every few seconds in a log
    (an epoch on the full dataset takes a minute on a CPU)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = progress.Progress(self.steps, f"epoch {epoch + 1}", unit="batch", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs and batch % 10 == 0:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class _StopCheck(keras.callbacks.Callback):
    """Stops at the next batch once SIGTERM came, even if its KeyboardInterrupt was swallowed."""

    def __init__(self, stop: StopRequest):
        super().__init__()
        self.stop = stop

    # At batch begin: any batch-end hook turns off Keras's async batch-end dispatch (JAX, torch).
    def on_train_batch_begin(self, batch, logs=None):
        self.stop.check()


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
        export = build_model(without_augmentation(params.train), params.preprocess.image_size)
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
