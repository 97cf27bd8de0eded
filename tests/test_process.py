"""Every stage stops like Ctrl-C on SIGTERM, and under DVC when dvc dies: nothing half-written is left."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from crackclf import process


def test_repeated_sigterm_cannot_cut_short_the_cleanup():
    """A scheduler's second SIGTERM, or dvc dying on top of the first: one interrupt, then quiet."""
    cleaned = False
    with pytest.raises(KeyboardInterrupt), process.stoppable():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):  # the handler runs between bytecodes
                pass
        finally:  # where train ends the MLflow run
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):
                pass
            cleaned = True
    assert cleaned


# A stand-in for dvc: runs the stage command through dash (which does not exec it) with DVC_STAGE set.
FAKE_DVC = textwrap.dedent("""
    import os, subprocess, sys, time
    env = dict(os.environ, DVC_STAGE="train")
    subprocess.Popen(["/bin/dash", "-c", f"{sys.executable} -c '{sys.argv[1]}' > {sys.argv[2]}"], env=env)
    time.sleep(600)
""")
STAGE = "; ".join([
    "import signal, sys, time",
    "from crackclf import process",
    "stopped = []",
    "signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))",
    "process.stop_with_dvc()",
    "print(process.dvc_process(), flush=True)",
    "deadline = time.monotonic() + 120",
    "exec(\"while not stopped and time.monotonic() < deadline: time.sleep(0.01)\")",
    "print(\"stopped\" if stopped else \"still running\", flush=True)",
])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches dvc through /proc and a pidfd")
def test_a_stage_stops_when_dvc_dies_behind_a_waiting_shell(tmp_path):
    out = tmp_path / "stage.out"
    dvc = subprocess.Popen([sys.executable, "-c", FAKE_DVC, STAGE, str(out)])
    try:
        deadline = time.monotonic() + 120
        while not out.exists() or not out.read_text().strip():
            assert dvc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert int(out.read_text().split()[0]) == dvc.pid  # dvc, not the shell between
        dvc.terminate()
        dvc.wait(10)
        while len(out.read_text().split()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert out.read_text().split()[1] == "stopped"
    finally:
        dvc.kill()


def test_sigterm_unwinds_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), process.stoppable():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGTERM) == before




def test_sigterm_stops_preprocess_with_nothing_half_written(tmp_path):
    """Every stage runs stoppable, not only train: a SIGTERM midway leaves no output and no leftovers."""
    import numpy as np

    import synth
    from workspace import env

    raw = tmp_path / "raw"
    for folder, crack in (("Positive", True), ("Negative", False)):
        (raw / folder).mkdir(parents=True)
        jpeg = raw / folder / "00000.jpg"
        synth.patch(np.random.default_rng(int(crack)), crack).save(jpeg, quality=90)
        data = jpeg.read_bytes()
        for i in range(1, 3000):  # distinct bytes (a trailer after the image), so none collapses as a duplicate
            (raw / folder / f"{i:05d}.jpg").write_bytes(data + i.to_bytes(4, "big"))
    (tmp_path / "params.yaml").write_text("preprocess:\n  workers: 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crackclf", "preprocess", str(raw), str(tmp_path / "prepared"),
         "--metrics", str(tmp_path / "data.json"), "--params", str(tmp_path / "params.yaml")],
        stderr=subprocess.PIPE, text=True, env=env(CRACKCLF_PROGRESS_INTERVAL="0.1"))
    first = proc.stderr.readline()  # the first progress line: decoding is under way
    assert "preprocess:" in first, first
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]  # no output, no .tmp- folder
