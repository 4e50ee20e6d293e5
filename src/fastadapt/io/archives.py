"""Opening and extracting dataset archives safely (DESIGN.md §4.7: extract only inside target).

Datasets arrive as zip (Omniglot, MovieLens) or tar.gz (CIFAR-100) archives. A damaged archive
(a truncated download, a file that is not an archive) gives an :class:`ArchiveError` naming the
file and what to do, instead of an exception from deep inside ``zipfile`` or ``tarfile``.
:func:`safe_extract` refuses archives whose members would land outside the target folder — the
"zip slip" path traversal of absolute names, ``..`` components and links that point outside —
before writing anything, and extracts into a temporary folder that is renamed into place only
when every member is out.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections import deque
from pathlib import Path
from typing import NamedTuple

from fastadapt.errors import FastAdaptError

_HINT = "it is probably truncated or corrupt: re-download it or delete it"
_SEPARATORS = re.compile(r"[/\\]")
_DRIVE = re.compile(r"[A-Za-z]:")
#: A link chain longer than this is refused (Linux follows at most 40 links, too).
_MAX_LINK_HOPS = 40
#: Errors that mean the archive's bytes are bad (as opposed to the disk being full, say).
_CORRUPT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
#: Python's own tar safety filter, where this Python has it (3.10.12+, 3.11.4+), as a second line
#: of defence behind the checks below.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class ArchiveError(FastAdaptError):
    """An archive is missing, damaged, unsafe to extract, or its target folder is in use."""


class _Member(NamedTuple):
    """One archive member, reduced to what the safety checks need."""

    parts: tuple[str, ...]  # path components below the target folder
    kind: str  # "file", "dir", "symlink" or "hardlink"
    link: str  # link target as stored in the archive ("" unless a link)


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive for reading; :class:`ArchiveError` if it is missing or unreadable.

    A truncated zip loses its central directory (stored at the end) and is caught here; damage
    inside a member's compressed data shows only when that member is read.
    """
    path = _existing_file(Path(path))
    try:
        return zipfile.ZipFile(path)
    except (*_CORRUPT_ERRORS, ValueError) as error:
        raise ArchiveError(f"{path} is not a readable zip archive ({error}); {_HINT}.") from error


