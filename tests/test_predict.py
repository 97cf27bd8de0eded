"""crackclf predict: users' files of every kind, whole photos cut into tiles, and the pipeline's examples."""

import csv
import gc
import io
import json
import warnings
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synth
from crackclf import CrackclfError, cli, config, dataset, files, imaging, inference, plots, predict
from workspace import crackclf

REPO = Path(__file__).resolve().parents[1]
GRID = (3, 4)  # rows, cols of 227 px tiles in a 908x681 photo
CRACKS = {(0, 1), (1, 3), (2, 0)}  # (row, col) of the tiles that get a crack


def our_lines(stderr: str) -> list[str]:
    # TensorFlow 2.21 prints its oneDNN start-up note whatever TF_CPP_MIN_LOG_LEVEL says: look at ours only.
    return [line for line in stderr.splitlines() if line.startswith("crackclf")]


@pytest.fixture(params=["onnx", "keras"])
def runtime(request) -> str:
    """Tests that take it run on both runtimes: the same rows, tiles and files either way."""
    return request.param


@pytest.fixture(scope="module")
def photo_patches(tiny_model_path):
    """Synthetic 227 px patches the tiny model gets right, as (crack patches, plain patches).

    The tiling tests check where tiles land, not how good the tiny model is, so
    patches it misjudges on their own are left out.
    """
    model = inference.load_model(tiny_model_path)
    rng = np.random.default_rng(7)
    crack = [synth.patch(rng, True).convert("L") for _ in range(12)]
    plain = [synth.patch(rng, False).convert("L") for _ in range(20)]

    def probs(imgs):
        return model.predict(np.stack([imaging.resize(i, 48) for i in imgs]), 64)

    crack = [i for i, p in zip(crack, probs(crack)) if p > 0.6]
    plain = [i for i, p in zip(plain, probs(plain)) if p < 0.495]
    assert len(crack) >= len(CRACKS) and len(plain) >= GRID[0] * GRID[1] - len(CRACKS)
    return crack, plain


def inspection_photo(crack, plain) -> Image.Image:
    """908x681 (4x3 tiles of 227 px) with cracks in the CRACKS tiles."""
    photo = Image.new("L", (GRID[1] * 227, GRID[0] * 227))
    crack, plain = iter(crack), iter(plain)
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            photo.paste(next(crack) if (r, c) in CRACKS else next(plain), (c * 227, r * 227))
    return photo


