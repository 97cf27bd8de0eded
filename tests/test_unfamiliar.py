"""The unfamiliar-input flag: textures flagged, the dataset's own kind of patch not, and the plumbing
from evaluate (fit, save) to predict (rows, tiles, the summary line, the crack map)."""

import copy
import csv
import json

import numpy as np
import pytest
from PIL import Image

import synth
import textures
from crackclf import cli, config, dataset, files, imaging, inference, plots, unfamiliar


@pytest.fixture(scope="module")
def three_block_model(prepared_dir, tmp_path_factory):
    """A tiny CNN shaped like the reference one (three conv blocks: the features come from the middle
    one, pool2, not the last), fitted on ``prepared_dir`` in a few seconds.

    ``synth.TINY_PARAMS``' two-block model will not do: its pool2 is its last block, whose features
    are zero on most crack-free patches (cosine distance is then meaningless)."""
    from conftest import fit_tiny

    raw = copy.deepcopy(synth.TINY_PARAMS)
    raw["train"]["conv_filters"] = [8, 16, 16]
    path = tmp_path_factory.mktemp("three") / "model.keras"
    fit_tiny(config.parse(raw), prepared_dir, path)
    return path


@pytest.fixture(scope="module")
def fitted(three_block_model, prepared_dir):
    model = inference.load_model(three_block_model, "keras")
    x_train, _ = dataset.load_split(prepared_dir, "train")
    x_val, _ = dataset.load_split(prepared_dir, "val")
    scorer = unfamiliar.fit(model, x_train, x_val, k=5, percentile=99, max_bank=5000, batch_size=64, seed=0,
                            info={"model_sha256": files.sha256(three_block_model)})
    return model, scorer


def fresh_patches(size: int, seed: int = 5):
    """New synthetic concrete patches (both classes) and 20 of each texture, as model inputs."""
    rng = np.random.default_rng(seed)
    concrete = np.stack([imaging.resize(synth.patch(rng, bool(i % 2)).convert("L"), size) for i in range(60)])
    tex = {kind: np.stack([imaging.resize(textures.texture(kind, rng), size) for _ in range(20)])
           for kind in textures.KINDS}
    return concrete, tex


def test_textures_are_flagged_and_concrete_is_not(fitted):
    from sklearn.metrics import roc_auc_score

    model, scorer = fitted
    concrete, tex = fresh_patches(model.size)

    def scores(x):
        return scorer.score(model.predict_with_features(x, 64)[1])

    on_concrete = scores(concrete)
    on_textures = {kind: scores(x) for kind, x in tex.items()}
    flagged = {kind: float(scorer.flag(s).mean()) for kind, s in on_textures.items()}
    # The threshold is the validation split's 99th percentile: new patches of the same kind pass.
    assert scorer.flag(on_concrete).mean() <= 0.1, on_concrete
    assert np.mean(list(flagged.values())) >= 0.4, flagged
    assert flagged["grass"] >= 0.8 and flagged["text"] >= 0.5, flagged
    every = np.concatenate(list(on_textures.values()))
    auc = roc_auc_score(np.r_[np.zeros(len(on_concrete)), np.ones(len(every))], np.r_[on_concrete, every])
    assert auc >= 0.85, auc
    # The crack answers stay what they were: the flag is added, nothing is hidden or changed.
    probs, feats = model.predict_with_features(concrete, 64)
    np.testing.assert_allclose(probs, model.predict(concrete, 64), atol=1e-6)


def test_saved_scorer_scores_alike_and_belongs_to_its_model(fitted, three_block_model, tmp_path):
    model, scorer = fitted
    model_file = tmp_path / "model.keras"
    model_file.write_bytes(three_block_model.read_bytes())
    lines = []
    assert unfamiliar.find(model_file, lines.append) is None  # not fitted yet: no flag, one line
    assert len(lines) == 1 and "no unfamiliar-input score" in lines[0] and "crackclf evaluate" in lines[0]

    scorer.save(model_file.with_name(unfamiliar.FILE))
    lines.clear()
    loaded = unfamiliar.find(model_file, lines.append)
    assert lines == [] and loaded.k == 5 and loaded.threshold == scorer.threshold
    assert loaded.bank.shape == scorer.bank.shape and np.allclose(np.linalg.norm(loaded.bank, axis=1), 1, atol=1e-3)
    assert loaded.eps == scorer.eps > 0
    x, _ = fresh_patches(model.size)
    feats = model.predict_with_features(x, 64)[1]
    np.testing.assert_allclose(loaded.score(feats), scorer.score(feats), atol=1e-6)  # float16 bank, as fitted

    model_file.write_bytes(model_file.read_bytes() + b"\0")  # another model now: a stale score must not flag it
    assert unfamiliar.find(model_file, lines.append) is None
    assert len(lines) == 1 and "another model" in lines[0]


