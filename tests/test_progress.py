"""progress.Progress: a tqdm bar on a terminal; in a log, a line every few seconds or 10 %, at most one a second."""

from __future__ import annotations

import io

import pytest

from crackclf import progress
from crackclf.progress import Progress


class Clock:
    """A fake monotonic clock: tests move it instead of sleeping."""

    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _enabled(monkeypatch):
    monkeypatch.setattr(progress, "enabled", True)
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)


def run(total, n_updates, step_seconds, *, per_update=1, **kw) -> list[str]:
    out, clock = io.StringIO(), Clock()
    with Progress(total, "preprocess", "files", file=out, clock=clock, **kw) as bar:
        for _ in range(n_updates):
            clock.t += step_seconds
            bar.update(per_update)
    text = out.getvalue()
    assert "\r" not in text
    return text.splitlines()


def test_many_fast_updates_give_a_bounded_number_of_lines():
    lines = run(100_000, 100_000, 1e-5)  # all in one second: the final line only, or one more
    assert 1 <= len(lines) <= 2
    lines = run(100_000, 100_000, 1e-4)  # ten seconds: one line a second at most (10 % steps), plus the final
    assert len(lines) <= 11
    lines = run(None, 100_000, 1e-4)  # no total, no 10 % steps: every 5 s
    assert 2 <= len(lines) <= 3


def test_a_line_per_ten_percent_when_that_comes_before_the_interval():
    lines = run(1000, 1000, 0.0126, interval=60)  # 1.26 s per 10 %
    assert [line.split("(")[1].split(")")[0] for line in lines[:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[0] == "preprocess: 100/1,000 files (10%), 79.4 files/s, ETA 0:11"
    assert lines[-1] == "preprocess: 1,000 files in 0:13 (79.4 files/s)"


def test_a_line_every_interval_without_a_total():
    lines = run(None, 12, 1.0, per_update=50, interval=5)
    assert lines == ["preprocess: 250 files, 50.0 files/s", "preprocess: 500 files, 50.0 files/s",
                     "preprocess: 600 files in 0:12 (50.0 files/s)"]


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "2")
    assert len(run(None, 10, 1.0)) == 5 + 1
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv(progress.INTERVAL_ENV, bad)
        assert progress.default_interval() == progress.INTERVAL


def test_bytes_are_shown_as_megabytes_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    with Progress(235_000_000, "download dataset.rar", "MB", scale=1e-6, file=out, clock=clock) as bar:
        for _ in range(10):
            clock.t += 2.0
            bar.update(23_500_000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "download dataset.rar: 23.5/235 MB (10%), 11.8 MB/s, ETA 0:18"
    assert lines[-1] == "download dataset.rar: 235 MB in 0:20 (11.8 MB/s)"
    assert len(lines) == 10  # 10 %, ..., 90 %, and the final line


def test_a_resumed_count_starts_from_initial_and_rates_only_the_new_part():
    out, clock = io.StringIO(), Clock()
    with Progress(100_000_000, "download", "MB", scale=1e-6, initial=50_000_000, file=out, clock=clock) as bar:
        clock.t += 5.0
        bar.update(10_000_000)
    assert out.getvalue().splitlines() == ["download: 60.0/100 MB (60%), 2.00 MB/s, ETA 0:20",
                                           "download: 60.0 MB in 0:05 (2.00 MB/s)"]


def test_an_exception_ends_with_a_stopped_line_and_postfix_is_shown():
    out, clock = io.StringIO(), Clock()
    with pytest.raises(KeyError):
        with Progress(10, "epoch 1", "batches", file=out, clock=clock, interval=1) as bar:
            clock.t += 1.5
            bar.set_postfix(loss=0.312345, acc=None)
            bar.update(3)
            raise KeyError
    assert out.getvalue().splitlines() == ["epoch 1: 3/10 batches (30%), 2.00 batches/s, ETA 0:04, loss=0.3123",
                                           "epoch 1: stopped at 3/10 batches (30%) after 0:02, loss=0.3123"]


def test_a_count_past_its_total_shows_no_total():
    lines = run(5, 8, 1.0, interval=1)
    assert lines[-2] == "preprocess: 8 files, 1.00 files/s" and lines[-1] == "preprocess: 8 files in 0:08 (1.00 files/s)"


def test_a_terminal_gets_a_tqdm_bar():
    out = Terminal()
    with Progress(100, "preprocess", "files", file=out) as bar:
        for _ in range(100):
            bar.update()
        bar.set_postfix(loss=0.5)
    text = out.getvalue()
    assert "\r" in text and "100/100" in text and "files/s" in text and "loss=0.5" in text
    out = Terminal()
    with Progress(None, "download", "MB", scale=1e-6, file=out) as bar:
        bar.update(12_300_000)
    assert "12.3 MB [" in out.getvalue()
    out = Terminal()
    with Progress(2_350_000_000, "download", "MB", scale=1e-6, file=out) as bar:
        bar.update(1_234_560_000)
    assert "1234.6/2350.0 [" in out.getvalue() and " MB/s]" in out.getvalue()


def test_the_switch_silences_all_but_an_explicit_request(monkeypatch):
    monkeypatch.setattr(progress, "enabled", False)
    assert run(100, 100, 1.0) == []
    assert run(100, 100, 1.0, disable=False)[-1].startswith("preprocess: 100 files in")
    out = Terminal()
    Progress(10, "x", file=out).close()
    assert out.getvalue() == ""
    monkeypatch.setattr(progress, "enabled", True)
    assert run(100, 100, 1.0, disable=True) == []


def test_write_prints_a_plain_line_off_a_terminal():
    out = io.StringIO()
    progress.write("crackclf download: retrying", file=out)
    assert out.getvalue() == "crackclf download: retrying\n"