def exif_rotated_jpeg(img: Image.Image, path: Path) -> Path:
    """Stored turned a quarter left, with EXIF orientation 6 (turn right to view): viewers show ``img``."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return path


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, photo_patches):
    """A user's folder: good patches, a corrupt JPEG, notes, a checksum list, a macOS ._ file,
    an RGBA PNG, a 16-bit PNG, an EXIF-rotated JPEG and a whole 908x681 photo."""
    root = tmp_path_factory.mktemp("user") / "photos"
    rng = np.random.default_rng(3)
    (root / "site" / "Positive").mkdir(parents=True)
    (root / "site" / "Negative").mkdir(parents=True)
    synth.patch(rng, True).save(root / "site" / "Positive" / "c1.jpg", quality=90)
    synth.patch(rng, False).save(root / "site" / "Negative" / "n1.JPG", quality=90)
    good = io.BytesIO()
    synth.patch(rng, True).save(good, "JPEG", quality=90)
    (root / "corrupt.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])  # truncated
    (root / "notes.txt").write_text("inspection of 12 May\n")
    (root / "SHA256SUMS").write_text("0" * 64 + "  c1.jpg\n")
    (root / "._c1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    gray = synth.patch(rng, True).convert("L")
    gray.save(root / "ref8.png")
    rgba = gray.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # alpha varies: it must be ignored
    rgba.save(root / "alpha.png")
    Image.fromarray(np.asarray(gray, np.uint16) * 257).save(root / "gray16.png")
    exif_rotated_jpeg(synth.patch(rng, True).convert("L"), root / "exif.jpg")
    inspection_photo(*photo_patches).save(root / "photo.png")
    return root


def test_folder_of_mixed_files(mixed_folder, tiny_model_path, tmp_path, runtime):
    notes = tmp_path / "readme.txt"  # named explicitly: tried, and reported
    notes.write_text("not an image")
    done = crackclf(REPO, "predict", mixed_folder, notes, tmp_path / "missing.jpg",
                    "--model", tiny_model_path, "--threshold", "0.5", "--runtime", runtime)
    assert done.returncode == 1, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert done.stdout.splitlines()[0] == ("path,probability,label,tiles,crack_tiles,unfamiliar,unfamiliar_score,"
                                           "unfamiliar_tiles")
    expected = ["alpha.png", "exif.jpg", "gray16.png", "photo.png", "ref8.png",
                "site/Negative/n1.JPG", "site/Positive/c1.jpg"]
    assert [r["path"] for r in rows] == [str(mixed_folder / name) for name in expected]
    by_name = {Path(r["path"]).relative_to(mixed_folder).as_posix(): r for r in rows}
    for r in rows:
        p = float(r["probability"])
        assert 0 <= p <= 1 and r["label"] == ("crack" if p >= 0.5 else "no_crack")
        assert int(r["crack_tiles"]) <= int(r["tiles"])
    assert by_name["photo.png"]["tiles"] == "12" and by_name["photo.png"]["crack_tiles"] == str(len(CRACKS))
    assert all(r["tiles"] == "1" for name, r in by_name.items() if name != "photo.png")
    assert all(r["crack_tiles"] == str(int(r["label"] == "crack")) for r in rows if r["tiles"] == "1")
    # One grayscale patch as 8-bit, RGBA and 16-bit: the same pixels reach the model.
    assert by_name["alpha.png"]["probability"] == by_name["gray16.png"]["probability"] == \
        by_name["ref8.png"]["probability"]

    lines = our_lines(done.stderr)
    assert "Traceback" not in done.stderr
    assert len(lines) == 5, lines
    assert sum("no unfamiliar-input score" in line for line in lines) == 1  # evaluate never fitted one for it
    assert sum("corrupt.jpg" in line and "not a readable image" in line for line in lines) == 1
    assert sum("readme.txt" in line and "not a readable image" in line for line in lines) == 1
    assert sum("missing.jpg" in line and "no such file" in line for line in lines) == 1
    assert sum("skipped 3 hidden or non-image files" in line for line in lines) == 1


def test_missing_model_is_one_line_and_exit_2(mixed_folder, tmp_path):
    done = crackclf(REPO, "predict", mixed_folder / "ref8.png", "--model", tmp_path / "nope.keras")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"crackclf predict: error: {tmp_path / 'nope.keras'}: no such model file "
        "(run `dvc repro train`, or pass --model)"]


def test_outside_a_project_defaults_serve_unless_a_params_file_is_named(mixed_folder, tmp_path):
    """No params.yaml: predict runs on built-in defaults; naming one that is not there is an error."""
    quiet = crackclf(tmp_path, "predict", mixed_folder / "ref8.png", "--model", tmp_path / "nope.keras")
    assert "no such model file" in quiet.stderr  # got past the settings
    for named in ("params.yaml", "./params.yaml"):
        done = crackclf(tmp_path, "predict", "--params", named, mixed_folder / "ref8.png")
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"crackclf predict: error: {Path(named)}: not found (run from the project root, or pass --params)"]


def test_tiles_mark_where_the_cracks_are(photo_patches, tiny_model_path, tmp_path, runtime):
    upright = inspection_photo(*photo_patches)
    upright.save(tmp_path / "photo.png")
    exif_rotated_jpeg(upright, tmp_path / "rotated.jpg")
    assert imaging.open_gray(tmp_path / "rotated.jpg").size == (908, 681)

    model = inference.load_model(tiny_model_path, runtime)
    assert model.runtime == runtime
    errors = []
    preds = list(predict.predict_files(model, [tmp_path / "photo.png", tmp_path / "rotated.jpg"], 0.5,
                                       227, 227, 256, errors.append, previews=2))
    assert errors == []
    for pred in preds:
        probs = pred.tile_table.probabilities.reshape(GRID)  # row by row from the top left
        assert pred.whole_photo and pred.tiles == 12
        cracked = {tuple(int(v) for v in rc) for rc in np.argwhere(probs >= 0.5)}
        assert cracked == CRACKS, pred.path
        assert pred.crack_tiles == len(CRACKS) and pred.label == "crack"
        assert pred.probability == pytest.approx(probs.max())
    # A tile is exactly the patch pasted there, resized like preprocess does.
    r, c = sorted(CRACKS)[0]
    tile = upright.crop((c * 227, r * 227, c * 227 + 227, r * 227 + 227))
    alone = model.predict(imaging.resize(tile, 48)[None], 1)[0]
    assert preds[0].tile_table.probabilities.reshape(GRID)[r, c] == pytest.approx(alone, abs=1e-6)
    assert preds[0].tile_table.boxes.reshape(*GRID, 4)[r, c].tolist() == [c * 227, r * 227, 227, 227]

    plot = tmp_path / "map.png"
    plots.plot_predictions(preds[:1], plot, 0.5)
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width == plots.MAP_MIN_PX and img.height > plots.MAP_MIN_PX * 681 / 908


def test_tiles_reach_the_right_and_bottom_edges():
    assert len(predict.tile_boxes(908, 681, 227, 227)) == 12  # 4 x 3 tiles fit exactly
    assert predict.tile_starts(4032, 227, 227)[-2:] == [3632, 3805]  # 17 tiles, and one flush with the edge
    assert predict.tile_starts(3024, 227, 227)[-2:] == [2724, 2797]
    assert predict.tile_starts(908, 227, 113) == [0, 113, 226, 339, 452, 565, 678, 681]
    assert predict.is_whole_photo(454, 227, 227) and not predict.is_whole_photo(453, 300, 227)
    assert not predict.is_whole_photo(1000, 200, 227)  # no whole tile fits: one patch


def test_small_and_odd_images_are_one_patch(tiny_model_path, tmp_path):
    rng = np.random.default_rng(5)
    synth.patch(rng, True).resize((300, 260)).save(tmp_path / "crop.bmp")
    synth.patch(rng, False).save(tmp_path / "scan.tif")
    model = inference.load_model(tiny_model_path)
    preds = list(predict.predict_files(model, [tmp_path / "crop.bmp", tmp_path / "scan.tif"], 0.5,
                                       227, 227, 256, pytest.fail))
    assert [(p.tiles, p.whole_photo) for p in preds] == [(1, False), (1, False)]
    assert [p.tile_table.boxes.tolist() for p in preds] == [[[0, 0, 300, 260]], [[0, 0, 227, 227]]]


def test_json_output_and_plot_through_the_cli(mixed_folder, tiny_model_path, tmp_path, capsys, runtime):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(synth.TINY_PARAMS))
    out, plot = tmp_path / "out" / "rows.json", tmp_path / "out" / "rows.png"
    files = [mixed_folder / "site", mixed_folder / "photo.png"]
    code = cli.main(["predict", *map(str, files), "--model", str(tiny_model_path), "--output", str(out),
                     "--plot", str(plot), "--threshold", "0.5", "--params", str(params), "--runtime", runtime])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert [Path(r["path"]).name for r in rows] == ["n1.JPG", "c1.jpg", "photo.png"]
    assert list(rows[0]) == ["path", "probability", "label", "tiles", "crack_tiles", "unfamiliar", "unfamiliar_score",
                             "unfamiliar_tiles"]
    assert rows[0]["unfamiliar"] is None  # no unfamiliar.npz beside this model: no flag, and no guess
    assert isinstance(rows[0]["probability"], float) and rows[2]["tiles"] == 12
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size == plots.grid_pixels(3, 2)
    assert capsys.readouterr().out == ""  # rows went to the file, not stdout


def test_threshold_file_beside_the_model(tiny_model_path, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(tiny_model_path.read_bytes())
    warnings = []
    assert inference.default_threshold(model, warnings.append) == 0.5  # none written yet
    info = {"threshold": 0.62, "model_sha256": files.sha256(model)}
    (tmp_path / "threshold.json").write_text(json.dumps(info))
    assert inference.default_threshold(model, warnings.append) == 0.62
    assert warnings == []
    (tmp_path / "threshold.json").write_text(json.dumps({**info, "model_sha256": "0" * 64}))
    assert inference.default_threshold(model, warnings.append) == 0.5  # stale: for another model
    assert len(warnings) == 1 and "another model" in warnings[0]


def test_examples_png_and_csv(prepared_dir, tiny_model_path, tmp_path):
    params = config.parse(synth.TINY_PARAMS)
    k = params.predict.examples_per_class
    args = Namespace(paths=[], examples=prepared_dir, model=str(tiny_model_path), output=tmp_path / "ex.csv",
                     plot=tmp_path / "ex.png", threshold=0.5, stride=None)
    assert predict.main(args, params) == 0

    with open(tmp_path / "ex.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = dataset.read_manifest(prepared_dir, "test")
    first = [r["file"] for r in test if r["label"] == "1"][:k] + [r["file"] for r in test if r["label"] == "0"][:k]
    assert [r["path"] for r in rows] == first
    assert sum(r["label"] == "crack" for r in rows[:k]) >= k - 1  # the tiny model is nearly always right
    assert (tmp_path / "ex.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "ex.png") as img:
        img.load()
        assert img.size == plots.grid_pixels(2 * k, k, title=True)
        assert np.asarray(img.convert("L")).std() > 20  # pictures were drawn, not a blank page


def test_usage_errors_exit_2(tiny_model_path, tmp_path, capsys):
    base = ["predict", str(tmp_path), "--model", str(tiny_model_path)]
    for extra, words in ((["--output", "rows.txt"], ".csv or .json"), (["--threshold", "1.5"], "from 0 to 1"),
                         (["--stride", "0"], "positive")):
        assert cli.main([*base, *extra, "--params", str(REPO / "params.yaml")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]


def test_examples_from_predict_images(mixed_folder, tiny_model_path, tmp_path):
    # predict.images names files and folders; truth comes from Positive/ and Negative/ folders.
    params = config.parse({**synth.TINY_PARAMS, "predict": {"images": [str(mixed_folder / "site"),
                                                                       str(mixed_folder / "photo.png")]}})
    args = Namespace(paths=[], examples=tmp_path, model=str(tiny_model_path), output=tmp_path / "ex.csv",
                     plot=tmp_path / "ex.png", threshold=0.5, stride=None)
    assert predict.main(args, params) == 0
    with open(tmp_path / "ex.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["n1.JPG", "c1.jpg", "photo.png"]
    assert rows[2]["tiles"] == "12"
    with Image.open(tmp_path / "ex.png") as img:
        assert img.size == plots.grid_pixels(3, params.predict.examples_per_class, title=True)
    assert [dataset.class_of(Path(r["path"]).as_posix()) for r in rows] == [0, 1, None]


def test_examples_use_the_stride_given(mixed_folder, tiny_model_path, tmp_path):
    params = config.parse({**synth.TINY_PARAMS, "predict": {"images": [str(mixed_folder / "photo.png")]}})
    model = inference.load_model(tiny_model_path)
    (photo,) = predict.examples(params, tmp_path, model, 0.5, 113)
    assert photo.tiles == 6 * 8  # 908x681 in 227 px tiles every 113 px, the last row and column flush


def test_examples_refuse_images_of_another_size(tiny_model_path, tmp_path):
    from conftest import write_prepared

    data = write_prepared(tmp_path / "prepared", n_per_class=5, size=32)
    params = config.parse(synth.TINY_PARAMS)
    with pytest.raises(CrackclfError, match="images are 32 px but the model takes 48 px"):
        predict.examples(params, data, inference.load_model(tiny_model_path), 0.5, 227)


def test_decoding_closes_its_files(tmp_path):
    # Pillow leaves a file it opened by path to the garbage collector after load() (multi-frame)
    # or a decode error: Python says so with a ResourceWarning.
    frames = [Image.new("L", (64, 64), v) for v in (0, 128, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    synth.patch(np.random.default_rng(0), True).save(tmp_path / "good.jpg", "JPEG")
    (tmp_path / "bad.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert imaging.load_patch(tmp_path / "anim.gif", 32).shape == (32, 32, 1)
        with pytest.raises(imaging.ImageError, match="bad.jpg: not a readable image"):
            imaging.load_patch(tmp_path / "bad.jpg", 32)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_folders_are_walked_through_links_but_not_into_hidden_folders(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    synth.patch(np.random.default_rng(0), True).save(real / "1.jpg", "JPEG")
    site = tmp_path / "site"
    (site / ".thumbs").mkdir(parents=True)
    (site / ".thumbs" / "1.jpg").write_bytes((real / "1.jpg").read_bytes())
    (site / "linked").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(site, target_is_directory=True)  # a cycle is walked once
    found, errors, skipped = predict.collect([site])
    assert found == [site / "linked" / "1.jpg"] and errors == [] and skipped == []
