"""``crackclf <stage>``: the thin command line that dvc.yaml calls.

Each subcommand loads and validates params.yaml first, then imports its stage
module (so ``--help`` and the data stages never pay for importing TensorFlow),
and turns user errors into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crackclf import CrackclfError, __version__, process, quiet_import

DESCRIPTION = """\
Concrete crack classification: download the public dataset, preprocess it,
train the reference CNN, evaluate it and predict on your own photos.
`dvc repro` runs the stages in order; each can also be run by hand."""

EPILOG = """\
Settings live in params.yaml (see README).
Exit codes of every command:
  0    done
  1    the work failed on its data: an unreadable image, a failed download, an MLflow store unreachable while needed
  2    bad usage or params: a wrong argument, a missing model file, a bad params.yaml
  130  interrupted (Ctrl-C, SIGTERM, dvc killed): nothing half-written is kept"""


DEFAULT_PARAMS = Path("params.yaml")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        """Wraps each line on its own, so the exit-code table keeps its lines."""
        return "\n".join(super(_HelpFormatter, self)._fill_text(line, width, indent) for line in text.splitlines())


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params", type=Path, metavar="FILE",
        help=f"settings file (default: {DEFAULT_PARAMS}; predict, score-photos, tiles and serve outside a project: "
        "built-in defaults if there is none)",
    )
    fmt = _HelpFormatter
    sub_kw = {"parents": [common], "formatter_class": fmt, "epilog": EPILOG}
    p = argparse.ArgumentParser(prog="crackclf", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"crackclf {__version__}")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    s = sub.add_parser(
        "download", **sub_kw,
        help="fetch and verify the dataset archive",
        description="Fetch download.url (https://, file:// or a local archive or folder) into OUT_DIR: "
        "streamed with a progress bar, resumed after an interruption, checked against download.sha256, "
        "and verified to hold Positive/ and Negative/ image folders. A local folder is packed into one zip.",
    )
    s.add_argument("out_dir", type=Path, nargs="?", default=Path("data/raw"), help="where the archive goes")

    s = sub.add_parser(
        "preprocess", **sub_kw,
        help="decode, de-duplicate and split the images into arrays",
        description="Read every image of the archive in RAW_DIR, drop byte-identical duplicates and unreadable "
        "files, convert to grayscale preprocess.image_size squares, and write a stratified "
        "train/val/test split as uint8 .npy arrays with a manifest.",
    )
    s.add_argument("raw_dir", type=Path, nargs="?", default=Path("data/raw"), help="the download stage's output")
    s.add_argument("out_dir", type=Path, nargs="?", default=Path("data/prepared"), help="where the splits go")
    s.add_argument("--metrics", type=Path, default=Path("metrics/data.json"), help="counts per class and split")

    s = sub.add_parser(
        "train", **sub_kw,
        help="train the CNN and log the run to MLflow",
        description="Train the reference CNN (train.* in params.yaml) on the prepared splits, on the GPU "
        "when there is one; log params, per-epoch metrics, device and model to MLflow "
        "(MLFLOW_TRACKING_URI, default sqlite:///mlflow.db) and register a model version.",
    )
    s.add_argument("data_dir", type=Path, nargs="?", default=Path("data/prepared"), help="the prepared splits")
    s.add_argument("--model", type=Path, default=Path("models/model.keras"), help="the trained model")
    s.add_argument("--metrics", type=Path, default=Path("metrics/train.json"), help="final and best epoch")
    s.add_argument("--history", type=Path, default=Path("plots/train/history.csv"), help="per-epoch metrics")
    s.add_argument("--run-file", type=Path, default=Path("models/mlflow_run.json"), help="MLflow run id")
    s.add_argument("--fresh", action="store_true", help="ignore the checkpoint of an interrupted run")

    s = sub.add_parser(
        "evaluate", **sub_kw,
        help="test-set metrics, plots, and the champion alias",
        description="Score the model on the test split: metrics JSON, ROC / PR / confusion plots, the worst "
        "mistakes; log them to the training's MLflow run and promote the model to @champion when "
        "its test F1 beats the current champion's.",
    )
    s.add_argument("data_dir", type=Path, nargs="?", default=Path("data/prepared"), help="the prepared splits")
    s.add_argument("--model", type=Path, default=Path("models/model.keras"), help="the trained model")
    s.add_argument("--metrics", type=Path, default=Path("metrics/eval.json"), help="test metrics")
    s.add_argument("--plots-dir", type=Path, default=Path("plots/eval"), help="plot data and PNGs")
    s.add_argument("--threshold-file", type=Path, default=Path("models/threshold.json"),
                   help="the decision threshold, kept beside the model for predict")
    s.add_argument("--run-file", type=Path, default=Path("models/mlflow_run.json"), help="MLflow run id")

    s = sub.add_parser(
        "predict", **sub_kw,
        help="crack probability for your own images",
        description="Predict crack / no crack for image files and folders (searched recursively). "
        "Photos at least twice the patch size are cut into tiles that cover every pixel (the last column and "
        "row flush with the right and bottom edges; predict.photo_scale: the scale a photo is seen at); each "
        "row then gives the tile count, the cracked tiles and the highest tile probability. Rows go to stdout "
        "as CSV unless --output.",
    )
    s.add_argument("paths", type=Path, nargs="*", metavar="PATH", help="image files or folders")
    s.add_argument("--model", default="models/model.keras", metavar="FILE|models:/NAME@ALIAS",
                   help="a .keras file or an MLflow registry URI")
    s.add_argument("--output", type=Path, metavar="FILE", help="write rows to FILE.csv or FILE.json")
    s.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the images with their predictions")
    s.add_argument("--threshold", type=float, metavar="T",
                   help="crack if probability >= T (default: the one evaluate chose, else 0.5)")
    s.add_argument("--stride", type=int, metavar="PX", help="tile stride for whole photos (default: predict.stride)")
    s.add_argument("--examples", type=Path, metavar="DATA_DIR",
                   help="pipeline mode: predict predict.images, or a few test images of each class from DATA_DIR")
    s.add_argument("--runtime", choices=("auto", "onnx", "keras"), default="auto",
                   help="auto: ONNX Runtime on the model's ONNX copy (no TensorFlow: fast start) when the copy "
                   "matches the model, else Keras with one line saying why; onnx: the copy or an error; "
                   "keras: always Keras")
    s.add_argument("--tiles", type=Path, metavar="FILE.csv",
                   help="one row per tile: path,x,y,width,height,probability,label in the original image's pixels "
                   "(a patch is one tile 0,0,width,height)")
    s.add_argument("--plot-dir", type=Path, metavar="DIR",
                   help="one crack map PNG per whole photo (photo at least 1600 px long, heat map of crack "
                   "probability, legend); patches go on DIR/patches.png")
    s.add_argument("--explain", type=Path, metavar="DIR|FILE.png",
                   help="where in each crack tile the model sees the crack (Grad-CAM on the last convolution, "
                   "TensorFlow backend): one PNG per image with a crack tile in DIR, or FILE.png for a single image")

    s = sub.add_parser(
        "score-photos", **sub_kw,
        help="score whole-photo crack maps against crack masks",
        description="Score the model's crack maps on a photo set (DIR/images/NAME.jpg with DIR/masks/NAME.png, "
        "255 = crack) by the tile rule: a tile is crack when at least 0.5 % of its pixels are crack in the mask, "
        "no crack when none are, left out otherwise. Tiles are cut as `crackclf predict` cuts them "
        "(predict.tile_size, predict.stride, predict.photo_scale). Prints tile precision, recall, F1, ROC AUC "
        "and the per-photo count error as JSON, or writes them to --output. Without DIR: photos.dir "
        "(the pipeline's photos stage; no images/ folder there means no photo set, and says so).",
    )
    s.add_argument("dir", type=Path, nargs="?", metavar="DIR", help="the photo set (default: photos.dir)")
    s.add_argument("--model", default="models/model.keras", metavar="FILE|models:/NAME@ALIAS",
                   help="a .keras file or an MLflow registry URI")
    s.add_argument("--output", type=Path, metavar="FILE.json", help="write the metrics here (default: stdout)")
    s.add_argument("--plots-dir", type=Path, metavar="DIR", help="write photos.csv (per photo) and worst.png here")
    s.add_argument("--threshold", type=float, metavar="T",
                   help="crack if probability >= T (default: the one evaluate chose, else 0.5)")
    s.add_argument("--stride", type=int, metavar="PX", help="tile stride (default: predict.stride)")
    s.add_argument("--run-file", type=Path, metavar="FILE",
                   help="log photo_* metrics and the files to the MLflow run named there (the pipeline's "
                   "models/mlflow_run.json)")

    s = sub.add_parser(
        "tiles", **sub_kw,
        help="cut photos with crack masks into Positive/ and Negative/ training tiles",
        description="Cut every photo of PHOTO_SET (images/NAME.jpg with masks/NAME.png, 255 = crack) into tiles "
        "as `crackclf predict` cuts it (predict.tile_size, predict.stride, predict.photo_scale; every pixel "
        "covered) and save each at predict.tile_size px to OUT/Positive/ (at least 0.5 % crack pixels) or "
        "OUT/Negative/ (none), named <photo>__x0123_y0456.png after its photo and its top-left corner; tiles "
        "in between are left out. OUT/tiles.csv lists them. OUT is replaced whole. Add OUT to "
        "preprocess.extra to train on it.",
    )
    s.add_argument("photo_set", type=Path, metavar="PHOTO_SET", help="folder with images/ and masks/")
    s.add_argument("out_dir", type=Path, metavar="OUT", help="where Positive/ and Negative/ go")
    s.add_argument("--stride", type=int, metavar="PX", help="tile stride (default: predict.stride)")

    s = sub.add_parser(
        "publish", **sub_kw,
        help="the images MLflow model (photo bytes in) follows the @champion",
        description="When the model trained in RUN_FILE's run is the registered @champion, log the images "
        "model (a pyfunc taking image file bytes, answering as crackclf predict) into that run, register it "
        "as <name>-images and move its @champion alias too. Otherwise say so and change nothing.",
    )
    s.add_argument("--model", type=Path, default=Path("models/model.keras"), help="the trained model")
    s.add_argument("--run-file", type=Path, default=Path("models/mlflow_run.json"), help="MLflow run id")
    s.add_argument("--output", type=Path, default=Path("models/images_model.json"),
                   help="what was registered (for DVC)")

    s = sub.add_parser(
        "serve", **sub_kw,
        help="a web page and HTTP API that show the crack map of uploaded photos",
        description="Serve the model over HTTP: a page at / to drop photos on and see their crack maps, "
        "POST /api/predict (multipart parts named files; one JSON object per file), GET /api/model, "
        "GET /api/health, OpenAPI docs at /docs. Images are scored as `crackclf predict` scores them. "
        "Limits: serve.* in params.yaml.",
    )
    s.add_argument("--model", metavar="FILE|models:/NAME@ALIAS",
                   help="a .keras file or an MLflow registry URI (default: the project's @champion if its "
                   "MLflow store has one, else models/model.keras)")
    s.add_argument("--host", metavar="ADDRESS", help="address to listen on (default: serve.host, 127.0.0.1)")
    s.add_argument("--port", type=int, metavar="N", help="port (default: serve.port, 8000; 0: any free port)")
    s.add_argument("--runtime", choices=("auto", "onnx", "keras"), default="auto",
                   help="as for predict: ONNX Runtime on the model's ONNX copy when it matches, else Keras")
    s.add_argument("--threshold", type=float, metavar="T",
                   help="crack if probability >= T (default: the one evaluate chose, else 0.5)")
    return p


# Commands whose code is not a stage module of their own name: (module, function).
COMMANDS = {"score-photos": ("photos", "score_main"), "tiles": ("photos", "tiles_main"),
            "publish": ("pyfunc", "main")}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        from crackclf import config

        outside = ("predict", "score-photos", "tiles", "serve")  # useful on a user's photo folder, not a project
        if args.stage in outside and args.params is None and not DEFAULT_PARAMS.exists():
            params = config.Params()  # a user's photo folder, not a project: nothing to configure
        else:
            params = config.load(args.params or DEFAULT_PARAMS)
        module, function = COMMANDS.get(args.stage, (args.stage, "main"))
        stage = quiet_import(f"crackclf.{module}")  # train's imports Keras; evaluate and predict load it late
        with process.stoppable() as stop:
            return int(getattr(stage, function)(args, params, stop) or 0)
    except CrackclfError as err:
        print(f"crackclf {args.stage}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"crackclf {args.stage}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
