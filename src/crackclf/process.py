"""How a stage's process stops: SIGTERM and a dead ``dvc`` end it like Ctrl-C.

The CLI runs every stage inside ``stoppable()``. SIGTERM (a killed ``dvc exp run``,
a scheduler) then unwinds the stage with KeyboardInterrupt, so its ``finally``
blocks and ``files``' temporary paths leave nothing half-written, and training
keeps its checkpoint and ends its MLflow run FAILED. Under DVC the stage also gets
SIGTERM when the dvc process dies alone (``kill``, an IDE's stop button), which
DVC itself does not pass on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class StopRequest:
    """Set once SIGTERM came. Long loops poll ``requested``: the signal handler's KeyboardInterrupt
    is lost when it lands in code that swallows exceptions (a finalizer, a C callback)."""

    requested = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def stoppable(grace_s: float = 5.0) -> Iterator[StopRequest]:
    """SIGTERM unwinds like Ctrl-C, and under DVC the death of dvc sends SIGTERM.

    Repeats within ``grace_s`` are ignored, so they cannot cut short the clean-up of
    the first (a scheduler's second SIGTERM, a dvc death that comes with it).
    """
    stop = StopRequest()
    first: list[float] = []

    def interrupt(signum, frame):
        if first and time.monotonic() - first[0] < grace_s:
            return
        first[:] = [time.monotonic()]
        stop.requested = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield stop
        return
    try:
        stop_with_dvc()
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_with_dvc() -> None:
    """Under DVC, get SIGTERM when the dvc process dies (Linux 5.3+).

    DVC runs the stage through ``$SHELL -c``, and a shell that does not exec its last
    command (dash, the usual /bin/sh) sits in between and outlives dvc, so the watch is
    on dvc itself, through a pidfd (a reused pid cannot fool it), not on the parent.
    Not outside DVC, where a parent shell may well exit first (``nohup``).
    """
    if "DVC_STAGE" not in os.environ or not sys.platform.startswith("linux"):
        return
    dvc = dvc_process()
    try:
        handle = os.pidfd_open(dvc)
    except ProcessLookupError:
        signal.raise_signal(signal.SIGTERM)
        return
    except OSError:  # a kernel before 5.3
        return
    if dvc != dvc_process():  # it died before the handle was taken
        os.close(handle)
        signal.raise_signal(signal.SIGTERM)
        return

    def watch():
        select.select([handle], [], [])  # readable once the process has ended
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-dvc", daemon=True).start()


def dvc_process() -> int:
    """The nearest ancestor without ``DVC_STAGE`` in its environment: dvc, not the shell it runs
    the stage through (DVC sets the variable for the stage's command only)."""
    pid = os.getppid()
    for _ in range(3):
        try:
            if not any(v.startswith(b"DVC_STAGE=") for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                return pid
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pid
