import os
from pathlib import Path

import pytest

import synth

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory) -> Path:
    """A small synthetic dataset: Positive/ and Negative/, 60 JPEGs each, 227x227."""
    return synth.write_dataset(tmp_path_factory.mktemp("synthetic") / "dataset", 60)
