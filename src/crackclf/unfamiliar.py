"""The unfamiliar-input score: how far an image lies from the training data, in the model's own features.

A sigmoid probability cannot say "this is not concrete": a brick wall gets "crack, 0.99",
its mortar joints taken for cracks. So every patch and tile also gets a score, the mean
cosine distance to its ``k`` nearest training patches in the feature space of
``model.with_features``: the global average of the second conv block's output, the
textures the network has learnt to see. Chosen by measurement on the real sample (README):
there it flagged 2 % of unseen test patches and 92 % of non-concrete texture patches (ROC
AUC 0.994); the block's global maximum, the third block and the penultimate dense layer
(collapsed to crack-ness: bricks sit among cracked concrete there) all did worse.

An image is *unfamiliar* when its score reaches the threshold: the
``evaluate.unfamiliar_percentile`` percentile of the validation split's scores (99 by
default, so about 1 % of new images like the training data are flagged too). The flag
does not change the answer, it says the answer rests on nothing the model has seen. It
promises nothing the other way: an image it does not flag can still be unlike the
training data in ways these features do not see.

The evaluate stage fits it (``fit``), so that changing its params re-runs evaluate, not
training. It is saved as ``unfamiliar.npz`` beside the model file (the training
features, L2-normalised, as float16, at most ``evaluate.unfamiliar_bank`` of them; ``k``;
the threshold; the model's sha256) and logged to the training's MLflow run as
``eval/unfamiliar.npz``, so predict, serving and the web page flag alike. ``find``
returns it for a model, or None with one line when there is none: the model still
answers, without the flag.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackclf import CrackclfError, files

FILE = "unfamiliar.npz"  # beside the model file, written by evaluate
ARTIFACT = "eval/" + FILE  # the same file in the training's MLflow run
CHUNK = 256  # queries scored at once: a (CHUNK, bank) float32 matrix that stays in cache


@dataclass(frozen=True)
class Scorer:
    """The fitted score: a bank of training features, ``k``, and the flagging threshold."""

    bank: np.ndarray  # (n, d + 1) float32, rows of unit length (``normalise``d)
    k: int
    threshold: float
    info: dict = field(default_factory=dict)  # percentile, model_sha256, n_train, ...
    eps: float = 0.0  # the constant component ``normalise`` appends

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mean cosine distance of each row of ``features`` (n, d) to its ``k`` nearest bank rows."""
        q = normalise(np.asarray(features, np.float32), self.eps)
        out = np.empty(len(q), np.float64)
        for start in range(0, len(q), CHUNK):
            out[start:start + CHUNK] = 1.0 - top_mean(q[start:start + CHUNK] @ self.bank.T, self.k)
        return np.maximum(out, 0.0)  # float16 rounding can push a similarity a hair above 1

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def save(self, path: str | Path) -> None:
        with files.atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
            np.savez(f, bank=self.bank.astype(np.float16), k=np.int64(self.k), eps=np.float64(self.eps),
                     threshold=np.float64(self.threshold), info=np.array(json.dumps(self.info)))


def top_mean(sims: np.ndarray, k: int) -> np.ndarray:
    """Mean of the ``k`` largest values of each row (overwrites ``sims``). For a small ``k``, ``k``
    passes of argmax beat ``np.partition`` three to four times over (measured, 10,000 columns)."""
    k = min(k, sims.shape[1])
    if k > 16:
        return np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1, dtype=np.float64)
    rows, total = np.arange(len(sims)), np.zeros(len(sims), np.float64)
    for _ in range(k):
        best = sims.argmax(axis=1)
        total += sims[rows, best]
        sims[rows, best] = -np.inf
    return total / k


def normalise(features: np.ndarray, eps: float) -> np.ndarray:
    """Rows with a constant ``eps`` appended, scaled to unit length.

    ``eps`` is a thousandth of a typical training row's length: it leaves the cosine of
    ordinary rows as it was (to about 1e-6), but gives rows of (nearly) all zeros, which
    a crack model's features are on some inputs, a direction: alike to each other, far
    from the rest, rather than undefined.
    """
    features = np.concatenate([features, np.full((len(features), 1), eps, features.dtype)], axis=1)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-30)).astype(np.float32)


