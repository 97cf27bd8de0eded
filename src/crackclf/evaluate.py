"""Evaluate stage: honest test-set metrics, DVC plots, and the champion alias.

The decision threshold is ``evaluate.threshold``, or with ``f1`` (and ``auto`` where
training rebalanced own tiles) the F1-best threshold on the validation split: choosing
it on test would leak test labels into the score that is meant to estimate new photos.
The metric computation is a pure function of (labels, probabilities, threshold), so
tests check it by hand.

Results go to the metrics JSON (``dvc exp show``), plot data and PNGs
(``dvc plots show``), ``threshold.json`` beside the model (``crackclf predict``
uses it), and the training's MLflow run: ``test_``-prefixed metrics, the files as
artifacts under ``eval/``, and the registered version gets the alias
``champion`` when its test F1 beats the current champion's. The files are
written even when MLflow cannot be reached; one line on stderr says so.

It also fits the unfamiliar-input score (``unfamiliar``: train features, threshold
from the validation split) into ``unfamiliar.npz`` beside ``threshold.json`` (so beside
the model, where predict looks for both), and reports the
share of the test split it flags as ``unfamiliar_rate``. Here rather than in train:
changing ``evaluate.unfamiliar_*`` then costs seconds, not a retraining.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, dataset, first_line, unfamiliar
from crackclf.files import sha256, write_csv, write_json
from crackclf.inference import DEFAULT_THRESHOLD, Model, load_model, patch_prediction
from crackclf.plots import plot_predictions, save_figure
from crackclf.process import StopRequest

MAX_CURVE_POINTS = 500  # per curve file: enough for a smooth plot, small enough for dvc plots
CHAMPION = "champion"
PLOT_FILES = ("confusion_matrix.png", "roc.png", "precision_recall.png", "worst_errors.png")
CSV_FILES = ("predictions.csv", "roc.csv", "precision_recall.csv")


# --- pure metric functions ---------------------------------------------------------------------

def compute_metrics(y_true, probabilities, threshold: float) -> dict:
    """Classification metrics at ``threshold``; ``roc_auc``/``average_precision`` are None for one class."""
    from sklearn import metrics as m

    y = np.asarray(y_true).astype(int)
    p = np.asarray(probabilities, np.float64)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in m.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    both = 0 < y.sum() < len(y)
    out = {
        "accuracy": m.accuracy_score(y, pred),
        "precision": m.precision_score(y, pred, zero_division=0),
        "recall": m.recall_score(y, pred, zero_division=0),
        "f1": m.f1_score(y, pred, zero_division=0),
        "roc_auc": m.roc_auc_score(y, p) if both else None,
        "average_precision": m.average_precision_score(y, p) if both else None,
        "loss": m.log_loss(y, p, labels=[0, 1]),
    }
    out = {k: None if v is None else round(float(v), 6) for k, v in out.items()}
    # The threshold as used: rounding could move it onto a score and change the predictions.
    return {**out, "threshold": float(threshold), "n_test": len(y), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def per_source(rows: list[dict], y_true, probabilities, threshold: float) -> dict | None:
    """Test metrics of each source (the dataset, each ``preprocess.extra`` folder), when there are several:
    a model can be near perfect on the dataset's patches and poor on the user's own photos."""
    names = [r.get("source") or "dataset" for r in rows]
    if len(set(names)) < 2:
        return None
    y, p, names = np.asarray(y_true), np.asarray(probabilities), np.asarray(names)
    keys = ("accuracy", "precision", "recall", "f1", "n_test", "tp", "fp", "tn", "fn")
    return {src: {k: compute_metrics(y[names == src], p[names == src], threshold)[k] for k in keys}
            for src in sorted(set(names))}


def best_f1_threshold(y_true, probabilities) -> tuple[float, float]:
    """(threshold, F1) maximising F1 on the given labels.

    Every threshold between the chosen score and the next lower score gives the
    same predictions; the midpoint leaves a margin on both sides.
    """
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y_true).astype(int)
    p = np.asarray(probabilities, np.float64)
    if not 0 < y.sum() < len(y):
        raise CrackclfError("evaluate.threshold: choosing on the validation split needs both classes there")
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    k = int(np.argmax(f1))
    chosen = float(thresholds[k])
    below = p[p < chosen]
    threshold = (float(below.max()) + chosen) / 2 if below.size else chosen
    return threshold, float(f1[k])


def downsample(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Evenly spaced indices into a curve of ``n`` points, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def curves(y_true, probabilities, max_points: int = MAX_CURVE_POINTS) -> tuple[list[dict], list[dict]]:
    """ROC rows (fpr, tpr, threshold) and PR rows (recall, precision, threshold), downsampled.

    Thresholds are capped at 1.0: sklearn's "above every score" point is +inf.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y_true).astype(int)
    p = np.asarray(probabilities, np.float64)
    if not 0 < y.sum() < len(y):
        return [], []
    fpr, tpr, roc_t = roc_curve(y, p)
    precision, recall, pr_t = precision_recall_curve(y, p)
    pr_t = np.append(pr_t, 1.0)  # the (recall 0, precision 1) end point
    roc = [{"fpr": _r(fpr[i]), "tpr": _r(tpr[i]), "threshold": _r(min(roc_t[i], 1.0))}
           for i in downsample(len(fpr), max_points)]
    pr = [{"recall": _r(recall[i]), "precision": _r(precision[i]), "threshold": _r(min(pr_t[i], 1.0))}
          for i in downsample(len(recall), max_points)]
    return roc, pr


