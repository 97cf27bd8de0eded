"""KERAS_BACKEND=jax, as the README offers it: `crackclf train` and `crackclf predict` in processes
of their own (the backend is chosen when Keras is first imported, so not in this TensorFlow process).

The model is ``synth.TINY_PARAMS``' CNN on the session's synthetic prepared splits; the store is a
temporary SQLite file, and no DVC or MLflow variable of the caller's reaches the processes.
"""

import csv
import json
import shutil
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

import synth
from contracts import backend_gpus, check_device_tags
from workspace import crackclf

pytestmark = pytest.mark.slow
JAX = {"KERAS_BACKEND": "jax"}


@pytest.fixture(scope="module")
def jax_trained(prepared_dir, tmp_path_factory) -> dict:
    """One `crackclf train` under JAX (about 30 s on 2 cores, most of it imports and XLA compiling)."""
    ws = tmp_path_factory.mktemp("jax")
    (ws / "params.yaml").write_text(yaml.safe_dump(synth.TINY_PARAMS))
    store = f"sqlite:///{ws / 'mlflow.db'}"
    done = crackclf(ws, "train", prepared_dir, MLFLOW_TRACKING_URI=store, **JAX)
    return {"ws": ws, "store": store, "done": done}


def test_train_under_jax_learns_and_tracks_the_backend(jax_trained):
    ws, done = jax_trained["ws"], jax_trained["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    model_path = ws / "models" / "model.keras"
    info = json.loads((ws / "models" / "mlflow_run.json").read_text())
    assert model_path.is_file() and info["run_id"] in done.stdout.splitlines()[-1]  # the summary line
    metrics = json.loads((ws / "metrics" / "train.json").read_text())
    assert metrics["epochs"] == synth.TINY_PARAMS["train"]["epochs"] and metrics["best"]["val_accuracy"] >= 0.8

    run = mlflow.MlflowClient(tracking_uri=jax_trained["store"]).get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["keras.backend"] == "jax" and tags["jax.version"] == metadata.version("jax")
    check_device_tags(tags, gpus=backend_gpus("jax"))


def read_predictions(path: Path) -> dict[str, float]:
    """path -> probability, after checking each row's label against the 0.5 threshold."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        p = float(row["probability"])
        assert 0.0 <= p <= 1.0 and row["label"] == ("crack" if p >= 0.5 else "no_crack"), row
    return {row["path"]: float(row["probability"]) for row in rows}


def test_predict_under_jax_classifies_new_images(jax_trained, tmp_path):
    ws = jax_trained["ws"]
    assert jax_trained["done"].returncode == 0, "training failed: see the test above"
    photos = synth.write_dataset(tmp_path / "photos", 10, seed=11)  # unseen patches, 227 px like the dataset's
    # The model alone: no ONNX copy beside it, so predict runs Keras, on JAX.
    keras_only = tmp_path / "keras_only" / "model.keras"
    keras_only.parent.mkdir()
    shutil.copy(ws / "models" / "model.keras", keras_only)
    on_jax = crackclf(ws, "predict", photos, "--model", keras_only, "--threshold", "0.5",
                      "--output", tmp_path / "jax.csv", **JAX)
    assert on_jax.returncode == 0, on_jax.stderr[-3000:]
    assert "running on Keras" in on_jax.stderr  # inference.load_model's one line: no copy, so Keras
    probs = read_predictions(tmp_path / "jax.csv")
    assert len(probs) == 20
    right = sum((p >= 0.5) == (Path(path).parent.name == "Positive") for path, p in probs.items())
    assert right >= 16, f"{right} of 20 right"  # chance is 10

    # Beside the trained model, the ONNX copy train exported through a TensorFlow process from the
    # model JAX trained: the same answers.
    assert (ws / "models" / "model.onnx").is_file()
    on_onnx = crackclf(ws, "predict", photos, "--model", ws / "models" / "model.keras", "--threshold", "0.5",
                       "--output", tmp_path / "onnx.csv", **JAX)
    assert on_onnx.returncode == 0 and "running on Keras" not in on_onnx.stderr, on_onnx.stderr[-3000:]
    onnx_probs = read_predictions(tmp_path / "onnx.csv")
    assert onnx_probs.keys() == probs.keys()
    np.testing.assert_allclose([onnx_probs[k] for k in probs], list(probs.values()), atol=1e-4)


def test_train_under_jax_prints_only_its_summary(jax_trained):
    done = jax_trained["done"]
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("models/model.keras: best epoch"), done.stdout[-500:]
