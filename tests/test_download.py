"""download(): resume, retries, checksum and atomic rename, against a local HTTP server only."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fastadapt.errors import ConfigError
from fastadapt.io import download as download_module
from fastadapt.io.download import DownloadError, RemoteFile, download, md5sum

PAYLOAD = bytes(range(256)) * 1200  # 300 KiB: several reads of the downloader's chunk


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Behaviour:
    """How the test server answers; ``requests`` records each request's headers."""

    payload: bytes = PAYLOAD
    honour_range: bool = True
    drop_after: int | None = None  # first request: close the connection after this many bytes
    statuses: list[int] = field(default_factory=list)  # error statuses to answer first, in order
    delay_first: float = 0.0  # first request: wait this long before answering
    wrong_range_first: bool = False  # first ranged request: answer 206 for the whole file
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        behaviour: Behaviour = self.server.behaviour  # type: ignore[attr-defined]
        behaviour.requests.append(dict(self.headers))
        first = len(behaviour.requests) == 1
        if first and behaviour.delay_first:
            time.sleep(behaviour.delay_first)
        if behaviour.statuses:
            self.send_error(behaviour.statuses.pop(0))
            return
        data, start = behaviour.payload, 0
        ranged = self.headers.get("Range")
        if ranged and first and behaviour.wrong_range_first:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        elif ranged and behaviour.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and behaviour.drop_after is not None:
            body = body[: behaviour.drop_after]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client timed out
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(autouse=True)
def _fast_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setenv("no_proxy", "*")  # never route 127.0.0.1 through a configured proxy


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(behaviour: Behaviour) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.behaviour = behaviour  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/files/data.bin"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _remote(url: str, data: bytes = PAYLOAD) -> RemoteFile:
    return RemoteFile(url, "data.bin", _md5(data), len(data))


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_fresh_download_verifies_and_renames(serve, tmp_path):
    behaviour = Behaviour()
    path = download(_remote(serve(behaviour)), tmp_path / "data", progress=False)
    assert path == tmp_path / "data" / "data.bin"
    assert path.read_bytes() == PAYLOAD
    assert _files(tmp_path / "data") == ["data.bin"]
    assert len(behaviour.requests) == 1 and "Range" not in behaviour.requests[0]


def test_present_file_with_right_md5_is_not_downloaded(serve, tmp_path):
    behaviour = Behaviour()
    (tmp_path / "data.bin").write_bytes(PAYLOAD)
    assert download(_remote(serve(behaviour)), tmp_path, progress=False) == tmp_path / "data.bin"
    assert behaviour.requests == []


