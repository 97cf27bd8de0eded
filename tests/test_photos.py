"""Whole photos: the tile rule, tiles that cover every pixel at any scale, crack maps, photo sets scored
against their masks (crackclf score-photos and the pipeline's photos stage), and crackclf tiles."""

import csv
import io
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synth
from crackclf import CrackclfError, cli, config, imaging, photos, plots, predict
from crackclf.inference import TileTable
from workspace import crackclf

REPO = Path(__file__).resolve().parents[1]
# Three small photos of odd sizes, cracks drawn in (x, y, side) squares: tiles of 227 px reach every edge
# only by the last column and row flush with it.
PHOTOS = {
    "deck": (700, 500, [(0, 0, 227), (400, 250, 227)]),
    "pier": (1001, 613, [(600, 300, 300)]),
    "wall": (463, 461, []),
}


class DarkModel:
    """A stand-in classifier with a known rule: the darker a tile's darkest pixel, the likelier a crack
    (drawn cracks are far darker than concrete and its pores). ``calls`` records every batch."""

    size = 48

    def __init__(self):
        self.calls = 0

    def predict(self, images, batch_size, progress=False):
        self.calls += 1
        darkest = np.asarray(images).reshape(len(images), -1).min(axis=1).astype(np.float64)
        return np.clip((130 - darkest) / 100, 0, 1)


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory) -> Path:
    return synth.write_photo_set(tmp_path_factory.mktemp("photos") / "site", PHOTOS, seed=4)


def brute_force_boxes(width, height, tile, stride):
    xs = list(range(0, width - tile + 1, stride))
    ys = list(range(0, height - tile + 1, stride))
    xs += [width - tile] if xs[-1] + tile < width else []
    ys += [height - tile] if ys[-1] + tile < height else []
    return [(x, y, tile, tile) for y in ys for x in xs]


# --- the tile rule ---------------------------------------------------------------------------------

def test_tile_rule_counts_crack_pixels_per_tile():
    mask = np.zeros((100, 200), bool)
    boxes = np.array([[0, 0, 100, 100], [100, 0, 100, 100], [50, 0, 100, 100]])
    mask[10, 10:60] = True  # 50 of the first tile's 10,000 pixels: exactly 0.5 %: crack
    mask[90, 160:209 - 10] = True  # 39 pixels in the second tile: 0.39 %: left out
    labels, fractions = photos.tile_labels(mask, boxes)
    assert fractions.tolist() == pytest.approx([0.005, 0.0039, 0.001])  # the middle tile holds 10 + 0
    assert labels.tolist() == [photos.CRACK, photos.LEFT_OUT, photos.LEFT_OUT]
    mask[:] = False
    mask[0, 0] = True  # one pixel: the first tile is left out, the second has none
    assert photos.tile_labels(mask, boxes)[0].tolist() == [photos.LEFT_OUT, photos.NO_CRACK, photos.NO_CRACK]
    # Any box, any mask: the summed-area table equals counting.
    rng = np.random.default_rng(0)
    mask = rng.random((61, 83)) < 0.01
    boxes = np.array([(x, y, w, h) for x, y, w, h in rng.integers(1, 40, (50, 4)) if x + w <= 83 and y + h <= 61])
    counted = [mask[y:y + h, x:x + w].sum() / (w * h) for x, y, w, h in boxes]
    assert photos.crack_fractions(mask, boxes) == pytest.approx(counted)


# --- tiling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height,tile,stride", [
    (1001, 613, 227, 227), (4032, 3024, 227, 227), (463, 461, 227, 227), (700, 500, 227, 113),
    (4608, 3456, 259, 259), (1000, 700, 114, 57), (455, 229, 227, 1),
])
def test_tiles_cover_every_pixel_of_odd_sized_photos(width, height, tile, stride):
    boxes = predict.tile_boxes(width, height, tile, stride)
    assert [tuple(b) for b in boxes] == brute_force_boxes(width, height, tile, stride)
    covered = np.zeros((height, width), np.int32)
    for x, y, w, h in boxes:
        assert (w, h) == (tile, tile) and 0 <= x <= width - tile and 0 <= y <= height - tile
        covered[y:y + h, x:x + w] += 1
    assert covered.min() >= 1  # the right and bottom strips too
    assert len(boxes) == len(predict.tile_starts(width, tile, stride)) * len(predict.tile_starts(height, tile, stride))


