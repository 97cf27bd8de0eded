"""params.yaml, read and validated in one place.

Every stage gets a typed, frozen ``Params`` object. A typo or a wrong type is a
``ConfigError`` whose one-line message names the key, raised before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from crackclf import UsageError

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _or_auto(fits, what: str) -> BeforeValidator:
    """A key that takes ``auto`` or a value ``fits`` accepts (booleans are refused by _Section's check)."""
    def check(value):
        if value == "auto" or fits(value):
            return value
        raise ValueError(f"must be {what} or 'auto', got {value!r}")

    return BeforeValidator(check)


ShareOrAuto = Annotated[float | Literal["auto"],
                        _or_auto(lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "a number from 0 to 1")]
TimesOrAuto = Annotated[int | Literal["auto"],
                        _or_auto(lambda v: isinstance(v, int) and 1 <= v <= 100, "a whole number from 1 to 100")]
Threshold = Annotated[float | Literal["auto", "f1"],
                      _or_auto(lambda v: v == "f1" or isinstance(v, (int, float)) and 0 <= v <= 1,
                               "a number from 0 to 1, 'f1'")]
BoolOrAuto = Annotated[bool | Literal["auto"], _or_auto(lambda v: isinstance(v, bool), "true, false")]


class ConfigError(UsageError):
    """A bad params.yaml: the message is one line that names the key."""

    exit_code = 2


class _Section(BaseModel):
    # defer_build: pydantic builds the schemas at first validation instead of at import; import plus
    # validation of params.yaml measured 0.13 s less (a large share of a one-photo predict's start-up)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_for_a_number(cls, value, info):
        """YAML reads yes/no/on/off/true as booleans, and lax pydantic would take them as 1 and 0."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise ValueError(f"got {str(value).lower()}, not a value for this key "
                             "(YAML reads yes/no/on/off as true/false)")
        return value


class DownloadParams(_Section):
    # Mendeley's own file of the dataset: the RAR archive (about 235 MB).
    url: str = (
        "https://data.mendeley.com/public-files/datasets/5y9wdsg2zt/files/"
        "8a70d8a5-bce9-4291-bab9-b48cfb3e87c3/file_downloaded"
    )
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    timeout: Annotated[float, Field(gt=0)] = 60.0
    retries: Annotated[int, Field(ge=0)] = 5
    max_unpacked_mb: PositiveInt = 4096

    @property
    def max_unpacked_bytes(self) -> int:
        """The cap in the unit archive reading counts in; one place for the conversion."""
        return self.max_unpacked_mb * 2**20


class PreprocessParams(_Section):
    image_size: Annotated[int, Field(ge=16, le=1024)] = 128
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    split_by: Literal["file", "block"] = "block"
    block_size: PositiveInt = 100
    workers: Annotated[int, Field(ge=0)] = 0  # 0: one per core
    extra: list[str] = []  # more Positive/ and Negative/ folders (e.g. from `crackclf tiles`), split by photo
    extra_oversample: Annotated[int, Field(ge=1, le=100)] = 1  # times each extra train tile is repeated
    # true: each extra source's rarer class repeated as often as its commoner; auto: only where that is
    # crack (whole photos, mostly plain concrete)
    extra_balance: BoolOrAuto = "auto"
    # How far: the rarer class repeated until it is this share of the commoner one's count (1: as many).
    extra_balance_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Times each dataset train patch is repeated; auto: as many times as the extra tiles outnumber them.
    dataset_oversample: TimesOrAuto = 1

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be below 0.9")
        return self


class TrainParams(_Section):
    conv_filters: Annotated[list[PositiveInt], Field(min_length=1)] = [16, 32, 32]
    kernel_size: PositiveInt = 3
    pool_size: PositiveInt = 2
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    dense_units: PositiveInt = 64
    # The head's input: every position's features (none: flatten) or their max or mean over the image.
    global_pooling: Literal["none", "max", "average"] = "none"
    augment: bool = False
    # Scale and photometric augmentation in training (0 = off): see model._photometric.
    augment_zoom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # zoom in/out by up to this fraction
    augment_translate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # shift by up to this fraction of the side
    augment_brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # shift by up to this share of the range
    augment_contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # contrast factor in [1 - c, 1 + c]
    augment_gamma: Annotated[float, Field(ge=0.0, le=4.0)] = 0.0  # gamma in [1/(1+g), 1+g]
    augment_blur: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0  # Gaussian blur sigma up to this, in input px
    augment_noise: Annotated[float, Field(ge=0.0, le=64.0)] = 0.0  # Gaussian noise std, in grey levels
    augment_jpeg: Annotated[int, Field(ge=0, le=95)] = 0  # re-saved as JPEG at a quality in [q, 95] (batches.py)
    # Drawn no-crack images added to training, as a share of the train split (batches.plain_negatives).
    plain_negatives: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # No-crack images of the train split with a formwork joint drawn on (batches.joint_lines), as a share.
    joint_negatives: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # No-crack images of the train split with their contrast stretched to the crack patches' (batches.stretched).
    contrast_negatives: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Crack images of the train split with their contrast squeezed to the no-crack patches' (batches.faded).
    faint_positives: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Crack images of the train split with only the crack faded, the concrete as it was (batches.faded_cracks);
    # auto: 0.1 when preprocess.extra adds your own tiles, else off (Params.faint_cracks; README, Faint cracks).
    faint_cracks: ShareOrAuto = 0.0
    optimizer: Literal["adam"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.001
    batch_size: PositiveInt = 64
    epochs: PositiveInt = 10
    early_stopping_patience: Annotated[int, Field(ge=0)] = 3
    center_inputs: bool = False  # pixels -1..1 into conv1 instead of 0..1 (model.py)
    # Each image to mean 0 and spread 1 into conv1, the spread floored at this (0..1 units); 0 = off.
    standardize_inputs: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    deterministic: bool = False
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    experiment_name: str = "crackclf"
    registered_model: str = "crackclf"


class EvaluateParams(_Section):
    # f1: the F1-best on validation; auto: that where training rebalanced own tiles' classes, else 0.5
    threshold: Threshold = "auto"
    batch_size: PositiveInt = 256
    worst_examples: Annotated[int, Field(ge=0, le=100)] = 16
    # The unfamiliar-input score (crackclf.unfamiliar), fitted here so that changing it retrains nothing.
    unfamiliar_k: Annotated[int, Field(ge=1, le=100)] = 5  # nearest training patches averaged
    unfamiliar_percentile: Annotated[float, Field(gt=50.0, le=100.0)] = 99.0  # of validation scores: the threshold
    unfamiliar_bank: Annotated[int, Field(ge=100)] = 5000  # training patches kept (a seeded sample of more)


class PredictParams(_Section):
    images: list[str] = []  # empty: a few fixed test images of each class
    examples_per_class: Annotated[int, Field(ge=1, le=32)] = 4
    tile_size: PositiveInt = 227
    stride: PositiveInt = 227  # at most tile_size: tiles must not skip pixels
    batch_size: PositiveInt = 256
    # A whole photo is cut as if resized by a factor first: auto (long side 4032 px, the dataset's
    # photos), a number, or none (1); tiles are reported in the photo's own pixels either way.
    photo_scale: float | Literal["auto", "none"] = "none"

    @field_validator("photo_scale", mode="before")
    @classmethod
    def _photo_scale(cls, value):
        if value in ("auto", "none") or (isinstance(value, (int, float)) and 0 < value <= 64):
            return value
        raise ValueError(f"must be auto, none or a factor above 0 (at most 64), got {value!r}")

    @model_validator(mode="after")
    def _stride_within_tile(self):
        if self.stride > self.tile_size:
            raise ValueError(f"stride {self.stride} is above tile_size {self.tile_size}: tiles would skip pixels")
        return self


class PhotosParams(_Section):
    # A photo set scored by the pipeline's photos stage: images/NAME.jpg and masks/NAME.png (255 = crack).
    dir: Annotated[str, Field(min_length=1)] = "data/photos"  # no images/ folder there: no photo set
    worst: Annotated[int, Field(ge=0, le=24)] = 6  # photos shown in plots/photos/worst.png


class ServeParams(_Section):
    # `crackclf serve`: the web page and image API (crackclf.serve).
    host: str = "127.0.0.1"  # loopback by default: nothing is exposed unless asked
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    max_upload_mb: Annotated[float, Field(gt=0)] = 50.0  # a larger file gets an error, not a decode
    max_files: Annotated[int, Field(ge=1, le=1000)] = 100  # files per request
    max_megapixels: Annotated[float, Field(gt=0, le=1000)] = 120.0  # larger images are refused before decoding
    keep_results: Annotated[int, Field(ge=1, le=10000)] = 32  # recent results kept for their downloads (memory: each keeps its upload)


class Params(_Section):
    seed: Annotated[int, Field(ge=0)] = 42
    download: DownloadParams = DownloadParams()
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    predict: PredictParams = PredictParams()
    photos: PhotosParams = PhotosParams()
    serve: ServeParams = ServeParams()

    @property
    def faint_cracks(self) -> float:
        """``train.faint_cracks`` as a share. auto: 0.1 with your own tiles in training, else none; with
        them it raised half B's F1 on 9 of 12 seeds, without them it cost recall on every seed (README)."""
        share = self.train.faint_cracks
        return (0.1 if self.preprocess.extra else 0.0) if share == "auto" else share


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<top level>"
    if first["type"] == "extra_forbidden":
        msg = "unknown key (misspelt?)"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if "got " not in msg and "input" in first and not isinstance(first["input"], dict):
            msg += f", got {first['input']!r}"
    more = len(err.errors()) - 1
    return f"{source}: {key}: {msg}" + (f" (and {more} more)" if more else "")


def parse(data: object, source: str = "params.yaml") -> Params:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of stage names to settings")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root, or pass --params)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    return parse(data, str(path))


def flatten(params: Params) -> dict[str, object]:
    """Dotted keys (``train.learning_rate``), the way MLflow and DVC name params."""
    out: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", params.model_dump())
    return out
