"""The ONNX copy of a trained model: what ``crackclf predict`` runs without TensorFlow.

Why: ``import tensorflow`` alone takes seconds, longer than classifying a folder of
patches; ONNX Runtime imports in about 0.2 s and runs the same graph as fast.

What it is: ``<stem>.onnx`` beside ``<stem>.keras``, the export of
``model.with_features(net)``: input ``image`` (N, size, size, 1) float32 of raw 0..255
grey levels, outputs ``crack_probability`` (N, 1) and ``features`` (N, D).

What it records, inside the file (ONNX ``metadata_props``, read by ONNX Runtime
without the ``onnx`` package), so that the pairing travels with the one file
wherever it goes (DVC cache, MLflow artifact, a copy next to a copied .keras):

- ``crackclf.keras_sha256``: the .keras file it was exported from; ``inference``
  uses the copy only while the .keras beside it still has this hash (a model
  retrained without re-export falls back to Keras, never answers for the old one);
- ``crackclf.mlflow_run_id``: the training's run, the pairing for ``models:/`` URIs
  (the registered Keras model is a separate save, with other bytes);
- ``crackclf.probe``: Keras' answers (probabilities and feature sums) to fixed probe
  images at export; every load reruns them (about 1 ms), so a damaged copy that still
  parses (a truncated or edited file) is refused instead of answering wrongly.
  A file cannot hold its own hash, hence this check; the file's sha256 goes to the
  MLflow run as the tag ``onnx.sha256``.

Export needs TensorFlow (tf2onnx converts a TensorFlow graph). Under another Keras
backend the model is exported by a TensorFlow-backend subprocess when TensorFlow is
installed, and skipped with one line when it is not (predict then runs on Keras).

Heavy imports (keras, onnx, tf2onnx, mlflow) stay inside the functions: ``inference``
imports this module on the ONNX path for the names, the probe and ``onnx_session``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, files, first_line, say, usable_cpus

OPSET = 17
FORMAT = "1"  # the version of the metadata below
OUTPUTS = ("crack_probability", "features")
INPUT = "image"
ARTIFACT = "onnx/model.onnx"  # the copy in the training's MLflow run, whatever the file's name
# Probabilities; feature sums are compared relative to their size. A damaged copy is off by far more;
# a sound one of a standardized-input model (train.standardize_inputs) was off by 2.1e-5 at 1e-5.
PROBE_TOLERANCE = 1e-4

# metadata_props keys
KEY_FORMAT = "crackclf.format"
KEY_KERAS_SHA256 = "crackclf.keras_sha256"
KEY_RUN_ID = "crackclf.mlflow_run_id"
KEY_SIZE = "crackclf.input_size"
KEY_FEATURE_LAYER = "crackclf.feature_layer"
KEY_PROBE = "crackclf.probe"


def onnx_path_for(keras_path: str | Path) -> Path:
    """``models/model.keras`` -> ``models/model.onnx``."""
    return Path(keras_path).with_suffix(".onnx")


def probe_images(size: int) -> np.ndarray:
    """Fixed (5, size, size, 1) float32 images, the same on every machine: all black, all white,
    a gradient, a texture and a dark one-pixel line on grey."""
    i, j = np.mgrid[0:size, 0:size]
    line = np.full((size, size), 160.0)
    line[:, size // 2] = 30.0
    images = [np.zeros((size, size)), np.full((size, size), 255.0), (i + j) * 255.0 / (2 * size - 2),
              ((i * 7) ^ (j * 13)) % 256, line]
    return np.stack(images).astype(np.float32)[..., None]


def probe_answers(probs: np.ndarray, features: np.ndarray) -> dict:
    return {"probabilities": [float(p) for p in np.ravel(probs)],
            "feature_sums": [float(s) for s in np.asarray(features, np.float64).sum(axis=1)]}


def probe_mismatch(recorded: dict, probs: np.ndarray, features: np.ndarray) -> str | None:
    """Why the answers differ from the recorded ones, or None when they agree."""
    got = probe_answers(probs, features)
    want_p = np.asarray(recorded.get("probabilities", []), np.float64)
    want_f = np.asarray(recorded.get("feature_sums", []), np.float64)
    got_p, got_f = np.asarray(got["probabilities"]), np.asarray(got["feature_sums"])
    if want_p.shape != got_p.shape or want_f.shape != got_f.shape:
        return "probe answers of another shape"
    if not np.all(np.abs(got_p - want_p) <= PROBE_TOLERANCE):
        return f"probe probabilities differ by up to {np.abs(got_p - want_p).max():.2g}"
    if not np.allclose(got_f, want_f, rtol=1e-4, atol=1e-4):
        return f"probe features differ by up to {np.abs(got_f - want_f).max():.2g}"
    return None


def onnx_session(data: bytes):
    """An ONNX Runtime CPU session on model bytes: one thread per usable CPU, errors only in the log.

    Its threads sleep between batches instead of spinning: predict decodes the next images
    in threads meanwhile, and on 2 cores a spinning thread takes their CPU (measured: 20 to
    30 % more images/s from files without spinning on a busy 2-core machine).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def save_onnx_copy(net, keras_path: str | Path, run_id: str | None = None, log: bool = False) -> Path | None:
    """Write the ONNX copy of ``net`` (saved at ``keras_path``) beside it; with ``log``, also
    into the active MLflow run (artifact ``onnx/model.onnx``, tags ``onnx.*``).

    Returns the copy's path, or None when it was skipped (no TensorFlow: one line says so;
    a stale copy of an earlier model is removed). A copy whose answers differ from
    Keras' is an error: it is never left behind.
    """
    import keras

    keras_path = Path(keras_path)
    out = onnx_path_for(keras_path)
    if keras.backend.backend() == "tensorflow":
        _export(net, keras_path, out, run_id)
    elif importlib.util.find_spec("tensorflow") is not None:
        _export_in_subprocess(keras_path, run_id)
    else:
        out.unlink(missing_ok=True)
        say(f"{out}: not written: ONNX export needs TensorFlow (tf2onnx), and the {keras.backend.backend()} "
            f"backend runs without it; predict will run on Keras")
        return None
    if log:
        _log(out)
    return out


