"""The MLflow images model: image file bytes in, ``crackclf predict``'s answer out, one row per image.

Why a second registered model: the Keras model (``crackclf``) keeps its pixel-tensor
signature, so ``mlflow.keras.load_model`` works on it, but a client of
``mlflow models serve`` then has to decode and resize images itself, and a 64-image
request is 6.9 MB of JSON that the scoring server turns into one Python object per
pixel. This pyfunc takes a DataFrame column ``image`` of image file bytes (MLflow's
convention for images: a ``binary`` column, base64-encoded in JSON, which the scoring
server decodes) and runs each through ``predict.predict_image``: the decode, EXIF
orientation, tiling, scale and threshold of ``crackclf predict``. It returns one row per
image: ``probability, label, tiles, crack_tiles, unfamiliar, error``. Bytes that are not a
readable image get their message in ``error`` (empty otherwise), probability NaN, label
empty and 0 tiles, so that one bad file in a Spark partition does not fail the others; empty
strings rather than nulls because MLflow's ``spark_udf`` casts a column that mixes nulls and
values to its Spark type (a null string becomes "None", a null count fails).

Images of a call are decoded in threads and their tiles share batches
(``batching.SharedBatches``). The model file travels as the pyfunc's artifacts
(``model.keras``, its ONNX copy when there is one, which then runs it, and the
unfamiliar-input score ``unfamiliar.npz`` when evaluate fitted one, which adds the flag);
the threshold and the ``predict.*`` tiling settings are its ``model_config``.

The ``publish`` stage (``crackclf publish``, after evaluate) calls :func:`follow_champion`
when the trained Keras version is ``@champion``: it logs this model into the same run, registers it as ``<name>-images`` and moves that
model's ``@champion`` too, so ``models:/crackclf-images@champion`` always answers with
the champion's weights and threshold. It needs crackclf installed where it is loaded
(``--env-manager local``, Spark executors with the project's environment).
"""

from __future__ import annotations

import base64
import binascii
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("probability", "label", "tiles", "crack_tiles", "unfamiliar", "error")
SUFFIX = "-images"  # crackclf -> crackclf-images
ALIAS = "champion"
TAG_SOURCE = "keras_model_version"  # the Keras version an images version wraps
TAG_THRESHOLD = "threshold"
TAG_PREDICT = "predict"  # the predict.* settings it cuts photos with, as JSON
SPARK_RESULT_TYPE = ("probability double, label string, tiles long, crack_tiles long, "
                     "unfamiliar boolean, error string")


def images_model_name(keras_name: str) -> str:
    return keras_name + SUFFIX


class ImagesModel(mlflow.pyfunc.PythonModel):
    """Image file bytes (or base64 text) in column ``image`` -> one row per image."""

    _skip_type_hint_validation = True  # the signature checks the input; no type-hint validation (and its warning)

    def load_context(self, context) -> None:
        from crackclf import config, inference, unfamiliar, usable_cpus
        from crackclf.batching import SharedBatches

        cfg = context.model_config
        self.params = config.parse({"predict": cfg["predict"]})
        self.threshold = float(cfg["threshold"])
        path = context.artifacts["model"]
        model = inference.load_model(path, runtime="auto", warn=lambda m: None)
        self.scorer = unfamiliar.find(path, lambda m: None)  # unfamiliar.npz travelled beside it, if fitted
        self.batches = SharedBatches(model, self.params.predict.batch_size, features=self.scorer is not None)
        self.workers = max(4, 4 * usable_cpus())  # most wait on the shared batch, not on a core

    def predict(self, context, model_input, params=None):
        import pandas as pd

        column = model_input[IMAGE_COLUMN] if IMAGE_COLUMN in model_input.columns else model_input.iloc[:, 0]
        values = list(column)
        with ThreadPoolExecutor(min(self.workers, max(1, len(values)))) as pool:
            rows = list(pool.map(self._one, values, range(len(values))))
        types = {"probability": float, "tiles": "int64", "crack_tiles": "int64"}
        return pd.DataFrame({col: pd.Series([r[col] for r in rows], dtype=types.get(col, object))
                             for col in OUTPUT_COLUMNS})

    def _one(self, value, index: int) -> dict:
        from crackclf import imaging
        from crackclf.predict import predict_image

        try:
            data = as_bytes(value)
            pred = predict_image(self.batches, data, f"image {index}", self.threshold, self.params,
                                 scorer=self.scorer)
        except (imaging.ImageError, ValueError) as err:
            return {"probability": float("nan"), "label": "", "tiles": 0, "crack_tiles": 0, "unfamiliar": None,
                    "error": getattr(err, "detail", None) or str(err)}
        unfamiliar = getattr(pred, "unfamiliar", None)
        return {"probability": pred.probability, "label": pred.label, "tiles": pred.tiles,
                "crack_tiles": pred.crack_tiles, "unfamiliar": None if unfamiliar is None else bool(unfamiliar),
                "error": ""}


