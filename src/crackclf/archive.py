"""Reading the dataset from whatever container it comes in, safely.

Supported: a folder, zip, tar (plain, .gz, .bz2, .xz), RAR (4 and 5, stored,
compressed or solid, read with RARLAB's own library from ``unrar2-cffi``), and
archives nested in one another (Mendeley's zip holds the RAR). Formats are told
apart by their first bytes, never by file name. Class folders (``Positive`` /
``Negative``, any case) are found wherever they sit.

Nothing is ever extracted to disk except a nested archive, which is spilled to a
private temporary file because zip and RAR readers need random access. Refused
with ``ArchiveError``: absolute member paths, ``..`` components, links that
point outside the archive, archives nested deeper than ``max_nesting``, and
archives that expand past ``max_unpacked_bytes``, judged first by the sizes the
headers declare and then by the bytes really produced, so a lying header cannot
get past the cap.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from crackclf import CrackclfError
from crackclf.dataset import CLASS_FOLDERS, class_of
from crackclf.files import walk_files

MAX_NESTING = 3  # archive levels: Mendeley's zip -> RAR is 2
HEAD_BYTES = 512  # enough for every signature below (tar's sits at offset 257)
_CHUNK = 1 << 20

# Output file suffix per format, for archives whose name says nothing (Mendeley's "file_downloaded").
SUFFIXES = {"zip": ".zip", "rar": ".rar", "tar": ".tar", "gz": ".tar.gz", "bz2": ".tar.bz2", "xz": ".tar.xz"}
_NAME_SUFFIXES = {
    "zip": (".zip",), "rar": (".rar",), "tar": (".tar",), "gz": (".tar.gz", ".tgz"),
    "bz2": (".tar.bz2", ".tbz2", ".tbz"), "xz": (".tar.xz", ".txz"),
}
_RAR_ERRORS = {
    11: "not enough memory", 12: "damaged data (CRC error)", 13: "damaged archive", 14: "unknown format",
    15: "cannot open a volume (multi-volume RAR?)", 18: "read error", 21: "damaged or truncated",
    22: "password protected", 24: "password protected", 25: "dictionary too large",
}


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class ArchiveError(CrackclfError):
    """An archive that is unsafe, unreadable, or holds no class folders."""


def detect_format(head: bytes) -> str | None:
    """Container format from a file's first bytes: zip, rar, tar, gz, bz2, xz, 7z, or None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head.startswith((b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")):
        return "rar"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    return None


def sniff(path: str | Path) -> str | None:
    """``detect_format`` of a file on disk."""
    with open(path, "rb") as f:
        return detect_format(f.read(HEAD_BYTES))


def name_matches_format(name: str, fmt: str) -> bool:
    """Whether a file name's suffix already says what its bytes are."""
    return name.lower().endswith(_NAME_SUFFIXES.get(fmt, ("\0",)))


@dataclass(frozen=True)
class Summary:
    """What a dataset container holds, without decoding a single image."""

    images: dict[int, int]  # label -> image files (by extension) under that class folder
    other_files: int  # files under class folders that are not images by their extension
    unpacked_bytes: int

    @property
    def total(self) -> int:
        return sum(self.images.values())


def summarize(source: str | Path, max_unpacked_bytes: int,
              on_member: Callable[[str], None] | None = None) -> Summary:
    """Read every member once (so every safety check runs) and count images per class.

    Raises ArchiveError unless both class folders hold at least one image.
    ``on_member`` is called with each member's name, e.g. to drive a progress bar.
    """
    from crackclf.imaging import is_image_path  # Pillow only when verifying

    images = dict.fromkeys(sorted(CLASS_FOLDERS.values()), 0)
    other = unpacked = 0
    for name, label, data in iter_images(source, max_unpacked_bytes):
        if is_image_path(name):
            images[label] += 1
        else:
            other += 1
        unpacked += len(data)
        if on_member is not None:
            on_member(name)
    missing = [f"{folder.capitalize()}/" for folder, label in CLASS_FOLDERS.items() if images[label] == 0]
    if len(missing) == len(CLASS_FOLDERS):
        raise ArchiveError(f"no Positive/ and Negative/ folders with images in {source}")
    if missing:
        raise ArchiveError(f"no {missing[0]} folder with images in {source} (only the other class has images)")
    return Summary(images, other, unpacked)