def _export(net, keras_path: Path, out: Path, run_id: str | None) -> None:
    import keras

    from crackclf.model import feature_layer, with_features

    try:
        import onnx
        import tf2onnx  # noqa: F401 - Keras' exporter imports it; say so here if it is missing
    except ImportError as err:
        raise CrackclfError(f"{out}: cannot export ({err}; pip install -r requirements.txt)") from None
    two = with_features(net)
    size = int(net.input_shape[1])
    probe = probe_images(size)
    probs, features = (np.asarray(a) for a in two.predict_on_batch(probe))
    spec = keras.InputSpec(shape=(None, size, size, 1), dtype="float32", name=INPUT)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with _quiet():
                two.export(str(raw), format="onnx", verbose=False, input_signature=[spec], opset_version=OPSET)
        except Exception as err:  # noqa: BLE001 - tf2onnx fails in many ways; one line, the stage fails
            raise CrackclfError(f"{out}: ONNX export failed ({first_line(err)})") from None
        proto = onnx.load(str(raw))
    _name_outputs(proto, features.shape[1])
    meta = {
        KEY_FORMAT: FORMAT, KEY_KERAS_SHA256: files.sha256(keras_path), KEY_SIZE: str(size),
        KEY_FEATURE_LAYER: feature_layer(net), KEY_PROBE: json.dumps(probe_answers(probs, features)),
    }
    if run_id:
        meta[KEY_RUN_ID] = run_id
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.doc_string = "crackclf", f"ONNX copy of {keras_path.name}: outputs {', '.join(OUTPUTS)}"
    with files.atomic_path(out) as tmp_out:
        onnx.save(proto, str(tmp_out))
        _check_copy(tmp_out, probe, probs, features)  # before the rename: a bad copy never lands


def _name_outputs(proto, feature_dim: int) -> None:
    """tf2onnx names the outputs Identity:0, Identity_1:0: give them the model's names."""
    outputs = list(proto.graph.output)
    dims = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in outputs]
    if len(outputs) != 2 or dims[0][-1:] != [1] or dims[1][-1:] != [feature_dim]:
        raise CrackclfError(f"ONNX export gave outputs {dims}, expected (N, 1) and (N, {feature_dim})")
    renames = {o.name: name for o, name in zip(outputs, OUTPUTS)}
    for node in proto.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for o in outputs:
        o.name = renames[o.name]


def _check_copy(path: Path, probe: np.ndarray, probs: np.ndarray, features: np.ndarray) -> None:
    session = onnx_session(path.read_bytes())
    got = session.run(list(OUTPUTS), {INPUT: probe})
    why = probe_mismatch(probe_answers(probs, features), got[0], got[1])
    if why:
        raise CrackclfError(f"{path.name}: the ONNX copy does not answer like the Keras model ({why})")


def _export_in_subprocess(keras_path: Path, run_id: str | None) -> None:
    """Under JAX or torch: load the saved .keras on the TensorFlow backend and export it there."""
    cmd = [sys.executable, "-m", "crackclf.export", str(keras_path)] + (["--run-id", run_id] if run_id else [])
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("crackclf")] or ["(no message)"]
        raise CrackclfError(f"{onnx_path_for(keras_path)}: export on the TensorFlow backend failed: {lines[-1]}")


def _log(path: Path) -> None:
    import mlflow

    folder, name = ARTIFACT.split("/")
    mlflow.set_tags({"onnx.sha256": files.sha256(path), "onnx.opset": str(OPSET)})
    with tempfile.TemporaryDirectory() as tmp:
        if path.name != name:  # log_artifact keeps the file's name
            path = Path(shutil.copyfile(path, Path(tmp) / name))
        mlflow.log_artifact(str(path), folder)


@contextlib.contextmanager
def _quiet():
    """tf2onnx and TensorFlow's graph optimiser print through Python logging, warnings and C++
    straight to fd 2: keep the stage's stderr to its own lines."""
    import logging
    import warnings

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    os.dup2(devnull, 2)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """``python -m crackclf.export MODEL.keras [--run-id ID]``: what train runs under other backends."""
    import argparse

    from crackclf import quiet_import

    ap = argparse.ArgumentParser(prog="python -m crackclf.export", description=main.__doc__)
    ap.add_argument("model", type=Path)
    ap.add_argument("--run-id")
    args = ap.parse_args(argv)
    try:
        keras = quiet_import("keras")
        quiet_import("crackclf.model")  # the custom layers, before loading
        net = keras.saving.load_model(args.model)
        _export(net, args.model, onnx_path_for(args.model), args.run_id)
    except CrackclfError as err:
        print(f"crackclf export: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
