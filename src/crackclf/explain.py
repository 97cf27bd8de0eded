"""Where in a tile the model sees the crack: Grad-CAM on the last convolution.

For each image, the gradient of the crack logit (the output before its sigmoid, so a
sure 0.999 does not flatten the gradient to zero) with respect to the last Conv2D's
feature maps, averaged over the map, weighs those maps; their positive sum is the heat
map (Selvaraju et al., "Grad-CAM", ICCV 2017). It is computed with the backend's own
gradients, TensorFlow's (``tf.GradientTape``); other backends are refused in one line.

The map lives on the last convolution's grid (28 x 28 for a 128 px input); each cell is
placed at the centre of its receptive field in the input (valid convolutions shave the
borders, pooling doubles the step) and the map is bilinearly resampled to the input's
pixels, then to the tile's. On a whole photo the crack tiles' maps, each scaled by its
probability, are laid at their tiles (the larger where tiles overlap): a crack map
finer than the tile grid.
"""

from __future__ import annotations

import numpy as np

from crackclf import UsageError


def check_backend() -> None:
    """Grad-CAM needs TensorFlow's gradients: any other Keras backend is a usage error."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise UsageError(f"--explain needs Keras' TensorFlow backend (KERAS_BACKEND is {backend}): "
                         "Grad-CAM uses its gradients")


def last_conv(net):
    """The last Conv2D layer of ``net``."""
    import keras

    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise UsageError(f"{net.name}: no convolution layer, so no Grad-CAM")
    return convs[-1]


def geometry(net, conv) -> tuple[float, float]:
    """(centre of the first cell, step between cells) of ``conv``'s output, in input pixels."""
    import keras

    offset, jump = 0.0, 1.0
    for layer in net.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            size = layer.kernel_size[0] if isinstance(layer, keras.layers.Conv2D) else layer.pool_size[0]
            stride = layer.strides[0]
            if layer.padding == "valid":
                offset += (size - 1) / 2 * jump
            jump *= stride
        if layer is conv:
            break
    return offset, jump


def _resample(n_cells: int, offset: float, jump: float, size: int) -> np.ndarray:
    """(size, n_cells) linear-interpolation weights from cell centres to pixel centres (edges held)."""
    u = np.clip((np.arange(size) - offset) / jump, 0, n_cells - 1)
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, n_cells - 1)
    w = np.zeros((size, n_cells))
    w[np.arange(size), lo] += 1 - (u - lo)
    w[np.arange(size), hi] += u - lo
    return w


class GradCam:
    """Grad-CAM of one Keras model (TensorFlow backend), built once and run on batches."""

    def __init__(self, net):
        import keras

        check_backend()
        conv = last_conv(net)
        head = net.layers[-1]
        self.size = int(net.input_shape[1])
        self.offset, self.jump = geometry(net, conv)
        # The logit: the last Dense layer's output before its sigmoid (from its kernel and bias).
        self.kernel, self.bias = (head.kernel, head.bias) if isinstance(head, keras.layers.Dense) else (None, None)
        outputs = [conv.output, head.input if self.kernel is not None else net.outputs[0]]
        self.model = keras.Model(net.inputs[0] if len(net.inputs) == 1 else net.inputs, outputs)

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(n, size, size) float32 heat maps in 0..1 (each scaled to its own maximum; all zero when
        nothing in the image raises the crack logit) for (n, size, size, 1) images."""
        out = np.zeros((len(images), self.size, self.size), np.float32)
        for start in range(0, len(images), batch_size):
            out[start:start + batch_size] = self._batch(np.asarray(images[start:start + batch_size], np.float32))
        return out

    def _batch(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            maps, head = self.model(x, training=False)
            if self.kernel is not None:
                logit = tf.matmul(head, tf.cast(self.kernel, head.dtype)) + tf.cast(self.bias, head.dtype)
            else:  # some other head: the logit of its probability
                p = tf.clip_by_value(head, 1e-7, 1 - 1e-7)
                logit = tf.math.log(p / (1 - p))
            target = tf.reduce_sum(logit)  # images are independent: one gradient pass for the batch
        grads = tape.gradient(target, maps)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1)).numpy().astype(np.float64)
        h, w = cam.shape[1:]
        rows = _resample(h, self.offset, self.jump, self.size)
        cols = _resample(w, self.offset, self.jump, self.size)
        up = np.einsum("ph,nhw,qw->npq", rows, cam, cols)
        peak = up.max(axis=(1, 2), keepdims=True)
        return np.divide(up, peak, out=np.zeros_like(up), where=peak > 0).astype(np.float32)


def heat_maps(net, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Grad-CAM of ``net`` (a Keras model) for ``images``: (n, size, size) in 0..1."""
    return GradCam(net)(images, batch_size)