def test_scores_rank_by_distance_and_zero_features_are_alike():
    bank = unfamiliar.normalise(np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0]], np.float32), 1e-3)
    scorer = unfamiliar.Scorer(bank, k=2, threshold=0.5, eps=1e-3)
    s = scorer.score(np.array([[1, 0.05, 0], [0, 0, 1], [0, 0, 0]], np.float32))
    assert s[0] < 0.01 and s[1] == pytest.approx(1.0, abs=1e-5) and s[2] == pytest.approx(1.0, abs=2e-3)
    assert list(scorer.flag(s)) == [False, True, True]
    # A bank of crack-free patches whose features are all zero: a new one of them is familiar.
    zeros = unfamiliar.Scorer(unfamiliar.normalise(np.zeros((3, 3), np.float32), 1e-3), 2, 0.5, eps=1e-3)
    assert zeros.score(np.zeros((1, 3), np.float32))[0] == pytest.approx(0, abs=1e-6)
    assert zeros.score(np.array([[0, 1, 0]], np.float32))[0] == pytest.approx(1, abs=1e-3)
    # top_mean: the k largest of each row, with argmax passes (small k) or a partition (large k)
    sims = np.random.default_rng(0).random((7, 40))
    for k in (1, 5, 20):
        want = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
        np.testing.assert_allclose(unfamiliar.top_mean(sims.copy(), k), want)


def test_a_photo_is_unfamiliar_when_most_of_its_tiles_are():
    t = 0.5
    for tiles, most in (([0.9], True), ([0.1], False), ([0.9, 0.1], False), ([0.9, 0.9, 0.1], True),
                        ([0.9, 0.1, 0.1, 0.9], False), ([0.9, 0.9, 0.9, 0.1], True)):
        assert (unfamiliar.photo_score(np.array(tiles)) >= t) == most, tiles
    assert unfamiliar.summary([True] * 17 + [False] * 3) == \
        "17 of 20 images look unlike the training data: answers there are unreliable"
    assert unfamiliar.summary([True, False]) is None and unfamiliar.summary([]) is None


