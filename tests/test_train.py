"""Train stage: it learns, tracks every run in MLflow, resumes, and refuses bad params early.

Every MLflow store lives in a temporary folder (MLFLOW_TRACKING_URI), never in the repo.
"""

import copy
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml

import synth
from crackclf import CrackclfError, batches, checkpoint, config, dataset, devices, train
from crackclf.config import ConfigError
from contracts import backend_gpus, check_device_tags
from mlflow_server import tracking_to
from workspace import crackclf



def params_with(**train_overrides) -> config.Params:
    data = copy.deepcopy(synth.TINY_PARAMS)
    data["train"].update(train_overrides)
    return config.parse(data)


def outputs(root: Path) -> dict:
    return {
        "model_path": root / "models" / "model.keras",
        "metrics_path": root / "metrics" / "train.json",
        "history_path": root / "plots" / "train" / "history.csv",
        "run_file": root / "models" / "mlflow_run.json",
    }


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the runs of this module, in a temporary folder."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session", autouse=True)
def _restore_tf_state():
    """train.deterministic switches TensorFlow's op determinism on for the process: switch it back."""
    yield
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


def train_run(params, prepared_dir, root: Path, store: str, **kwargs) -> dict:
    with tracking_to(store):
        return train.run(params, prepared_dir, **outputs(root), **kwargs)


@pytest.fixture(scope="session")
def trained(prepared_dir, store, tmp_path_factory) -> dict:
    """One deterministic training of the tiny configuration, shared by the tests that read its results."""
    root = tmp_path_factory.mktemp("trained")
    params = params_with(deterministic=True, plain_negatives=0.2)
    result = train_run(params, prepared_dir, root, store)
    return {"root": root, "params": params, "result": result, **outputs(root)}


def weights(path) -> list[np.ndarray]:
    return keras.saving.load_model(path).get_weights()


