"""Loading a trained model and running it on batches: the one inference path of every stage.

evaluate, predict's examples and ``crackclf predict`` all load a model here and get
crack probabilities from ``Model.predict`` (and, for the unfamiliar-input check,
``Model.predict_with_features``), so they cannot disagree on how a batch is run. The
model takes raw 0..255 grayscale (N, size, size, 1) and rescales inside itself.

Two runtimes give the same answers (within 1e-5): ONNX Runtime on the ONNX copy that
train writes beside the .keras file (``export``), and Keras. ONNX is what makes a
one-photo ``crackclf predict`` answer in a fraction of a second: that path imports
neither TensorFlow, Keras nor MLflow (a ``models:/`` URI uses MLflow's client only).
``runtime="auto"`` takes the copy when it belongs to this very model (the .keras
sha256, or for a registry URI the training run, recorded in the copy) and answers
its probe images as recorded; otherwise it says why in one line and runs Keras.
``"onnx"`` makes a missing or refused copy an error; ``"keras"`` is for backend
features (Grad-CAM needs ``Model.net``).

The threshold that turns a probability into a label is the one evaluate chose for this
very model (``threshold.json`` beside the file, or the run's ``eval/threshold.json``),
else 0.5.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackclf import UsageError, dataset, export, files, first_line, progress, quiet_import, say

THRESHOLD_FILE = "threshold.json"  # written by evaluate beside the model file
THRESHOLD_ARTIFACT = "eval/threshold.json"  # the same file in the training's MLflow run
DEFAULT_THRESHOLD = 0.5
RUNTIMES = ("auto", "onnx", "keras")


class ModelError(UsageError):
    """No usable model where the user pointed: nothing can be predicted (exit 2)."""


class Model:
    """A loaded classifier: its input size, where it came from, its runtime, batched answers.

    ``net`` is the Keras model on the Keras runtime, None on ONNX (``keras_net()`` loads it).
    """

    runtime = ""
    net = None
    size: int
    source: str

    def predict(self, images: np.ndarray, batch_size: int, progress: bool = False) -> np.ndarray:
        """Crack probability of each (size, size, 1) image, batch by batch (float64, shape (N,))."""
        return self._batches(images, batch_size, progress, features=False)[0]

    def predict_with_features(self, images: np.ndarray, batch_size: int,
                              progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N,), features (N, D) float32): ``model.with_features``' two outputs."""
        return self._batches(images, batch_size, progress, features=True)

    def keras_net(self):
        """The Keras model (for backend features such as Grad-CAM); loads Keras if this runs ONNX."""
        return self.net

    def _run(self, batch: np.ndarray, features: bool) -> list[np.ndarray]:
        raise NotImplementedError

    def _batches(self, images, batch_size: int, show: bool, features: bool):
        n = len(images)
        probs = np.empty(n, np.float64)
        feats = None
        steps = -(-n // batch_size)
        with progress.Progress(n, "predict", "img", leave=False, disable=None if show and steps > 4 else True) as bar:
            for start in range(0, n, batch_size):
                batch = np.asarray(images[start:start + batch_size], np.float32)
                out = self._run(batch, features)
                probs[start:start + len(batch)] = np.asarray(out[0]).reshape(-1)
                if features:
                    if feats is None:
                        feats = np.empty((n, out[1].shape[1]), np.float32)
                    feats[start:start + len(batch)] = out[1]
                bar.update(len(batch))
        if not features:
            return probs, None
        if feats is None:  # no images: ask for the width once
            feats = np.empty((0, self._run(np.zeros((1, self.size, self.size, 1), np.float32), True)[1].shape[1]),
                             np.float32)
        return probs, feats


class KerasModel(Model):
    """Keras (TensorFlow, JAX or torch backend): ``net`` for probabilities, ``with_features(net)`` for both."""

    runtime = "keras"

    def __init__(self, net, source: str | Path):
        self.net, self.source = net, str(source)
        self.size = input_size(net)
        self._two = None

    def _run(self, batch: np.ndarray, features: bool) -> list[np.ndarray]:
        # predict_on_batch runs the compiled graph without model.predict's per-call set-up:
        # about 1.5 ms for one image against 44 ms.
        if not features:
            return [np.asarray(self.net.predict_on_batch(batch))]
        if self._two is None:
            from crackclf.model import with_features

            self._two = with_features(self.net)
        return [np.asarray(a) for a in self._two.predict_on_batch(batch)]


class OnnxModel(Model):
    """ONNX Runtime on the verified ONNX copy; Keras is loaded only if ``keras_net()`` is called."""

    runtime = "onnx"

    def __init__(self, session, source: str | Path, keras_spec: str, size: int):
        self.session, self.source, self.size = session, str(source), size
        self._keras_spec = keras_spec
        self._input = session.get_inputs()[0].name

    def _run(self, batch: np.ndarray, features: bool) -> list[np.ndarray]:
        return self.session.run(list(export.OUTPUTS if features else export.OUTPUTS[:1]), {self._input: batch})

    def keras_net(self):
        if self.net is None:
            self.net = _load_keras(self._keras_spec).net
        return self.net


def load_model(spec: str | Path, runtime: str = "auto", warn: Callable[[str], None] | None = None) -> Model:
    """A ``.keras`` file or an MLflow registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``),
    on ``runtime``: ``auto`` (ONNX when its copy is valid, else Keras with one line through
    ``warn`` saying why), ``onnx`` (a missing or refused copy is a ModelError) or ``keras``."""
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    spec = str(spec)
    if not spec.startswith("models:/") and not Path(spec).is_file():
        raise ModelError(f"{spec}: no such model file (run `dvc repro train`, or pass --model)")
    if runtime != "keras":
        try:
            return _load_onnx(spec)
        except _NoCopy as why:
            if runtime == "onnx":
                raise ModelError(f"--runtime onnx: {why}") from None
            (warn or (lambda m: say(f"crackclf: {m}")))(f"{why}; running on Keras")
    return _load_keras(spec)


def _load_keras(spec: str) -> KerasModel:
    if spec.startswith("models:/"):
        return KerasModel(_load_registered(spec), spec)
    path = Path(spec)
    keras = quiet_import("keras")
    quiet_import("crackclf.model")  # registers the custom layers before loading
    try:
        net = keras.saving.load_model(path)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a usable model
        raise ModelError(f"{path}: not a readable Keras model ({first_line(err)})") from None
    return KerasModel(net, path)


class _NoCopy(Exception):
    """No ONNX copy that may answer for this model; the message says why, in one line."""


def _load_onnx(spec: str) -> OnnxModel:
    """The verified ONNX copy for ``spec``; raises _NoCopy saying why there is none."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise _NoCopy("onnxruntime is not installed (pip install -r requirements.txt)") from None
    if spec.startswith("models:/"):
        path, data, run_id = _registered_copy(spec)
        expect = {export.KEY_RUN_ID: run_id}
    else:
        path = export.onnx_path_for(spec)
        if not path.is_file():
            raise _NoCopy(f"{path}: no ONNX copy of {spec} (trained before ONNX export, or without TensorFlow)")
        data = path.read_bytes()
        expect = {export.KEY_KERAS_SHA256: files.sha256(spec)}
    try:
        session = export.onnx_session(data)
    except Exception as err:  # noqa: BLE001 - truncated, not ONNX, an unknown op: all mean unusable
        raise _NoCopy(f"{path}: not a readable ONNX model ({first_line(err)})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(export.KEY_FORMAT) != export.FORMAT:
        raise _NoCopy(f"{path}: not an ONNX copy written by crackclf train (no record of its model)")
    for key, want in expect.items():
        if meta.get(key) != want:
            raise _NoCopy(f"{path}: the copy of another model (its recorded {key.split('.')[-1]} differs; "
                          "rerun `dvc repro train`)")
    size = _check_signature(session, path, meta)
    try:
        recorded = json.loads(meta[export.KEY_PROBE])
        got = session.run(list(export.OUTPUTS), {session.get_inputs()[0].name: export.probe_images(size)})
    except Exception as err:  # noqa: BLE001
        raise _NoCopy(f"{path}: cannot run its probe images ({first_line(err)})") from None
    if why := export.probe_mismatch(recorded, got[0], got[1]):
        raise _NoCopy(f"{path}: damaged: {why} from the answers recorded at export")
    return OnnxModel(session, spec, spec, size)


def _check_signature(session, path, meta) -> int:
    """The input size, if the session takes (N, size, size, 1) float and gives the two outputs."""
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    shape = inputs[0].shape if len(inputs) == 1 else []
    size = meta.get(export.KEY_SIZE, "")
    ok = (len(shape) == 4 and size.isdigit() and shape[1:] == [int(size), int(size), 1]
          and inputs[0].type == "tensor(float)" and outputs == list(export.OUTPUTS))
    if not ok:
        raise _NoCopy(f"{path}: inputs {[i.shape for i in inputs]} and outputs {outputs} are not a crackclf model's")
    return int(size)


def _registered_copy(uri: str) -> tuple[str, bytes, str]:
    """(what to call it, the bytes of the run's ONNX artifact, run id) for ``models:/NAME/VERSION``."""
    import tempfile

    import mlflow

    uri = resolve_model(uri)  # NAME@ALIAS: the version it names now
    name, _, number = uri.removeprefix("models:/").partition("/")
    if not number.isdigit():  # another URI form (a logged model's id): Keras loads those
        raise _NoCopy(f"{uri}: not a registered model version, so no training run to take an ONNX copy from")
    _registry()
    try:
        run_id = mlflow.MlflowClient().get_model_version(name, number).run_id
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{uri}: cannot load ({first_line(err)})") from None
    try:
        with no_mlflow_progress_bars(), tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=export.ARTIFACT, dst_path=tmp)
            return f"{uri} ({export.ARTIFACT} of run {run_id})", Path(local).read_bytes(), run_id
    except Exception:  # noqa: BLE001 - not there (a run from before ONNX export), or unreadable
        raise _NoCopy(f"{uri}: no ONNX copy in its run {run_id} (trained before ONNX export, "
                      "or without TensorFlow)") from None


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
class TileTable:
    """Every tile classified in one image, in the ORIGINAL image's pixels whatever resizing happened
    inside: the one place for per-tile data (``--tiles`` rows, crack maps, photo scoring).

    A patch is one tile ``0, 0, width, height``. Add a per-tile column as one more array here
    and in ``rows``.
    """

    boxes: np.ndarray  # (n, 4) int: x, y, width, height
    probabilities: np.ndarray  # (n,) crack probability
    unfamiliar_scores: np.ndarray | None = None  # (n,) unfamiliar-input score; None: the model has none
    unfamiliar: np.ndarray | None = None  # (n,) bool: score at or above the model's threshold

    def __len__(self) -> int:
        return len(self.probabilities)

    def rows(self, path: str, threshold: float) -> list[dict]:
        scores = self.unfamiliar_scores if self.unfamiliar_scores is not None else [None] * len(self)
        flags = self.unfamiliar if self.unfamiliar is not None else [None] * len(self)
        return [{"path": path, "x": int(x), "y": int(y), "width": int(w), "height": int(h),
                 "probability": round(float(p), 6), "label": label_name(float(p), threshold),
                 **_unfamiliar_fields(flag, score)}
                for (x, y, w, h), p, flag, score in zip(self.boxes, self.probabilities, flags, scores)]


TILE_FIELDS = ("path", "x", "y", "width", "height", "probability", "label", "unfamiliar", "unfamiliar_score")


def _unfamiliar_fields(flag, score) -> dict:
    """The unfamiliar columns: true/false and the score; null (empty in CSV) without a fitted score."""
    return {"unfamiliar": None if flag is None else bool(flag),
            "unfamiliar_score": None if score is None else round(float(score), 6)}


def csv_row(row: dict) -> dict:
    """A row for CSV: true/false as JSON writes them, not Python's True/False; None stays empty."""
    return {k: str(v).lower() if isinstance(v, bool) else v for k, v in row.items()}


@dataclass
class Prediction:
    """One image's answer: a patch, or a whole photo with its tiles (``tile_table``)."""

    path: str
    probability: float
    label: str
    tiles: int
    crack_tiles: int
    tile_table: TileTable | None = None  # set by predict for every file; None for a prepared patch
    whole_photo: bool = False  # cut into tiles (a crack map), not one patch
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the decoded image, EXIF-upright
    truth: int | None = None  # known from a Positive/ or Negative/ folder, or the manifest
    preview: np.ndarray | None = None  # 2-D uint8, for plots only
    # The unfamiliar-input flag (crackclf.unfamiliar); None where the model has no fitted score.
    # A whole photo is unfamiliar when more than half its tiles are; its score is then the tiles' lower median.
    unfamiliar: bool | None = None
    unfamiliar_score: float | None = None
    unfamiliar_tiles: int | None = None
    heat: np.ndarray | None = None  # Grad-CAM heat map (0..1) over ``preview``, for --explain only

    def row(self) -> dict:
        return {
            "path": self.path, "probability": round(self.probability, 6), "label": self.label,
            "tiles": self.tiles, "crack_tiles": self.crack_tiles,
            **_unfamiliar_fields(self.unfamiliar, self.unfamiliar_score), "unfamiliar_tiles": self.unfamiliar_tiles,
        }


ROW_FIELDS = ("path", "probability", "label", "tiles", "crack_tiles", "unfamiliar", "unfamiliar_score",
              "unfamiliar_tiles")


def label_name(probability: float, threshold: float) -> str:
    return dataset.LABEL_NAMES[int(probability >= threshold)]


def patch_prediction(name: str, probability: float, threshold: float, truth: int | None,
                     image: np.ndarray) -> Prediction:
    """The prediction for one preprocessed (size, size, 1) patch, such as a test image."""
    probability = float(probability)
    return Prediction(path=name, probability=probability, label=label_name(probability, threshold), tiles=1,
                      crack_tiles=int(probability >= threshold), image_size=(image.shape[1], image.shape[0]),
                      truth=truth, preview=np.asarray(image[:, :, 0]))