def iter_images(source: str | Path, max_unpacked_bytes: int,
                max_nesting: int = MAX_NESTING) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(member name, label, file bytes)`` for every file under a class folder.

    ``source`` is a folder or an archive; archives found inside (outside class
    folders) are opened too, up to ``max_nesting`` levels. The name is the
    member's path inside its innermost container (for a folder: relative to
    it), with forward slashes; a name that occurs twice is an error. Members
    come in container order (folders: sorted), each container read in one
    sequential pass. Files outside class folders, links, macOS ``__MACOSX/`` and
    ``._*`` companions are passed over. ``max_unpacked_bytes`` caps the bytes
    unpacked from archives (nested archives count, plain folder files do not).
    """
    return _Reader(max_unpacked_bytes, max_nesting).run(Path(source))


# --- internals -------------------------------------------------------------------------------------


def _skipped(name: str) -> bool:
    parts = name.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._")


class _Reader:
    """One pass over a source: shares the byte budget and the seen names across nesting levels."""

    def __init__(self, max_unpacked_bytes: int, max_nesting: int):
        self.limit = max_unpacked_bytes
        self.used = 0
        self.max_nesting = max_nesting
        self.seen: dict[str, str] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    def run(self, source: Path) -> Iterator[tuple[str, int, bytes]]:
        try:
            if source.is_dir():
                yield from self._folder(source, str(source), 0)
            elif source.is_file():
                fmt = sniff(source)
                if fmt is None:
                    raise ArchiveError(f"{source}: not a zip, RAR or tar archive, nor a folder")
                yield from self._container(source, fmt, str(source), 1)
            else:
                raise ArchiveError(f"{source}: no such file or folder")
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()

    # budget and names

    def _too_big(self, where: str) -> ArchiveError:
        cap = f"{self.limit / 2**20:,.0f} MB" if self.limit >= 2**20 else f"{self.limit:,} bytes"
        return ArchiveError(f"{where}: unpacks to more than {cap}, the cap (download.max_unpacked_mb); "
                            "refusing it")

    def _declare(self, n: int, where: str) -> None:
        if self.used + n > self.limit:
            raise self._too_big(where)

    def _count(self, n: int, where: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise self._too_big(where)

    def _read(self, f: BinaryIO, where: str, size: int) -> bytes:
        # Ask for one byte more than the member claims (or than the cap allows): never for gigabytes,
        # which some readers would allocate up front.
        data = f.read(min(self.limit - self.used, size) + 1)
        self._count(len(data), where)
        return data

    def _emit(self, name: str, label: int, data: bytes, where: str) -> tuple[str, int, bytes]:
        first = self.seen.get(name)
        if first is not None:
            places = f"in {first}" if first == where else f"in {first} and in {where}"
            raise ArchiveError(f"{name} occurs twice ({places}); keep one copy of the dataset")
        self.seen[name] = where
        return name, label, data

    @staticmethod
    def _safe_name(raw: str, where: str) -> str:
        name = raw.replace("\\", "/")
        if name.startswith("/") or re.match(r"[A-Za-z]:", name):
            raise ArchiveError(f"{where}: unsafe member {raw!r} (absolute path); refusing the archive")
        if ".." in name.split("/"):
            raise ArchiveError(f"{where}: unsafe member {raw!r} ('..' in its path); refusing the archive")
        while name.startswith("./"):
            name = name[2:]
        return name

    @staticmethod
    def _check_link(name: str, target: str, where: str, relative_to_member: bool = True) -> None:
        target = target.replace("\\", "/")
        base = posixpath.dirname(name) if relative_to_member else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or re.match(r"[A-Za-z]:", target) or resolved == ".." or \
                resolved.startswith("../"):
            raise ArchiveError(f"{where}: link {name!r} points outside the archive ({target!r}); refusing it")

    # nesting

    def _spill_path(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="crackclf-archive-")
        fd, path = tempfile.mkstemp(dir=self._tmp.name, suffix=".nested")
        os.close(fd)
        return Path(path)

    def _spill(self, f: BinaryIO, head: bytes, where: str) -> Path:
        path = self._spill_path()
        with open(path, "wb") as out:
            out.write(head)
            self._count(len(head), where)
            while chunk := f.read(_CHUNK):
                self._count(len(chunk), where)
                out.write(chunk)
        return path

    def _nested(self, path: Path, fmt: str, where: str, depth: int) -> Iterator[tuple[str, int, bytes]]:
        try:
            if _is_container(path, fmt):
                yield from self._container(path, fmt, where, depth)
        finally:
            path.unlink(missing_ok=True)

    def _container(self, path: Path, fmt: str, where: str, depth: int) -> Iterator[tuple[str, int, bytes]]:
        if depth > self.max_nesting:
            raise ArchiveError(f"{where}: archives nested more than {self.max_nesting} deep; refusing it")
        if fmt == "zip":
            return self._zip(path, where, depth)
        if fmt == "rar":
            return self._rar(path, where, depth)
        if fmt in ("tar", "gz", "bz2", "xz"):
            return self._tar(path, where, depth)
        raise ArchiveError(f"{where}: {fmt} archives are not supported (use zip, RAR or tar)")

    # folder

    def _folder(self, root: Path, where: str, depth: int) -> Iterator[tuple[str, int, bytes]]:
        for path in walk_files(root):
            name = path.relative_to(root).as_posix()
            if _skipped(name):
                continue
            label = class_of(name)
            if label is not None:
                yield self._emit(name, label, path.read_bytes(), where)
            else:
                fmt = sniff(path)
                if fmt is not None and _is_container(path, fmt):
                    yield from self._container(path, fmt, f"{where}/{name}", depth + 1)

    def _member(self, open_member, name: str, size: int, where: str, depth: int,
                errors: tuple) -> Iterator[tuple[str, int, bytes]]:
        """One file of a zip or tar: an image under a class folder, a nested archive, or nothing."""
        label = class_of(name)
        try:
            with open_member() as f:
                if label is not None:
                    item = self._emit(name, label, self._read(f, where, size), where)
                else:
                    head = f.read(HEAD_BYTES)
                    fmt = detect_format(head)
                    item = self._spill(f, head, where) if fmt else None
        except errors as err:
            raise ArchiveError(f"{where}: cannot read {name!r} ({err})") from None
        if label is not None:
            yield item
        elif item is not None:
            yield from self._nested(item, fmt, f"{where}:{name}", depth + 1)

    # zip

    def _zip(self, path: Path, where: str, depth: int) -> Iterator[tuple[str, int, bytes]]:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise ArchiveError(f"{where}: not a readable zip ({err})") from None
        with zf:
            members = []
            for info in zf.infolist():
                name = self._safe_name(info.filename, where)
                if not info.is_dir():
                    members.append((name, info))
            self._declare(_declared_total(info.file_size for _, info in members), where)
            for name, info in members:
                if _skipped(name):
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    if info.file_size > 4096:
                        raise ArchiveError(f"{where}: link {name!r} has a {info.file_size}-byte target")
                    try:
                        target = zf.read(info).decode("utf-8", "replace")
                    except _ZIP_ERRORS as err:
                        raise ArchiveError(f"{where}: cannot read {name!r} ({err})") from None
                    self._check_link(name, target, where)
                    continue
                yield from self._member(lambda info=info: zf.open(info), name, info.file_size, where, depth,
                                        _ZIP_ERRORS)

    # tar

    def _tar(self, path: Path, where: str, depth: int) -> Iterator[tuple[str, int, bytes]]:
        try:
            tf = tarfile.open(path, mode="r:*")
        except _TAR_ERRORS as err:
            raise ArchiveError(f"{where}: not a readable tar archive ({err})") from None
        with tf:
            members = iter(tf)  # sequential: each header, then its data, never seeking back
            while True:
                try:
                    member = next(members, None)
                except _TAR_ERRORS as err:
                    raise ArchiveError(f"{where}: damaged or truncated ({err})") from None
                if member is None:
                    return
                name = self._safe_name(member.name, where)
                if member.issym() or member.islnk():
                    self._check_link(name, member.linkname, where, relative_to_member=member.issym())
                    continue
                if not member.isfile() or _skipped(name):
                    continue
                self._declare(member.size, where)  # tar sizes are exact: data is never longer
                yield from self._member(lambda member=member: tf.extractfile(member), name, member.size, where,
                                        depth, _TAR_ERRORS)

    # RAR

    def _rar(self, path: Path, where: str, depth: int) -> Iterator[tuple[str, int, bytes]]:
        headers = _rar_headers(path, where)
        for header in headers:
            self._safe_name(header.name, where)
            if header.link is not None:
                self._check_link(header.name, header.link, where)
        self._declare(_declared_total(h.size for h in headers), where)
        for item, fmt, name in _RarPass(self, path, where).run():
            if fmt is None:
                yield item
            else:
                yield from self._nested(item, fmt, f"{where}:{name}", depth + 1)


def _declared_total(sizes) -> int:
    """Sum of the sizes an archive's headers declare (a seam for tests that simulate lying headers)."""
    return sum(sizes)


