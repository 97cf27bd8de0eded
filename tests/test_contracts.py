"""The checks of tests/contracts.py can fail: each finds what it is meant to find, on real examples."""

import subprocess
import sys
import textwrap

import pytest

from contracts import check_device_tags, temp_leftovers

# A writer killed in the middle of each kind of atomic write (os._exit: no finally, no cleanup).
KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from crackclf import files
    root = Path(sys.argv[1])
    with files.atomic_path(root / "models" / "model.keras") as tmp:
        tmp.write_bytes(b"half a model")
        with files.atomic_path(root / "metrics" / "eval.json") as tmp2:
            tmp2.write_text("{")
            with files.atomic_dir(root / "data" / "prepared") as folder:
                (folder / "manifest.csv").write_text("file,label")
                print(os.getpid(), flush=True)
                os._exit(9)
""")


def test_temp_leftovers_finds_what_a_killed_writer_leaves(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    pid = int(done.stdout)
    # A folder moved aside just before the new one was renamed in (files.atomic_dir): by hand,
    # since no signal lands reliably between the two renames.
    (tmp_path / "data" / f".raw.old-{pid}").mkdir()
    for keep in ("models/model.keras", "models/.model.keras.checkpoint/.gitignore", "data/raw.part/dataset.zip",
                 "mlflow.db", "metrics/tmp-notes.txt", ".gitignore", "plots/.cache.tmp"):
        (tmp_path / keep).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / keep).write_text("an output, not a leftover")

    expected = [tmp_path / "data" / f".prepared.tmp-{pid}", tmp_path / "data" / f".raw.old-{pid}",
                tmp_path / "metrics" / f".eval.tmp-{pid}.json", tmp_path / "models" / f".model.tmp-{pid}.keras"]
    assert temp_leftovers(tmp_path) == expected
    assert temp_leftovers(tmp_path / "models", recursive=False) == expected[3:]
    # What test_evaluate looked for before: it saw none of them.
    assert [p.name for p in tmp_path.rglob(".*.tmp")] == [".cache.tmp"]


def test_temp_leftovers_is_empty_after_writes_that_finished(tmp_path):
    from crackclf import files

    files.write_json(tmp_path / "metrics" / "eval.json", {})
    files.write_csv(tmp_path / "plots" / "roc.csv", ["fpr"], [{"fpr": 0}])
    with files.atomic_dir(tmp_path / "prepared") as folder:
        (folder / "x").write_text("x")
    with files.atomic_dir(tmp_path / "prepared") as folder:  # over an old output: moved aside, then removed
        (folder / "y").write_text("y")
    with pytest.raises(RuntimeError), files.atomic_path(tmp_path / "models" / "model.keras") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("an exception cleans up; only a killed process leaves files behind")
    assert temp_leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["y"]


CPU_TAGS = {"device": "CPU Intel(R) Xeon(R) Processor @ 2.00GHz (2 cores)", "device.type": "cpu",
            "device.count": "1", "cpu.model": "Intel(R) Xeon(R) Processor @ 2.00GHz", "cpu.cores": "2",
            "distribute": "none (1 replica)", "mixed_precision": "float32"}
GPU_TAGS = {"device": "2 x NVIDIA H200", "device.type": "gpu", "device.count": "2", "cuda.version": "12.5.1",
            "distribute": "MirroredStrategy (2 replicas)", "mixed_precision": "mixed_float16"}


def test_device_tags_check_accepts_what_train_writes_and_nothing_else():
    check_device_tags(CPU_TAGS, gpus=0)
    check_device_tags(GPU_TAGS, gpus=2)
    check_device_tags({**GPU_TAGS, "device": "1 x NVIDIA H200", "device.count": "1",
                       "distribute": "none (1 replica)"}, gpus=1)
    wrong = [
        (CPU_TAGS, 1),  # trained on the CPU of a GPU machine
        (GPU_TAGS, 0),  # claims a GPU the backend does not see
        (GPU_TAGS, 1),  # 2 GPUs claimed, 1 seen
        ({**GPU_TAGS, "device": "GPU 0: NVIDIA H200 (UUID: GPU-0)"}, 2),  # what test_mlflow_server expected before
        ({**GPU_TAGS, "device.type": "cpu"}, 2),  # what test_train expected before, on every machine
        ({**CPU_TAGS, "cpu.cores": "0", "device": "CPU Intel(R) Xeon(R) Processor @ 2.00GHz (0 cores)"}, 0),
        ({**CPU_TAGS, "cpu.cores": "4"}, 0),  # the device line and cpu.cores disagree
        ({**CPU_TAGS, "mixed_precision": "mixed_float16"}, 0),
    ]
    for tags, gpus in wrong:
        with pytest.raises(AssertionError):
            check_device_tags(tags, gpus)

