"""What the code promises, stated once for every test that checks it.

``temp_leftovers``: the temporary names ``crackclf.files`` writes beside an output
(``.<stem>.tmp-<pid><suffix>`` for a file, ``.<name>.tmp-<pid>`` and ``.<name>.old-<pid>``
for a folder); a test that says "nothing half-written was left" looks for these.

``check_device_tags``: the device tags of a training's MLflow run, for a machine
whose backend sees ``gpus`` GPUs (``backend_gpus``).
"""

from __future__ import annotations

import re
from pathlib import Path

# ".model.tmp-123.keras", ".data.tmp-123.json", ".prepared.tmp-123", ".raw.old-123"
TEMP_NAME = re.compile(r"\..+\.(?:tmp|old)-\d+(?:\.[^.]+)?")


def temp_leftovers(root: Path, recursive: bool = True) -> list[Path]:
    """Files and folders under ``root`` (or only in it) named as ``crackclf.files`` names its temporaries."""
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if TEMP_NAME.fullmatch(p.name))


def backend_gpus(backend: str | None = None) -> int:
    """How many GPUs ``backend`` (default: Keras' own) sees in this process: what training would use."""
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


GPU_DEVICE = re.compile(r"(\d+) x (\S.*)")  # "1 x NVIDIA H200", "2 x NVIDIA A100-SXM4-40GB, NVIDIA L4"
CPU_DEVICE = re.compile(r"CPU (\S.*) \((\d+) cores?\)")  # "CPU Intel(R) Xeon(R) ... (2 cores)"


def check_device_tags(tags: dict[str, str], gpus: int) -> None:
    """The run trained where it says: ``gpus`` GPUs, else the CPU, in the format train writes."""
    if gpus:
        m = GPU_DEVICE.fullmatch(tags["device"])
        assert m and int(m.group(1)) == gpus, f"device {tags['device']!r} for {gpus} GPU(s)"
        assert tags["device.type"] == "gpu" and tags["device.count"] == str(gpus), tags
        assert tags["distribute"] in ("none (1 replica)", f"MirroredStrategy ({gpus} replicas)"), tags
        assert tags["mixed_precision"] in ("float32", "mixed_float16"), tags
    else:
        m = CPU_DEVICE.fullmatch(tags["device"])
        assert m, f"device {tags['device']!r} on a machine without a GPU"
        assert tags["device.type"] == "cpu" and tags["device.count"] == "1", tags
        assert int(tags["cpu.cores"]) >= 1 and m.group(2) == tags["cpu.cores"], tags
        assert tags["cpu.model"] == m.group(1), tags
        assert tags["distribute"] == "none (1 replica)" and tags["mixed_precision"] == "float32", tags