def test_evaluate_fits_it_and_predict_flags_with_it(three_block_model, prepared_dir, tmp_path, capsys):
    from crackclf import evaluate

    models = tmp_path / "models"
    models.mkdir()
    model_file = models / "model.keras"
    model_file.write_bytes(three_block_model.read_bytes())
    raw = copy.deepcopy(synth.TINY_PARAMS)
    raw["evaluate"] = {"unfamiliar_k": 4, "unfamiliar_percentile": 98, "unfamiliar_bank": 150}
    params = config.parse(raw)
    metrics = evaluate.run(params, prepared_dir, model_file, tmp_path / "eval.json", tmp_path / "plots",
                           models / "threshold.json", tmp_path / "no_run.json")
    scorer = unfamiliar.load(models / unfamiliar.FILE)
    assert (scorer.k, scorer.info["n_bank"], scorer.info["percentile"]) == (4, 150, 98)
    assert scorer.info["model_sha256"] == files.sha256(model_file)
    assert 0 <= metrics["unfamiliar_rate"] <= 0.3 and metrics["unfamiliar_threshold"] == round(scorer.threshold, 6)
    assert json.loads((tmp_path / "eval.json").read_text())["unfamiliar_rate"] == metrics["unfamiliar_rate"]
    assert "unfamiliar from score" in capsys.readouterr().out

    # A folder of grass and two concrete patches, and a whole photo: three tiles of grass, one of concrete.
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(9)
    for i in range(4):
        textures.grass(rng).save(folder / f"grass-{i}.png")
    for i in range(2):
        synth.patch(rng, bool(i)).save(folder / f"concrete-{i}.jpg", quality=90)
    photo = Image.new("L", (4 * 227, 227))
    for c in range(4):
        photo.paste(textures.grass(rng) if c < 3 else synth.patch(rng, False).convert("L"), (c * 227, 0))
    photo.save(tmp_path / "photo.png")
    out, tiles, crack_map = tmp_path / "rows.csv", tmp_path / "tiles.csv", tmp_path / "map.png"
    code = cli.main(["predict", str(folder), str(tmp_path / "photo.png"), "--model", str(model_file),
                     "--output", str(out), "--tiles", str(tiles), "--runtime", "keras"])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(out.open())}
    assert {r["unfamiliar"] for r in rows.values()} <= {"true", "false"}
    assert sum(rows[f"grass-{i}.png"]["unfamiliar"] == "true" for i in range(4)) >= 3, rows
    assert [rows[f"concrete-{i}.jpg"]["unfamiliar"] for i in range(2)] == ["false", "false"]
    for r in rows.values():  # rounded to 6 digits in the file
        assert abs(float(r["unfamiliar_score"]) - scorer.threshold) < 1e-6 or \
            (float(r["unfamiliar_score"]) >= scorer.threshold) == (r["unfamiliar"] == "true")
    tile_rows = [r for r in csv.DictReader(tiles.open()) if r["path"].endswith("photo.png")]
    tile_flags = [r["unfamiliar"] == "true" for r in tile_rows]
    # grass, grass, grass, concrete
    assert len(tile_flags) == 4 and not tile_flags[3] and sum(tile_flags) >= 2, tile_rows
    assert rows["photo.png"]["unfamiliar_tiles"] == str(sum(tile_flags))
    assert rows["photo.png"]["unfamiliar"] == ("true" if sum(tile_flags) > 2 else "false")  # more than half
    flagged = sum(r["unfamiliar"] == "true" for r in rows.values())
    assert f"{flagged} of 7 images look unlike the training data: answers there are unreliable" in err
    assert "no unfamiliar-input score" not in err

    # One photo: the line counts its tiles; the crack map hatches the unfamiliar ones.
    code = cli.main(["predict", str(tmp_path / "photo.png"), "--model", str(model_file), "--plot", str(crack_map),
                     "--runtime", "keras", "--output", str(tmp_path / "one.json")])
    assert code == 0
    err = capsys.readouterr().err
    one = json.loads((tmp_path / "one.json").read_text())[0]
    assert one["unfamiliar_tiles"] == sum(tile_flags) and isinstance(one["unfamiliar"], bool)
    assert ("photo.png: 3 of 4 tiles look unlike the training data" in err) == (sum(tile_flags) == 3), err
    with Image.open(crack_map) as img:
        assert img.format == "PNG"


def test_crack_map_hatches_unfamiliar_tiles_only():
    table = inference.TileTable(np.array([[0, 0, 100, 100], [100, 0, 100, 100]]), np.array([0.9, 0.1]),
                                unfamiliar_scores=np.array([0.9, 0.1]), unfamiliar=np.array([True, False]))
    img = Image.new("RGB", (200, 100), (128, 128, 128))
    shaded = np.asarray(plots.shade_unfamiliar(img, table, (200, 100)))
    violet = np.all(shaded == plots.UNFAMILIAR, axis=2)
    assert violet[:, :100].mean() > 0.1 and not violet[:, 100:].any()
    assert (shaded[:, 100:] == 128).all()  # the familiar tile is left as it was
    table.unfamiliar = np.array([False, False])
    assert plots.shade_unfamiliar(img, table, (200, 100)) is img


def test_fit_keeps_a_seeded_sample_and_works_without_a_validation_split():
    class Features:  # a model whose "features" are the images' first pixels: fit needs nothing else
        def predict_with_features(self, images, batch_size, progress=False):
            x = np.asarray(images, np.float32).reshape(len(images), -1)[:, :4] + 1
            return np.zeros(len(x)), x

    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (300, 4, 4, 1)).astype(np.uint8)
    val = rng.integers(0, 255, (50, 4, 4, 1)).astype(np.uint8)
    a = unfamiliar.fit(Features(), train, val, 3, 90, 100, 32, seed=1)
    b = unfamiliar.fit(Features(), train, val, 3, 90, 100, 32, seed=1)
    assert a.bank.shape == (100, 5) and np.array_equal(a.bank, b.bank) and a.threshold == b.threshold
    assert a.info["n_train"] == 300 and a.info["n_bank"] == 100 and a.info["n_val"] == 50
    val_scores = a.score(Features().predict_with_features(val, 32)[1])
    assert a.flag(val_scores).mean() == pytest.approx(0.1, abs=0.03)  # the 90th percentile: a tenth flagged

    alone = unfamiliar.fit(Features(), train, val[:0], 3, 90, 1000, 32, seed=1)  # each against the others
    own = alone.score(Features().predict_with_features(train, 32)[1])  # itself included: nearer
    assert 0 < alone.threshold and alone.flag(own).mean() < 0.1
