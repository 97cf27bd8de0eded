"""Evaluate stage: metrics by hand, the validation-only threshold, plots, MLflow and the champion alias."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

import synth
from contracts import temp_leftovers
from httpserver import free_port
from crackclf import config, dataset, evaluate, files, inference, tracking, unfamiliar

# y and p of eight test images; at threshold 0.5: tp 3 (0, 2, 6), fn 1 (3), fp 1 (4), tn 3 (1, 5, 7).
Y = [1, 0, 1, 1, 0, 0, 1, 0]
P = [0.9, 0.2, 0.6, 0.3, 0.7, 0.1, 0.8, 0.4]


def params(**evaluate_params):
    return config.parse({**synth.TINY_PARAMS, "evaluate": evaluate_params,
                         "train": {**synth.TINY_PARAMS["train"], "registered_model": "crackclf-test"}})


def test_metrics_equal_hand_computed_values():
    m = evaluate.compute_metrics(Y, P, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n_test"]) == (3, 1, 1, 3, 8)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # 13 of the 16 (positive, negative) pairs are ranked right: 0.9 > 4, 0.8 > 4, 0.6 > 3, 0.3 > 2 negatives.
    assert m["roc_auc"] == pytest.approx(13 / 16)
    # Positives at ranks 1, 2, 4, 6: mean precision there.
    assert m["average_precision"] == pytest.approx((1 / 1 + 2 / 2 + 3 / 4 + 4 / 6) / 4, abs=1e-6)
    loss = -sum(math.log(p if y else 1 - p) for y, p in zip(Y, P)) / len(Y)
    assert m["loss"] == pytest.approx(loss, abs=1e-6)
    assert m["threshold"] == 0.5
    # A stricter threshold moves image 2 (0.6) to a false negative.
    m = evaluate.compute_metrics(Y, P, 0.65)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 2, 1, 3)
    json.dumps(m)  # plain JSON types only


def test_one_class_gives_null_ranking_metrics():
    m = evaluate.compute_metrics([0, 0, 0], [0.1, 0.6, 0.2], 0.5)
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert (m["fp"], m["tn"], m["f1"]) == (1, 2, 0.0)


def test_best_f1_threshold_by_hand():
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9]
    # Cutting at 0.8 gives tp 2, fp 0, fn 1: F1 0.8, the best; the next lower score is 0.7.
    threshold, f1 = evaluate.best_f1_threshold(y, p)
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.75)


def test_curves_are_downsampled_and_keep_their_ends():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    p = np.clip(y * 0.3 + rng.normal(0.35, 0.2, y.size), 0, 1)
    roc, pr = evaluate.curves(y, p)
    assert 100 < len(roc) <= evaluate.MAX_CURVE_POINTS and 100 < len(pr) <= evaluate.MAX_CURVE_POINTS
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0) and (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    assert pr[0]["recall"] == 1.0 and (pr[-1]["recall"], pr[-1]["precision"]) == (0.0, 1.0)
    assert all(0 <= r["threshold"] <= 1 for r in roc + pr)
    assert np.all(np.diff([r["fpr"] for r in roc]) >= 0)


def test_worst_errors_are_the_most_confidently_wrong():
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.45, 0.95, 0.9])
    assert list(evaluate.worst_errors(y, p, 0.5, 10)) == [3, 0, 2]
    assert list(evaluate.worst_errors(y, p, 0.5, 2)) == [3, 0]


def _outputs(tmp_path):
    return dict(metrics_path=tmp_path / "metrics" / "eval.json", plots_dir=tmp_path / "plots",
                threshold_path=tmp_path / "models" / "threshold.json", run_file=tmp_path / "models" / "run.json")


def test_run_writes_metrics_plots_and_threshold(prepared_dir, tiny_model_path, tmp_path, capsys):
    out = _outputs(tmp_path)
    metrics = evaluate.run(params(threshold=0.5), prepared_dir, tiny_model_path, **out)

    model = inference.load_model(tiny_model_path)
    x, y = dataset.load_split(prepared_dir, "test")
    probs = model.predict(x, 64)
    # the unfamiliar-input score's, fitted here too: about 1 % of test images like the training data flagged
    assert 0 <= metrics["unfamiliar_rate"] <= 0.2 and 0 < metrics["unfamiliar_threshold"] < 1
    assert {k: v for k, v in metrics.items() if not k.startswith("unfamiliar_")} == \
        evaluate.compute_metrics(y, probs, 0.5)
    assert json.loads(out["metrics_path"].read_text()) == metrics
    assert metrics["n_test"] == 60 and metrics["accuracy"] >= 0.8  # the tiny model really learned

    with open(out["plots_dir"] / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "actual", "predicted", "probability"]
    assert [r["file"] for r in rows] == [r["file"] for r in dataset.read_manifest(prepared_dir, "test")]
    assert {r["actual"] for r in rows} == {"crack", "no_crack"}
    assert all(r["predicted"] == ("crack" if float(r["probability"]) >= 0.5 else "no_crack") for r in rows)
    assert sum(r["actual"] == r["predicted"] == "crack" for r in rows) == metrics["tp"]
    for name, header in (("roc.csv", "fpr,tpr,threshold"), ("precision_recall.csv", "recall,precision,threshold")):
        assert (out["plots_dir"] / name).read_text().splitlines()[0] == header
    for name in evaluate.PLOT_FILES:
        with Image.open(out["plots_dir"] / name) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 200

    info = json.loads(out["threshold_path"].read_text())
    assert info["threshold"] == 0.5 and info["image_size"] == 48
    assert info["model_sha256"] == files.sha256(tiny_model_path)
    # No run file: the metrics stand, and one line says MLflow was not updated.
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MLflow not updated" in err[0] and "run file" in err[0]
    assert temp_leftovers(tmp_path) == []  # no half-written output (files.atomic_path / atomic_dir names)


def test_f1_threshold_is_chosen_on_validation_only(prepared_dir, tiny_model_path, tmp_path):
    # Flip the test labels: the F1-best threshold on test is then far from the one on validation.
    data = tmp_path / "prepared"
    shutil.copytree(prepared_dir, data)
    _, y_test = dataset.load_split(data, "test")
    np.save(dataset.labels_path(data, "test"), (1 - y_test).astype(np.uint8))

    out = _outputs(tmp_path)
    metrics = evaluate.run(params(threshold="f1"), data, tiny_model_path, **out)

    model = inference.load_model(tiny_model_path)
    x_val, y_val = dataset.load_split(data, "val")
    x_test, y_test = dataset.load_split(data, "test")
    val_best, _ = evaluate.best_f1_threshold(y_val, model.predict(x_val, 64))
    test_best, _ = evaluate.best_f1_threshold(y_test, model.predict(x_test, 64))
    assert abs(val_best - test_best) > 0.01
    assert metrics["threshold"] == pytest.approx(val_best, abs=1e-6)
    info = json.loads(out["threshold_path"].read_text())
    assert info["threshold"] == metrics["threshold"] and info["chosen_by"].startswith("f1")


def test_auto_threshold_is_the_f1_one_only_where_training_rebalanced_a_source(prepared_dir, tiny_model_path,
                                                                             tmp_path):
    data = tmp_path / "prepared"
    shutil.copytree(prepared_dir, data)
    model = inference.load_model(tiny_model_path)
    x_val, y_val = dataset.load_split(data, "val")
    val_best, _ = evaluate.best_f1_threshold(y_val, model.predict(x_val, 64))
    assert abs(val_best - 0.5) > 1e-3
    rows = [{**r, "source": r.get("source", "dataset")} for r in dataset.read_manifest(data)]

    def auto_threshold(manifest_rows) -> float:
        files.write_csv(data / "manifest.csv", ["file", "label", "split", "source"], manifest_rows)
        return evaluate.choose_threshold("auto", data, model, 64)["threshold"]

    # Each class repeated alike (the dataset's patches, or an own folder's tiles twice over): 0.5.
    assert auto_threshold(rows) == 0.5
    own = [{**r, "source": "own"} if i % 3 == 0 else r for i, r in enumerate(rows)]
    own_train = [r for r in own if r["split"] == "train" and r["source"] == "own"]
    assert {r["label"] for r in own_train} == {"0", "1"}
    assert auto_threshold(own + own_train) == 0.5
    # Its crack tiles repeated, its no-crack ones not: the F1-best on validation.
    assert auto_threshold(own + [r for r in own_train if r["label"] == "1"]) == pytest.approx(val_best, abs=1e-6)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite store; returns an experiment whose artifacts stay in tmp_path too."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure()
    return mlflow.create_experiment("crackclf-test", artifact_location=str(tmp_path / "mlruns"))


def _register(model, run_file, experiment_id, name="crackclf-test"):
    """What train does: log the model to a run, register a version, write the run file."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged = mlflow.keras.log_model(model, name="model", registered_model_name=name,
                                        pip_requirements=["keras"])  # skips slow requirement inference
    tracking.write_run_file(run_file, {
        "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking.tracking_uri(), "registered_model": name,
        "model_version": int(logged.registered_model_version),
    })
    return run.info.run_id


