"""Which devices train, and how they are named in MLflow.

``train.distribute`` picks a ``tf.distribute`` strategy (all GPUs of the host, or one
device), ``train.mixed_precision: auto`` picks float16 on GPUs with tensor cores, and
``device_tags`` records what ran: ``"N x <GPU name>"`` (``device.type`` gpu) or
``"CPU <model> (<cores> cores)"`` (``device.type`` cpu). Other backends than TensorFlow
(JAX on GPU machines) train on one device.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import keras

from crackclf import usable_cpus
from crackclf.config import ConfigError


def strategy(mode: str):
    """The ``tf.distribute`` strategy for ``train.distribute``; None for one device or another backend."""
    backend = keras.backend.backend()
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    hosts = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if mode == "multi_worker" or (mode == "auto" and hosts > 1):
        # Keras 3 (3.15 included) cannot fit() under MultiWorkerMirroredStrategy: its first step
        # reduces the input batch across workers and fails (keras-team/keras issue 20585).
        raise ConfigError(
            "train.distribute: multi-host training (TF_CONFIG) is not supported by Keras 3's fit() "
            "(keras-team/keras#20585); train on one host with 'mirrored' (all its GPUs) or 'auto'"
        )
    if backend != "tensorflow":
        if mode == "mirrored":
            raise ConfigError(
                f"train.distribute: 'mirrored' needs the TensorFlow backend (KERAS_BACKEND is {backend}); "
                "use auto or none"
            )
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored":  # all GPUs, else all (logical) CPUs
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if mode == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return None  # the default strategy: one device


def gpus() -> list[tuple[str, tuple[int, int]]]:
    """(name, compute capability) of each visible GPU."""
    backend = keras.backend.backend()
    with contextlib.suppress(Exception):  # a missing driver is not an error: we train on the CPU
        if backend == "tensorflow":
            import tensorflow as tf

            out = []
            for d in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(d)
                out.append((details.get("device_name", d.name), tuple(details.get("compute_capability", (0, 0)))))
            return out
        if backend == "jax":
            import jax

            return [
                (d.device_kind, tuple(int(v) for v in str(getattr(d, "compute_capability", "0.0")).split(".")[:2]))
                for d in jax.devices() if d.platform == "gpu"
            ]
        if backend == "torch":
            import torch

            return [(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                    for i in range(torch.cuda.device_count())]
    return []


def set_precision(mode: str, gpus: list) -> str:
    """mixed_float16 when asked, or (auto) on GPUs with tensor cores (compute capability 7.0+)."""
    mixed = mode == "on" or (mode == "auto" and bool(gpus) and all(cc >= (7, 0) for _, cc in gpus))
    policy = "mixed_float16" if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def device_tags(gpus, strategy, policy) -> dict[str, str]:
    if gpus:
        names = sorted({name for name, _ in gpus})
        tags = {"device": f"{len(gpus)} x {', '.join(names)}", "device.type": "gpu", "device.count": str(len(gpus))}
        tags.update(_cuda_versions())
    else:
        cores = usable_cpus()
        cpu = _cpu_model()
        tags = {"device": f"CPU {cpu} ({cores} cores)", "device.type": "cpu", "device.count": "1",
                "cpu.model": cpu, "cpu.cores": str(cores)}
    replicas = strategy.num_replicas_in_sync if strategy else 1
    tags["distribute"] = f"{type(strategy).__name__ if strategy else 'none'} ({replicas} replica{'s' * (replicas > 1)})"
    tags["mixed_precision"] = policy
    return tags


def _cuda_versions() -> dict[str, str]:
    with contextlib.suppress(Exception):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            info = tf.sysconfig.get_build_info()  # the versions this TensorFlow was built against
            libs = [lib for lib in ("cuda", "cudnn") if info.get(f"{lib}_version")]
            return {f"{lib}.version": str(info[f"{lib}_version"]) for lib in libs}
        if keras.backend.backend() == "jax":
            import jax

            return {"cuda.version": str(jax.devices()[0].client.platform_version)}
    return {}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    import platform

    return platform.processor() or platform.machine()
