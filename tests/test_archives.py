"""open_zip / open_tar / safe_extract on small archives built here, including hostile ones."""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from fastadapt.io.archives import ArchiveError, open_tar, open_zip, safe_extract

FILES = {
    "set/a/one.txt": b"first",
    "set/a/two.txt": b"second" * 100,
    "set/b/three.bin": b"\x00\x01",
}


def _zip(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A zip of ``files``; ``links`` maps member names to symbolic link targets (Unix mode)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    with zipfile.ZipFile(path) as archive:  # the hostile names really are in the archive
        assert archive.namelist() == [*files, *(links or {})]
    return path


def _tar(path: Path, files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None):
    """A tar (compressed per ``path``'s suffix); ``links`` maps names to (type, target)."""
    with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
    with tarfile.open(path) as archive:
        assert archive.getnames() == [*files, *(links or {})]
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def _assert_message(error: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(error.value) and "re-download it or delete it" in str(error.value)


def test_open_zip_reads_a_good_archive(tmp_path):
    with open_zip(_zip(tmp_path / "a.zip", FILES)) as archive:
        assert archive.read("set/a/two.txt") == FILES["set/a/two.txt"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_open_zip_refuses_a_damaged_file(tmp_path, damage):
    path = _zip(tmp_path / "a.zip", FILES)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a zip" * 50}.get(damage, b"")
    )
    with pytest.raises(ArchiveError) as error:
        open_zip(path)
    _assert_message(error, path)


def test_missing_archive_is_an_archive_error(tmp_path):
    with pytest.raises(ArchiveError, match="does not exist"):
        open_zip(tmp_path / "nope.zip")
    with pytest.raises(ArchiveError, match="does not exist"):
        open_tar(tmp_path / "nope.tar.gz")


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz"])
def test_open_tar_reads_a_good_archive(tmp_path, name):
    with open_tar(_tar(tmp_path / name, FILES)) as archive:
        assert archive.extractfile("set/b/three.bin").read() == FILES["set/b/three.bin"]


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz"])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_open_tar_refuses_a_truncated_archive(tmp_path, name, keep):
    files = {f"set/{i}.bin": bytes([i]) * 3000 + bytes(range(256)) * i for i in range(8)}
    path = _tar(tmp_path / name, files)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ArchiveError) as error:
        open_tar(path)
    _assert_message(error, path)


def test_open_tar_refuses_garbage(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip" * 40)
    with pytest.raises(ArchiveError) as error:
        open_tar(path)
    _assert_message(error, path)


@pytest.mark.parametrize("name", ["a.zip", "a.tar", "a.tar.gz"])
def test_safe_extract_extracts_everything(tmp_path, name):
    build = _zip if name.endswith(".zip") else _tar
    archive = build(tmp_path / name, FILES)
    safe_extract(archive, tmp_path / "out" / "data")
    assert _tree(tmp_path / "out" / "data") == FILES
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data"]  # no staging left


def test_safe_extract_into_an_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    safe_extract(_zip(tmp_path / "a.zip", FILES), tmp_path / "out")
    assert _tree(tmp_path / "out") == FILES


def test_safe_extract_refuses_a_folder_in_use(tmp_path):
    archive = _zip(tmp_path / "a.zip", FILES)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_bytes(b"keep me")
    with pytest.raises(ArchiveError, match="not empty"):
        safe_extract(archive, tmp_path / "out")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ArchiveError, match="not a folder"):
        safe_extract(archive, tmp_path / "file")
    assert _tree(tmp_path / "out") == {"mine.txt": b"keep me"}


def test_links_inside_the_target_are_kept(tmp_path):
    archive = _tar(
        tmp_path / "a.tar.gz",
        FILES,
        {
            "set/latest": (tarfile.SYMTYPE, "a"),
            "set/b/one-again.txt": (tarfile.LNKTYPE, "set/a/one.txt"),
            "set/b/up": (tarfile.SYMTYPE, "../a/two.txt"),
        },
    )
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/set/latest").is_symlink()
    assert (tmp_path / "out/set/latest/one.txt").read_bytes() == FILES["set/a/one.txt"]
    assert (tmp_path / "out/set/b/one-again.txt").read_bytes() == FILES["set/a/one.txt"]
    assert (tmp_path / "out/set/b/up").read_bytes() == FILES["set/a/two.txt"]


def test_zip_symlink_inside_the_target_becomes_a_link(tmp_path):
    safe_extract(_zip(tmp_path / "a.zip", FILES, {"set/link.txt": "a/one.txt"}), tmp_path / "out")
    assert (tmp_path / "out/set/link.txt").is_symlink()
    assert (tmp_path / "out/set/link.txt").read_bytes() == FILES["set/a/one.txt"]


ABSOLUTE, DOTDOT, OUTSIDE, THROUGH = "absolute path", "'..' component", "points outside", "below"

#: case -> (extra files, symbolic links, the reason the refusal must give)
HOSTILE_ZIPS = {
    "absolute": ({"/tmp/evil.txt": b"x"}, None, ABSOLUTE),
    "drive": ({"C:evil.txt": b"x"}, None, ABSOLUTE),
    "dotdot": ({"set/../../evil.txt": b"x"}, None, DOTDOT),
    "backslash-dotdot": ({"set\\..\\..\\evil.txt": b"x"}, None, DOTDOT),
    "symlink-outside": ({}, {"set/evil": "../../evil.txt"}, OUTSIDE),
    "symlink-absolute": ({}, {"set/evil": "/etc/passwd"}, OUTSIDE),
    # lexically "set/here/../.." is the target itself, but "here" is a link to "set".
    "symlink-chain": ({}, {"set/here": ".", "set/evil": "here/../.."}, OUTSIDE),
    "write-through-link": ({"set/dir/evil.txt": b"x"}, {"set/dir": "."}, THROUGH),
}

#: case -> (extra files, links as (tar type, target), the reason the refusal must give)
HOSTILE_TARS = {
    "absolute": ({"/tmp/evil.txt": b"x"}, None, ABSOLUTE),
    "dotdot": ({"set/../../evil.txt": b"x"}, None, DOTDOT),
    "symlink-outside": ({}, {"set/evil": (tarfile.SYMTYPE, "../../evil.txt")}, OUTSIDE),
    "symlink-absolute": ({}, {"set/evil": (tarfile.SYMTYPE, "/etc/passwd")}, OUTSIDE),
    "symlink-chain": (
        {},
        {"set/here": (tarfile.SYMTYPE, "."), "set/evil": (tarfile.SYMTYPE, "here/../..")},
        OUTSIDE,
    ),
    "hardlink-outside": ({}, {"set/evil": (tarfile.LNKTYPE, "../evil.txt")}, OUTSIDE),
    "hardlink-absolute": ({}, {"set/evil": (tarfile.LNKTYPE, "/etc/passwd")}, OUTSIDE),
    "device": ({}, {"set/null": (tarfile.CHRTYPE, "")}, "device"),
    "write-through-link": (
        {"set/dir/evil.txt": b"x"},
        {"set/dir": (tarfile.SYMTYPE, "..")},
        THROUGH,
    ),
}


def _assert_refused_and_untouched(archive: Path, tmp_path: Path, reason: str) -> None:
    target = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveError, match=re.escape(reason)) as error:
        safe_extract(archive, target)
    assert str(archive) in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # nothing written


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_is_refused_before_writing(tmp_path, case):
    files, links, reason = HOSTILE_ZIPS[case]
    archive = _zip(tmp_path / "evil.zip", {**FILES, **files}, links)
    _assert_refused_and_untouched(archive, tmp_path, reason)


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
@pytest.mark.parametrize("name", ["evil.tar", "evil.tar.gz"])
def test_hostile_tar_is_refused_before_writing(tmp_path, case, name):
    files, links, reason = HOSTILE_TARS[case]
    archive = _tar(tmp_path / name, {**FILES, **files}, links)
    _assert_refused_and_untouched(archive, tmp_path, reason)


def test_corrupt_member_data_leaves_nothing_behind(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("set/first.txt", b"fine")
        archive.writestr("set/second.txt", b"payload" * 100)
    data = bytearray(path.read_bytes())
    data[data.index(b"payload") + 50] ^= 0xFF  # flip one byte: the CRC check fails on read
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="Nothing was written") as error:
        safe_extract(path, tmp_path / "out")
    _assert_message(error, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