def _is_container(path: Path, fmt: str) -> bool:
    """False for a compressed file that holds no tar (e.g. notes.txt.gz): data, not an archive to open."""
    return fmt not in ("gz", "bz2", "xz") or _is_tar(path)


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, mode="r:*") as tf:
            return tf.next() is not None
    except _TAR_ERRORS:
        return False


@dataclass(frozen=True)
class _RarHeader:
    name: str
    size: int
    is_dir: bool
    link: str | None


def _rar_open(path: Path, mode: str, where: str):
    from unrar.cffi import unrarlib

    opener = unrarlib.RarArchive.open_for_metadata if mode == "list" else unrarlib.RarArchive.open_for_processing
    try:
        return opener(str(path))
    except unrarlib.BadRarFile as err:
        reason = _RAR_ERRORS.get(err.code, f"unrar error {err.code}")
        raise ArchiveError(f"{where}: cannot open the RAR archive ({reason})") from None


def _rar_read_header(lib, ffi, handle, link_buf):
    hd = ffi.new("struct RARHeaderDataEx *")
    hd.RedirName = link_buf
    hd.RedirNameSize = len(link_buf)
    return lib.RARReadHeaderEx(handle, hd), hd


def _rar_header(ffi, lib, hd) -> _RarHeader:
    name = ffi.string(hd.FileNameW)
    link = ffi.string(hd.RedirName) if hd.RedirType else None
    return _RarHeader(name, hd.UnpSize + (hd.UnpSizeHigh << 32), bool(hd.Flags & lib.C_RHDF_DIRECTORY), link)