def _r(value) -> float:
    return round(float(value), 6)


# --- the stage ------------------------------------------------------------------------------

def choose_threshold(setting, data_dir: Path, model: Model, batch_size: int) -> dict:
    """The threshold and how it was chosen; ``f1`` looks at the validation split only.

    ``auto`` is 0.5 unless training repeated one class of a source more than the other
    (``preprocess.extra_balance``): a model trained on a 1 : 1 mix of own tiles calls too much crack on
    photos where 1 tile in 9 is crack, and the validation split, unrepeated, holds their own mix. The
    F1-best threshold there (0.70 to 0.85) kept half B's F1 and won dataset accuracy back (README, Many
    own tiles); with each class as often as the data holds it, 0.5 did best.
    """
    if setting == "auto" and not dataset.rebalanced(data_dir):
        return {"threshold": DEFAULT_THRESHOLD,
                "chosen_by": f"auto: {DEFAULT_THRESHOLD}, training kept each source's class mix"}
    if setting not in ("auto", "f1"):
        return {"threshold": float(setting), "chosen_by": "evaluate.threshold"}
    x_val, y_val = dataset.load_split(data_dir, "val", size=model.size)
    threshold, f1 = best_f1_threshold(y_val, model.predict(x_val, batch_size, progress=True))
    why = " (training rebalanced own tiles)" if setting == "auto" else ""
    return {"threshold": threshold, "chosen_by": f"{setting}: F1-best on the validation split{why}",
            "val_f1": round(f1, 6), "n_val": len(y_val)}