def test_odd_sized_photo_is_predicted_to_its_edges(photo_set):
    model = DarkModel()
    (pred,) = predict.predict_files(model, [photo_set / "images" / "pier.png"], 0.5, 227, 227, 256, pytest.fail,
                                    photo_scale="none")
    assert pred.whole_photo and pred.image_size == (1001, 613)
    covered = np.zeros((613, 1001), bool)
    for x, y, w, h in pred.tile_table.boxes:
        covered[y:y + h, x:x + w] = True
    assert covered.all() and pred.tiles == 5 * 3
    # The bottom-right tile is flush with both edges and is exactly that crop of the photo.
    img = imaging.open_gray(photo_set / "images" / "pier.png")
    x, y, w, h = pred.tile_table.boxes[-1]
    assert (x + w, y + h) == (1001, 613)
    assert pred.tile_table.probabilities[-1] == model.predict(imaging.resize(img.crop((x, y, x + w, y + h)), 48)[None], 1)[0]


def test_tile_coordinates_stay_in_the_photos_pixels_whatever_the_scale(photo_set, tmp_path):
    data = (photo_set / "images" / "pier.png").read_bytes()
    img = imaging.open_gray(data)
    for scale, tile in ((0.5, 454), (2, 114), ("none", 227), ("auto", 56)):  # auto: 1001 px -> 4032
        d = predict.decode(data, 48, 227, 227, photo_scale=scale)
        assert d.layout.tile_px == tile and d.image_size == (1001, 613)
        assert [tuple(b) for b in d.boxes] == brute_force_boxes(1001, 613, tile, tile)
        first = imaging.resize(img.crop((0, 0, tile, tile)), 48)
        assert np.array_equal(d.tiles[0], first)
    # A stride scales with the tile: 113 of 227 is 57 of 114 photo pixels at scale 2.
    assert predict.decode(data, 48, 227, 113, photo_scale=2).layout.stride_px == 57
    # Patches are one tile of their own (upright) size, whatever the scale.
    synth.patch(np.random.default_rng(1), True).resize((300, 260)).save(tmp_path / "crop.png")
    d = predict.decode(tmp_path / "crop.png", 48, 227, 227, photo_scale=4)
    assert not d.layout.whole_photo and d.boxes.tolist() == [[0, 0, 300, 260]]