def photo_heat(cams: np.ndarray, boxes: np.ndarray, weights: np.ndarray, image_size: tuple[int, int],
               shape: tuple[int, int]) -> np.ndarray:
    """One heat map over a whole photo, at ``shape`` (rows, cols: the preview's pixels).

    ``cams`` (n, s, s) are tile maps at the model's input size, ``boxes`` their
    ``x, y, width, height`` in the photo's ``image_size`` (width, height) pixels,
    ``weights`` (n,) what each map counts for (its tile's probability). Where tiles
    overlap, the larger value wins.
    """
    from PIL import Image

    out = np.zeros(shape, np.float32)
    sy, sx = shape[0] / image_size[1], shape[1] / image_size[0]
    for cam, (x, y, w, h), weight in zip(cams, boxes, weights):
        x0, y0 = int(round(x * sx)), int(round(y * sy))
        x1, y1 = max(x0 + 1, int(round((x + w) * sx))), max(y0 + 1, int(round((y + h) * sy)))
        tile = np.asarray(Image.fromarray(np.asarray(cam, np.float32), "F").resize((x1 - x0, y1 - y0),
                                                                                   Image.Resampling.BILINEAR))
        region = out[y0:y1, x0:x1]
        np.maximum(region, weight * tile[:region.shape[0], :region.shape[1]], out=region)
    return out


# --- crackclf predict --explain --------------------------------------------------------------------

def check_target(target, n_files: int) -> None:
    """``--explain``: a FILE.png for one image, else a folder (created)."""
    if target.suffix.lower() == ".png" and n_files != 1:
        raise UsageError(f"--explain {target}: one picture explains one image, and {n_files} were given; "
                         "name a folder for several")
    if target.suffix and target.suffix.lower() != ".png":
        raise UsageError(f"--explain {target}: name a folder or a .png file")


def explain_files(model, preds, target, threshold: float, tile_size: int, stride: int, photo_scale,
                  batch_size: int) -> list:
    """Draw the Grad-CAM picture of each prediction with a crack tile into the folder ``target``
    (``<name>.png``, ``<name>-2.png`` for a name seen before), or of the one prediction into
    ``target`` when it is a .png; returns the paths written. The model's Keras net does the
    gradients (loaded now if ONNX Runtime answered)."""
    from pathlib import Path

    from crackclf import imaging, plots
    from crackclf.predict import MAP_PREVIEW_PX, decode

    check_backend()
    cam = GradCam(model.keras_net())
    target = Path(target)
    single = target.suffix.lower() == ".png"
    written, names = [], set()
    for pred in preds if single else [p for p in preds if p.crack_tiles]:
        d = decode(pred.path, model.size, tile_size, stride, preview_px=MAP_PREVIEW_PX, photo_scale=photo_scale)
        preview = d.preview if pred.whole_photo else np.asarray(imaging.open_gray(pred.path))
        table = pred.tile_table
        crack = np.flatnonzero(table.probabilities >= threshold)
        cams = cam(d.tiles[crack], batch_size) if len(crack) else np.zeros((0, model.size, model.size))
        pred.preview = preview
        pred.heat = photo_heat(cams, table.boxes[crack], table.probabilities[crack], pred.image_size, preview.shape)
        if single:
            path = target
        else:
            stem, n = Path(pred.path).stem, 1
            while f"{stem}{'' if n == 1 else f'-{n}'}.png" in names:
                n += 1
            names.add(name := f"{stem}{'' if n == 1 else f'-{n}'}.png")
            path = target / name
        plots.save_explain_map(path, pred, threshold)
        pred.preview = pred.heat = None  # memory stays flat on large folders
        written.append(path)
    return written
