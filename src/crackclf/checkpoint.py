"""Resuming an interrupted training run from its last finished epoch.

After every epoch the weights, optimizer state, RNG state, history and early-stopping
state go to a folder beside the model (``models/.model.keras.checkpoint/epoch-NNNN/``),
so a run stopped by Ctrl-C, SIGTERM or a crash continues where it was, with the
batches and dropout draws an uninterrupted run would have had. A checkpoint belongs to
a fingerprint (the params that shape the weights, the data files, the backend and
precision policy): one of other params or data is removed, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np

from crackclf import config, dataset, files, say
from crackclf.config import Params

# Params that do not change what a finished epoch holds: a checkpoint stays good across them.
_NOT_IN_FINGERPRINT = {
    "train.epochs", "train.early_stopping_patience", "train.deterministic",
    "train.experiment_name", "train.registered_model",
}


def fingerprint(params: Params, data_dir: str | Path, policy: str) -> str:
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
            say(f"{self.dir}: checkpoint of other params or data, ignored")
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


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
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


class Checkpointer(keras.callbacks.Callback):
    def __init__(self, checkpoint: Checkpoint, history: list, stopping: ResumableEarlyStopping, run_id: str):
        super().__init__()
        self.checkpoint, self.history, self.stopping, self.run_id = checkpoint, history, stopping, run_id

    def on_epoch_end(self, epoch, logs=None):
        state = {
            "history": self.history, "early_stopping": self.stopping.state(),
            "stopped": bool(self.model.stop_training), "run_id": self.run_id,
        }
        self.checkpoint.save(self.model, state, self.stopping.best_weights)