def run(params, data_dir, model_path, metrics_path, plots_dir, threshold_path, run_file) -> dict:
    """Score the model on the test split, write every output, log to MLflow; returns the metrics."""
    data_dir, model_path, metrics_path = Path(data_dir), Path(model_path), Path(metrics_path)
    plots_dir, threshold_path = Path(plots_dir), Path(threshold_path)
    cfg = params.evaluate

    model = load_model(model_path)
    x_test, y_test = dataset.load_split(data_dir, "test", size=model.size)
    if len(y_test) == 0:
        raise CrackclfError(f"{data_dir}: the test split is empty (preprocess.test_fraction is 0)")
    chosen = choose_threshold(cfg.threshold, data_dir, model, cfg.batch_size)
    threshold = chosen["threshold"]
    probs, test_features = model.predict_with_features(x_test, cfg.batch_size, progress=True)
    metrics = compute_metrics(y_test, probs, threshold)
    unfamiliar_path = threshold_path.with_name(unfamiliar.FILE)  # beside the model in the pipeline, as predict wants
    metrics.update(unfamiliar.fit_stage(model, data_dir, cfg, params.seed, sha256(model_path), test_features,
                                        unfamiliar_path))
    rows = dataset.read_manifest(data_dir, "test")
    files = [r["file"] for r in rows]
    if sources := per_source(rows, y_test, probs, threshold):
        metrics["sources"] = sources

    write_plots(plots_dir, y_test, probs, files, x_test, cfg.worst_examples, metrics)
    threshold_info = {**chosen, "image_size": model.size, "model": str(model_path),
                      "model_sha256": sha256(model_path)}
    write_json(threshold_path, threshold_info)
    write_json(metrics_path, metrics)

    print(summary(metrics, chosen))
    if not Path(run_file).is_file():  # a model trained outside tracking: nothing to update
        print(f"crackclf evaluate: MLflow not updated (no run file {run_file}: train did not log); "
              f"metrics written to {metrics_path}", file=sys.stderr)
        return metrics
    from mlflow.exceptions import MlflowException

    from crackclf.tracking import TrackingError

    try:
        print(log_to_mlflow(run_file, metrics, chosen, test_set_id(data_dir),
                            [plots_dir / n for n in PLOT_FILES + CSV_FILES]
                            + [threshold_path, metrics_path, unfamiliar_path]))
    except (TrackingError, MlflowException) as err:  # the files stand; the champion must not go stale unseen
        raise TrackingError(f"MLflow not updated ({first_line(err)}); metrics written to {metrics_path}") from None
    return metrics


def summary(metrics: dict, chosen: dict) -> str:
    def f(key: str) -> str:
        return "n/a" if metrics[key] is None else f"{metrics[key]:.4f}"

    return (f"test ({metrics['n_test']} images, threshold {metrics['threshold']:.3f} from {chosen['chosen_by']}): "
            f"accuracy {f('accuracy')}, precision {f('precision')}, recall {f('recall')}, f1 {f('f1')}, "
            f"roc_auc {f('roc_auc')}, loss {f('loss')}"
            + "".join(f"; {src}: {m['n_test']} images, f1 {m['f1']:.4f}"
                      for src, m in metrics.get("sources", {}).items()))


# --- plots ------------------------------------------------------------------------------------

