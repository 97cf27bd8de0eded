"""A throwaway copy of the project as a user's git + DVC workspace, for end-to-end tests.

The copy holds what a fresh clone holds (git's tracked and not-ignored files), a
params.yaml with test overrides, and its own git history, so `dvc repro` and
`dvc exp run` behave as they do for a user.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import synth
from archives import members, write_zip

REPO = Path(__file__).resolve().parents[1]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@crackclf.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@crackclf.invalid",
}


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def env(**extra: str) -> dict[str, str]:
    """The environment of a user who activated the venv; no tracking server unless given."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    e.update(GIT_ENV)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["DVC_NO_ANALYTICS"] = "1"
    e.update(extra)
    return e


def run(ws: Path, *cmd: str, check: bool = True, timeout: float = 600, **extra_env: str):
    proc = subprocess.run(cmd, cwd=ws, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def crackclf(cwd: Path, *args, **extra_env: str) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, as a user types it; its exit code is the caller's to check."""
    return run(cwd, sys.executable, "-m", "crackclf", *map(str, args), check=False, timeout=300, **extra_env)


def make_workspace(dest: Path, params: dict) -> Path:
    """Copy the project to ``dest``, apply ``params`` over params.yaml, commit it all."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("tests/", "bench/", "docs/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(base, params), sort_keys=False))
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "workspace")
    return dest


def served_workspace(tmp_path_factory, server, seed: int, **params) -> Path:
    """A workspace whose download.url is a zip of 2 x 100 synthetic patches served by ``server``;
    the tiny 48 px model with a block split, and ``params`` over that."""
    folder = synth.write_dataset(tmp_path_factory.mktemp("data") / "crack-data", 100, seed=seed)
    archive = write_zip(tmp_path_factory.mktemp("zip") / "crack-data.zip", members(folder, "crack-data/"))
    tiny = {
        **synth.TINY_PARAMS,
        "download": {"url": server.serve("/crack-data.zip", archive.read_bytes())},
        "preprocess": {"image_size": 48, "val_fraction": 0.2, "test_fraction": 0.2,
                       "split_by": "block", "block_size": 10},
    }
    return make_workspace(tmp_path_factory.mktemp("ws"), merge(tiny, params))
