"""The download stage: put the dataset into ``data/raw/`` as ONE verified archive.

Why one archive and not 40,000 extracted JPEGs: DVC hashes and links every file
of an output, so a folder of tens of thousands of small files makes every
``dvc status`` and ``dvc repro`` slow (treeverse/dvc#7607); one file costs
nothing (figures in the README). Preprocess reads the images straight from it.

``download.url`` may be https:// or http:// (streamed with progress shown,
retried with exponential backoff, resumed with a Range request after an
interruption), file:// or a plain path to an archive (copied), or a path to a
folder holding Positive/ and Negative/ (packed into a byte-reproducible
``dataset.zip``). The result is checked against ``download.sha256`` if set and
opened to prove it is a safe archive with both class folders. Only then does
it replace ``data/raw`` (built beside it, then renamed), so a failure leaves the
old output or nothing, never half a file. An interrupted HTTP download is kept
in ``data/raw.part/`` and resumed by the next run.
"""

from __future__ import annotations

import email.message
import json
import os
import re
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from crackclf import CrackclfError, __version__, archive, files, progress as _progress
from crackclf.files import atomic_dir
from crackclf.process import StopRequest

CONNECT_TIMEOUT = 10.0  # seconds to open a connection; the read timeout is download.timeout
MAX_BACKOFF = 60.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
_PART_FILE, _META_FILE = "download", "meta.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same folder packs to the same bytes


class DownloadError(CrackclfError):
    """The dataset could not be fetched: bad URL, HTTP error, unreachable host, checksum mismatch."""


@dataclass(frozen=True)
class Result:
    path: Path  # the archive inside out_dir
    summary: archive.Summary
    sha256: str


def download(url: str, out_dir: str | Path, *, sha256: str | None = None, timeout: float = 60.0,
             retries: int = 5, max_unpacked_bytes: int = 4 << 30, backoff: float = 1.0,
             progress: bool | None = None) -> Result:
    """Fetch ``url`` into ``out_dir`` (replacing it) as one verified archive.

    ``progress``: None or True shows it (a bar on a terminal, a line every few seconds in a
    log; None also obeys ``crackclf.progress.enabled``), False hides it. ``backoff`` is
    the first retry's wait in seconds; it doubles per retry (at most 60 s).
    """
    out_dir = Path(out_dir)
    part_dir = out_dir.with_name(out_dir.name + ".part")
    with atomic_dir(out_dir) as staging:  # beside out_dir, so the final rename stays on one file system
        local = _local_path(url)
        if local is None:
            fetched, source_name = _fetch_http(url, part_dir, timeout=timeout, retries=retries,
                                               backoff=backoff, progress=progress, max_bytes=max_unpacked_bytes)
        elif local.is_dir():
            fetched, source_name = _pack_folder(local, staging / "dataset.zip", max_unpacked_bytes, progress), None
        elif local.is_file():
            fetched, source_name = local, local.name
        else:
            raise DownloadError(f"download.url: no such file or folder: {local}")
        try:
            result = _finish(fetched, source_name, url, staging, sha256, max_unpacked_bytes, progress,
                             link=local is None)
        except CrackclfError:
            if local is None:  # the file is complete but wrong: resuming it would only fail again
                shutil.rmtree(part_dir, ignore_errors=True)
            raise
    shutil.rmtree(part_dir, ignore_errors=True)
    return Result(out_dir / result.path.name, result.summary, result.sha256)


def main(args, params, stop: StopRequest | None = None) -> int:
    p = params.download
    result = download(p.url, args.out_dir, sha256=p.sha256, timeout=p.timeout, retries=p.retries,
                      max_unpacked_bytes=p.max_unpacked_bytes)
    s = result.summary
    other = f", {s.other_files:,} other files" if s.other_files else ""
    print(f"{result.path}: {s.total:,} images ({s.images[1]:,} crack, {s.images[0]:,} no crack{other}), "
          f"{result.path.stat().st_size / 1e6:,.1f} MB, sha256 {result.sha256}")
    return 0


