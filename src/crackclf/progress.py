"""Progress that fits where it runs: a live tqdm bar on a terminal, a plain line now and then in a log.

Why: under ``dvc repro`` (or ``> log 2>&1``, CI) stderr is no terminal, and a
tqdm bar there writes a carriage-return frame into the log many times a second,
while a bar disabled "off a terminal" leaves a long download or epoch silent.
So :class:`Progress` asks the stream (``isatty()``): on a terminal it drives a
tqdm bar; otherwise it writes one line at most every ``interval`` seconds
(default 5, ``CRACKCLF_PROGRESS_INTERVAL`` or the ``interval`` argument), or when
another 10 % is done, whichever comes first, never more than one a second, with
count/total, rate and ETA; and, when closed, one line with the total and the time.

Lines are written from ``update()`` itself (no thread: safe to create before
forking workers), so nothing is written while no update comes.

    with Progress(total, "download dataset.rar", "MB", scale=1e-6) as bar:  # counts bytes, shows MB
        bar.update(len(chunk))

Set ``progress.enabled = False`` (or call :func:`disable`) to silence every
reporter that is not explicitly asked for (``disable=False``): tests, library use.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

enabled = True  # False: every Progress left to the default (disable=None) is silent
INTERVAL = 5.0  # seconds between lines in a log, unless CRACKCLF_PROGRESS_INTERVAL or `interval` says otherwise
MIN_GAP = 1.0  # never more than one line a second, however fast the 10 % steps come
INTERVAL_ENV = "CRACKCLF_PROGRESS_INTERVAL"


def disable() -> None:
    """Silence every Progress created from now on with the default ``disable=None``."""
    global enabled
    enabled = False


def enable() -> None:
    global enabled
    enabled = True


def is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def write(message: str, file: TextIO | None = None) -> None:
    """Write a line to stderr without tearing a live bar (tqdm.write on a terminal, print elsewhere)."""
    file = file or sys.stderr
    if is_tty(file):
        from tqdm import tqdm

        tqdm.write(message, file=file)
    else:
        print(message, file=file, flush=True)


def default_interval() -> float:
    value = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        seconds = float(value) if value else INTERVAL
    except ValueError:
        return INTERVAL
    return seconds if math.isfinite(seconds) and seconds > 0 else INTERVAL


class Progress:
    """A tqdm-like reporter: ``update(n)``, ``set_postfix(**kv)``, ``close()``; a context manager.

    ``total``, ``initial`` and ``update(n)`` count in the caller's units (e.g. bytes);
    ``scale`` turns them into the ``unit`` shown (``unit="MB", scale=1e-6``). ``total``
    None (or 0) means unknown: no percentage, no ETA. ``disable``: None follows the
    module's ``enabled`` switch, True silences, False shows even when it is off.
    ``file`` defaults to stderr; ``tty`` overrides its ``isatty()``. ``interval`` is
    the seconds between log lines; ``clock`` is for tests. ``leave=False`` clears a
    terminal bar when done (a log always gets its final line).
    """

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it", *, scale: float = 1.0,
                 initial: float = 0, file: TextIO | None = None, disable: bool | None = None, leave: bool = True,
                 interval: float | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total if total else None
        self.desc, self.unit, self.scale = desc, unit, scale
        self.n = self.initial = initial
        self.file = file if file is not None else sys.stderr
        self.disabled = (not enabled) if disable is None else bool(disable)
        self.interval = default_interval() if interval is None else interval
        self.clock = clock
        self.start = self._last_line = clock()
        self._step = self._tenth(initial)
        self.postfix: dict[str, object] = {}
        self.closed = False
        self._bar = None
        if not self.disabled and (is_tty(self.file) if tty is None else tty):
            self._bar = self._tqdm(leave)

    def _tqdm(self, leave: bool):
        from tqdm import tqdm

        if self.scale == 1:  # whole counts: "1200/40000 [00:01<00:47, 812.50 files/s]"
            return tqdm(total=self.total, initial=self.initial, desc=self.desc, unit=" " + self.unit,
                        file=self.file, leave=leave, dynamic_ncols=True)

        class Scaled(tqdm):  # counted in display units, shown to 0.1: "120.3/235.0 [00:10<00:10, 11.20 MB/s]"
            @property
            def format_dict(self):
                d = super().format_dict
                d["n"], d["total"] = round(d["n"], 1), round(d["total"], 1) if d["total"] else d["total"]
                return d

        return Scaled(total=self.total * self.scale if self.total else None, initial=self.initial * self.scale,
                      desc=self.desc, unit=" " + self.unit, file=self.file, leave=leave, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close(stopped=exc_type is not None)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disabled or self.closed:
            return
        if self._bar is not None:
            self._bar.update(n * self.scale if self.scale != 1 else n)
            return
        now = self.clock()
        since = now - self._last_line
        if since < MIN_GAP:
            return
        step = self._tenth(self.n)
        done = self.total is not None and self.n >= self.total  # the final line says it
        if since >= self.interval or (step > self._step and not done):
            self._line(self._status(now))
            self._last_line, self._step = now, step

    def set_postfix(self, **kv) -> None:
        """Values shown after the counts (e.g. ``loss=0.31``): on the bar at once, in the log with the next line."""
        self.postfix = {k: v for k, v in kv.items() if v is not None}
        if self._bar is not None and not self.closed:
            self._bar.set_postfix({k: _value(v) for k, v in self.postfix.items()}, refresh=False)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None and not self.closed:
            self._bar.set_description(desc, refresh=False)

    def close(self, stopped: bool = False) -> None:
        """End the bar, or write the final line: the count and the time taken.

        ``stopped`` (set by ``__exit__`` on an exception) says it ended early: "stopped at n/total".
        """
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disabled:
            self._line(self._final(self.clock(), stopped))

    # log lines

    def _tenth(self, n: float) -> int:
        return int(n * 10 // self.total) if self.total else 0

    def _known_total(self) -> float | None:
        return self.total if self.total is not None and self.n <= self.total else None  # a hint overrun: unknown

    def _rate(self, elapsed: float) -> float | None:
        return (self.n - self.initial) / elapsed if elapsed > 0 else None

    def _count(self) -> str:
        total = self._known_total()
        if total is None:
            return f"{self._num(self.n)} {self.unit}"
        return f"{self._num(self.n)}/{self._num(total)} {self.unit} ({100 * self.n / total:.0f}%)"

    def _status(self, now: float) -> str:
        parts = [self._count()]
        rate, total = self._rate(now - self.start), self._known_total()
        if rate is not None:
            parts.append(f"{_num(rate * self.scale)} {self.unit}/s")
            if total is not None and rate > 0:
                parts.append(f"ETA {_hms((total - self.n) / rate)}")
        return self._with_postfix(", ".join(parts))

    def _final(self, now: float, stopped: bool) -> str:
        elapsed = now - self.start
        if stopped:
            text = f"stopped at {self._count()} after {_hms(elapsed)}"
        else:
            text = f"{self._num(self.n)} {self.unit} in {_hms(elapsed)}"
            rate = self._rate(elapsed)
            if rate is not None and self.n != self.initial:
                text += f" ({_num(rate * self.scale)} {self.unit}/s)"
        return self._with_postfix(text)

    def _with_postfix(self, text: str) -> str:
        if self.postfix:
            text += ", " + ", ".join(f"{k}={_value(v)}" for k, v in self.postfix.items())
        return f"{self.desc}: {text}" if self.desc else text

    def _num(self, n: float) -> str:
        return f"{n:,.0f}" if self.scale == 1 else _num(n * self.scale)

    def _line(self, text: str) -> None:
        try:
            self.file.write(text + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken log must not stop the work
            pass


def _num(x: float) -> str:
    """Three significant figures or so: 0.06, 3.25, 11.2, 235, 1,234."""
    a = abs(x)
    return f"{x:,.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a > 0 else "0"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _hms(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
