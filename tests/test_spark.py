"""The MLflow images model (``crackclf.pyfunc``): image bytes in, ``crackclf predict``'s rows out,
in process, through ``mlflow models serve``, and over a Spark DataFrame of image files.

``crackclf publish`` (the stage after evaluate) registers it as ``crackclf-images`` and moves
its ``@champion`` with the Keras model's. The Spark test runs ``local[2]``; it is skipped only where Java or pyspark is
missing and this is not CI (CI installs both: .ci/run, requirements-spark.txt).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import requests

import crackserve
import synth
from crackclf import config, inference, predict, pyfunc, unfamiliar
from mlflow_server import models_serve, tracking_to

pytestmark = pytest.mark.slow
IMAGES_URI = "models:/crackclf-images@champion"


@pytest.fixture(scope="module")
def store(champion_store) -> tuple[str, Path]:
    """The shared champion, published: its images model registered as crackclf-images@champion."""
    uri, root = champion_store
    params = config.parse(synth.TINY_PARAMS)
    with tracking_to(uri):
        args = Namespace(model=root / "model.keras", run_file=root / "mlflow_run.json",
                         output=root / "images_model.json")
        assert pyfunc.main(args, params) == 0
    assert json.loads((root / "images_model.json").read_text())["images_model"] == "crackclf-images"
    return uri, root / "model.keras"


@pytest.fixture(scope="module")
def images(synthetic_folder, tmp_path_factory) -> list[Path]:
    """Patches of both classes, a whole synthetic photo, and a file that is not an image."""
    root = tmp_path_factory.mktemp("files")
    (root / "wall.jpg").write_bytes(crackserve.jpeg(crackserve.photo()))
    (root / "notes.txt").write_text("not an image\n")
    picked = sorted(synthetic_folder.glob("Positive/*.jpg"))[:2] + sorted(synthetic_folder.glob("Negative/*.jpg"))[:2]
    for p in picked:
        shutil.copy(p, root / f"{p.parent.name}-{p.name}")
    return sorted(root.iterdir())


def expected_rows(store, files: list[Path]) -> dict[str, dict]:
    """``crackclf predict --model models:/crackclf@champion`` on the same files, by file name."""
    uri, _ = store
    with tracking_to(uri):
        spec = inference.resolve_model("models:/crackclf@champion")
        model = inference.load_model(spec, runtime="keras")
        threshold = inference.default_threshold(spec, print)
        scorer = unfamiliar.find(spec, print)
        assert scorer is not None  # evaluate fitted the unfamiliar-input score: the rows carry the flag
        cfg = config.Params().predict
        preds = predict.predict_files(model, files, threshold, cfg.tile_size, cfg.stride, cfg.batch_size,
                                      lambda message: None, scorer=scorer)
        return {Path(p.path).name: p.row() for p in preds}


def check_rows(files: list[Path], rows: list[dict], expected: dict[str, dict]) -> None:
    assert len(rows) == len(files)
    for path, row in zip(files, rows):
        if path.suffix == ".txt":
            assert "not a readable image" in row["error"] and not row["label"] and row["tiles"] == 0
            continue
        want = expected[path.name]
        assert row["error"] == "", row
        assert (row["label"], int(row["tiles"]), int(row["crack_tiles"])) == (
            want["label"], want["tiles"], want["crack_tiles"]), path.name
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-5), path.name
        assert row["unfamiliar"] == want["unfamiliar"], path.name
    assert any(int(r["tiles"] or 0) > 1 for r in rows)  # the photo was cut into tiles


def test_evaluate_registers_the_images_champion(store, images):
    import mlflow

    uri, _ = store
    with tracking_to(uri):
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        keras_champion = client.get_model_version_by_alias("crackclf", "champion")
        champion = client.get_model_version_by_alias("crackclf-images", "champion")
        assert champion.tags[pyfunc.TAG_SOURCE] == str(keras_champion.version)
        assert champion.run_id == keras_champion.run_id

        model = mlflow.pyfunc.load_model(IMAGES_URI)
        import pandas as pd

        data = [p.read_bytes() for p in images]
        as_bytes = model.predict(pd.DataFrame({"image": data}))
        as_text = model.predict(pd.DataFrame({"image": [base64.b64encode(d).decode() for d in data]}))
    check_rows(images, as_bytes.to_dict("records"), expected_rows(store, images))
    pd.testing.assert_frame_equal(as_text, as_bytes)  # base64 text, as JSON clients send it: the same rows


def test_mlflow_models_serve_takes_image_bytes(store, images, tmp_path):
    uri, _ = store
    body = {"dataframe_split": {"columns": ["image"],
                                "data": [[base64.b64encode(p.read_bytes()).decode()] for p in images]}}
    with models_serve(IMAGES_URI, uri, tmp_path / "serve.log", timeout=180) as (url, _):
        answer = requests.post(f"{url}/invocations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    check_rows(images, answer.json()["predictions"], expected_rows(store, images))


def spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))


@pytest.mark.skipif(not spark_available() and not os.environ.get("CI"),
                    reason="pyspark or Java missing (pip install -r requirements-spark.txt; a JRE); CI has both")
def test_spark_udf_scores_a_folder_of_image_files(store, images):
    from pyspark.sql import SparkSession

    import mlflow.pyfunc

    uri, _ = store
    spark = (SparkSession.builder.master("local[2]").appName("crackclf-test")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        with tracking_to(uri):
            udf = mlflow.pyfunc.spark_udf(spark, IMAGES_URI, result_type=pyfunc.SPARK_RESULT_TYPE,
                                          env_manager="local")
        folder = images[0].parent
        files = spark.read.format("binaryFile").load(str(folder))
        scored = files.select("path", udf("content").alias("p")).select("path", "p.*").orderBy("path")
        rows = [r.asDict() for r in scored.collect()]
    finally:
        spark.stop()
    assert [Path(r["path"].removeprefix("file:")).name for r in rows] == [p.name for p in images]
    check_rows(images, rows, expected_rows(store, images))
