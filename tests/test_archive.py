"""archive.iter_images / summarize: every container format, nesting, and the safety checks."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest
from archives import members, write_rar, write_tar, write_zip, zip_bytes

from crackclf import archive
from crackclf.archive import ArchiveError

CAP = 1 << 30
PREFIX = "Concrete Crack Images/"  # class folders one level down, as in real downloads


def read_all(source, cap=CAP, **kw) -> dict[str, tuple[int, bytes]]:
    return {name: (label, data) for name, label, data in archive.iter_images(source, cap, **kw)}


def expected(folder, prefix=PREFIX) -> dict[str, tuple[int, bytes]]:
    return {name: (1 if "/Positive/" in "/" + name else 0, data) for name, data in members(folder, prefix).items()}


def test_folder_yields_every_image_with_its_label(small_dataset):
    got = read_all(small_dataset)
    assert got == expected(small_dataset, "")
    assert sorted({label for label, _ in got.values()}) == [0, 1]


BUILDERS = {
    "zip-deflated": lambda d, f: write_zip(d / "file_downloaded", f),
    "zip-stored": lambda d, f: write_zip(d / "a.zip", f, zipfile.ZIP_STORED),
    "tar": lambda d, f: write_tar(d / "a.tar", f, "w"),
    "tar.gz": lambda d, f: write_tar(d / "a.tar.gz", f, "w:gz"),
    "tar.bz2": lambda d, f: write_tar(d / "a.tbz", f, "w:bz2"),
    "tar.xz": lambda d, f: write_tar(d / "a.bin", f, "w:xz"),
    **{f"rar{v}-{kind}": (lambda v, kind: lambda d, f: write_rar(d / "a.rar", f, v, kind))(v, kind)
       for v in (4, 5) for kind in ("stored", "compressed", "solid")},
    "zip-in-zip": lambda d, f: write_zip(d / "outer.zip", {"inner.zip": zip_bytes(f)}),
    "rar-in-zip (Mendeley)": lambda d, f: write_zip(
        d / "5y9wdsg2zt-2.zip", {"Concrete Crack Images.rar": write_rar(d / "inner.rar", f, 4, "solid").read_bytes()}),
    "zip-in-rar5-solid": lambda d, f: write_rar(d / "outer.rar", {"README.txt": b"hi", "data.zip": zip_bytes(f)},
                                                5, "solid"),
    "tar.gz-in-folder": lambda d, f: write_tar(d / "folder" / "x.tgz", f) and d / "folder",
}


@pytest.mark.parametrize("kind", BUILDERS)
def test_every_container_round_trips(kind, small_dataset, tmp_path):
    (tmp_path / "folder").mkdir()
    source = BUILDERS[kind](tmp_path, members(small_dataset, PREFIX))
    assert read_all(source) == expected(small_dataset)


def test_format_comes_from_the_bytes_not_the_name(small_dataset, tmp_path):
    rar = write_rar(tmp_path / "looks_like.zip", members(small_dataset), 5)
    assert archive.sniff(rar) == "rar"
    assert read_all(rar) == expected(small_dataset, "")
    assert archive.detect_format(b"<!DOCTYPE html>") is None


def test_class_folders_any_case_and_depth(tmp_path):
    files = {"x/y/POSITIVE/a.jpg": b"1", "x/negative/sub/b.jpg": b"0", "x/other/c.jpg": b"?"}
    src = write_zip(tmp_path / "a.zip", files)
    assert read_all(src) == {"x/y/POSITIVE/a.jpg": (1, b"1"), "x/negative/sub/b.jpg": (0, b"0")}


def test_compressed_files_holding_no_tar_are_passed_over(tmp_path):
    import gzip
    import lzma

    notes = {"notes.txt.gz": gzip.compress(b"hello"), "log.xz": lzma.compress(b"hello" * 200)}
    (tmp_path / "folder" / "Positive").mkdir(parents=True)
    (tmp_path / "folder" / "Positive" / "a.jpg").write_bytes(b"1")
    for name, data in notes.items():
        (tmp_path / "folder" / name).write_bytes(data)
    assert read_all(tmp_path / "folder") == {"Positive/a.jpg": (1, b"1")}
    src = write_zip(tmp_path / "a.zip", {"Negative/b.jpg": b"0", **notes})
    assert read_all(src) == {"Negative/b.jpg": (0, b"0")}


def test_macos_companions_are_passed_over(tmp_path):
    src = write_zip(tmp_path / "mac.zip", {"d/Positive/a.jpg": b"1", "__MACOSX/d/Positive/._a.jpg": b"junk",
                                             "d/Negative/._b.jpg": b"junk", "d/Negative/b.jpg": b"0"})
    assert sorted(read_all(src)) == ["d/Negative/b.jpg", "d/Positive/a.jpg"]


@pytest.mark.parametrize("name", ["../evil/Positive/a.jpg", "Positive/../../a.jpg", "/etc/Positive/a.jpg",
                                  "..\\Positive\\a.jpg", "C:/Positive/a.jpg"])
def test_zip_slip_is_refused(name, tmp_path):
    src = write_zip(tmp_path / "slip.zip", {"Positive/ok.jpg": b"1", name: b"evil"})
    with pytest.raises(ArchiveError, match="unsafe member"):
        read_all(src)


def test_tar_slip_is_refused(tmp_path):
    src = write_tar(tmp_path / "slip.tar.gz", {"Positive/ok.jpg": b"1", "../../Negative/x.jpg": b"evil"})
    with pytest.raises(ArchiveError, match=r"'\.\.' in its path"):
        read_all(src)


def _tar_with_link(path, linkname, kind=tarfile.SYMTYPE):
    with tarfile.open(path, "w") as tf:
        data = b"img"
        info = tarfile.TarInfo("d/Positive/a.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("d/Negative/b.jpg")
        link.type, link.linkname = kind, linkname
        tf.addfile(link)
    return path


@pytest.mark.parametrize("target, kind", [("../../../etc/passwd", tarfile.SYMTYPE), ("/etc/passwd", tarfile.SYMTYPE),
                                          ("../../outside.jpg", tarfile.LNKTYPE)])
def test_tar_links_pointing_outside_are_refused(target, kind, tmp_path):
    with pytest.raises(ArchiveError, match="points outside"):
        read_all(_tar_with_link(tmp_path / "link.tar", target, kind))


def test_tar_links_inside_are_skipped_not_followed(tmp_path):
    assert read_all(_tar_with_link(tmp_path / "link.tar", "../Positive/a.jpg")) == {"d/Positive/a.jpg": (1, b"img")}


def test_rar_symlink_pointing_outside_is_refused(tmp_path):
    import rars

    builder = rars.RarBuilder(format="rar50")
    builder.add_bytes(b"img", "Positive/a.jpg")
    builder.add_unix_symlink("Negative/b.jpg", "../../../etc/passwd")
    builder.write(str(tmp_path / "link.rar"))
    with pytest.raises(ArchiveError, match="points outside"):
        read_all(tmp_path / "link.rar")


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "rar"])
def test_archive_expanding_past_the_cap_is_refused(fmt, tmp_path):
    files = {"Positive/a.jpg": b"\0" * 300_000, "Negative/b.jpg": b"\0" * 300_000}
    src = {"zip": lambda: write_zip(tmp_path / "bomb.zip", files),
           "tar.gz": lambda: write_tar(tmp_path / "bomb.tgz", files),
           "rar": lambda: write_rar(tmp_path / "bomb.rar", files, 5, "solid")}[fmt]()
    assert src.stat().st_size < 50_000  # a small file that expands to 600 kB
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        read_all(src, cap=500_000)
    assert len(read_all(src, cap=600_000)) == 2


@pytest.mark.parametrize("fmt", ["zip", "rar"])
def test_lying_headers_cannot_get_past_the_cap(fmt, tmp_path, monkeypatch):
    """Even if the declared sizes claimed nothing, the bytes really unpacked are counted."""
    files = {"Positive/a.jpg": b"\0" * 300_000, "Negative/b.jpg": b"\0" * 300_000}
    src = write_zip(tmp_path / "bomb.zip", files) if fmt == "zip" else write_rar(tmp_path / "bomb.rar", files)
    monkeypatch.setattr(archive, "_declared_total", lambda sizes: 0)
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        read_all(src, cap=500_000)


def test_nested_archive_counts_against_the_same_cap(tmp_path):
    inner = zip_bytes({"Positive/a.jpg": b"\0" * 200_000, "Negative/b.jpg": b"\0" * 200_000})
    src = write_zip(tmp_path / "outer.zip", {"inner.zip": inner})
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        read_all(src, cap=350_000)


def test_excessive_nesting_is_refused(tmp_path):
    data = zip_bytes({"Positive/a.jpg": b"1", "Negative/b.jpg": b"0"})
    for _ in range(3):
        data = zip_bytes({"nested.zip": data})
    src = tmp_path / "deep.zip"
    src.write_bytes(data)  # 4 levels of zip
    with pytest.raises(ArchiveError, match="nested more than 3 deep"):
        read_all(src)
    assert len(read_all(src, max_nesting=4)) == 2


def test_duplicate_member_names_are_refused(small_dataset, tmp_path):
    """A folder holding the dataset twice (extracted beside its own archive) is ambiguous."""
    (tmp_path / "Positive").mkdir()
    (tmp_path / "Positive" / "00001.jpg").write_bytes(b"x")
    write_zip(tmp_path / "copy.zip", members(small_dataset))
    with pytest.raises(ArchiveError, match="occurs twice"):
        read_all(tmp_path)


@pytest.mark.parametrize("fmt", ["zip", "rar", "tar.gz"])
def test_truncated_archive_is_an_archive_error(fmt, small_dataset, tmp_path):
    files = members(small_dataset)
    src = {"zip": lambda: write_zip(tmp_path / "t.zip", files),
           "rar": lambda: write_rar(tmp_path / "t.rar", files, 5, "solid"),
           "tar.gz": lambda: write_tar(tmp_path / "t.tgz", files)}[fmt]()
    src.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    with pytest.raises(ArchiveError):
        read_all(src)


def test_not_an_archive(tmp_path):
    (tmp_path / "page.html").write_text("<html>Access denied</html>")
    with pytest.raises(ArchiveError, match="not a zip, RAR or tar archive"):
        read_all(tmp_path / "page.html")
    with pytest.raises(ArchiveError, match="no such file"):
        read_all(tmp_path / "missing.zip")


def test_summarize_counts_images_per_class(tmp_path):
    src = write_zip(tmp_path / "a.zip", {"Positive/a.jpg": b"1", "Positive/b.png": b"2", "Negative/c.JPG": b"3",
                                         "Negative/notes.txt": b"4", "elsewhere/d.jpg": b"5"})
    s = archive.summarize(src, CAP)
    assert (s.images, s.other_files, s.total, s.unpacked_bytes) == ({0: 1, 1: 2}, 1, 3, 4)


@pytest.mark.parametrize("files, message", [
    ({"images/a.jpg": b"1", "b.jpg": b"2"}, "no Positive/ and Negative/ folders"),
    ({"Positive/a.jpg": b"1", "Negative/notes.txt": b"2"}, "no Negative/ folder"),
])
def test_summarize_requires_both_class_folders(files, message, tmp_path):
    with pytest.raises(ArchiveError, match=message):
        archive.summarize(write_zip(tmp_path / "a.zip", files), CAP)