# --- after fetching: check, verify, name --------------------------------------------------------------


def _finish(fetched: Path, source_name: str | None, url: str, staging: Path, sha256: str | None,
            max_unpacked_bytes: int, progress: bool | None, link: bool) -> Result:
    digest = files.sha256(fetched)
    if sha256 is not None and digest != sha256.lower():
        raise DownloadError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {digest} "
                            "(a different or damaged file; check download.url and download.sha256)")
    fmt = archive.sniff(fetched)
    if fmt is None:
        with open(fetched, "rb") as f:
            head = f.read(64).lstrip()
        hint = " (it looks like a web page: is download.url a direct link to the file?)" \
            if head[:1] == b"<" else ""
        raise DownloadError(f"{url}: not a zip, RAR or tar archive{hint}")
    name = _output_name(source_name, fmt)
    target = staging / name
    if fetched != target:
        _place(fetched, target, link)
    summary = _verify(target, url, max_unpacked_bytes, progress)
    return Result(target, summary, digest)


def _verify(path: Path, url: str, max_unpacked_bytes: int, progress: bool | None) -> archive.Summary:
    with _progress.Progress(desc="verify", unit="files", disable=_quiet(progress), leave=False) as bar:
        try:
            return archive.summarize(path, max_unpacked_bytes, on_member=lambda _: bar.update())
        except archive.ArchiveError as err:
            # Name the source the user configured, not our staging path.
            raise archive.ArchiveError(str(err).replace(str(path), url)) from None


def _output_name(source_name: str | None, fmt: str) -> str:
    """The source's own file name if its suffix tells the truth, else ``dataset`` + the format's suffix."""
    if source_name:
        name = source_name.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if name not in ("", ".", "..") and name.isprintable() and archive.name_matches_format(name, fmt):
            return name
    return "dataset" + archive.SUFFIXES[fmt]


def _place(src: Path, dest: Path, link: bool) -> None:
    """Hard-link a finished download (so an interrupted verification need not fetch it again), else copy."""
    if link:
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # Progress(disable=None): the module's switch decides


# --- local sources ------------------------------------------------------------------------------------


def _local_path(url: str) -> Path | None:
    """The path a file:// URL or plain path names; None for http(s)."""
    try:
        parsed = urlparse(url)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise DownloadError(f"download.url: {err} in {url!r}") from None
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise DownloadError(f"download.url: no host in {url!r}")
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"download.url: file:// URLs must name a local path, got host {parsed.netloc!r}")
        return Path(url2pathname(parsed.path))  # which percent-decodes: once is all
    if len(scheme) > 1:  # one letter: a Windows drive
        raise DownloadError(f"download.url: unsupported scheme {scheme}:// (use https://, http://, file:// "
                            "or a local path)")
    return Path(url).expanduser()


def _pack_folder(folder: Path, dest: Path, max_unpacked_bytes: int, progress: bool | None) -> Path:
    """Pack the class folders into one zip: stored (JPEGs do not compress), sorted, fixed timestamps."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf, \
            _progress.Progress(desc=f"pack {folder}", unit="files", disable=_quiet(progress)) as bar:
        for name, _label, data in archive.iter_images(folder, max_unpacked_bytes):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.create_system = 3  # Unix, wherever it was packed
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
            bar.update()
    return dest


# --- HTTP ---------------------------------------------------------------------------------------------


class _Retry(Exception):
    """A failure worth another try (dropped connection, timeout, 5xx)."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _Unreachable(Exception):
    """The host could not be reached at all (DNS, refused, no route, connect timeout)."""


def _fetch_http(url: str, part_dir: Path, *, timeout: float, retries: int, backoff: float,
                progress: bool | None, max_bytes: int) -> tuple[Path, str | None]:
    """Download into ``part_dir`` (resuming what an earlier run left there); returns the file and its name.

    Failures after the server answered are retried with exponential backoff,
    each retry resuming with a Range request. A host that cannot be reached at
    all fails at once: retrying a DNS failure or a refused connection only
    makes an offline user wait.
    """
    import requests

    part_dir.mkdir(parents=True, exist_ok=True)
    part, meta_path = part_dir / _PART_FILE, part_dir / _META_FILE
    if _read_meta(meta_path, url) is None:  # left by another URL (or by nothing): not ours to resume
        _discard(part, meta_path)
    host = urlparse(url).hostname
    session = requests.Session()
    session.headers.update({"User-Agent": f"crackclf/{__version__}", "Accept-Encoding": "identity"})
    failures, answered = 0, False
    try:
        while True:
            try:
                meta = _one_try(session, url, part, meta_path, _read_meta(meta_path, url), _size(part),
                                timeout, progress, max_bytes)
                return part, meta.get("name")
            except _Unreachable as err:
                if not answered:
                    raise DownloadError(
                        f"cannot reach {host} ({err}). To work offline, set download.url in params.yaml to a "
                        "local archive or a folder holding Positive/ and Negative/ (a path or a file:// URL)"
                    ) from None
                failure = _Retry(f"cannot reach {host} ({err})")
            except _Retry as err:
                answered = True
                failure = err
            failures += 1
            have = _size(part)
            if failures > retries:
                kept = f"; rerun to resume from {have / 1e6:,.1f} MB" if have else ""
                tries = f"{failures} tries" if failures > 1 else "1 try"
                raise DownloadError(f"{url}: {failure} (gave up after {tries}{kept})") from None
            wait = min(failure.wait if failure.wait is not None else backoff * 2 ** (failures - 1), MAX_BACKOFF)
            _say(f"{failure}; retrying in {wait:.3g} s (retry {failures} of {retries})")
            time.sleep(wait)
    except KeyboardInterrupt:
        if _size(part):
            _say(f"kept {_size(part) / 1e6:,.1f} MB in {part_dir}; the next run resumes from there")
        raise
    finally:
        session.close()
        if part_dir.is_dir() and not any(part_dir.iterdir()):
            part_dir.rmdir()