def _constant_model(model, probability):
    """The trained model with its output layer replaced by a constant: a model of known F1."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    kernel, _ = clone.get_layer("crack_probability").get_weights()
    logit = math.log(probability / (1 - probability))
    clone.get_layer("crack_probability").set_weights([np.zeros_like(kernel), np.array([logit], np.float32)])
    return clone


def test_champion_alias_first_kept_and_moved(prepared_dir, tiny_model_path, tmp_path, mlflow_store, capsys):
    from mlflow import MlflowClient

    trained = inference.load_model(tiny_model_path, "keras").net
    candidates = [  # evaluated in this order: test F1 2/3 (all crack), 0 (all no crack), then the trained model
        ("all_crack", _constant_model(trained, 0.9), 0.5),
        ("no_crack", _constant_model(trained, 0.1), 0.5),
        ("trained", trained, "f1"),
    ]
    client = MlflowClient()
    runs, f1s = [], []
    for i, (tag, model, threshold) in enumerate(candidates, start=1):
        model_path = tmp_path / tag / "model.keras"
        model_path.parent.mkdir()
        model.save(model_path)
        out = _outputs(tmp_path / tag)
        runs.append(_register(model, out["run_file"], mlflow_store))
        f1s.append(evaluate.run(params(threshold=threshold), prepared_dir, model_path, **out)["f1"])
        champion = str(client.get_model_version_by_alias("crackclf-test", "champion").version)
        tags = client.get_model_version("crackclf-test", str(i)).tags
        if i == 1:
            assert f1s[0] == pytest.approx(2 / 3, abs=1e-6)
            assert champion == "1"
            assert (tags["promoted"], tags["champion_previous_version"]) == ("true", "none")
        elif i == 2:
            assert f1s[1] == 0.0
            assert champion == "1"  # a worse model keeps the champion
            assert (tags["promoted"], tags["champion_previous_version"]) == ("false", "1")
            assert float(tags["champion_previous_f1"]) == pytest.approx(f1s[0])
        else:
            assert f1s[2] > f1s[0]
            assert champion == "3"  # a better one takes it
            assert (tags["promoted"], tags["champion_previous_version"]) == ("true", "1")
        run = client.get_run(runs[-1])
        assert run.data.tags["promoted"] == tags["promoted"]
        assert run.data.metrics["test_f1"] == pytest.approx(f1s[-1])
    assert "MLflow not updated" not in capsys.readouterr().err  # every evaluation logged

    run = client.get_run(runs[2])
    for key in ("accuracy", "precision", "recall", "roc_auc", "average_precision", "loss", "threshold", "tp", "n"):
        assert f"test_{key}" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(runs[2], "eval")}
    expected = {f"eval/{n}" for n in evaluate.PLOT_FILES + evaluate.CSV_FILES + ("threshold.json", "eval.json")}
    assert expected | {"eval/unfamiliar.npz"} <= logged
    assert "test_unfamiliar_rate" in run.data.metrics

    # predict on the registry URI: the champion's model, with the threshold its evaluation chose.
    chosen = json.loads((tmp_path / "trained" / "models" / "threshold.json").read_text())["threshold"]
    assert chosen != 0.5
    warnings = []
    assert inference.default_threshold("models:/crackclf-test@champion", warnings.append) == chosen
    assert inference.default_threshold("models:/crackclf-test/1", warnings.append) == 0.5  # fixed 0.5 for v1
    assert warnings == []
    # ...and with the unfamiliar-input score fitted by that evaluation (not the file beside any model).
    scorer = unfamiliar.find(inference.resolve_model("models:/crackclf-test@champion"), warnings.append)
    assert warnings == [] and scorer.threshold == pytest.approx(
        unfamiliar.load(tmp_path / "trained" / "models" / unfamiliar.FILE).threshold)
    champion = inference.load_model("models:/crackclf-test@champion")
    x, _ = dataset.load_split(prepared_dir, "test")
    np.testing.assert_allclose(champion.predict(x, 64), inference.KerasModel(trained, 'trained').predict(x, 64),
                               atol=1e-6)


def test_unreachable_tracking_server_still_writes_metrics(prepared_dir, tiny_model_path, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    out = _outputs(tmp_path)
    tracking.write_run_file(out["run_file"], {"run_id": "0" * 32, "experiment_id": "1",
                                              "tracking_uri": url,
                                              "registered_model": "crackclf-test", "model_version": 1})
    # The work needed the store: exit 1 (TrackingError), but the metrics files stand.
    with pytest.raises(tracking.TrackingError, match="MLflow not updated .*unreachable"):
        evaluate.run(params(), prepared_dir, tiny_model_path, **out)
    assert json.loads(out["metrics_path"].read_text())["n_test"] > 0
    assert out["threshold_path"].is_file()


def test_auto_threshold_between_close_scores_is_used_as_chosen():
    # Sigmoid scores near 1 sit closer together than any rounding: the threshold is kept exactly.
    y, p = [0, 0, 1, 1], [0.2, 0.9999990, 0.9999996, 0.9999999]
    threshold, f1 = evaluate.best_f1_threshold(y, p)
    m = evaluate.compute_metrics(y, p, threshold)
    assert f1 == 1.0 and m["f1"] == 1.0 and m["threshold"] == threshold


def test_champion_is_compared_on_its_own_test_set_only(mlflow_store, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("crackclf-test")
    for _ in range(6):
        client.create_model_version("crackclf-test", source=str(tmp_path / "model"))
    first = evaluate.update_champion(client, "crackclf-test", "1", 0.80, 0.30, "split-a")
    assert first["promoted"] == "true"
    # A higher F1 on another split (say split_by: file, which leaks neighbours into test) does not win.
    other = evaluate.update_champion(client, "crackclf-test", "2", 0.99, 0.05, "split-b")
    assert other["promoted"] == "false" and "another test set" in other["message"]
    assert str(client.get_model_version_by_alias("crackclf-test", "champion").version) == "1"
    same = evaluate.update_champion(client, "crackclf-test", "3", 1.0, 0.20, "split-a")
    assert same["promoted"] == "true" and same["champion_previous_version"] == "1"
    assert client.get_model_version("crackclf-test", "3").tags["test_set"] == "split-a"

    # At F1 1.0 a later version can still win: equal F1, lower test loss.
    worse = evaluate.update_champion(client, "crackclf-test", "4", 1.0, 0.25, "split-a")
    assert worse["promoted"] == "false" and "test loss 0.2500 >= 0.2000" in worse["message"]
    surer = evaluate.update_champion(client, "crackclf-test", "5", 1.0, 0.10, "split-a")
    assert surer["promoted"] == "true" and "test loss 0.1000 < 0.2000" in surer["message"]
    assert str(client.get_model_version_by_alias("crackclf-test", "champion").version) == "5"
    # Lower loss never outweighs a lower F1.
    assert evaluate.update_champion(client, "crackclf-test", "6", 0.99, 0.01, "split-a")["promoted"] == "false"


def test_metrics_per_source_when_extra_folders_were_added():
    rows = [{"source": "dataset"}] * 4 + [{"source": "site-a"}] * 4
    y = [1, 1, 0, 0, 1, 1, 0, 0]
    p = [0.9, 0.8, 0.1, 0.2, 0.9, 0.1, 0.8, 0.2]  # right on the dataset, half wrong on the site's tiles
    sources = evaluate.per_source(rows, y, p, 0.5)
    assert sources["dataset"]["f1"] == 1.0 and sources["dataset"]["n_test"] == 4
    assert sources["site-a"]["f1"] == 0.5 and (sources["site-a"]["tp"], sources["site-a"]["fp"]) == (1, 1)
    assert evaluate.per_source([{"source": "dataset"}] * 8, y, p, 0.5) is None  # one source: nothing to add
    assert evaluate.per_source([{}] * 8, y, p, 0.5) is None  # a manifest from before sources existed
