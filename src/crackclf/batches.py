"""Training and validation batches from the prepared uint8 arrays, for whichever backend runs.

Images stay uint8 in memory (4x smaller than float32; the model rescales inside
itself). With TensorFlow they flow through tf.data (cached, reshuffled every epoch,
batched, prefetched while the previous batch trains); other backends (JAX on GPU
machines has no TensorFlow) get a ``keras.utils.PyDataset`` over the same arrays.
Either way epoch ``e``'s order depends only on ``(seed, e)``, so a resumed run sees
the batches an uninterrupted one would have seen. JPEG re-compression (``train.augment_jpeg``)
happens here, not in the model: no Keras op encodes JPEG.
"""

from __future__ import annotations

import io
import math

import keras
import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of (seed, epoch) only, so resuming repeats it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Inputs:
    """Training and validation batches from the uint8 arrays, for whichever backend runs."""

    def __init__(self, x, y, xv, yv, batch_size: int, seed: int, first_epoch: int, epochs: int, jpeg: int = 0,
                 val_weights: np.ndarray | None = None):
        self.y, self.yv = np.asarray(y, np.float32), np.asarray(yv, np.float32)
        self.x, self.xv = x, xv
        self.steps = math.ceil(len(x) / batch_size)
        self.tf = keras.backend.backend() == "tensorflow"
        if val_weights is not None:  # mean 1: val_loss stays on the scale of an unweighted one
            val_weights = np.asarray(val_weights, np.float32) / np.mean(val_weights)
        if self.tf:
            self.train = tf_train_dataset(x, self.y, batch_size, seed, range(first_epoch, epochs), jpeg)
            self.val = tf_eval_dataset(xv, self.yv, batch_size, val_weights) if len(xv) else None
        else:
            self.train = ArrayBatches(x, self.y, batch_size, seed, first_epoch, jpeg=jpeg)
            self.val = ArrayBatches(xv, self.yv, batch_size, weights=val_weights) if len(xv) else None

    @property
    def monitor(self) -> str:
        """What early stopping and the best epoch go by: validation loss, training loss without a val split."""
        return "val_loss" if len(self.yv) else "loss"

    def example(self) -> np.ndarray:
        """One image of each class (validation split if any): the logged model's input example."""
        x, y = (self.xv, self.yv) if len(self.yv) else (self.x, self.y)
        idx = [int(np.argmax(y == c)) for c in (1, 0) if (y == c).any()]
        return np.asarray(x[idx], np.float32)


def jpeg_batch(images: np.ndarray, min_quality: int, seed: list[int]) -> np.ndarray:
    """Each uint8 image re-saved as JPEG at a quality drawn from [min_quality, 95], as ``seed`` decides:
    the blocks and lost fine lines of photos that cameras, phones and e-mail compressed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buf, "JPEG", quality=int(rng.integers(min_quality, 96)))
        out[i] = np.asarray(Image.open(buf)).reshape(image.shape)
    return out


def plain_negatives(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` drawn no-crack images (uint8, N x size x size x 1): flat fields from black to white, smooth
    gradients and straight step edges, each with sensor noise.

    The dataset's negatives are all textured concrete, so a model trained on it alone calls a black
    patch, a photo's dark border or a member's edge a crack (probability 1.00 for plain black).
    """
    rng = np.random.default_rng([seed, 1])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = np.empty((n, size, size, 1), np.uint8)
    for i in range(n):
        kind = i % 3
        a, b = rng.uniform(0, 255, 2)
        angle = rng.uniform(0, np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)  # distance across the patch, in patch widths
        if kind == 0:
            level = rng.uniform(0, 24) if i % 2 else a  # half the flat fields near black: photo borders
            image = np.full((size, size), level, np.float32)
        elif kind == 1:
            image = a + (b - a) * (along + 0.5)
        else:
            softness = rng.uniform(0.002, 0.03)  # in patch widths: sharp to slightly out of focus
            image = a + (b - a) / (1 + np.exp(-(along - rng.uniform(-0.3, 0.3)) / softness))
        image += rng.normal(0, rng.uniform(0, 8), (size, size))
        out[i, ..., 0] = np.clip(image, 0, 255)
    return out


