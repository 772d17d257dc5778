"""Hostile and unlucky requests to `refface serve`: bounded memory and work, other sites refused, one sentence
for every mistake, no private path in any reply, and nothing left behind when a service manager stops it."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from refface.web.limits import ServeLimits
from tests.serving import start_server

BASE = "http://127.0.0.1:7860"


def _png(width: int, height: int, seed: int = 0) -> bytes:
    """A plain photo of many pixels in a small file (what a decompression attack looks like)."""
    pixels = np.full((height, width, 3), 40 * seed % 256, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    from refface.face.detection import DlibDetector
    from refface.face.identity import DlibEmbedder
    from refface.pipelines.loading import load_saved
    from refface.web.service import RestorationService

    detector = DlibDetector()
    limits = ServeLimits(
        max_file_bytes=3 * 2**20, max_request_bytes=8 * 2**20, max_request_pixels=2_000_000,
        max_album_pixels=1_500_000, max_kept_photos=2, max_kept_bytes=64 * 2**20,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("serve")
    service = RestorationService(
        {"refldm": load_saved(tiny_models["refldm"])}, detector, DlibEmbedder(shape_predictor=detector.shape_predictor),
        limits, root,
    )
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service):
    from refface.web.app import create_app

    with TestClient(create_app(service), base_url=BASE) as client:
        yield client


def _upload(client, path: Path):
    return client.post("/api/photos", files={"photo": (path.name, path.read_bytes(), "image/jpeg")})


def test_kept_uploads_are_bounded_and_the_oldest_is_asked_for_again(client, service, face_photos):
    ids = [_upload(client, face_photos["old photo.jpg"]).json()["photo_id"] for _ in range(3)]
    assert len(service.photos) == 2 and service.photos.bytes <= service.limits.max_kept_bytes
    reply = client.post("/api/jobs", data={"photo_id": ids[0], "method": "refldm", "steps": "2"})
    assert reply.status_code == 400 and "has expired or is unknown; please upload it again" in reply.json()["error"]
    assert client.post("/api/jobs", data={"photo_id": ids[2], "method": "refldm", "steps": "2"}).status_code == 200


def test_kept_items_are_bounded_in_bytes_too():
    from refface.web.kept import Kept

    dropped = []
    kept = Kept(60.0, "gone", dropped.append, max_bytes=100, size=len)
    first, second = kept.add("a" * 60), kept.add("b" * 30)
    kept.get(first)  # used: now the most recent
    kept.add("c" * 30)
    assert dropped == ["b" * 30] and kept.bytes == 90 and kept.get(first) == "a" * 60
    assert kept.add("d" * 500) and dropped[-2:] == ["c" * 30, "a" * 60]  # least recently used first; one item may
    # exceed the bound alone
    with pytest.raises(Exception, match="gone"):
        kept.get(second)


def test_pixel_budgets_are_read_from_headers_before_anything_is_decoded(client, monkeypatch):
    from refface.web import uploads

    decoded = []
    monkeypatch.setattr(uploads, "image_from_bytes", lambda *a, **k: decoded.append(a[1]))
    files = [("references", (f"r{i}.png", _png(1200, 1000, i), "image/png")) for i in range(2)]
    reply = client.post("/api/people", files=files)
    assert reply.status_code == 400 and reply.json()["error"] == (
        "The photos of this request hold 2,400,000 pixels in all; this server takes at most 2,000,000 at once."
    ) and decoded == []  # fmt: skip
    album = io.BytesIO()
    with zipfile.ZipFile(album, "w") as archive:
        for number in range(2):
            archive.writestr(f"p{number}.png", _png(1000, 1000, number))
    reply = client.post("/api/people", files={"album": ("big.zip", album.getvalue(), "application/zip")})
    assert "The photos of the album big.zip hold 2,000,000 pixels in all" in reply.json()["error"] and decoded == []


def test_a_damaged_photo_in_an_album_is_passed_over_with_a_note(client, face_photos):
    album = io.BytesIO()
    with zipfile.ZipFile(album, "w") as archive:
        archive.writestr("good.png", face_photos["ref_a.png"].read_bytes())
        archive.writestr("damaged.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    reply = client.post("/api/people", files={"album": ("family.zip", album.getvalue(), "application/zip")})
    assert reply.status_code == 200, reply.text
    notes = " ".join(reply.json()["notes"])
    assert "passed over damaged.jpg in family.zip" in notes


def test_no_reply_names_the_server_s_private_folders(client, service):
    album = io.BytesIO()
    with zipfile.ZipFile(album, "w") as archive:
        archive.writestr("blank.png", _png(200, 200))  # a photo without a face: the album gives no person
    reply = client.post("/api/people", files={"album": ("faces.zip", album.getvalue(), "application/zip")})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert str(service.root) not in error and "refface-serve" not in error and "people-" not in error
    assert service.public(f"could not read {service.root}/people-x/album/000.png (damaged)") == (
        "could not read 000.png (damaged)"
    )


def test_other_sites_and_other_names_are_refused(client):
    assert client.get("/api/info").status_code == 200
    rebound = client.get("/api/info", headers={"host": "attacker.example:7860"})
    assert rebound.status_code == 403 and "This server answers to" in rebound.json()["error"]
    forged = client.post("/api/jobs", data={"photo_id": "x", "method": "refldm"},
                         headers={"origin": "http://attacker.example"})  # fmt: skip
    assert forged.status_code == 403 and "this server's own page" in forged.json()["error"]
    other_port = client.post("/api/jobs", data={"photo_id": "x", "method": "refldm"},
                             headers={"origin": "http://127.0.0.1:9999"})  # fmt: skip
    assert other_port.status_code == 403
    own = client.post("/api/jobs", data={"photo_id": "x", "method": "refldm"}, headers={"origin": BASE})
    assert own.status_code == 400 and "expired or is unknown" in own.json()["error"]  # past the guard


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("people_of", "[" * 50_000 + "]" * 50_000, "is 100,000 characters long; at most 4,096 are read"),
        ("people_of", "[" * 2000 + "]" * 2000, "must be JSON such as"),
        ("people_of", '{"0": {"nested": "object"}}', "must be JSON such as"),
        ("faces", "x" * 1_000_000, "is 1,000,000 characters long"),
        ("guidance", "nan", "guidance must be a finite number, got nan"),
        ("guidance", "inf", "guidance must be a finite number, got inf"),
        ("seed", str(2**64), "seed must be a whole number from 0 to"),
        ("strength", "nan", "strength must be greater than 0 and at most 1, got nan"),
    ],
)
def test_bad_fields_are_one_short_sentence(client, face_photos, field, value, message):
    photo_id = _upload(client, face_photos["old photo.jpg"]).json()["photo_id"]
    reply = client.post("/api/jobs", data={"photo_id": photo_id, "method": "refldm", "steps": "2", field: value})
    assert reply.status_code == 400 and message in reply.json()["error"]
    assert len(reply.text) < 400  # never the client's value echoed whole
    assert client.get("/api/info").status_code == 200  # and the server answers the next request


def test_an_album_scan_lets_other_requests_in_between_its_photos():
    from refface.web.service import OneAtATime

    lock = threading.RLock()
    seen = []

    class Slow:
        name = "slow"

        def detect(self, image):
            seen.append(("scan", lock._is_owned()))
            time.sleep(0.05)
            return []

    tool = OneAtATime(Slow(), lock)
    assert tool.name == "slow"
    scan = threading.Thread(target=lambda: [tool.detect(None) for _ in range(10)])
    scan.start()
    time.sleep(0.1)
    with lock:  # another user's request gets the face tools while the scan is still going
        seen.append(("other", True))
    scan.join()
    assert all(owned for _, owned in seen)
    order = [who for who, _ in seen]
    assert order.index("other") < len(order) - 1  # it ran before the scan's last photo


@pytest.mark.slow
def test_sigterm_stops_the_server_and_deletes_what_users_uploaded(tiny_models, face_photos, tmp_path):
    process, url = start_server("--model", str(tiny_models["refldm"]), "--device", "cpu", env={"TMPDIR": str(tmp_path)})
    album = io.BytesIO()
    with zipfile.ZipFile(album, "w") as archive:
        archive.writestr("a.png", face_photos["ref_a.png"].read_bytes())
    boundary = "refface-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"album\"; filename=\"a.zip\"\r\n"
            f"Content-Type: application/zip\r\n\r\n").encode() + album.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/api/people", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert json.loads(urllib.request.urlopen(request, timeout=60).read())["people_id"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("refface-serve-")]  # the album is on disk
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("refface-serve-")]


def test_an_animated_upload_is_restored_from_its_first_frame_with_a_note(client, face_photos):
    face = Image.open(face_photos["old photo.jpg"]).convert("RGB")
    buffer = io.BytesIO()
    face.save(buffer, format="GIF", save_all=True, append_images=[face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    reply = client.post("/api/photos", files={"photo": ("moving.gif", buffer.getvalue(), "image/gif")})
    assert reply.status_code == 200, reply.text
    assert "moving.gif holds 2 frames or pages; the first is restored." in reply.json()["notes"]