def test_tiles_csv_through_the_cli(photo_set, tiny_model_path, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({**synth.TINY_PARAMS, "predict": {"photo_scale": 0.5}}))
    patch = tmp_path / "patch.jpg"
    synth.patch(np.random.default_rng(2), False).save(patch)
    rows_csv, tiles_csv, maps = tmp_path / "rows.csv", tmp_path / "tiles.csv", tmp_path / "maps"
    done = crackclf(REPO, "predict", photo_set / "images" / "pier.png", patch, "--model", tiny_model_path,
                    "--params", params, "--threshold", "0.5", "--output", rows_csv, "--tiles", tiles_csv,
                    "--plot-dir", maps)
    assert done.returncode == 0, done.stderr
    with open(tiles_csv, newline="") as f:
        tiles = list(csv.DictReader(f))
    assert list(tiles[0])[:7] == ["path", "x", "y", "width", "height", "probability", "label"]
    pier = [t for t in tiles if t["path"].endswith("pier.png")]
    assert [(int(t["x"]), int(t["y"]), int(t["width"]), int(t["height"])) for t in pier] == \
        brute_force_boxes(1001, 613, 454, 454)  # 227 px tiles at scale 0.5: 454 photo pixels
    assert [(t["x"], t["y"], t["width"], t["height"]) for t in tiles if t["path"] == str(patch)] == \
        [("0", "0", "227", "227")]
    with open(rows_csv, newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["pier.png"]["tiles"] == str(len(pier))
    assert rows["pier.png"]["crack_tiles"] == str(sum(t["label"] == "crack" for t in pier))
    assert max(float(t["probability"]) for t in pier) == pytest.approx(float(rows["pier.png"]["probability"]))
    assert sorted(p.name for p in maps.iterdir()) == ["patches.png", "pier.png"]
    with Image.open(maps / "pier.png") as img:
        assert img.format == "PNG" and img.width >= plots.MAP_MIN_PX


def test_a_stride_above_the_tile_size_is_refused(photo_set, tiny_model_path, tmp_path, capsys):
    model = ["--model", str(tiny_model_path)]
    for argv in (["predict", str(photo_set / "images" / "deck.png"), *model], ["score-photos", str(photo_set), *model],
                 ["tiles", str(photo_set), str(tmp_path / "t")]):
        code = cli.main([*argv, "--stride", "228", "--params", str(REPO / "params.yaml")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "above the tile size 227" in err[0], (argv, err)
    with pytest.raises(config.ConfigError, match="predict: stride 300 is above tile_size 227"):
        config.parse({"predict": {"stride": 300}})
    assert not (tmp_path / "t").exists()


# --- photo sets and masks -------------------------------------------------------------------------

def test_bad_masks_are_one_line_naming_the_file(photo_set, tmp_path, capsys):
    import shutil

    def broken(name: str, damage) -> Path:
        root = tmp_path / name
        shutil.copytree(photo_set, root)
        damage(root / "masks" / "pier.png")
        return root

    cases = {
        "missing": (lambda m: m.unlink(), "missing"),
        "size": (lambda m: Image.new("L", (1000, 613)).save(m), "mask is 1000x613 but its photo is 1001x613"),
        "garbage": (lambda m: m.write_bytes(b"not a png at all"), "not a readable mask"),
        "truncated": (lambda m: m.write_bytes(m.read_bytes()[:60]), "not a readable mask"),
    }
    for name, (damage, words) in cases.items():
        root = broken(name, damage)
        with pytest.raises(CrackclfError, match=words):
            photos.photo_set(root)
        code = cli.main(["tiles", str(root), str(tmp_path / f"{name}-tiles")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and str(root / "masks" / "pier.png") in err[0] and words in err[0], err
        assert not (tmp_path / f"{name}-tiles").exists()
    with pytest.raises(CrackclfError, match="not a photo set"):
        photos.photo_set(tmp_path)


# --- scoring ---------------------------------------------------------------------------------------

def expected_scores(photo_set: Path, threshold: float) -> tuple[list, list, list]:
    """Tile labels and DarkModel probabilities worked out without crackclf's tiling or rule."""
    labels, probs, count_errors = [], [], []
    model = DarkModel()
    for name in sorted(PHOTOS):
        img = imaging.open_gray(photo_set / "images" / f"{name}.png")
        mask = np.asarray(Image.open(photo_set / "masks" / f"{name}.png")) == 255
        boxes = brute_force_boxes(img.width, img.height, 227, 227)
        p = model.predict(np.stack([imaging.resize(img.crop((x, y, x + w, y + h)), 48) for x, y, w, h in boxes]), 64)
        share = [mask[y:y + h, x:x + w].mean() for x, y, w, h in boxes]
        lab = [1 if s >= 0.005 else 0 if s == 0 else -1 for s in share]
        labels += lab
        probs += list(p)
        count_errors.append(abs(int((p >= threshold).sum()) - lab.count(1)))
    return labels, probs, count_errors


def test_score_equals_the_tile_rule_worked_out_by_hand(photo_set):
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    labels, probs, count_errors = expected_scores(photo_set, 0.5)
    scores = photos.score(DarkModel(), photo_set, 0.5, photo_scale="none")
    m = scores.metrics
    y = np.array([lab for lab in labels if lab >= 0])
    p = np.array([q for q, lab in zip(probs, labels) if lab >= 0])
    assert (m["photos"], m["tiles"], m["scored_tiles"], m["left_out_tiles"]) == (3, len(labels), len(y),
                                                                                 labels.count(-1))
    assert m["crack_tiles"] == int(y.sum()) > 0 and m["left_out_tiles"] > 0 and (y == 0).sum() > 0
    assert m["precision"] == pytest.approx(precision_score(y, p >= 0.5))
    assert m["recall"] == pytest.approx(recall_score(y, p >= 0.5))
    assert m["f1"] == pytest.approx(f1_score(y, p >= 0.5))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["count_mae"] == pytest.approx(np.mean(count_errors))
    assert [r["photo"] for r in scores.rows] == sorted(PHOTOS)
    assert sum(r["tp"] + r["fp"] + r["fn"] + r["tn"] for r in scores.rows) == m["scored_tiles"]
    assert scores.rows[2]["crack_tiles"] == 0  # "wall" has no crack: every tile is a no-crack tile


def test_score_photos_command_writes_metrics_csv_and_worst_photos(photo_set, tiny_model_path, tmp_path):
    out, plots_dir = tmp_path / "m.json", tmp_path / "plots"
    done = crackclf(REPO, "score-photos", photo_set, "--model", tiny_model_path, "--output", out,
                    "--plots-dir", plots_dir, "--threshold", "0.5", "--params", REPO / "params.yaml")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert {"precision", "recall", "f1", "roc_auc", "count_mae"} <= set(metrics)
    assert metrics["photos"] == 3 and metrics["threshold"] == 0.5 and 0 <= metrics["f1"] <= 1
    with open(plots_dir / "photos.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["photo"] for r in rows] == sorted(PHOTOS)
    assert sum(int(r["scored"]) for r in rows) == metrics["scored_tiles"]
    with Image.open(plots_dir / "worst.png") as img:
        assert img.format == "PNG" and img.width >= 900
    assert any(line.startswith("photos (3 photos,") for line in done.stderr.splitlines())


def test_photo_stage_without_a_photo_set(tmp_path, capsys):
    placeholder = tmp_path / "data" / "photos"
    placeholder.mkdir(parents=True)
    (placeholder / "README.md").write_text("no photos here\n")
    params = config.parse({"photos": {"dir": str(placeholder)}})
    args = Namespace(dir=None, model=str(tmp_path / "never-loaded.keras"), output=tmp_path / "metrics/photos.json",
                     plots_dir=tmp_path / "plots/photos", threshold=None, stride=None, run_file=tmp_path / "run.json")
    assert photos.score_main(args, params) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no photo set in" in err[0] and "photos.dir" in err[0]
    metrics = json.loads(args.output.read_text())
    assert metrics["photos"] is None and "no photo set" in metrics["reason"]
    assert (args.plots_dir / "photos.csv").read_text().startswith("photo,width,height")
    assert Image.open(args.plots_dir / "worst.png").format == "PNG"


def test_photo_stage_logs_photo_metrics_to_the_training_run(photo_set, tiny_model_path, tmp_path, monkeypatch):
    import mlflow

    from crackclf import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure()
    experiment = mlflow.create_experiment("photos-test", artifact_location=str(tmp_path / "mlruns"))
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    run_file = tmp_path / "models" / "mlflow_run.json"
    tracking.write_run_file(run_file, {"run_id": run.info.run_id, "experiment_id": experiment})
    params = config.parse({**synth.TINY_PARAMS, "photos": {"dir": str(photo_set), "worst": 2}})
    args = Namespace(dir=None, model=str(tiny_model_path), output=tmp_path / "metrics/photos.json",
                     plots_dir=tmp_path / "plots/photos", threshold=0.5, stride=None, run_file=run_file)
    assert photos.score_main(args, params) == 0
    metrics = json.loads(args.output.read_text())
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged["photo_f1"] == pytest.approx(metrics["f1"]) and logged["photo_photos"] == 3
    assert {"photo_precision", "photo_recall", "photo_roc_auc", "photo_count_mae"} <= set(logged)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "photos")}
    assert artifacts == {"photos/photos.json", "photos/photos.csv", "photos/worst.png"}


# --- crackclf tiles --------------------------------------------------------------------------------

def test_tiles_command_cuts_labelled_tiles_named_after_their_photo(photo_set, tmp_path):
    from crackclf.preprocess import photo_of

    out = tmp_path / "extra" / "site"
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"predict": {"photo_scale": "none"}}))
    assert cli.main(["tiles", str(photo_set), str(out), "--params", str(params)]) == 0
    labels = {}
    for name in PHOTOS:
        img = imaging.open_gray(photo_set / "images" / f"{name}.png")
        mask = np.asarray(Image.open(photo_set / "masks" / f"{name}.png")) == 255
        for x, y, w, h in brute_force_boxes(img.width, img.height, 227, 227):
            share = mask[y:y + h, x:x + w].mean()
            labels[f"{name}__x{x:04d}_y{y:04d}.png"] = "Positive" if share >= 0.005 else "Negative" if share == 0 else None
    found = {p.name: p.parent.name for p in out.rglob("*.png")}
    assert found == {name: folder for name, folder in labels.items() if folder}
    assert None in labels.values()  # some tiles were between 0 and 0.5 %: left out
    assert {photo_of(f"Positive/{name}") for name in found} == set(PHOTOS)
    some = next((out / "Positive").iterdir())
    with Image.open(some) as img:
        assert img.size == (227, 227) and img.mode == "L"
    with open(out / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == sorted(f"{folder}/{name}" for name, folder in found.items())


# --- crack maps ------------------------------------------------------------------------------------

def test_crack_map_is_large_with_heat_where_the_tiles_say_crack():
    photo = Image.new("L", (600, 400), 128)
    table = TileTable(np.array([[0, 0, 300, 400], [300, 0, 300, 400], [200, 0, 200, 200]]),
                      np.array([1.0, 0.0, 0.0]))
    img = plots.crack_map(photo, table, (600, 400), 0.5, "title", "subtitle")
    assert img.width == plots.MAP_MIN_PX and img.height > 1600 * 400 / 600  # enlarged, with title and legend
    px = np.asarray(img).astype(int)
    row = img.height // 2 + 100  # in the photo, below the third tile
    left, right = px[row, 300], px[row, 1400]  # under the crack tile, under a plain tile
    assert right.tolist() == [128, 128, 128]  # probability 0: the photo untouched
    assert left[0] > left[2] + 40  # probability 1: red heat over the grey
    # Overlapping tiles are averaged per pixel: (1 + 0) / 2 where the third tile lies over the first.
    heat = plots.probability_map(table, (600, 400), (600, 400))
    assert heat[100, 250] == pytest.approx(0.5) and heat[300, 250] == 1.0 and heat[100, 350] == 0.0
    pred = predict.Prediction(path="x.png", probability=1.0, label="crack", tiles=3, crack_tiles=1, tile_table=table,
                              whole_photo=True, image_size=(600, 400), preview=np.asarray(photo))
    png = plots.map_png(pred, 0.5)
    assert Image.open(io.BytesIO(png)).size == img.size