def load(path: str | Path) -> Scorer:
    """Read a scorer that ``Scorer.save`` wrote; ValueError or OSError if it is not one."""
    with np.load(path, allow_pickle=False) as z:
        bank = np.asarray(z["bank"], np.float32)
        k, threshold, eps = int(z["k"]), float(z["threshold"]), float(z["eps"])
        info = json.loads(str(z["info"]))
    if bank.ndim != 2 or not len(bank) or k < 1 or not np.isfinite(threshold):
        raise ValueError("not an unfamiliar-input score file")
    return Scorer(bank, k, threshold, info, eps)


# --- fitting (the evaluate stage) -----------------------------------------------------------

def features(model, images: np.ndarray, batch_size: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, features) of ``images`` in one pass of the model."""
    return model.predict_with_features(images, batch_size, progress=progress)


def fit(model, x_train: np.ndarray, x_val: np.ndarray, k: int, percentile: float, max_bank: int,
        batch_size: int, seed: int, info: dict | None = None) -> Scorer:
    """The scorer for ``model``: its bank from the train split (at most ``max_bank`` images, a
    seeded random sample), its threshold from the validation split's scores.

    Without a validation split, each bank image is scored against the others instead
    (its own nearest neighbour, itself, left out): a lower, stricter threshold.
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(x_train), max_bank, replace=False)) if len(x_train) > max_bank \
        else np.arange(len(x_train))
    _, train_features = features(model, x_train[pick], batch_size, progress=True)
    norms = np.linalg.norm(train_features, axis=1)
    eps = 1e-3 * float(np.median(norms[norms > 0])) if (norms > 0).any() else 1.0
    bank = normalise(train_features, eps).astype(np.float16).astype(np.float32)  # as saved: the threshold fits it
    if len(x_val):
        val_scores = Scorer(bank, k, 0.0, eps=eps).score(features(model, x_val, batch_size)[1])
    else:  # k + 1 nearest, less the image itself (similarity 1)
        val_scores = np.concatenate([1.0 - (top_mean(bank[i:i + CHUNK] @ bank.T, k + 1) * (k + 1) - 1.0) / k
                                     for i in range(0, len(bank), CHUNK)])
    threshold = float(np.percentile(val_scores, percentile))
    meta = {"percentile": percentile, "n_train": len(x_train), "n_bank": len(bank), "n_val": len(x_val),
            "features": "model.with_features", **(info or {})}
    return Scorer(bank, k, threshold, meta, eps)


def fit_stage(model, data_dir, cfg, seed: int, model_sha256: str, test_features: np.ndarray,
              path: Path) -> dict:
    """The evaluate stage's part: fit on the prepared splits (``cfg``: ``EvaluateParams``), save
    to ``path``, say so in one line on stdout (beside evaluate's summary); returns the test
    metrics ``unfamiliar_rate`` and ``unfamiliar_threshold``."""
    from crackclf import dataset

    x_train, _ = dataset.load_split(data_dir, "train", size=model.size)
    x_val, _ = dataset.load_split(data_dir, "val", size=model.size)
    if not len(x_train):
        raise CrackclfError(f"{data_dir}: the train split is empty: nothing to tell familiar inputs by")
    scorer = fit(model, x_train, x_val, cfg.unfamiliar_k, cfg.unfamiliar_percentile, cfg.unfamiliar_bank,
                 cfg.batch_size, seed, {"model_sha256": model_sha256})
    scorer.save(path)
    rate = float(scorer.flag(scorer.score(test_features)).mean()) if len(test_features) else 0.0
    scored = f"{len(x_val)} validation images'" if len(x_val) else "the training images' own"
    print(f"{path}: unfamiliar from score {scorer.threshold:.4f} (the {cfg.unfamiliar_percentile:g}th percentile of "
        f"{scored} distances to {scorer.info['n_bank']} training images); {rate:.1%} of test images flagged")
    return {"unfamiliar_rate": round(rate, 6), "unfamiliar_threshold": round(scorer.threshold, 6)}


# --- finding the scorer of a model (predict, serving) ---------------------------------------

