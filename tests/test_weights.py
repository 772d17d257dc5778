"""The verified, resumable weight download, against a loopback HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from refface import RefFaceError
from refface.weights import DownloadFailed, WeightFile, ensure_all, ensure_weights

PAYLOAD = bytes(range(256)) * 4000


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self):  # noqa: N802
        # recorded before anything is sent: the client can have read the whole body before this thread runs on
        type(self).served.append(self.headers.get("Range", "full"))
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.served = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.ckpt"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def downloads_on(monkeypatch):
    """These tests download from a loopback server; the suite otherwise keeps downloads off."""
    monkeypatch.delenv("REFFACE_OFFLINE", raising=False)


def test_refface_offline_stops_a_download_before_any_request(server, tmp_path, monkeypatch):
    monkeypatch.setenv("REFFACE_OFFLINE", "1")
    with pytest.raises(DownloadFailed, match=r"REFFACE_OFFLINE is set.*download by hand") as failed:
        ensure_weights(_weight(server), tmp_path, progress=False)
    assert failed.value.reason == "downloads are off: REFFACE_OFFLINE is set"
    assert _RangeHandler.served == [] and not any(tmp_path.iterdir())
    monkeypatch.setenv("REFFACE_OFFLINE", "0")  # 0 means downloads are on
    assert ensure_weights(_weight(server), tmp_path, progress=False).read_bytes() == PAYLOAD


def _weight(url: str, digest: str | None = None) -> WeightFile:
    return WeightFile("file.ckpt", url, digest or hashlib.sha256(PAYLOAD).hexdigest(), "test")


def test_download_is_verified_and_cached(server, tmp_path):
    path = ensure_weights(_weight(server), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert ensure_weights(_weight(server), tmp_path, progress=False) == path
    assert _RangeHandler.served == ["full"]  # second call used the cache


def test_interrupted_download_resumes(server, tmp_path):
    (tmp_path / "file.ckpt.part").write_bytes(PAYLOAD[:12345])
    path = ensure_weights(_weight(server), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert _RangeHandler.served == ["bytes=12345-"]


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    with pytest.raises(RefFaceError, match="SHA-256"):
        ensure_weights(_weight(server, "0" * 64), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_says_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RefFaceError) as error:
        ensure_weights(_weight(f"http://127.0.0.1:{port}/file.ckpt"), tmp_path, progress=False)
    message = str(error.value)
    assert str(tmp_path / "file.ckpt") in message and "\n" not in message


def test_a_file_put_in_the_cache_by_hand_is_checked_once(tmp_path):
    weight = _weight("http://127.0.0.1:9/never-asked.ckpt")
    (tmp_path / "file.ckpt").write_bytes(PAYLOAD)
    assert ensure_weights(weight, tmp_path, progress=False) == tmp_path / "file.ckpt"
    assert (tmp_path / ".file.ckpt.verified").is_file()  # remembered by size and modification time
    (tmp_path / "file.ckpt").write_bytes(PAYLOAD[:-1] + b"!")  # another file in its place
    with pytest.raises(RefFaceError, match=r"file.ckpt is not the released file.ckpt \(SHA-256"):
        ensure_weights(weight, tmp_path, progress=False)


def test_offline_names_every_missing_file_and_where_it_goes(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first, second = (WeightFile(n, f"http://127.0.0.1:{port}/{n}", "0" * 64, "test") for n in ("a.ckpt", "b.ckpt"))
    with pytest.raises(RefFaceError) as error:
        ensure_all([first, second], tmp_path, progress=False)
    message = str(error.value)
    assert message.startswith("Could not download a.ckpt and b.ckpt (") and "\n" not in message
    assert f"{first.url} at {tmp_path / 'a.ckpt'} and {second.url} at {tmp_path / 'b.ckpt'}" in message
