import os
from pathlib import Path

import pytest

import synth
from mlflow_server import restore_mlflow_settings, saved_mlflow_settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MLFLOW_ENV = saved_mlflow_settings()


@pytest.fixture(autouse=True)
def _no_mlflow_store_leaks():
    """Every test starts from the session's MLflow settings, whatever the last one pointed MLflow at.

    ``tracking.configure`` calls ``mlflow.set_tracking_uri``/``set_registry_uri``, which keep the
    URI in a global and also write ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into
    ``os.environ``, where monkeypatch does not see them: without this, a test's temporary store,
    or a server it has stopped, stays the registry of every test after it.
    """
    yield
    restore_mlflow_settings(MLFLOW_ENV)


@pytest.fixture
def no_dvc_env(monkeypatch):
    """As if run outside DVC, with no tracking server named."""
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """Positive/ and Negative/ with 3 small (64 px) synthetic JPEGs each: quick to pack in every format."""
    return synth.write_dataset(tmp_path_factory.mktemp("small") / "dataset", 3, size=64)


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory) -> Path:
    """A small synthetic dataset: Positive/ and Negative/, 60 JPEGs each, 227x227."""
    return synth.write_dataset(tmp_path_factory.mktemp("synthetic") / "dataset", 60)


def write_prepared(out_dir: Path, n_per_class: int = 150, size: int = 48, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Path:
    """A prepared-data folder in the preprocess stage's format, straight from the generator."""
    import csv

    import numpy as np

    from crackclf import dataset, imaging

    rng = np.random.default_rng(seed)
    rows = {s: [] for s in dataset.SPLITS}
    for label, folder in ((1, "Positive"), (0, "Negative")):
        n_train = int(n_per_class * fractions[0])
        n_val = int(n_per_class * fractions[1])
        for i in range(n_per_class):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            img = synth.patch(rng, bool(label))
            rows[split].append((f"{folder}/{i + 1:05d}.jpg", label, imaging.resize(img.convert("L"), size)))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "split"])
        for split in dataset.SPLITS:
            for name, label, _ in rows[split]:
                w.writerow([name, label, split])
            np.save(dataset.images_path(out_dir, split), np.stack([r[2] for r in rows[split]]))
            np.save(dataset.labels_path(out_dir, split), np.array([r[1] for r in rows[split]], np.uint8))
    (out_dir / "skipped.csv").write_text("file,reason\n", encoding="utf-8")
    return out_dir


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """Synthetic prepared splits (48x48): 90/30/30 images per class in train/val/test.

    The tiny CNN of ``synth.TINY_PARAMS`` reaches 90 to 100 % test accuracy on it in
    8 epochs (about 2 s), whatever the seed."""
    return write_prepared(tmp_path_factory.mktemp("prepared"))


def fit_tiny(params, prepared_dir: Path, path: Path):
    """``params``' CNN fitted on ``prepared_dir``'s train split (seconds for the tiny models), saved at ``path``."""
    import keras

    from crackclf import dataset
    from crackclf.model import build_model, compile_model

    keras.utils.set_random_seed(params.seed)
    model = compile_model(build_model(params.train, params.preprocess.image_size, params.seed), params.train)
    x, y = dataset.load_split(prepared_dir, "train", mmap=False)
    model.fit(x.astype("float32"), y, batch_size=params.train.batch_size, epochs=params.train.epochs,
              shuffle=True, verbose=0)
    model.save(path)
    return model


@pytest.fixture(scope="session")
def tiny_model_path(prepared_dir, tmp_path_factory) -> Path:
    """``synth.TINY_PARAMS``' CNN fitted on ``prepared_dir`` (about 2 s), saved as .keras with its
    ONNX copy beside it (as train writes them), so predict and evaluate run on ONNX Runtime.

    For evaluate and predict tests that need a real trained model without the train stage."""
    from crackclf import config

    path = tmp_path_factory.mktemp("model") / "model.keras"
    model = fit_tiny(config.parse(synth.TINY_PARAMS), prepared_dir, path)
    from crackclf.export import save_onnx_copy

    save_onnx_copy(model, path)  # model.onnx, about 3 s
    return path


@pytest.fixture(scope="session")
def keras_only_model_path(tiny_model_path, tmp_path_factory) -> Path:
    """The same model without an ONNX copy, as trained before ONNX export: predict falls back to Keras."""
    path = tmp_path_factory.mktemp("keras_only") / "model.keras"
    path.write_bytes(tiny_model_path.read_bytes())
    return path


@pytest.fixture(scope="session")
def champion_store(prepared_dir, tmp_path_factory) -> tuple[str, Path]:
    """(store URI, folder): a tiny model trained, registered and made champion by evaluate, in an
    MLflow store of its own; the folder holds what the stages wrote (model.keras, mlflow_run.json, ...)."""
    from crackclf import config, evaluate, train
    from mlflow_server import tracking_to

    root = tmp_path_factory.mktemp("champion")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = config.parse(synth.TINY_PARAMS)
    with tracking_to(uri):
        train.run(params, prepared_dir, root / "model.keras", root / "train.json", root / "history.csv",
                  root / "mlflow_run.json")
        evaluate.run(params, prepared_dir, root / "model.keras", root / "eval.json", root / "plots",
                     root / "threshold.json", root / "mlflow_run.json")
    return uri, root
