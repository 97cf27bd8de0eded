"""crackclf: does a photo of concrete show a crack? A DVC + Keras + MLflow pipeline."""

import importlib
import os
import sys

__version__ = "0.1.0"


def quiet_import(name: str):
    """Import a module with what C++ libraries print while they load hidden (TensorFlow's oneDNN
    and CPU-feature notes ignore TF_CPP_MIN_LOG_LEVEL), so a user's stderr holds only crackclf's
    lines. Python exceptions are unaffected: they are raised, not printed, during the import."""
    if name in sys.modules:
        return sys.modules[name]
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        return importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def usable_cpus() -> int:
    """CPUs this process may run on: a cpuset or ``taskset`` limits them, the host's count does not."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def say(message: str) -> None:
    """A progress or status line: stderr, so stdout stays the command's data (predict's rows)."""
    print(message, file=sys.stderr, flush=True)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message: libraries' multi-line errors as one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class CrackclfError(Exception):
    """The work failed on its inputs (an unreadable image, a failed download, an unreachable
    store): the CLI prints the message as one line and exits with ``exit_code`` (1)."""

    exit_code = 1


class UsageError(CrackclfError):
    """Bad usage or params: wrong arguments, a missing model file, a bad params.yaml (exit 2)."""

    exit_code = 2