def test_learns_synthetic_cracks(trained, prepared_dir):
    x, y = dataset.load_split(prepared_dir, "test")
    model = keras.saving.load_model(trained["model_path"])
    prob = model.predict(np.asarray(x), verbose=0)[:, 0]
    assert ((prob >= 0.5) == y).mean() >= 0.8
    # train.plain_negatives: flat fields, gradients and edges it never saw are not cracks, black included
    # (the same tiny model trained without them: 43 % of these below 0.5, black at 0.9996).
    plain = batches.plain_negatives(30, x.shape[1], seed=99)
    assert (model.predict(plain, verbose=0)[:, 0] < 0.5).mean() >= 0.8
    assert model.predict(np.zeros((1, *x.shape[1:]), np.uint8), verbose=0)[0, 0] < 0.5

    metrics = json.loads(trained["metrics_path"].read_text())
    assert metrics["epochs"] == 8 and 1 <= metrics["best_epoch"] <= 8
    # metrics/train.json keeps 6 decimals: rounding moves a value by at most 5e-7
    assert metrics["best"]["val_loss"] == pytest.approx(min(r["val_loss"] for r in trained["result"]["history"]), abs=1e-6)
    assert metrics["best"]["val_accuracy"] >= 0.8
    assert metrics["images_per_s"] > 0 and metrics["wall_time_s"] > 0

    with open(trained["history_path"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(train.HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert float(rows[-1]["val_loss"]) == pytest.approx(metrics["final"]["val_loss"], abs=1e-6)

    # Nothing left behind: no checkpoint, no temporary files.
    assert sorted(p.name for p in trained["model_path"].parent.iterdir()) == [
        "mlflow_run.json", "model.keras", "model.onnx"]
    assert [p.name for p in trained["metrics_path"].parent.iterdir()] == ["train.json"]


def test_mlflow_run_holds_params_curves_tags_and_model(trained, store):
    info = json.loads(trained["run_file"].read_text())
    assert set(info) == {"run_id", "experiment_id", "tracking_uri", "registered_model", "model_version"}
    assert info["tracking_uri"] == store and info["registered_model"] == "crackclf"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(info["experiment_id"]).name == "crackclf"

    flat = config.flatten(trained["params"])
    assert {k: run.data.params[k] for k in flat} == {k: str(v) for k, v in flat.items()}
    history = trained["result"]["history"]
    for name in train.METRICS:
        points = client.get_metric_history(info["run_id"], name)
        assert [p.step for p in points] == list(range(1, 9))
        assert [p.value for p in points] == pytest.approx([r[name] for r in history])
    assert run.data.metrics["images_per_s"] > 0 and run.data.metrics["wall_time_s"] > 0

    tags = run.data.tags
    assert tags["keras.version"] == keras.__version__ and tags["keras.backend"] == "tensorflow"
    assert tags["tensorflow.version"]
    check_device_tags(tags, gpus=backend_gpus())  # "N x <GPU>" where the backend sees N GPUs, else "CPU ..."
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()

    # The artifacts sit beside the temporary store, not in the current directory.
    assert Path(run.info.artifact_uri).is_relative_to(Path(store.removeprefix("sqlite:///")).parent)


def test_model_from_registry_predicts_like_the_file(trained, store, prepared_dir):
    info = json.loads(trained["run_file"].read_text())
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    version = mlflow.MlflowClient().get_model_version("crackclf", str(info["model_version"]))
    assert version.run_id == info["run_id"] and version.status == "READY"

    x = np.asarray(dataset.load_split(prepared_dir, "test")[0], np.float32)
    expected = keras.saving.load_model(trained["model_path"]).predict(x, verbose=0)
    from_registry = mlflow.keras.load_model(f"models:/crackclf/{info['model_version']}")
    np.testing.assert_allclose(from_registry.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{info['run_id']}/model")
    np.testing.assert_allclose(pyfunc.predict(x[:5]), expected[:5], rtol=1e-6, atol=1e-7)
    assert pyfunc.metadata.get_input_schema().inputs[0].shape == (-1, 48, 48, 1)


def test_onnx_copy_written_logged_and_used_for_file_and_registry(trained, store, prepared_dir, tmp_path):
    """model.onnx beside model.keras and in the run (onnx/model.onnx); both model specs run it,
    answering like Keras; a registry URI loads it through MLflow's client without TensorFlow."""
    from crackclf import export, files, inference

    info = json.loads(trained["run_file"].read_text())
    onnx_file = trained["model_path"].with_suffix(".onnx")
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    tags = client.get_run(info["run_id"]).data.tags
    assert tags["onnx.sha256"] == files.sha256(onnx_file) and tags["onnx.opset"] == str(export.OPSET)
    logged = mlflow.artifacts.download_artifacts(run_id=info["run_id"], artifact_path="onnx/model.onnx",
                                                 dst_path=str(tmp_path), tracking_uri=store)
    assert files.sha256(logged) == files.sha256(onnx_file)

    x = np.asarray(dataset.load_split(prepared_dir, "test")[0])
    expected = inference.load_model(trained["model_path"], "keras").predict(x, 64)
    uri = f"models:/crackclf/{info['model_version']}"
    with tracking_to(store):
        for spec in (trained["model_path"], uri):
            lines = []
            model = inference.load_model(spec, "auto", lines.append)
            assert (model.runtime, lines) == ("onnx", []), spec
            np.testing.assert_allclose(model.predict(x, 64), expected, rtol=0, atol=1e-5)

    image = tmp_path / "patch.png"
    synth.patch(np.random.default_rng(0), True).save(image)
    code = (f"import sys; from crackclf import cli; c = cli.main(['predict', {str(image)!r}, '--model', {uri!r}, "
            "'--runtime', 'onnx']); print('RESULT', c, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'keras'}), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": store})
    assert "RESULT 0 []" in done.stderr, done.stderr[-2000:]


def test_same_params_give_identical_weights(trained, prepared_dir, store, tmp_path):
    train_run(trained["params"], prepared_dir, tmp_path, store)
    for a, b in zip(weights(trained["model_path"]), weights(outputs(tmp_path)["model_path"]), strict=True):
        np.testing.assert_array_equal(a, b)


class _InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch + 1)


def test_interrupted_run_resumes_where_it_stopped(prepared_dir, store, tmp_path):
    # Dropout and augmentation too: their RNG state must come back with the weights.
    params = params_with(deterministic=True, dropout=0.2, augment=True, epochs=5, early_stopping_patience=5)
    train_run(params, prepared_dir, tmp_path / "whole", store)

    with pytest.raises(KeyboardInterrupt):
        train_run(params, prepared_dir, tmp_path / "cut", store, callbacks=[_InterruptAfter(3)])
    paths = outputs(tmp_path / "cut")
    assert not paths["model_path"].exists() and not paths["run_file"].exists()
    kept = paths["model_path"].parent / ".model.keras.checkpoint"
    assert (kept / "epoch-0003" / "state.json").exists()
    client = mlflow.MlflowClient(tracking_uri=store)
    cut_run = client.get_run(json.loads((kept / "epoch-0003" / "state.json").read_text())["run_id"])
    assert cut_run.info.status == "FAILED"
    assert [p.step for p in client.get_metric_history(cut_run.info.run_id, "val_loss")] == [1, 2, 3]

    epochs = _Epochs()
    resumed = train_run(params, prepared_dir, tmp_path / "cut", store, callbacks=[epochs])
    assert epochs.seen == [4, 5]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4, 5]
    assert not kept.exists()
    run = client.get_run(resumed["run"]["run_id"])
    assert run.data.tags["resumed_from_run"] == cut_run.info.run_id
    assert [p.step for p in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4, 5]
    # Same batches, same optimizer and RNG state: the resumed run ends where an uninterrupted one does.
    for a, b in zip(weights(outputs(tmp_path / "whole")["model_path"]), weights(paths["model_path"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fresh_ignores_the_checkpoint(prepared_dir, store, tmp_path):
    params = params_with(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train_run(params, prepared_dir, tmp_path, store, callbacks=[_InterruptAfter(1)])
    epochs = _Epochs()
    train_run(params, prepared_dir, tmp_path, store, fresh=True, callbacks=[epochs])
    assert epochs.seen == [1, 2]


def test_resume_after_early_stopping_trains_no_more(prepared_dir, store, tmp_path):
    """Early stopping had ended the try, which was cut while writing its outputs: just finish them."""
    params = params_with(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_run(params, prepared_dir, tmp_path, store, callbacks=[_InterruptAfter(2)])
    state_file = outputs(tmp_path)["model_path"].parent / ".model.keras.checkpoint" / "epoch-0002" / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "stopped": True}))
    epochs = _Epochs()
    result = train_run(params, prepared_dir, tmp_path, store, callbacks=[epochs])
    assert epochs.seen == [] and result["metrics"]["epochs"] == 2
    assert outputs(tmp_path)["model_path"].exists()


def test_interrupt_while_saving_reports_the_saved_epochs(prepared_dir, store, tmp_path, monkeypatch, capsys):
    """Epoch 2 is in the history but not yet in the checkpoint: only epoch 1 is kept."""
    save = checkpoint.Checkpoint.save

    def save_then_cut(self, model, state, best_weights):
        if len(state["history"]) == 2:
            raise KeyboardInterrupt
        save(self, model, state, best_weights)

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save_then_cut)
    with pytest.raises(KeyboardInterrupt):
        train_run(params_with(epochs=3), prepared_dir, tmp_path, store)
    assert "interrupted: epochs 1-1 are kept" in capsys.readouterr().err


def test_precision_policy_is_restored_on_error(prepared_dir, tmp_path, monkeypatch):
    before = keras.mixed_precision.global_policy().name
    monkeypatch.setattr(train, "fingerprint", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train.run(params_with(mixed_precision="on"), prepared_dir, **outputs(tmp_path))
    assert keras.mixed_precision.global_policy().name == before


def test_checkpoint_of_other_params_is_ignored(tmp_path):
    model = params_with()
    net = train.compile_model(train.build_model(model.train, 48), model.train)
    history = [{"epoch": 1, "loss": 0.5, "train_s": 1.0, "epoch_s": 1.0}]
    checkpoint.Checkpoint(tmp_path / "model.keras", "params-a").save(net, {"history": history}, None)
    assert checkpoint.Checkpoint(tmp_path / "model.keras", "params-a").load()["history"] == history
    assert checkpoint.Checkpoint(tmp_path / "model.keras", "params-b").load() is None
    assert not (tmp_path / ".model.keras.checkpoint").exists()


@pytest.mark.parametrize("seed", [0, 42, None])
def test_augmentation_reaches_all_eight_orientations(seed):
    """Each flip and the transpose need a coin of their own, or some orientations never occur."""
    quadrants = np.array([[10, 20], [30, 40]])
    image = np.kron(quadrants, np.ones((24, 24)))[None, :, :, None]  # 48 px: the tiny model's input
    batch = np.repeat(image, 256, axis=0).astype(np.float32)

    def orientations(augment: bool) -> set:
        model = train.build_model(params_with(augment=augment).train, 48, seed)
        front = keras.Model(model.input, model.get_layer("conv1").input)  # what the convolutions see
        out = np.rint(keras.ops.convert_to_numpy(front(batch, training=True)) * 255).astype(int)
        return {tuple(o[::24, ::24, 0].ravel().tolist()) for o in out}

    dihedral = {tuple(np.rot90(q, k).ravel().tolist()) for q in (quadrants, quadrants.T) for k in range(4)}
    assert len(dihedral) == 8 and orientations(True) == dihedral
    assert orientations(False) == {(10, 20, 30, 40)}


@pytest.mark.parametrize(("key", "value"), [("dropout", -0.1), ("optimizer", "sgd")])
def test_bad_param_fails_before_training(prepared_dir, tmp_path, key, value):
    data = copy.deepcopy(synth.TINY_PARAMS)
    data["train"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    proc = crackclf(tmp_path, "train", prepared_dir, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crackclf train: error: ") and f"train.{key}" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no model, no store


def test_data_of_another_size_is_refused(prepared_dir, tmp_path):
    data = copy.deepcopy(synth.TINY_PARAMS)
    data["preprocess"]["image_size"] = 64
    with pytest.raises(CrackclfError, match="image_size is 64"):
        train.run(config.parse(data), prepared_dir, **outputs(tmp_path))


def test_distribution_needs_tensorflow(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ConfigError, match="train.distribute: 'mirrored' needs the TensorFlow backend"):
        devices.strategy("mirrored")
    assert devices.strategy("auto") is None and devices.strategy("none") is None


@pytest.mark.parametrize("mode", ["multi_worker", "auto"])
def test_multi_host_is_refused_clearly(monkeypatch, mode):
    cluster = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ConfigError, match="keras-team/keras#20585"):
        devices.strategy(mode)


@pytest.mark.parametrize(
    ("mode", "gpus", "policy"),
    [
        ("auto", [], "float32"),
        ("auto", [("NVIDIA H100", (9, 0)), ("NVIDIA H100", (9, 0))], "mixed_float16"),
        ("auto", [("Tesla K80", (3, 7))], "float32"),  # no tensor cores: float16 would be slower
        ("on", [], "mixed_float16"),
        ("off", [("NVIDIA H100", (9, 0))], "float32"),
    ],
)
def test_mixed_precision_policy(mode, gpus, policy):
    before = keras.mixed_precision.global_policy()
    try:
        assert devices.set_precision(mode, gpus) == policy
        assert keras.mixed_precision.global_policy().name == policy
    finally:
        keras.mixed_precision.set_global_policy(before)


def test_array_batches_reshuffle_per_epoch_and_resume_alike():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10) % 2
    data = batches.ArrayBatches(x, y, batch_size=4, seed=7)
    orders = []
    for _ in range(3):
        data.on_epoch_begin()
        seen = np.concatenate([data[i][0].ravel() for i in range(len(data))])
        assert sorted(seen) == list(range(10)) and len(data) == 3
        orders.append(data.order.tolist())
        data.on_epoch_end()
    assert orders[0] != orders[1] != orders[2]
    resumed = batches.ArrayBatches(x, y, batch_size=4, seed=7, first_epoch=2)
    assert resumed.order.tolist() == orders[2]
    assert batches.ArrayBatches(x, y, batch_size=4).order.tolist() == list(range(10))


def test_tf_epochs_depend_only_on_seed_and_epoch():
    x = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    y = np.zeros(12, np.float32)

    def epochs(first):
        ds = batches.tf_train_dataset(x, y, batch_size=5, seed=3, epochs=range(first, 4))
        flat = np.concatenate([b[0].numpy().ravel() for b in ds])
        return flat.reshape(-1, 12).tolist()

    whole = epochs(0)
    assert len(whole) == 4 and all(sorted(e) == list(range(12)) for e in whole)
    assert len({tuple(e) for e in whole}) == 4
    assert epochs(2) == whole[2:]


@pytest.mark.parametrize("backend", ["tf.data", "arrays"])
def test_validation_weighs_images_as_training_repeats_them(backend, monkeypatch):
    """val_loss is the weighted mean loss (weights scaled to mean 1), in both input pipelines."""
    x = _textures(10, 4)
    y = np.array([1, 0] * 5, np.float32)
    repeats = np.array([4, 1, 4, 1, 4, 1, 1, 1, 1, 1], np.float32)
    if backend == "arrays":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    inputs = batches.Inputs(x, y, x, y, batch_size=4, seed=0, first_epoch=0, epochs=1, val_weights=repeats)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    p = np.clip(model.predict(x, verbose=0).ravel(), 1e-7, 1 - 1e-7)
    per_image = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    weighted = np.mean(per_image * repeats / repeats.mean())
    assert model.evaluate(inputs.val, verbose=0) == pytest.approx(weighted, rel=1e-4)
    assert abs(weighted - per_image.mean()) > 1e-3  # the weights matter here


def _textures(n: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def test_jpeg_augmentation_degrades_like_a_camera_and_repeats_on_resume():
    from PIL import Image

    x = _textures(6)
    low = batches.jpeg_batch(x, 10, [1, 2])
    assert low.shape == x.shape and low.dtype == np.uint8
    assert np.array_equal(low, batches.jpeg_batch(x, 10, [1, 2]))  # the seed decides
    assert not np.array_equal(low, batches.jpeg_batch(x, 10, [1, 3]))
    # Each image equals itself saved at some quality in [10, 95]: a real JPEG round trip, not noise.
    for image, got in zip(x, low):
        def saved(q):
            buf = io.BytesIO()
            Image.fromarray(image[..., 0]).save(buf, "JPEG", quality=q)
            return np.asarray(Image.open(buf))
        assert any(np.array_equal(got[..., 0], saved(q)) for q in range(10, 96))
    # Lower quality loses more of the fine texture (the thin-crack detail).
    err = lambda q: np.abs(batches.jpeg_batch(x, q, [0]).astype(int) - x).mean()  # noqa: E731
    assert err(5) > err(90) > 0

    y = np.zeros(6, np.float32)
    flat = lambda first: [b[0].numpy() for b in batches.tf_train_dataset(  # noqa: E731
        x, y, batch_size=4, seed=3, epochs=range(first, 3), jpeg=20)]
    whole, resumed = flat(0), flat(1)
    assert len(whole) == 6 and all(b.dtype == np.uint8 for b in whole)
    assert all(np.array_equal(a, b) for a, b in zip(whole[2:], resumed))  # the same draws after resuming
    plain = [b[0].numpy() for b in batches.tf_train_dataset(x, y, batch_size=4, seed=3, epochs=range(3))]
    assert not any(np.array_equal(a, b) for a, b in zip(whole, plain))

    arrays = batches.ArrayBatches(x, y, batch_size=4, seed=3, jpeg=20)
    first = arrays[0][0]
    assert np.array_equal(first, arrays[0][0]) and not np.array_equal(first, x[np.sort(arrays.order[:4])])
    assert np.array_equal(batches.ArrayBatches(x, y, batch_size=4, seed=3)[0][0], x[np.sort(arrays.order[:4])])


def test_plain_negatives_are_flat_fields_gradients_and_edges_labelled_no_crack():
    drawn = batches.plain_negatives(30, 64, seed=4)
    assert drawn.shape == (30, 64, 64, 1) and drawn.dtype == np.uint8
    assert np.array_equal(drawn, batches.plain_negatives(30, 64, seed=4))  # the seed decides
    smooth = [np.abs(np.diff(img[..., 0].astype(float), axis=a)).mean() for img in drawn for a in (0, 1)]
    assert max(smooth) < 12  # no texture beyond sensor noise: nothing a crack could hide in
    levels = np.array([img.mean() for img in drawn])
    assert levels.min() < 60 and levels.max() > 190  # dark borders to bright walls
    spans = np.array([np.percentile(img, 95) - np.percentile(img, 5) for img in drawn])
    assert (spans > 80).sum() >= 5  # edges and gradients, not only flat fields

    x = np.full((20, 64, 64, 1), 128, np.uint8)
    y = np.ones(20, np.float32)
    x2, y2 = batches.with_drawn_images(x, y, 0.25, 0.0, seed=4)
    assert len(x2) == len(y2) == 25 and y2[20:].tolist() == [0] * 5 and np.array_equal(x2[:20], x)
    x3, y3 = batches.with_drawn_images(x, y, 0.0, 0.0, seed=4)
    assert x3 is x and y3 is y


def test_joint_negatives_are_own_no_crack_images_with_one_straight_groove():
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(150, 10, (40, 64, 64, 1)), 0, 255).astype(np.uint8)
    y = np.r_[np.ones(20), np.zeros(20)].astype(np.float32)
    x2, y2 = batches.with_drawn_images(x, y, 0.0, 0.25, seed=4)
    assert len(x2) == len(y2) == 50 and y2[40:].tolist() == [0] * 10 and np.array_equal(x2[:40], x)
    assert np.array_equal(x2, batches.with_drawn_images(x, y, 0.0, 0.25, seed=4)[0])  # the seed decides
    for drawn in x2[40:]:
        source = next(i for i in range(20, 40) if (x[i].astype(int) - drawn >= 0).all())  # a no-crack image
        groove = x[source, ..., 0].astype(int) - drawn[..., 0]
        assert groove.max() > 10  # darker, and only darker
        rows, cols = np.nonzero(groove > 5)
        # one straight line: the grooved pixels lie along a single direction
        spread = np.linalg.svd(np.c_[rows - rows.mean(), cols - cols.mean()], compute_uv=False)
        assert spread[1] < 0.1 * spread[0]
    assert batches.with_drawn_images(x, y, 0.0, 0.0, seed=4)[0] is x
    assert batches.with_drawn_images(x, np.ones(40, np.float32), 0.0, 0.5, seed=4)[0] is x  # no no-crack image
    both, labels = batches.with_drawn_images(x, y, 0.25, 0.25, seed=4)  # shares of the split as given
    assert len(both) == len(labels) == 60 and labels[40:].tolist() == [0] * 20


def test_contrast_negatives_are_own_no_crack_images_stretched_to_a_cracks_spread():
    """A tile's spread alone tells the dataset's cracks from its smooth plain concrete; these
    no-crack images take that shortcut away: same picture, same mean, the crack patches' spread."""
    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(150, 6, (40, 64, 64, 1)), 0, 255).astype(np.uint8)
    y = np.r_[np.ones(20), np.zeros(20)].astype(np.float32)
    x2, y2 = batches.with_drawn_images(smooth, y, 0.0, 0.0, 0.25, seed=4)
    assert len(x2) == len(y2) == 50 and y2[40:].tolist() == [0] * 10 and np.array_equal(x2[:40], smooth)
    assert np.array_equal(x2, batches.with_drawn_images(smooth, y, 0.0, 0.0, 0.25, seed=4)[0])
    for drawn in x2[40:].astype(float):
        source = max(range(20, 40), key=lambda i: np.corrcoef(smooth[i].ravel(), drawn.ravel())[0, 1])
        assert np.corrcoef(smooth[source].ravel(), drawn.ravel())[0, 1] > 0.99  # the same picture
        assert abs(drawn.mean() - smooth[source].mean()) < 2 and 17 < drawn.std() < 41
    flat = np.full((4, 64, 64, 1), 90, np.uint8)  # nothing to stretch: stays flat, not noise
    assert np.array_equal(batches.stretched(flat, seed=1), flat)
    all_three, labels = batches.with_drawn_images(smooth, y, 0.25, 0.25, 0.25, seed=4)
    assert len(all_three) == len(labels) == 70 and labels[40:].tolist() == [0] * 30


def test_faint_positives_are_own_crack_images_squeezed_to_plain_concretes_spread():
    """The other side of contrast negatives: crack images as faint as uav75's hairline cracks on
    smooth concrete, still labelled crack: same picture, same mean, the no-crack patches' spread."""
    rng = np.random.default_rng(0)
    rough = np.clip(rng.normal(120, 30, (40, 64, 64, 1)), 0, 255).astype(np.uint8)
    y = np.r_[np.ones(20), np.zeros(20)].astype(np.float32)
    x2, y2 = batches.with_drawn_images(rough, y, 0.0, 0.0, 0.0, 0.25, seed=4)
    assert len(x2) == len(y2) == 50 and y2[40:].tolist() == [1] * 10 and np.array_equal(x2[:40], rough)
    assert np.array_equal(x2, batches.with_drawn_images(rough, y, 0.0, 0.0, 0.0, 0.25, seed=4)[0])
    for drawn in x2[40:].astype(float):
        source = max(range(20), key=lambda i: np.corrcoef(rough[i].ravel(), drawn.ravel())[0, 1])
        assert np.corrcoef(rough[source].ravel(), drawn.ravel())[0, 1] > 0.95  # a crack image, faded
        assert abs(drawn.mean() - rough[source].mean()) < 2 and 4 < drawn.std() < 16
    assert batches.with_drawn_images(rough, np.zeros(40, np.float32), 0.0, 0.0, 0.0, 0.5, seed=4)[0] is rough
    every_kind, labels = batches.with_drawn_images(rough, y, 0.25, 0.25, 0.25, 0.25, seed=4)
    assert len(every_kind) == len(labels) == 80 and labels[40:].tolist() == [0] * 30 + [1] * 10


def test_faint_cracks_fade_the_crack_and_keep_the_concrete():
    """Unlike ``faded``, only what is darker than the texture fades: the concrete keeps its pixels
    and spread (so smooth concrete does not become a crack sign), the crack keeps 15 to 50 % of its depth."""
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(140, 6, (40, 64, 64, 1)), 0, 255)
    crack = np.zeros((64, 64), bool)
    crack[np.arange(64), 20 + np.arange(64) // 4] = crack[np.arange(64), 21 + np.arange(64) // 4] = True
    x[:20, crack] -= 60  # a dark diagonal crack, 2 px wide, on the 20 crack images
    x = x.astype(np.uint8)
    y = np.r_[np.ones(20), np.zeros(20)].astype(np.float32)
    x2, y2 = batches.with_drawn_images(x, y, 0.0, 0.0, 0.0, 0.0, 0.25, seed=4)
    assert len(x2) == len(y2) == 50 and y2[40:].tolist() == [1] * 10 and np.array_equal(x2[:40], x)
    assert np.array_equal(x2, batches.with_drawn_images(x, y, 0.0, 0.0, 0.0, 0.0, 0.25, seed=4)[0])
    depths = []
    for drawn in x2[40:].astype(float)[..., 0]:
        closest = max(range(20), key=lambda i: np.corrcoef(x[i].ravel(), drawn.ravel())[0, 1])
        source = x[closest, ..., 0].astype(float)
        assert np.mean(drawn[~crack] == source[~crack]) > 0.95  # the concrete as it was
        assert abs(drawn[~crack].std() - source[~crack].std()) < 0.5
        depths.append((drawn[~crack].mean() - drawn[crack].mean()) / (source[~crack].mean() - source[crack].mean()))
    assert 0.1 < min(depths) and max(depths) < 0.65 and max(depths) - min(depths) > 0.05  # faded, by a random amount
    every_kind, labels = batches.with_drawn_images(x, y, 0.25, 0.25, 0.25, 0.25, 0.25, seed=4)
    assert len(every_kind) == len(labels) == 90 and labels[40:].tolist() == [0] * 30 + [1] * 20


@pytest.mark.parametrize(("share", "extra", "expected"), [("auto", [], 0.0), ("auto", ["data/extra/a"], 0.1),
                                                           (0.3, [], 0.3), (0.0, ["data/extra/a"], 0.0)])
def test_faint_cracks_auto_is_on_only_with_own_tiles(share, extra, expected):
    """With own tiles they raised half B's F1 on 9 of 12 seeds, without them they cost recall: auto
    follows preprocess.extra; a number is taken as it is."""
    params = config.parse({"train": {"faint_cracks": share}, "preprocess": {"extra": extra}})
    assert params.faint_cracks == expected


@pytest.mark.parametrize("bad", ["sometimes", 1.5, -0.1, True])
def test_faint_cracks_must_be_a_share_or_auto(bad):
    refused = "train.faint_cracks: (must be a number from 0 to 1 or 'auto'|got true)"
    with pytest.raises(config.ConfigError, match=refused):
        config.parse({"train": {"faint_cracks": bad}})


MIRRORED_SCRIPT = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from crackclf.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_on_two_logical_cpus(prepared_dir, tmp_path):
    """Through the CLI, in a subprocess: CPUs split before TensorFlow starts, and main()'s summary."""
    data = copy.deepcopy(synth.TINY_PARAMS)
    data["train"].update(distribute="mirrored", epochs=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "mirrored.py").write_text(textwrap.dedent(MIRRORED_SCRIPT))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "mirrored.py", "train", str(prepared_dir), "--model", "m/model.keras",
         "--metrics", "m/train.json", "--history", "m/history.csv", "--run-file", "m/run.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy (2 replicas)" in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("epoch ")][-1].startswith("epoch 4/4")
    info = json.loads((tmp_path / "m" / "run.json").read_text())
    assert f"MLflow run {info['run_id']}" in proc.stdout
    run = mlflow.MlflowClient(tracking_uri=store).get_run(info["run_id"])
    assert run.data.tags["distribute"] == "MirroredStrategy (2 replicas)"
    assert run.data.params["train.distribute"] == "mirrored"
    assert len(json.loads((tmp_path / "m" / "train.json").read_text())["best"]) == 6


def test_an_unreachable_tracking_server_stops_training_before_any_work(tmp_path):
    from httpserver import free_port

    params = params_with()
    with pytest.raises(CrackclfError, match="unreachable"):  # not "no 'train' split": the data is not read
        train_run(params, tmp_path / "no-data", tmp_path, f"http://127.0.0.1:{free_port()}")
    assert not (tmp_path / "models").exists()


def test_a_checkpoint_belongs_to_one_precision_policy(prepared_dir):
    """Mixed float16 wraps Adam in a loss-scale optimizer: its state would not restore into float32."""
    params = params_with()
    prints = {policy: checkpoint.fingerprint(params, prepared_dir, policy) for policy in ("float32", "mixed_float16")}
    assert prints["float32"] != prints["mixed_float16"]
    assert prints["float32"] == checkpoint.fingerprint(params, prepared_dir, "float32")


def test_speed_leaves_out_the_first_epoch_of_this_try_not_of_the_run():
    """A resumed try pays for tracing and the cache in its own first epoch."""
    row = lambda epoch, train_s: {"epoch": epoch, "loss": 1.0 / epoch, "train_s": train_s, "epoch_s": train_s}  # noqa: E731
    history = [row(1, 10.0), row(2, 1.0), row(3, 10.0), row(4, 1.0), row(5, 1.0)]  # a try resumed after epoch 2
    assert train._summary(history, 100, "loss", resumed=2)["images_per_s"] == 100.0
    assert train._summary(history[:2], 100, "loss")["images_per_s"] == 100.0