def _one_try(session, url: str, part: Path, meta_path: Path, meta: dict | None, have: int,
             timeout: float, progress: bool | None, max_bytes: int) -> dict:
    """One request. Returns the finished file's meta; raises _Retry (at once) to start over without it.

    An archive is about as large as what it unpacks to at most (JPEGs do not compress), so
    ``max_bytes`` (the unpacked cap) also bounds the download: a server that sends no length
    cannot fill the disk.
    """
    import requests
    import urllib3

    headers = {}
    if have and meta:
        headers["Range"] = f"bytes={have}-"
        etag = meta.get("etag")
        validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")  # no weak ETags
        if validator:
            headers["If-Range"] = validator  # a changed file comes back whole (200), never spliced
    try:
        with session.get(url, headers=headers, stream=True,
                         timeout=(min(CONNECT_TIMEOUT, timeout), timeout)) as r:
            status = r.status_code
            ranged = "Range" in headers  # a 206 or 416 to a request without one is no answer about our part
            if status == 416 and ranged:
                if meta.get("total") == have:
                    return meta  # an earlier run got every byte
                _discard(part, meta_path)
                raise _Retry(f"the server refused to resume at byte {have:,} (partial file discarded)", 0)
            if status in RETRY_STATUSES:
                raise _Retry(f"HTTP {status} {r.reason}", _retry_after(r.headers.get("Retry-After")))
            if status >= 400:
                hint = " (check download.url)" if status in (401, 403, 404, 410) else ""
                _discard(part, meta_path)  # a definite answer: nothing worth resuming
                raise DownloadError(f"{url}: HTTP {status} {r.reason}{hint}")
            if status == 206 and ranged:
                start, total = _content_range(r.headers.get("Content-Range"))
                if start != have:
                    _discard(part, meta_path)
                    raise _Retry(f"the server resumed at byte {start} instead of {have:,} (partial file discarded)", 0)
                mode = "ab"
            else:  # 200: a fresh start (or a server that ignores Range)
                if have:
                    _say("the server cannot resume (or the file changed); downloading it from the start")
                have, mode = 0, "wb"
                length = r.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                meta = {"url": url, "etag": r.headers.get("ETag"), "last_modified": r.headers.get("Last-Modified"),
                        "total": total, "name": _source_name(r, url)}
                meta_path.write_text(json.dumps(meta), encoding="utf-8")
            too_big = DownloadError(f"{url}: larger than download.max_unpacked_mb ({max_bytes / 2**20:,.0f} MiB); "
                                    "raise it if this is the right file")
            if total is not None and total > max_bytes:
                _discard(part, meta_path)
                raise too_big
            with open(part, mode) as f, _progress.Progress(total, f"download {meta.get('name') or ''}".strip(), "MB",
                                                           scale=1e-6, initial=have, disable=_quiet(progress),
                                                           leave=False) as bar:
                # read1 hands over what has arrived, so a dropped connection loses nothing already received
                while chunk := r.raw.read1(_CHUNK, decode_content=True):
                    f.write(chunk)
                    bar.update(len(chunk))
                    if f.tell() > max_bytes:
                        break
            size = part.stat().st_size
            if size > max_bytes:
                _discard(part, meta_path)
                raise too_big
            if total is not None and size < total:
                raise _Retry(f"connection closed at {size:,} of {total:,} bytes")
            if total is not None and size > total:
                _discard(part, meta_path)
                raise _Retry(f"got {size:,} bytes where the server announced {total:,}")
            return meta
    except requests.exceptions.ConnectTimeout:
        raise _Unreachable("connection timed out") from None
    except (requests.exceptions.SSLError, urllib3.exceptions.SSLError) as err:
        raise DownloadError(f"{url}: TLS error ({_reason(err)})") from None
    except requests.exceptions.ConnectionError as err:
        cause = err.args[0] if err.args else None
        if isinstance(getattr(cause, "reason", cause), (urllib3.exceptions.NewConnectionError,
                                                         urllib3.exceptions.ProxyError)):
            raise _Unreachable(_reason(err)) from None
        raise _Retry(f"connection lost ({_reason(err)})") from None
    except (requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError):
        raise _Retry(f"no data for {timeout:g} s (download.timeout)") from None
    except (requests.exceptions.RequestException, urllib3.exceptions.LocationValueError) as err:
        # A bad URL, a redirect loop: retrying cannot help. Before OSError, which requests' errors subclass.
        raise DownloadError(f"{url}: {_reason(err)}") from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, ConnectionError):
            raise  # a local disk problem, not the network's
        raise _Retry(f"connection lost at {_size(part):,} bytes ({_reason(err)})") from None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _reason(err: Exception) -> str:
    """The human part of a requests/urllib3 error chain, on one line."""
    text = str(err)
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found[-1].strip()
    if "IncompleteRead" in text:
        return "closed before the end"
    return re.sub(r"\s+", " ", text)[:200]


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _retry_after(value: str | None) -> float | None:
    return float(value) if value and value.strip().isdigit() else None


def _source_name(response, url: str) -> str | None:
    """Content-Disposition's file name, else the last segment of the URL's path."""
    disposition = response.headers.get("Content-Disposition")
    if disposition:
        msg = email.message.Message()
        msg["Content-Disposition"] = disposition
        name = msg.get_filename()
        if name:
            return name
    for candidate in (response.url, url):
        segment = unquote(urlparse(candidate).path.rsplit("/", 1)[-1])
        if segment:
            return segment
    return None


def _read_meta(meta_path: Path, url: str) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("url") == url else None


def _discard(part: Path, meta_path: Path) -> None:
    part.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)


def _say(message: str) -> None:
    _progress.write(f"crackclf download: {message}", file=sys.stderr)