def as_bytes(value) -> bytes:
    """An image's file bytes from a cell: bytes as they are, text as base64."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            raise ValueError("not base64 text") from None
    raise ValueError(f"expected image bytes or base64 text, got {type(value).__name__}")


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label"), ColSpec("long", "tiles"),
                        ColSpec("long", "crack_tiles"), ColSpec("boolean", "unfamiliar", required=False),
                        ColSpec("string", "error")]),
    )


def model_files(model_path: Path) -> dict[str, str]:
    """The model file and what predict finds beside it (its ONNX copy, the unfamiliar-input score),
    as artifacts: they land side by side again, so the same lookups find them."""
    from crackclf import export, unfamiliar

    model_path = Path(model_path)
    files = {"model": str(model_path)}
    for key, other in (("onnx", export.onnx_path_for(model_path)), ("unfamiliar", model_path.with_name(unfamiliar.FILE))):
        if other.is_file():
            files[key] = str(other)
    return files


def predict_settings(params) -> dict:
    """The ``predict.*`` settings that decide an images model's answers (not the pipeline's examples)."""
    return params.predict.model_dump(mode="json", exclude={"images", "examples_per_class"})


def log_images_model(model_path: Path, threshold: float, params, registered_name: str | None = None):
    """Log the images model into the active run (and register it); returns MLflow's ModelInfo."""
    from importlib import metadata

    from crackclf import tracking

    reqs = tracking.pip_requirements()
    for name in ("pillow", "pandas", "pydantic", "pyyaml", "onnxruntime"):
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return mlflow.pyfunc.log_model(
        name="images", python_model=ImagesModel(), artifacts=model_files(model_path),
        model_config={"threshold": float(threshold), "predict": predict_settings(params)},
        signature=signature(), pip_requirements=reqs, registered_model_name=registered_name,
    )


def follow_champion(client, keras_name: str, keras_version: str, run_id: str, model_path: Path,
                    threshold: float, params) -> str:
    """Make ``<keras_name>-images@champion`` wrap ``keras_version`` with ``threshold``; one line saying what.

    Registers a new images version only when the current one wraps another version, threshold or
    ``predict.*`` tiling.
    """
    from mlflow.exceptions import MlflowException

    name = images_model_name(keras_name)
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
        if (current.tags.get(TAG_SOURCE) == str(keras_version)
                and current.tags.get(TAG_THRESHOLD) == repr(float(threshold))
                and current.tags.get(TAG_PREDICT) == json.dumps(predict_settings(params), sort_keys=True)):
            return f"{name} version {current.version} already wraps it"
    except MlflowException:
        pass
    import logging
    import warnings

    from crackclf.inference import no_mlflow_progress_bars

    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # MLflow's notes on cloudpickle and missing input examples
    try:
        with warnings.catch_warnings(), no_mlflow_progress_bars(), mlflow.start_run(run_id=run_id):
            warnings.simplefilter("ignore", UserWarning)
            info = log_images_model(model_path, threshold, params, registered_name=name)
    finally:
        quiet.setLevel(level)
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, TAG_SOURCE, str(keras_version))
    client.set_model_version_tag(name, version, TAG_THRESHOLD, repr(float(threshold)))
    client.set_model_version_tag(name, version, TAG_PREDICT, json.dumps(predict_settings(params), sort_keys=True))
    client.set_registered_model_alias(name, ALIAS, version)
    return f"{name} version {version} (image bytes in) is its {ALIAS} too"


def main(args, params, stop=None) -> int:
    """``crackclf publish``: a stage of its own after evaluate, so evaluate runs no prediction code."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from crackclf import files, first_line, say, tracking
    from crackclf.inference import default_threshold

    record = {"images_model": None}
    if not Path(args.run_file).is_file():
        record["reason"] = f"no run file {args.run_file}: train did not log to MLflow"
    else:
        info = tracking.read_run_file(args.run_file)
        name, version = info.get("registered_model"), info.get("model_version")
        tracking.check_store(tracking.configure())
        try:
            client = MlflowClient()
            try:
                champion = str(client.get_model_version_by_alias(name, ALIAS).version) if name else None
            except MlflowException:
                champion = None
            if not version or champion != str(version):
                record["reason"] = (f"{name} version {version} is not the {ALIAS} ({champion or 'none'}): "
                                    "the images model stays as it is")
            else:
                threshold = default_threshold(args.model, say)
                record.update(message=follow_champion(client, name, str(version), info["run_id"], Path(args.model),
                                                      threshold, params),
                              images_model=images_model_name(name), keras_version=str(version),
                              threshold=threshold)
        except MlflowException as err:
            raise tracking.TrackingError(f"MLflow: {first_line(err)}") from None
    files.write_json(args.output, record)
    print(f"crackclf publish: {record.get('message') or record['reason']}")
    return 0