def write_plots(plots_dir: Path, y, probs, files: list[str], images, worst: int, metrics: dict) -> None:
    names = dataset.LABEL_NAMES
    pred = (probs >= metrics["threshold"]).astype(int)
    write_csv(plots_dir / "predictions.csv", ["file", "actual", "predicted", "probability"],
               [{"file": f, "actual": names[int(t)], "predicted": names[int(q)], "probability": _r(p)}
                for f, t, q, p in zip(files, y, pred, probs)])
    roc, pr = curves(y, probs)
    write_csv(plots_dir / "roc.csv", ["fpr", "tpr", "threshold"], roc)
    write_csv(plots_dir / "precision_recall.csv", ["recall", "precision", "threshold"], pr)
    _plot_confusion(plots_dir / "confusion_matrix.png", metrics)
    _plot_curve(plots_dir / "roc.png", roc, "fpr", "tpr", metrics, "ROC",
                f"AUC {metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "one class only")
    _plot_curve(plots_dir / "precision_recall.png", pr, "recall", "precision", metrics, "Precision-recall",
                f"AP {metrics['average_precision']:.4f}" if metrics["average_precision"] is not None
                else "one class only")
    _plot_worst(plots_dir / "worst_errors.png", y, probs, files, images, worst, metrics)


def _plot_confusion(path: Path, metrics: dict) -> None:
    from matplotlib.figure import Figure

    cm = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
    total = max(1, cm.sum())
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v}\n{v / total:.1%}", ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black", fontsize=12)
    ax.set_xticks([0, 1], dataset.LABEL_NAMES)
    ax.set_yticks([0, 1], dataset.LABEL_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Test confusion matrix (threshold {metrics['threshold']:.3f})\n"
                 f"accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_curve(path: Path, rows: list[dict], x: str, y: str, metrics: dict, title: str, legend: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.add_subplot()
    if rows:
        ax.plot([r[x] for r in rows], [r[y] for r in rows], color="tab:blue", label=legend)
    if x == "fpr":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        fpr = metrics["fp"] / max(1, metrics["fp"] + metrics["tn"])
        point = (fpr, metrics["recall"])
    else:
        prevalence = (metrics["tp"] + metrics["fn"]) / max(1, metrics["n_test"])
        ax.axhline(prevalence, color="grey", linestyle=":", label="chance")
        point = (metrics["recall"], metrics["precision"])
    ax.plot(*point, "o", color="tab:red", label=f"threshold {metrics['threshold']:.3f}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel({"fpr": "false positive rate", "recall": "recall"}[x])
    ax.set_ylabel({"tpr": "true positive rate (recall)", "precision": "precision"}[y])
    ax.set_title(f"{title}, test split", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if x == "fpr" else "lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def worst_errors(y, probs, threshold: float, limit: int) -> np.ndarray:
    """Indices of misclassified images, most confidently wrong first."""
    y = np.asarray(y).astype(int)
    wrong = np.flatnonzero((probs >= threshold).astype(int) != y)
    order = np.argsort(-np.abs(y[wrong] - probs[wrong]), kind="stable")
    return wrong[order][:limit]


def _plot_worst(path: Path, y, probs, files: list[str], images, limit: int, metrics: dict) -> None:
    threshold = metrics["threshold"]
    preds = [patch_prediction(files[i], probs[i], threshold, int(y[i]), images[i])
             for i in worst_errors(y, probs, threshold, limit)]
    n_wrong = metrics["fp"] + metrics["fn"]
    title = (f"{len(preds)} worst of {n_wrong} misclassified test images (threshold {threshold:.3f})"
             if n_wrong else f"no misclassified test images at threshold {threshold:.3f}")
    plot_predictions(preds, path, threshold, ncols=min(8, max(1, len(preds))), title=title)


# --- MLflow -----------------------------------------------------------------------------------

def test_set_id(data_dir: Path) -> str:
    """Fingerprint of the test split (its pixels and labels): F1s are comparable only on the same one."""
    return sha256(dataset.images_path(data_dir, "test"))[:16] + sha256(dataset.labels_path(data_dir, "test"))[:16]


def log_to_mlflow(run_file, metrics: dict, chosen: dict, test_set: str, files: list[Path]) -> str:
    """Log to the training's run and update the champion alias; returns a one-line summary.

    The images model follows a new champion in a stage of its own (``crackclf publish``), so that
    evaluate depends on no prediction code."""
    from crackclf import tracking

    run_file = Path(run_file)
    if not run_file.is_file():
        raise CrackclfError(f"no run file {run_file} (train did not log to MLflow)")
    from mlflow.entities import Metric, RunTag

    client, run_id, info, uri = tracking.training_run(run_file)
    now = int(time.time() * 1000)
    logged = {f"test_{k.removesuffix('_test')}": v for k, v in metrics.items()
              if v is not None and not isinstance(v, dict)}
    logged.update({f"test_{src}_{k.removesuffix('_test')}": v for src, m in metrics.get("sources", {}).items()
                   for k, v in m.items()})
    if "val_f1" in chosen:
        logged["val_f1_at_threshold"] = chosen["val_f1"]
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in logged.items()],
                     tags=[RunTag("threshold_chosen_by", chosen["chosen_by"])])
    for path in files:
        if path.is_file():
            client.log_artifact(run_id, str(path), "eval")

    name, version = info.get("registered_model"), info.get("model_version")
    where = f"MLflow run {run_id}"
    if not (name and version):
        return f"{where}: metrics logged; no registered model version, so no champion update"
    with tracking.store_lock(uri):  # two evaluations at once must not both beat the same old champion
        decision = update_champion(client, name, str(version), metrics["f1"], metrics.get("loss"), test_set)
    client.log_batch(run_id, tags=[RunTag(k, decision[k])
                                   for k in ("champion_previous_version", "champion_previous_f1", "promoted")])
    return f"{where}: metrics logged; {decision['message']}"


def update_champion(client, name: str, version: str, f1: float, loss: float | None, test_set: str) -> dict:
    """Give ``version`` the champion alias if it beats the champion on the same test set; record why.

    Better means a higher test F1, or an equal F1 with a lower test loss (log loss): once
    F1 reaches 1.0 the loss still tells a surer model from a lucky one. A champion with
    no recorded test F1 (set by hand, never evaluated) is replaced: an unknown score
    cannot be shown to be better. Scores on different test sets (``preprocess`` or
    ``seed`` changed) are not compared: the champion stays, and the message says so,
    since a leakier split would otherwise win by its leak.
    """
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(err):
            raise
        champion = None
    client.set_model_version_tag(name, version, "test_f1", str(f1))
    if loss is not None:
        client.set_model_version_tag(name, version, "test_loss", str(loss))
    client.set_model_version_tag(name, version, "test_set", test_set)
    if champion is None:
        previous, previous_f1, promote = "none", None, True
        message = f"{name} version {version} is the first {CHAMPION} (test F1 {f1:.4f})"
    elif str(champion.version) == version:
        previous, previous_f1, promote = version, _score_of(client, champion, "f1"), True
        message = f"{name} version {version} stays {CHAMPION} (re-evaluated: test F1 {f1:.4f})"
    elif champion.tags.get("test_set", test_set) != test_set:
        previous, previous_f1, promote = str(champion.version), _score_of(client, champion, "f1"), False
        message = (f"version {previous} stays {CHAMPION}: version {version} was tested on another test set "
                   f"(preprocess or seed changed), so their scores do not compare; move the alias by hand if wanted")
    else:
        previous, previous_f1 = str(champion.version), _score_of(client, champion, "f1")
        previous_loss = _score_of(client, champion, "loss")
        tie = previous_f1 is not None and f1 == previous_f1
        by_loss = tie and loss is not None and previous_loss is not None
        promote = previous_f1 is None or f1 > previous_f1 or (by_loss and loss < previous_loss)
        old = "unknown" if previous_f1 is None else f"{previous_f1:.4f}"
        if by_loss:
            cmp = "<" if promote else ">="
            why = f"test F1 {f1:.4f} equal, test loss {loss:.4f} {cmp} {previous_loss:.4f}"
        else:
            why = f"test F1 {f1:.4f} {'>' if promote else '<='} {old}"
        message = (f"{name} version {version} is the new {CHAMPION} ({why} of version {previous})"
                   if promote else f"version {previous} stays {CHAMPION} ({why} of version {previous}, "
                   f"for version {version})")
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = {
        "champion_previous_version": previous,
        "champion_previous_f1": "none" if previous_f1 is None else str(previous_f1),
        "promoted": str(promote).lower(),
    }
    for key, value in decision.items():
        client.set_model_version_tag(name, version, key, value)
    return {**decision, "message": message}


def _score_of(client, version, metric: str) -> float | None:
    """The champion's test score (``f1``, ``loss``): its version tag, else its run's ``test_`` metric."""
    if f"test_{metric}" in version.tags:
        return float(version.tags[f"test_{metric}"])
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(f"test_{metric}")
        return None if value is None else float(value)
    return None


def main(args, params, stop: StopRequest | None = None) -> int:
    run(params, args.data_dir, args.model, args.metrics, args.plots_dir, args.threshold_file, args.run_file)
    return 0