def open_tar(path: Path) -> tarfile.TarFile:
    """Open a ``.tar``/``.tar.gz``/``.tgz`` (any compression tarfile knows) for reading.

    Every member header is read now (for a compressed tar this decompresses the archive once), so
    a truncated or corrupt archive fails here with :class:`ArchiveError` rather than halfway
    through a dataset build.
    """
    path = _existing_file(Path(path))
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 (returned to the caller, who closes it)
    except (*_CORRUPT_ERRORS, OSError) as error:
        raise ArchiveError(f"{path} is not a readable tar archive ({error}); {_HINT}.") from error
    try:
        archive.getmembers()
    except (*_CORRUPT_ERRORS, OSError) as error:
        archive.close()
        raise ArchiveError(f"{path} is a damaged tar archive ({error}); {_HINT}.") from error
    return archive


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a zip or tar archive into ``target``, all or nothing.

    ``target`` must not exist, or be an empty folder; its contents become the archive's members
    (an archive holding ``images_background/...`` gives ``target/images_background/...``).

    Before anything is written, every member is checked; the archive is refused with
    :class:`ArchiveError` if any member has an absolute path (``/x``, ``C:x``) or a ``..``
    component, is a device or FIFO, lies below a symbolic link member, or is a symbolic or hard
    link whose target (following the archive's other links) leaves ``target``. Members are then
    extracted into a fresh folder beside ``target``, which is renamed to ``target`` only when all
    are out; on any error it is removed, so a failed extraction leaves nothing half-written.
    """
    archive, target = Path(archive), Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ArchiveError(
            f"cannot extract {archive} into {target}: it exists and is not a folder. Delete it or "
            "choose another target."
        )
    if target.is_dir() and any(target.iterdir()):
        raise ArchiveError(
            f"cannot extract {archive} into {target}: the folder is not empty. Delete it or "
            "choose another target folder."
        )
    staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.extracting"
    is_zip = archive.suffix.lower() == ".zip" or zipfile.is_zipfile(archive)
    with open_zip(archive) if is_zip else open_tar(archive) as handle:
        try:
            members = _zip_members(handle, archive) if is_zip else _tar_members(handle, archive)
            _check_members(members, archive)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            if is_zip:
                _extract_zip(handle, staging)
            else:
                handle.extractall(staging, **_TAR_FILTER)
            if target.is_dir():
                target.rmdir()
            os.replace(staging, target)
        except _CORRUPT_ERRORS as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArchiveError(
                f"extracting {archive} failed ({error}); {_HINT}. Nothing was written."
            ) from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ArchiveError(
            f"{path} does not exist or is not a file; download the archive (or check the path)."
        )
    return path


def _parts(name: str) -> tuple[str, ...]:
    """Path components of an archive name or link target, ``.`` and empty ones dropped."""
    return tuple(part for part in _SEPARATORS.split(name) if part not in ("", "."))


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or _DRIVE.match(name) is not None


def _zip_members(archive: zipfile.ZipFile, path: Path) -> list[_Member]:
    members = []
    for info in archive.infolist():
        _refuse_bad_name(info.filename, path)
        if stat.S_ISLNK(info.external_attr >> 16):  # Unix mode bits in the high 16 bits
            target = archive.read(info).decode("utf-8", "surrogateescape")
            members.append(_Member(_parts(info.filename), "symlink", target))
        else:
            kind = "dir" if info.is_dir() else "file"
            members.append(_Member(_parts(info.filename), kind, ""))
    return members


def _tar_members(archive: tarfile.TarFile, path: Path) -> list[_Member]:
    members = []
    for info in archive.getmembers():
        _refuse_bad_name(info.name, path)
        if info.isreg():
            kind = "file"
        elif info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            raise ArchiveError(
                f"{path} holds {info.name!r}, a device or FIFO; a dataset archive has no "
                f"use for those, so it is refused ({_HINT})."
            )
        members.append(_Member(_parts(info.name), kind, info.linkname))
    return members


def _refuse_bad_name(name: str, archive: Path) -> None:
    if _is_absolute(name):
        raise ArchiveError(
            f"{archive} holds a member with an absolute path, {name!r}; refusing to extract it "
            f"({_HINT})."
        )
    if ".." in _SEPARATORS.split(name):
        raise ArchiveError(
            f"{archive} holds a member with a '..' component, {name!r}, that would land outside "
            f"the target folder; refusing to extract it ({_HINT})."
        )


def _check_members(members: list[_Member], archive: Path) -> None:
    """Refuse members that write through a link, and links that resolve outside the target."""
    links = {member.parts: member.link for member in members if member.kind == "symlink"}
    for member in members:
        through = next(
            (member.parts[:i] for i in range(1, len(member.parts)) if member.parts[:i] in links),
            None,
        )
        if through is not None:
            raise ArchiveError(
                f"{archive} holds {'/'.join(member.parts)!r} below the symbolic link "
                f"{'/'.join(through)!r}; refusing to write through a link ({_HINT})."
            )
        if member.kind != "dir" and not member.parts:
            raise ArchiveError(f"{archive} holds a {member.kind} with an empty name ({_HINT}).")
        # A symlink resolves from its own folder, a tar hard link from the archive's root.
        base = member.parts[:-1] if member.kind == "symlink" else ()
        if member.kind in ("symlink", "hardlink") and not _stays_inside(base, member.link, links):
            raise ArchiveError(
                f"{archive} holds {'/'.join(member.parts)!r}, a {member.kind} to "
                f"{member.link!r}, which points outside the target folder; refusing to extract "
                f"it ({_HINT})."
            )


def _stays_inside(base: tuple[str, ...], link: str, links: dict[tuple[str, ...], str]) -> bool:
    """Whether ``link``, resolved from folder ``base`` like ``os.path.realpath`` would after
    extraction (following the archive's own symbolic links), stays below the target folder."""
    if _is_absolute(link):
        return False
    pending = deque(_SEPARATORS.split(link))
    resolved = list(base)
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return False
            resolved.pop()
            continue
        resolved.append(part)
        followed = links.get(tuple(resolved))
        if followed is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or _is_absolute(followed):
                return False
            resolved.pop()
            pending.extendleft(reversed(_SEPARATORS.split(followed)))
    return True


def _extract_zip(archive: zipfile.ZipFile, staging: Path) -> None:
    """Extract checked zip members; symbolic links become links, as ``unzip`` makes them."""
    for info in archive.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            destination = staging.joinpath(*_parts(info.filename))
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(archive.read(info).decode("utf-8", "surrogateescape"), destination)
        else:
            archive.extract(info, staging)
