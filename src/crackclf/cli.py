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
        help=f"settings file (default: {DEFAULT_PARAMS}; predict outside a project: built-in defaults if there is none)",
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
        "Photos at least twice the patch size are cut into tiles; each row then gives the tile count, "
        "the cracked tiles and the highest tile probability. Rows go to stdout as CSV unless --output.",
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        from crackclf import config

        if args.stage == "predict" and args.params is None and not DEFAULT_PARAMS.exists():
            params = config.Params()  # a user's photo folder, not a project: nothing to configure
        else:
            params = config.load(args.params or DEFAULT_PARAMS)
        stage = quiet_import(f"crackclf.{args.stage}")  # train's imports Keras; evaluate and predict load it late
        with process.stoppable() as stop:
            return int(stage.main(args, params, stop) or 0)
    except CrackclfError as err:
        print(f"crackclf {args.stage}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"crackclf {args.stage}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