def test_present_file_with_wrong_md5_is_replaced_with_a_warning(serve, tmp_path):
    (tmp_path / "data.bin").write_bytes(b"stale copy")
    with pytest.warns(UserWarning, match=_md5(b"stale copy")):
        download(_remote(serve(Behaviour())), tmp_path, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_partial_file_is_resumed_with_a_range_request(serve, tmp_path):
    behaviour = Behaviour()
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    path = download(_remote(serve(behaviour)), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in behaviour.requests] == ["bytes=1000-"]
    assert _files(tmp_path) == ["data.bin"]


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path):
    behaviour = Behaviour(honour_range=False)
    (tmp_path / "data.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: appending would fail
    path = download(_remote(serve(behaviour)), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(behaviour.requests) == 1 and behaviour.requests[0]["Range"] == "bytes=1000-"


def test_range_answer_for_the_wrong_offset_restarts_from_zero(serve, tmp_path):
    behaviour = Behaviour(wrong_range_first=True)
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    path = download(_remote(serve(behaviour)), tmp_path, retries=1, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in behaviour.requests] == ["bytes=1000-", None]


def test_interrupted_download_is_retried_and_resumed(serve, tmp_path):
    behaviour = Behaviour(drop_after=100_000)
    path = download(_remote(serve(behaviour)), tmp_path, retries=2, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in behaviour.requests] == [None, "bytes=100000-"]
    assert _files(tmp_path) == ["data.bin"]


def test_interrupted_download_without_retries_keeps_the_part_for_later(serve, tmp_path):
    behaviour = Behaviour(drop_after=100_000)
    remote = _remote(serve(behaviour))
    with pytest.raises(DownloadError, match="after 1 attempt"):
        download(remote, tmp_path, retries=0, progress=False)
    assert (tmp_path / "data.bin.part").read_bytes() == PAYLOAD[:100_000]
    assert download(remote, tmp_path, retries=0, progress=False).read_bytes() == PAYLOAD


def test_complete_part_answered_416_is_verified_and_kept(serve, tmp_path):
    behaviour = Behaviour()
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    path = download(_remote(serve(behaviour)), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in behaviour.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_oversized_part_answered_416_is_rejected_and_removed(serve, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD + b"junk")
    with pytest.raises(DownloadError, match=_md5(PAYLOAD + b"junk")):
        download(_remote(serve(Behaviour())), tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_checksum_mismatch_is_rejected_and_leaves_nothing(serve, tmp_path):
    served = PAYLOAD[:-1] + b"\x00"  # one wrong byte
    url = serve(Behaviour(payload=served))
    with pytest.raises(DownloadError) as error:
        download(_remote(url), tmp_path, progress=False)
    message = str(error.value)
    assert _md5(PAYLOAD) in message and _md5(served) in message and url in message
    assert _files(tmp_path) == []


def test_unreachable_server_names_the_file_address_and_folder(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/files/data.bin"
    folder = tmp_path / "datasets"
    with pytest.raises(DownloadError) as error:
        download(_remote(url), folder, retries=2, progress=False)
    message = str(error.value)
    assert url in message and str(folder) in message and "data.bin" in message
    assert "3 attempt" in message
    assert _files(folder) == []


def test_transient_server_error_is_retried(serve, tmp_path):
    behaviour = Behaviour(statuses=[503])
    assert download(_remote(serve(behaviour)), tmp_path, progress=False).read_bytes() == PAYLOAD
    assert len(behaviour.requests) == 2


def test_timeout_is_retried(serve, tmp_path):
    behaviour = Behaviour(delay_first=1.0)
    path = download(_remote(serve(behaviour)), tmp_path, timeout=0.2, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(behaviour.requests) == 2


def test_not_found_is_not_retried(serve, tmp_path):
    behaviour = Behaviour(statuses=[404, 404, 404, 404])
    url = serve(behaviour)
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        download(_remote(url), tmp_path, retries=3, progress=False)
    assert url in str(error.value) and str(tmp_path) in str(error.value)
    assert len(behaviour.requests) == 1


def test_progress_bar_is_shown_only_when_asked(serve, tmp_path, capsys):
    download(_remote(serve(Behaviour())), tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    download(_remote(serve(Behaviour())), tmp_path / "loud", progress=True)
    assert "data.bin" in capsys.readouterr().err


def test_md5sum_matches_hashlib(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert md5sum(tmp_path / "f", chunk=1000) == _md5(PAYLOAD)
    with pytest.raises(ConfigError, match="chunk"):
        md5sum(tmp_path / "f", chunk=0)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"url": "ftp://example.org/x.zip"}, "url"),
        ({"filename": "../x.zip"}, "filename"),
        ({"filename": ""}, "filename"),
        ({"md5": "abc"}, "md5"),
        ({"size": -1}, "size"),
    ],
)
def test_remote_file_rejects_bad_fields(kwargs, field_name):
    fields = {"url": "https://example.org/x.zip", "filename": "x.zip", "md5": "0" * 32}
    with pytest.raises(ConfigError, match=field_name):
        RemoteFile(**{**fields, **kwargs})


def test_bad_arguments_are_rejected_before_any_request(tmp_path):
    remote = RemoteFile("http://127.0.0.1:1/x", "x", "0" * 32)
    with pytest.raises(ConfigError, match="retries"):
        download(remote, tmp_path, retries=-1)
    with pytest.raises(ConfigError, match="timeout"):
        download(remote, tmp_path, timeout=0)