def _rar_headers(path: Path, where: str) -> list[_RarHeader]:
    """Every header, read without decompressing anything (cheap even for solid archives)."""
    # Private on purpose: the public API of unrar2-cffi 0.5.0 (unrar.cffi.rarfile.RarFile,
    # unrarlib.RarArchive.iterate_headers, RarHeader.test/skip) cannot read this archive safely:
    # - no link targets: iterate_headers allocates each RARHeaderDataEx without a RedirName buffer,
    #   so unrar never copies a symlink's target (only RedirType is set) and a link cannot be checked;
    # - no errors: iterate_headers stops silently at the first non-zero RARReadHeaderEx result and
    #   skip() ignores RARProcessFileW's, so a truncated RAR just lists fewer members (12 of 20, tried);
    # - no way to stop: RarHeader.test's callback wrapper always returns 1, so the size cap cannot
    #   abort a member (an exception raised in the callback is printed and unrar unpacks the rest: a
    #   50 MB member ran to its end), and it answers 1 (go on) to every other request, including
    #   UCM_LARGEDICT, which lets unrar allocate any dictionary size, and password/volume prompts;
    # - RarFile.open/read reopen the archive and scan it from the start for every member (quadratic
    #   on solid archives, where skipping a member still decompresses it).
    # ffi and lib are the cffi module that unrarlib itself wraps; unrar2-cffi is pinned (requirements.txt).
    from unrar.cffi._unrarlib import ffi, lib

    out = []
    link_buf = ffi.new("wchar_t[]", 4096)
    with _rar_open(path, "list", where) as rar:
        while True:
            res, hd = _rar_read_header(lib, ffi, rar.handle, link_buf)
            if res == 10:  # ERAR_END_ARCHIVE
                return out
            if res != 0:
                raise ArchiveError(f"{where}: {_RAR_ERRORS.get(res, f'unrar error {res}')}")
            out.append(_rar_header(ffi, lib, hd))
            res = lib.RARProcessFileW(rar.handle, lib.C_RAR_SKIP, ffi.NULL, ffi.NULL)
            if res != 0:
                raise ArchiveError(f"{where}: {_RAR_ERRORS.get(res, f'unrar error {res}')}")