def joint_lines(backgrounds: np.ndarray, seed: int) -> np.ndarray:
    """Each uint8 image with one straight dark groove drawn across it, near horizontal or vertical:
    a formwork-board joint. Real photos are full of them and the dataset shows none, so a model
    trained on it alone calls them cracks; cracks wander and vary in width, joints do not."""
    rng = np.random.default_rng([seed, 2])
    size = backgrounds.shape[1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty_like(backgrounds)
    for i, image in enumerate(backgrounds):
        angle = rng.uniform(-0.17, 0.17) + rng.integers(2) * np.pi / 2  # within 10 degrees of an axis
        px, py = rng.uniform(0.2, 0.8, 2) * size  # a point it passes through
        across = (xx - px) * np.sin(angle) - (yy - py) * np.cos(angle)  # signed distance from the line
        half_width = rng.uniform(0.5, 4.0) * size / 128  # 1 to 8 px wide at the default 128 px input
        groove = rng.uniform(15, 70) * np.exp(-((across / half_width) ** 2))
        out[i, ..., 0] = np.clip(image[..., 0].astype(np.float32) - groove, 0, 255)
    return out


def _respread(images: np.ndarray, spreads: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Each uint8 image with its contrast scaled about its mean to a spread (std) drawn from ``spreads``
    grey levels; a gain of at most 8x, so a flat patch stays flat rather than becoming loud noise."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pixels = image.astype(np.float32)
        mean, spread = pixels.mean(), max(float(pixels.std()), 1.0)
        gain = min(rng.uniform(*spreads) / spread, 8.0)
        out[i] = np.clip(mean + (pixels - mean) * gain, 0, 255)
    return out


def stretched(backgrounds: np.ndarray, seed: int) -> np.ndarray:
    """Each uint8 image with its contrast stretched about its mean to a spread of 18 to 40 grey levels,
    the crack patches' own range. The dataset's no-crack patches are smooth (spread 5 to 15 grey levels
    in 80 % of them) and its crack patches are not (18 to 40), so a tile's spread alone tells them apart
    (ROC AUC 0.99 on the 2,000-image sample; 0.51 on uav75's photo tiles): a model may learn "contrast
    is crack", and real photos are full of rough, stained, contrasty concrete without cracks."""
    return _respread(backgrounds, (18, 40), np.random.default_rng([seed, 5]))  # 4 picks the images


def faded(cracks: np.ndarray, seed: int) -> np.ndarray:
    """Each uint8 crack image with its contrast squeezed about its mean to a spread of 5 to 15 grey
    levels, the no-crack patches' own range: the other side of ``stretched``. uav75's crack tiles spread
    12.7 grey levels (median) where the sample's crack patches spread 18 to 40, and the default model
    finds a third as many cracks in the fainter half of those tiles as in the other half."""
    return _respread(cracks, (5, 15), np.random.default_rng([seed, 7]))  # 6 picks the images


def faded_cracks(cracks: np.ndarray, seed: int) -> np.ndarray:
    """Each uint8 crack image with only its crack faded: whatever is darker than the local background
    by more than the image's own texture keeps 15 to 50 % of that excess. ``faded`` squeezes the whole
    image, so the model learnt that smooth concrete may be crack and called some of the dataset's
    no-crack patches crack; here the concrete keeps its texture and spread, only the crack grows faint."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng([seed, 10])  # 8 picks the images
    step = max(1, cracks.shape[1] // 32)
    out = np.empty_like(cracks)
    for i, image in enumerate(cracks):
        pixels = image[..., 0].astype(np.float32)
        # The background: a median over about a third of the side, on every step-th pixel (1.6 ms, not
        # 250, at 128 px), so a crack up to a sixth of the side wide is not part of it.
        coarse = ndimage.median_filter(pixels[step // 2::step, step // 2::step], size=11, mode="reflect")
        background = np.asarray(Image.fromarray(coarse).resize(pixels.shape[::-1], Image.BILINEAR))
        residual = pixels - background
        residual -= np.median(residual)
        texture = 2 * 1.4826 * np.median(np.abs(residual))  # twice the robust std of the texture
        excess = np.minimum(residual + texture, 0)  # the crack: darker than the texture goes
        out[i, ..., 0] = np.clip(pixels - (1 - rng.uniform(0.15, 0.5)) * excess, 0, 255)
    return out


def with_drawn_images(x, y, plain: float, joints: float, contrast: float = 0.0, faint: float = 0.0,
                      faint_cracks: float = 0.0, *, seed: int):
    """The train split with drawn images appended, all shares of its own size: no crack (label 0),
    ``plain`` x ``plain_negatives`` and, of its own no-crack images, ``joints`` x ``joint_lines`` and
    ``contrast`` x ``stretched``; crack (label 1), of its own crack images, ``faint`` x ``faded`` and
    ``faint_cracks`` x ``faded_cracks``. One copy of the split, however many kinds are added; none
    (``x`` and ``y`` as they are) if none."""
    y = np.asarray(y)
    n_plain = int(round(plain * len(x)))
    extra = [(plain_negatives(n_plain, x.shape[1], seed), 0)] if n_plain else []
    kinds = [(3, joints, joint_lines, 0), (4, contrast, stretched, 0), (6, faint, faded, 1),
             (8, faint_cracks, faded_cracks, 1)]
    for stream, share, draw, label in kinds:
        n, sources = int(round(share * len(x))), np.flatnonzero(y == label)
        if n and len(sources):
            pick = np.sort(np.random.default_rng([seed, stream]).choice(sources, n))
            extra.append((draw(np.asarray(x[pick]), seed), label))
    if not extra:
        return x, y
    labels = np.concatenate([np.full(len(images), label, y.dtype) for images, label in extra])
    return np.concatenate([np.asarray(x), *(images for images, _ in extra)]), np.concatenate([y, labels])


def _tf_cached(x, y, chunk_bytes: int = 1 << 24):
    """One split as tf.data elements, cached in memory as uint8 on the first pass.

    The first pass reads the memory map in ~16 MB chunks; later epochs never touch the disk.
    """
    import tensorflow as tf

    chunk = max(1, chunk_bytes // max(1, x[0].nbytes if len(x) else 1))

    def chunks():
        for i in range(0, len(x), chunk):
            yield np.asarray(x[i : i + chunk]), y[i : i + chunk]

    spec = (tf.TensorSpec((None, *x.shape[1:]), tf.uint8), tf.TensorSpec((None,), tf.float32))
    return tf.data.Dataset.from_generator(chunks, output_signature=spec).cache().unbatch()


def tf_train_dataset(x, y, batch_size: int, seed: int, epochs: range, jpeg: int = 0):
    """All remaining epochs back to back, epoch e shuffled with ``epoch_seed(seed, e)``.

    ``model.fit`` then takes ``steps_per_epoch`` batches per epoch from one iterator.
    """
    import tensorflow as tf

    source = _tf_cached(x, y)
    steps = math.ceil(len(x) / batch_size)
    per_epoch = [source.shuffle(len(x), seed=epoch_seed(seed, e)).batch(batch_size) for e in epochs]
    if not per_epoch:
        return source.batch(batch_size).take(0)
    order = tf.data.Dataset.from_tensor_slices(np.repeat(np.arange(len(per_epoch), dtype=np.int64), steps))
    ds = tf.data.Dataset.choose_from_datasets(per_epoch, order)
    if jpeg:
        def degrade(images, step):  # step counts from the first epoch, so a resumed run draws alike
            return jpeg_batch(images, jpeg, [seed, int(step) + epochs.start * steps])

        def apply(step, batch):
            images = tf.numpy_function(degrade, [batch[0], step], tf.uint8, stateful=False)
            return tf.ensure_shape(images, batch[0].shape), batch[1]

        ds = ds.enumerate().map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def tf_eval_dataset(x, y, batch_size: int, weights: np.ndarray | None = None):
    """Batches of (images, labels), or (images, labels, weights) with per-image ``weights``."""
    import tensorflow as tf

    ds = _tf_cached(x, y)
    if weights is not None:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(np.asarray(weights, np.float32)))
        ds = ds.map(lambda xy, w: (*xy, w))
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(len(x) / batch_size)))


class ArrayBatches(keras.utils.PyDataset):
    """Batches from in-memory arrays, for backends without tf.data; reshuffled every epoch if seeded.

    ``model.fit`` calls ``on_epoch_end`` once before its first epoch (Keras 3.15), so under fit
    0-based epoch ``e`` is shuffled with ``epoch_seed(seed, e + 1)``, not ``e``. A resumed run
    shifts alike, so it still sees the batches an uninterrupted one would.
    """

    def __init__(self, x, y, batch_size: int, seed: int | None = None, first_epoch: int = 0, jpeg: int = 0,
                 weights: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = np.ascontiguousarray(x), np.asarray(y, np.float32)  # one read of the memory map
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        self.batch_size, self.seed, self.epoch, self.jpeg = batch_size, seed, first_epoch, jpeg
        self.on_epoch_begin()

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def on_epoch_begin(self) -> None:
        n = len(self.x)
        if self.seed is None:
            self.order = np.arange(n)
        else:
            self.order = np.random.default_rng(epoch_seed(self.seed, self.epoch)).permutation(n)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])  # sorted: faster gather
        x = jpeg_batch(self.x[idx], self.jpeg, [self.seed or 0, self.epoch, i]) if self.jpeg else self.x[idx]
        return (x, self.y[idx]) if self.weights is None else (x, self.y[idx], self.weights[idx])
