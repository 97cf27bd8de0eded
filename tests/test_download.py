"""The download stage against a local HTTP server: full, resumed, retried, refused; local sources; the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from archives import members, write_rar, write_zip, zip_bytes
from httpserver import FileServer, free_port

from crackclf import archive, download, files
from crackclf.download import DownloadError
from workspace import crackclf



@pytest.fixture(scope="module")
def rar_bytes(small_dataset, tmp_path_factory) -> bytes:
    """The dataset as a solid RAR5, large enough (about 60 kB) to be cut midway."""
    return write_rar(tmp_path_factory.mktemp("rar") / "d.rar", members(small_dataset, "data/"), 5, "solid").read_bytes()


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Records the backoff waits instead of sleeping them."""
    waits: list[float] = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    return waits


def fetch(url, out, **kw) -> download.Result:
    kw.setdefault("retries", 2)
    kw.setdefault("progress", False)
    return download.download(url, out, **kw)


def only_file(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_full_download_detects_the_format_from_the_bytes(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/files/8a70d8a5/file_downloaded", rar_bytes)  # Mendeley's URL: no extension
    result = fetch(url, tmp_path / "raw")
    assert result.path == tmp_path / "raw" / "dataset.rar"
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    assert result.sha256 == hashlib.sha256(rar_bytes).hexdigest() == files.sha256(result.path)
    assert result.summary.images == {0: 3, 1: 3}
    assert leftovers(tmp_path) == ["raw"]  # no partial or staging folder left behind
    assert sleeps == []


def test_the_servers_file_name_is_kept_when_it_matches_the_format(server, rar_bytes, tmp_path):
    url = server.serve("/get?id=5", rar_bytes, filename="Concrete Crack Images for Classification.rar")
    assert fetch(url, tmp_path / "raw").path.name == "Concrete Crack Images for Classification.rar"
    url = server.serve("/mislabelled.zip", rar_bytes)
    assert fetch(url, tmp_path / "raw2").path.name == "dataset.rar"


def test_dropped_connection_is_resumed_with_a_range_request(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    cut = len(rar_bytes) // 3
    server.drops.append(cut)  # the first response hangs up after a third of the body
    fetch(url, tmp_path / "raw", backoff=0.5)
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    first, second = server.requests_for("/d.rar")
    assert "range" not in first
    assert second["range"] == f"bytes={cut}-"
    assert second["if-range"] == server.files["/d.rar"].etag
    assert sleeps == [0.5]


def test_interrupted_run_is_resumed_by_the_next_run(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    cut = len(rar_bytes) // 2
    server.drops.append(cut)
    with pytest.raises(DownloadError, match="gave up after 1 try; rerun to resume"):
        fetch(url, tmp_path / "raw", retries=0)
    assert leftovers(tmp_path) == ["raw.part"]  # no output, only the partial download
    fetch(url, tmp_path / "raw", retries=0)
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    assert server.requests_for("/d.rar")[1]["range"] == f"bytes={cut}-"
    assert leftovers(tmp_path) == ["raw"]


def test_interrupted_verification_does_not_download_again(server, rar_bytes, tmp_path, monkeypatch):
    url = server.serve("/d.rar", rar_bytes)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(archive, "summarize", interrupt)
        with pytest.raises(KeyboardInterrupt):
            fetch(url, tmp_path / "raw")
    assert leftovers(tmp_path) == ["raw.part"]
    fetch(url, tmp_path / "raw")
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    first, second = server.requests_for("/d.rar")  # the second asks for nothing more, gets 416, and is done
    assert second["range"] == f"bytes={len(rar_bytes)}-"


def test_server_that_ignores_range_gets_a_full_download(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    server.drops.append(len(rar_bytes) // 2)
    server.ignore_range = True
    fetch(url, tmp_path / "raw")
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    assert [r.get("range") for r in server.requests_for("/d.rar")] == [None, f"bytes={len(rar_bytes) // 2}-"]


def test_a_changed_file_is_not_spliced_onto_the_old_part(server, rar_bytes, small_dataset, tmp_path, sleeps):
    url = server.serve("/d", rar_bytes)
    server.drops.append(len(rar_bytes) // 2)
    with pytest.raises(DownloadError):
        fetch(url, tmp_path / "raw", retries=0)
    new = write_zip(tmp_path / "new.zip", members(small_dataset))
    server.serve("/d", new.read_bytes())  # a new ETag: If-Range makes the server send it whole
    fetch(url, tmp_path / "raw")
    assert only_file(tmp_path / "raw").read_bytes() == new.read_bytes()


def test_without_an_etag_last_modified_guards_the_resume(server, rar_bytes, small_dataset, tmp_path, sleeps):
    server.etags = False
    url = server.serve("/d", rar_bytes, last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    server.drops.append(len(rar_bytes) // 2)
    with pytest.raises(DownloadError):
        fetch(url, tmp_path / "raw", retries=0)
    new = write_zip(tmp_path / "new.zip", members(small_dataset))
    server.serve("/d", new.read_bytes(), last_modified="Tue, 02 Jan 2024 00:00:00 GMT")
    fetch(url, tmp_path / "raw")
    assert only_file(tmp_path / "raw").read_bytes() == new.read_bytes()
    assert server.requests_for("/d")[1]["if-range"] == "Mon, 01 Jan 2024 00:00:00 GMT"


def test_a_206_to_a_request_without_range_is_a_whole_file(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    server.partial_from = 0
    fetch(url, tmp_path / "raw")
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    assert len(server.requests_for("/d.rar")) == 1 and sleeps == []


def test_starting_over_counts_as_a_retry(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    server.partial_from = 0  # asked to resume, it sends byte 0 on: the partial file is thrown away
    server.drops.extend([1000, 1000])
    with pytest.raises(DownloadError, match="resumed at byte 0 instead of 1,000.*gave up after 2 tries"):
        fetch(url, tmp_path / "raw", retries=1, backoff=0.5)
    assert [r.get("range") for r in server.requests_for("/d.rar")] == [None, "bytes=1000-"]
    fetch(url, tmp_path / "raw2", retries=1, backoff=0.5)  # a fresh request, answered whole
    assert only_file(tmp_path / "raw2").read_bytes() == rar_bytes
    assert sleeps == [0.5]


def test_server_errors_are_retried_with_exponential_backoff(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    server.statuses.extend([503, 502, 500])
    fetch(url, tmp_path / "raw", retries=3, backoff=0.25)
    assert only_file(tmp_path / "raw").read_bytes() == rar_bytes
    assert sleeps == [0.25, 0.5, 1.0]
    server.statuses.extend([500, 500, 500])
    with pytest.raises(DownloadError, match="HTTP 500.*gave up after 3 tries"):
        fetch(url, tmp_path / "raw2", retries=2)


def test_retry_after_is_honoured(server, rar_bytes, tmp_path, sleeps):
    url = server.serve("/d.rar", rar_bytes)
    server.statuses.append(503)
    server.retry_after = "7"
    fetch(url, tmp_path / "raw", backoff=0.25)
    assert sleeps == [7.0]


def test_checksum_mismatch_leaves_nothing(server, rar_bytes, tmp_path):
    url = server.serve("/d.rar", rar_bytes)
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        fetch(url, tmp_path / "raw", sha256="0" * 64)
    assert "\n" not in str(err.value)
    assert leftovers(tmp_path) == []
    good = hashlib.sha256(rar_bytes).hexdigest().upper()
    assert fetch(url, tmp_path / "raw", sha256=good).sha256 == good.lower()


def test_404_is_one_line_and_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/nothing.rar"), tmp_path / "raw")
    assert str(err.value) == f"{server.url('/nothing.rar')}: HTTP 404 Not Found (check download.url)"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://exa mple.org/x", "http://a..b/x",
                                 "http://[::1/x"])
def test_an_invalid_url_is_a_one_line_error(url, tmp_path, sleeps):
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "raw")
    assert "\n" not in str(err.value) and sleeps == []
    assert leftovers(tmp_path) == []


def test_a_redirect_loop_is_a_one_line_error(server, tmp_path, sleeps):
    server.redirects.update({"/a": "/b", "/b": "/a"})
    with pytest.raises(DownloadError, match="redirects") as err:
        fetch(server.url("/a"), tmp_path / "raw")
    assert "\n" not in str(err.value) and sleeps == []
    assert leftovers(tmp_path) == []


def test_unreachable_host_fails_at_once_and_says_how_to_work_offline(tmp_path, sleeps):
    url = f"http://127.0.0.1:{free_port()}/file_downloaded"
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "raw", retries=5)
    message = str(err.value)
    assert message.startswith("cannot reach 127.0.0.1 (Connection refused)")
    assert "download.url" in message and "file://" in message and "\n" not in message
    assert sleeps == []  # no retries for a host that is not there
    assert leftovers(tmp_path) == []


def test_web_page_instead_of_archive(server, tmp_path):
    url = server.serve("/login", b"<!DOCTYPE html><html>Please sign in</html>", content_type="text/html")
    with pytest.raises(DownloadError, match="not a zip, RAR or tar archive .*web page"):
        fetch(url, tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_archive_without_class_folders_is_refused(server, tmp_path):
    url = server.serve("/photos.zip", zip_bytes({"photos/a.jpg": b"1", "photos/b.jpg": b"2"}))
    with pytest.raises(archive.ArchiveError, match=f"no Positive/ and Negative/ folders with images in {url}"):
        fetch(url, tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_unsafe_archive_is_refused_and_the_old_output_survives(small_dataset, tmp_path):
    fetch(str(small_dataset), tmp_path / "raw")
    before = only_file(tmp_path / "raw").read_bytes()
    evil = write_zip(tmp_path / "evil.zip", {"Positive/a.jpg": b"1", "../Negative/b.jpg": b"0"})
    with pytest.raises(archive.ArchiveError, match="unsafe member"):
        fetch(str(evil), tmp_path / "raw")
    assert only_file(tmp_path / "raw").read_bytes() == before
    assert leftovers(tmp_path) == ["evil.zip", "raw"]


def test_local_folder_is_packed_into_a_reproducible_zip(small_dataset, tmp_path):
    first = fetch(str(small_dataset), tmp_path / "a" / "raw")
    second = fetch(f"file://{small_dataset}", tmp_path / "b" / "raw")
    assert first.path.name == second.path.name == "dataset.zip"
    assert first.path.read_bytes() == second.path.read_bytes()
    with zipfile.ZipFile(first.path) as zf:
        assert {i.filename: zf.read(i) for i in zf.infolist()} == members(small_dataset)
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


@pytest.mark.parametrize("as_url", [False, True])
def test_local_archive_is_copied_under_its_own_name(as_url, small_dataset, tmp_path):
    src = write_rar(tmp_path / "Concrete Crack Images.rar", members(small_dataset), 4, "compressed")
    result = fetch(src.as_uri() if as_url else str(src), tmp_path / "data" / "raw")
    assert result.path == tmp_path / "data" / "raw" / "Concrete Crack Images.rar"
    assert result.path.read_bytes() == src.read_bytes()
    assert src.exists()


def test_a_percent_in_a_file_url_is_decoded_once(small_dataset, tmp_path):
    src = write_zip(tmp_path / "data%41.zip", members(small_dataset))
    assert "%2541" in src.as_uri()
    assert fetch(src.as_uri(), tmp_path / "raw").path == tmp_path / "raw" / "data%41.zip"


def test_a_killed_runs_leftovers_are_cleaned_and_its_moved_aside_output_restored(server, small_dataset, tmp_path):
    dead, alive = dead_pid(), os.getppid()
    old = tmp_path / f".raw.old-{dead}"  # killed between moving the old output aside and renaming the new one in
    old.mkdir()
    (old / "dataset.zip").write_bytes(b"previous")
    (tmp_path / f".raw.tmp-{dead}").mkdir()
    (tmp_path / f".raw.tmp-{alive}").mkdir()  # a running process's: not ours to touch
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/missing.zip"), tmp_path / "raw")
    assert leftovers(tmp_path) == [f".raw.tmp-{alive}", "raw"]
    assert (tmp_path / "raw" / "dataset.zip").read_bytes() == b"previous"
    (tmp_path / f".raw.old-{dead}").mkdir()  # beside an output: only a stale copy
    fetch(str(small_dataset), tmp_path / "raw")
    assert leftovers(tmp_path) == [f".raw.tmp-{alive}", "raw"]
    assert (tmp_path / "raw" / "dataset.zip").read_bytes() != b"previous"


def test_missing_local_path(tmp_path):
    with pytest.raises(DownloadError, match="no such file or folder"):
        fetch(str(tmp_path / "nope.rar"), tmp_path / "raw")
    with pytest.raises(DownloadError, match="unsupported scheme ftp://"):
        fetch("ftp://example.org/x.rar", tmp_path / "raw")


@pytest.mark.parametrize("url_kind", ["unreachable", "404", "redirect loop"])
def test_cli_prints_one_line_and_exits_1(url_kind, server, tmp_path):
    server.redirects.update({"/loop": "/loop"})
    url = {"unreachable": f"http://127.0.0.1:{free_port()}/x", "404": server.url("/missing.zip"),
           "redirect loop": server.url("/loop")}[url_kind]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"download": {"url": url, "retries": 1}}))
    proc = crackclf(tmp_path, "download", tmp_path / "raw", "--params", params)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    expected = {"unreachable": "cannot reach 127.0.0.1", "404": "HTTP 404", "redirect loop": "redirects"}[url_kind]
    assert lines[0].startswith("crackclf download: error: ") and expected in lines[0]
    assert proc.stdout == "" and not (tmp_path / "raw").exists()


@pytest.mark.parametrize("announced", [True, False])
def test_a_download_larger_than_the_cap_is_refused(server, rar_bytes, tmp_path, announced):
    # An archive never holds less than its own size: the unpacked cap bounds the download too,
    # also from a server that sends no length and would fill the disk.
    server.lengths = announced
    url = server.serve("/huge.rar", rar_bytes + b"\0" * 300_000)
    with pytest.raises(DownloadError, match="larger than download.max_unpacked_mb"):
        fetch(url, tmp_path / "raw", max_unpacked_bytes=200_000)
    assert leftovers(tmp_path) == []


def test_progress_off_a_terminal_is_plain_lines_in_megabytes(server, rar_bytes, tmp_path, capsys, monkeypatch):
    from crackclf import progress

    monkeypatch.setattr(progress, "enabled", True)
    url, mb = server.serve("/d.rar", rar_bytes), f"{len(rar_bytes) / 1e6:.2f} MB"
    download.download(url, tmp_path / "raw")  # stderr is pytest's capture: not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith(f"download d.rar: {mb} in 0:00 (") and line.endswith(" MB/s)") for line in lines), err
    assert any(line.startswith("verify: 6 files in 0:00") for line in lines), err

    monkeypatch.setattr(progress, "MIN_GAP", 0)
    monkeypatch.setenv(progress.INTERVAL_ENV, "1e-9")  # a line on every chunk: rate, and ETA against the length
    download.download(url, tmp_path / "raw")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("download d.rar: ") and f"/{mb} (" in line and "MB/s, ETA" in line
               for line in err.splitlines()), err
    assert download.download(url, tmp_path / "raw", progress=False) and capsys.readouterr().err == ""