class _RarPass:
    """One sequential pass over a RAR, solid or not: unrar hands each member's bytes to a callback."""

    def __init__(self, reader: _Reader, path: Path, where: str):
        self.reader, self.path, self.where = reader, path, where

    def run(self) -> Iterator[tuple[object, str | None, str]]:
        """Yield (emitted item, None, name) for class members, (spilled path, format, name) for archives."""
        from unrar.cffi._unrarlib import ffi, lib

        reader, where = self.reader, self.where
        link_buf = ffi.new("wchar_t[]", 4096)
        state: dict = {}

        refusals = {lib.UCM_CHANGEVOLUME: "truncated, or one part of a multi-volume set",
                    lib.UCM_CHANGEVOLUMEW: "truncated, or one part of a multi-volume set",
                    lib.UCM_NEEDPASSWORD: "password protected", lib.UCM_NEEDPASSWORDW: "password protected",
                    lib.UCM_LARGEDICT: "dictionary too large"}

        def on_data(msg, p1, p2):  # must never raise: unrar calls it from C
            if msg != lib.UCM_PROCESSDATA:
                state["refused"] = refusals.get(msg, f"unrar request {msg}")
                return -1  # prompts for a password or the next volume, huge dictionaries: refuse
            try:
                state["sink"](ffi.buffer(ffi.cast("char *", p1), p2)[:])
                return 1
            except BaseException as err:  # noqa: BLE001 - re-raised after unrar returns
                state["error"] = err
                return -1

        handle = ffi.new_handle(on_data)
        with _rar_open(self.path, "process", where) as rar:
            lib.RARSetCallbackPtr(rar.handle, lib.PyUNRARCALLBACKStub, handle)
            while True:
                res, hd = _rar_read_header(lib, ffi, rar.handle, link_buf)
                if res == 10:
                    return
                if res != 0:
                    raise ArchiveError(f"{where}: {_RAR_ERRORS.get(res, f'unrar error {res}')}")
                header = _rar_header(ffi, lib, hd)
                name = reader._safe_name(header.name, where)
                label = class_of(name)
                wanted = not header.is_dir and header.link is None and not _skipped(name)
                if not wanted:
                    op = lib.C_RAR_SKIP
                    sink = None
                elif label is not None:
                    sink = _CollectSink(reader, where)
                    op = lib.C_RAR_TEST
                else:
                    sink = _SpillSink(reader, where)
                    op = lib.C_RAR_TEST
                state.clear()
                state["sink"] = sink
                try:
                    res = lib.RARProcessFileW(rar.handle, op, ffi.NULL, ffi.NULL)
                    if "error" in state:
                        raise state["error"]
                    if res != 0:
                        reason = state.get("refused") or _RAR_ERRORS.get(res, f"unrar error {res}")
                        raise ArchiveError(f"{where}: cannot read {name!r} ({reason})")
                    if sink is None:
                        continue
                    if label is not None:
                        yield reader._emit(name, label, sink.data(), where), None, name
                    else:
                        spilled = sink.finish()
                        if spilled is not None:
                            yield spilled, sink.fmt, name
                finally:
                    if isinstance(sink, _SpillSink):
                        sink.close()


class _CollectSink:
    def __init__(self, reader: _Reader, where: str):
        self.reader, self.where, self.chunks = reader, where, []

    def __call__(self, chunk: bytes) -> None:
        self.reader._count(len(chunk), self.where)
        self.chunks.append(chunk)

    def data(self) -> bytes:
        return b"".join(self.chunks)


class _SpillSink:
    """A member outside the class folders: kept (in a temp file) only if it is itself an archive."""

    def __init__(self, reader: _Reader, where: str):
        self.reader, self.where = reader, where
        self.head = b""
        self.fmt: str | None = None
        self.decided = False
        self.out = None
        self.path: Path | None = None

    def __call__(self, chunk: bytes) -> None:
        self.reader._count(len(chunk), self.where)
        if not self.decided:
            self.head += chunk
            if len(self.head) < HEAD_BYTES:
                return
            self._decide()
        elif self.out is not None:
            self.out.write(chunk)

    def _decide(self) -> None:
        self.decided = True
        self.fmt = detect_format(self.head)
        if self.fmt is not None:
            self.path = self.reader._spill_path()
            self.out = open(self.path, "wb")
            self.out.write(self.head)
        self.head = b""

    def finish(self) -> Path | None:
        if not self.decided:
            self._decide()
        if self.out is not None:
            self.out.close()
            self.out = None
        return self.path

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