def find(model_spec: str | Path, warn: Callable[[str], None]) -> Scorer | None:
    """The scorer evaluate fitted for this model, or None with one line on ``warn``.

    For a file, ``unfamiliar.npz`` beside it counts only if it names this very file
    (sha256). For a registry URI (``models:/NAME/VERSION``, as ``resolve_model`` gives
    it), the one evaluate logged to the training's run.
    """
    spec = str(model_spec)
    if spec.startswith("models:/"):
        return _registered(spec, warn)
    path = Path(spec).with_name(FILE)
    if not path.is_file():
        warn(f"{spec}: no unfamiliar-input score ({path}; run `crackclf evaluate`): rows carry no unfamiliar flag")
        return None
    try:
        scorer = load(path)
    except (OSError, ValueError, KeyError) as err:
        warn(f"{path}: unreadable ({type(err).__name__}): rows carry no unfamiliar flag")
        return None
    if scorer.info.get("model_sha256") not in (None, files.sha256(spec)):
        warn(f"{path} was fitted for another model (rerun `crackclf evaluate`): rows carry no unfamiliar flag")
        return None
    return scorer


def _registered(uri: str, warn: Callable[[str], None]) -> Scorer | None:
    import tempfile

    import mlflow

    from crackclf.inference import no_mlflow_progress_bars

    name, _, number = uri.removeprefix("models:/").partition("/")
    try:
        version = mlflow.MlflowClient().get_model_version(name, number)
        with tempfile.TemporaryDirectory() as tmp, no_mlflow_progress_bars():
            local = mlflow.artifacts.download_artifacts(f"runs:/{version.run_id}/{ARTIFACT}", dst_path=tmp)
            return load(local)
    except Exception:  # noqa: BLE001 - not evaluated yet, or evaluated before the score existed
        warn(f"{uri}: no unfamiliar-input score logged by evaluate: rows carry no unfamiliar flag")
        return None


# --- predictions (crackclf predict, serving) ----------------------------------------------------

def run(model, images: np.ndarray, batch_size: int, scorer: Scorer | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, unfamiliar scores) of ``images`` in one pass; scores None without a scorer."""
    if scorer is None:
        return model.predict(images, batch_size), None
    probs, feats = model.predict_with_features(images, batch_size)
    return probs, scorer.score(feats)


def annotate(pred, tile_scores: np.ndarray | None, scorer: Scorer | None):
    """Set a prediction's unfamiliar fields (and its tile table's) from its tiles' scores; returns it."""
    if scorer is None or tile_scores is None:
        return pred
    tile_scores = np.asarray(tile_scores, np.float64).reshape(-1)
    flags = scorer.flag(tile_scores)
    if pred.tile_table is not None:
        pred.tile_table.unfamiliar_scores, pred.tile_table.unfamiliar = tile_scores, flags
    pred.unfamiliar_score = photo_score(tile_scores)
    pred.unfamiliar = bool(pred.unfamiliar_score >= scorer.threshold)
    pred.unfamiliar_tiles = int(flags.sum())
    return pred


def photo_score(tile_scores: np.ndarray) -> float:
    """An image's score from its tiles': the lower median, so that a photo is unfamiliar (score
    at least the threshold) exactly when more than half of its tiles are. A patch is one tile."""
    s = np.sort(np.asarray(tile_scores, np.float64).ravel())
    return float(s[(len(s) + 1) // 2 - 1])


def summary(flags: list[bool], what: str = "images") -> str | None:
    """The one line for a folder (or a photo's tiles) that is mostly unfamiliar, else None."""
    n, bad = len(flags), int(sum(flags))
    if not n or bad * 2 <= n:
        return None
    return f"{bad} of {n} {what} look unlike the training data: answers there are unreliable"


def summary_line(preds) -> str | None:
    """predict's one line when most images (of one whole photo: most tiles) are unfamiliar."""
    preds = [p for p in preds if p.unfamiliar is not None]
    if len(preds) == 1 and preds[0].tile_table is not None and len(preds[0].tile_table) > 1:
        line = summary(list(preds[0].tile_table.unfamiliar), "tiles")
        return line and f"{preds[0].path}: {line}"
    return summary([p.unfamiliar for p in preds])
