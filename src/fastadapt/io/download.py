"""Downloads that resume, retry, verify their checksum and land atomically (DESIGN.md §4.7).

A dataset is fetched from the address its authors publish and checked against the md5 they
publish (e.g. Omniglot, Lake et al. 2015, from ``brendenlake/omniglot``; CIFAR-100 from
Krizhevsky's page). The bytes go to ``<filename>.part`` first; an interrupted download is resumed
with an HTTP ``Range`` request (RFC 9110 §14), and only a file whose md5 matches is renamed to its
final name, so a final name on disk always means a verified file. Only the standard library
(``urllib.request`` / ``http.client``) is used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from fastadapt.errors import ConfigError, FastAdaptError

#: Seconds before the first retry; retry ``k`` (from 0) waits ``BACKOFF_SECONDS * 2**k``.
BACKOFF_SECONDS = 1.0

_CHUNK = 1 << 18
_USER_AGENT = "fastadapt (Python urllib)"
#: HTTP statuses worth retrying: request timeout, too many requests, server-side failures.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: What a flaky or absent network raises (``HTTPError`` is a ``URLError``; handled first).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(?:\d+|\*)")


class DownloadError(FastAdaptError):
    """A file could not be downloaded, or what was downloaded does not match its checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """A file at its official address, with the md5 and (optionally) the size published for it.

    ``filename`` is the name it gets on disk, inside the folder given to :func:`download`.
    """

    url: str
    filename: str
    md5: str
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"RemoteFile url must start with http:// or https://, got {self.url!r}"
            )
        if self.filename in ("", ".", "..") or any(sep in self.filename for sep in "/\\"):
            raise ConfigError(
                f"RemoteFile filename must be a plain file name without folders, got "
                f"{self.filename!r}; pass the folder to download() instead"
            )
        if not re.fullmatch(r"[0-9a-fA-F]{32}", self.md5):
            raise ConfigError(f"RemoteFile md5 must be 32 hex digits, got {self.md5!r}")
        if self.size is not None and self.size < 0:
            raise ConfigError(f"RemoteFile size must be None or >= 0 bytes, got {self.size}")


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """The md5 of a file as 32 lowercase hex digits, read ``chunk`` bytes at a time."""
    if chunk <= 0:
        raise ConfigError(f"chunk must be a positive number of bytes, got {chunk}")
    return _hash_file(Path(path), chunk).hexdigest()


def download(
    remote: RemoteFile,
    folder: Path,
    *,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``remote`` to ``folder / remote.filename``, verify its md5 and return the path.

    - A final file already there with the published md5 is returned without touching the network.
      One with another md5 is replaced (with a warning), but only once the new download verifies;
      callers that accept a re-packed local copy must check for it before calling this.
    - Bytes stream to ``<filename>.part``. A ``.part`` left by an interrupted run is resumed with
      ``Range: bytes=<size>-``: a ``206`` answer is appended, a ``200`` (server ignores ranges)
      restarts from zero, a ``416`` means the ``.part`` already holds everything and is verified.
    - Network failures (refused or dropped connections, timeouts, truncated bodies, HTTP 408, 429
      and 5xx) are retried ``retries`` times, waiting ``BACKOFF_SECONDS * 2**k`` before retry
      ``k``; each retry resumes from what the ``.part`` holds.
    - A download whose md5 differs is rejected: the ``.part`` is deleted and :class:`DownloadError`
      names the expected and actual md5. Success is ``os.replace(.part, final)``.

    Raises:
        DownloadError: the server refused (e.g. HTTP 404), the network stayed unreachable (the
            message says where to get the file by hand and which folder to put it in), or the
            checksum did not match.
    """
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    if not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.filename
    part = folder / (remote.filename + ".part")
    expected = remote.md5.lower()
    if final.is_file():
        actual = md5sum(final)
        if actual == expected:
            return final
        warnings.warn(
            f"{final} has md5 {actual}, not the published {expected}; downloading {remote.url} "
            "to replace it",
            stacklevel=2,
        )
    actual = _fetch_with_retries(remote, folder, part, retries, timeout, progress)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"the download of {remote.url} does not match its published checksum: expected md5 "
            f"{expected}, got {actual}. The partial file {part} was deleted; run again to retry, "
            f"or download {remote.filename} by hand and put it in {folder}."
        )
    os.replace(part, final)
    return final


def _fetch_with_retries(
    remote: RemoteFile, folder: Path, part: Path, retries: int, timeout: float, progress: bool
) -> str:
    """Run :func:`_fetch` until it completes or ``retries`` retries fail; return the md5."""
    for attempt in range(retries + 1):
        try:
            return _fetch(remote, part, timeout, progress)
        except urllib.error.HTTPError as error:
            if error.code not in _TRANSIENT_STATUS:
                raise DownloadError(
                    f"{remote.url} answered HTTP {error.code} {error.reason}. Check the address, "
                    f"or download {remote.filename} by hand and put it in {folder}."
                ) from error
            failure: Exception = error
        except _NETWORK_ERRORS as error:
            failure = error
        if attempt < retries:
            time.sleep(BACKOFF_SECONDS * 2**attempt)
    raise DownloadError(
        f"could not download {remote.filename} from {remote.url} after {retries + 1} attempt(s) "
        f"(last error: {failure}). Without network access, download it by hand from {remote.url} "
        f"and put it in {folder} (as {folder / remote.filename}, md5 {remote.md5.lower()}); it is "
        "then used without downloading."
    ) from failure


def _fetch(remote: RemoteFile, part: Path, timeout: float, progress: bool) -> str:
    """One HTTP request: append to (or restart) ``part``; return the md5 of the whole ``part``.

    Raises ``http.client.IncompleteRead`` when the connection ends before the announced length,
    so that the caller retries and the next request resumes.
    """
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # Range Not Satisfiable: the .part holds all there is.
            error.close()
            return md5sum(part)
        raise
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                part.unlink()
                raise http.client.HTTPException(
                    f"asked for bytes={offset}- but the server sent the range "
                    f"{response.headers.get('Content-Range')!r}; restarting from zero"
                )
            digest, mode = _hash_file(part, 1 << 20), "ab"
        else:
            digest, mode, offset = hashlib.md5(usedforsecurity=False), "wb", 0
        announced = response.headers.get("Content-Length")
        length = int(announced) if announced is not None and announced.isdigit() else None
        total = offset + length if length is not None else remote.size
        received = 0
        with (
            part.open(mode) as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=remote.filename,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    if length is not None and received < length:
        raise http.client.IncompleteRead(b"", length - received)
    return digest.hexdigest()


def _hash_file(path: Path, chunk: int) -> hashlib._Hash:
    """An md5 object fed with the whole of ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest
