"""Loading a trained model and running it on batches: the one inference path of every stage.

evaluate, predict's examples and ``crackclf predict`` all load a model here and get
crack probabilities from ``Model.predict``, so they cannot disagree on how a batch is
run. The model takes raw 0..255 grayscale (N, size, size, 1) and rescales inside itself.

The threshold that turns a probability into a label is the one evaluate chose for this
very model (``threshold.json`` beside the file, or the run's ``eval/threshold.json``),
else 0.5.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackclf import UsageError, dataset, files, first_line, quiet_import

THRESHOLD_FILE = "threshold.json"  # written by evaluate beside the model file
THRESHOLD_ARTIFACT = "eval/threshold.json"  # the same file in the training's MLflow run
DEFAULT_THRESHOLD = 0.5


class ModelError(UsageError):
    """No usable model where the user pointed: nothing can be predicted (exit 2)."""


class Model:
    """A loaded classifier: its input size, where it came from, and batched probabilities."""

    runtime = "keras"

    def __init__(self, net, source: str | Path):
        self.net, self.source = net, str(source)
        self.size = input_size(net)

    def predict(self, images: np.ndarray, batch_size: int, progress: bool = False) -> np.ndarray:
        """Crack probability of each (size, size, 1) image, batch by batch.

        ``predict_on_batch`` runs the compiled graph without ``model.predict``'s
        per-call set-up: about 1.5 ms for one image against 44 ms.
        """
        from tqdm import tqdm

        out = np.empty(len(images), np.float64)
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc="predict", unit="batch", file=sys.stderr, leave=False,
                          disable=None if progress and len(starts) > 4 else True):
            batch = np.asarray(images[start:start + batch_size], np.float32)
            out[start:start + len(batch)] = np.asarray(self.net.predict_on_batch(batch)).reshape(-1)
        return out


def load_model(spec: str | Path) -> Model:
    """A ``.keras`` file or an MLflow registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""
    spec = str(spec)
    if spec.startswith("models:/"):
        return Model(_load_registered(spec), spec)
    path = Path(spec)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (run `dvc repro train`, or pass --model)")
    keras = quiet_import("keras")
    quiet_import("crackclf.model")  # registers the custom layers before loading
    try:
        net = keras.saving.load_model(path)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a usable model
        raise ModelError(f"{path}: not a readable Keras model ({first_line(err)})") from None
    return Model(net, path)


def resolve_model(spec: str | Path) -> str:
    """``models:/NAME@ALIAS`` as the version it names now (``models:/NAME/VERSION``), so that the
    model and its threshold come from one version even if evaluate moves the alias meanwhile."""
    spec = str(spec)
    name, _, alias = spec.removeprefix("models:/").partition("@")
    if not spec.startswith("models:/") or not alias:
        return spec
    import mlflow

    _registry()
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{spec}: cannot load ({first_line(err)})") from None
    return f"models:/{name}/{version}"


def _registry() -> None:
    """Point MLflow at the user's store; one that cannot be reached fails the work (exit 1)."""
    from crackclf import tracking

    tracking.check_store(tracking.configure())


def _load_registered(uri: str):
    import mlflow

    quiet_import("crackclf.model")  # Keras, and the custom layers
    _registry()
    try:
        with no_mlflow_progress_bars():
            return mlflow.keras.load_model(uri)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{uri}: cannot load ({first_line(err)})") from None


@contextlib.contextmanager
def no_mlflow_progress_bars():
    """MLflow draws a download bar for every small file; predict's output stays rows and errors."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ.setdefault(key, "false")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def input_size(net) -> int:
    """The square grayscale input size the network was built for."""
    shape = tuple(net.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or not shape[1]:
        raise ModelError(f"model input {shape} is not (batch, size, size, 1): not a crackclf model")
    return int(shape[1])


def default_threshold(model_spec: str | Path, warn: Callable[[str], None]) -> float:
    """The threshold evaluate chose for this model, else 0.5.

    For a file, ``threshold.json`` beside it counts only if it names this very
    file (sha256): a model retrained without re-evaluation must not inherit a
    stale threshold. For a registry URI, the one evaluate logged to the run.
    """
    spec = str(model_spec)
    if spec.startswith("models:/"):
        return _registered_threshold(resolve_model(spec), warn)
    path = Path(spec).with_name(THRESHOLD_FILE)
    if not path.is_file():
        return DEFAULT_THRESHOLD
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(info["threshold"])
    except (ValueError, KeyError, TypeError):
        warn(f"{path}: unreadable, using threshold {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD
    if info.get("model_sha256") and info["model_sha256"] != files.sha256(spec):
        warn(f"{path} was written for another model (rerun `crackclf evaluate`); "
             f"using threshold {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD
    return threshold


def _registered_threshold(uri: str, warn: Callable[[str], None]) -> float:
    """``uri`` as ``resolve_model`` returns it: ``models:/NAME/VERSION``."""
    import mlflow

    name, _, number = uri.removeprefix("models:/").partition("/")
    try:
        version = mlflow.MlflowClient().get_model_version(name, number)
        with no_mlflow_progress_bars():
            info = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{THRESHOLD_ARTIFACT}")
        return float(info["threshold"])
    except Exception:  # noqa: BLE001 - not evaluated yet, or another URI form: the documented default
        warn(f"{uri}: no threshold logged by evaluate, using {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD


# --- what a prediction is ---------------------------------------------------------------------

@dataclass
class Prediction:
    """One image's answer: a patch, or a whole photo with its grid of tile probabilities."""

    path: str
    probability: float
    label: str
    tiles: int
    crack_tiles: int
    tile_probs: np.ndarray | None = None  # (rows, cols) for a whole photo, None for a patch
    tile_size: int = 0
    stride: int = 0
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the decoded image
    truth: int | None = None  # known from a Positive/ or Negative/ folder, or the manifest
    preview: np.ndarray | None = None  # 2-D uint8, for plots only

    def row(self) -> dict:
        return {
            "path": self.path, "probability": round(self.probability, 6), "label": self.label,
            "tiles": self.tiles, "crack_tiles": self.crack_tiles,
        }


ROW_FIELDS = ("path", "probability", "label", "tiles", "crack_tiles")


def label_name(probability: float, threshold: float) -> str:
    return dataset.LABEL_NAMES[int(probability >= threshold)]


def patch_prediction(name: str, probability: float, threshold: float, truth: int | None,
                     image: np.ndarray) -> Prediction:
    """The prediction for one preprocessed (size, size, 1) patch, such as a test image."""
    probability = float(probability)
    return Prediction(path=name, probability=probability, label=label_name(probability, threshold), tiles=1,
                      crack_tiles=int(probability >= threshold), image_size=(image.shape[1], image.shape[0]),
                      truth=truth, preview=np.asarray(image[:, :, 0]))

