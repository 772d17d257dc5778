"""The web API in-process: the restore flow, the queue, the limits, and what clients must never reach."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from refface.errors import RefFaceError
from refface.web.jobs import JobQueue, ServerBusy
from refface.web.limits import ServeLimits
from refface.web.uploads import label, unpack_album


@pytest.fixture(scope="module")
def service(tiny_models, tmp_path_factory):
    from refface.face.detection import DlibDetector
    from refface.face.identity import DlibEmbedder
    from refface.pipelines.loading import load_composite, load_saved
    from refface.web.service import RestorationService

    detector = DlibDetector()
    models = {"refldm": load_saved(tiny_models["refldm"]), "composite": load_composite(tiny_models["composite"])}
    limits = ServeLimits(max_file_bytes=3 * 2**20, max_request_bytes=8 * 2**20, max_references=3)
    root = tmp_path_factory.mktemp("serve")
    service = RestorationService(models, detector, DlibEmbedder(shape_predictor=detector.shape_predictor), limits, root)
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service):
    from refface.web.app import create_app

    with TestClient(create_app(service), base_url="http://127.0.0.1:7860") as client:
        yield client


def _upload(client, path: Path) -> dict:
    with path.open("rb") as stream:
        return client.post("/api/photos", files={"photo": (path.name, stream, "image/png")})


def _people(client, people: dict[str, list[Path]], photo_id: str | None = None) -> dict:
    """POST /api/people with reference photos per named person; the reply (asserted to be a success)."""
    files = [("references", (p.name, p.read_bytes(), "image/png")) for paths in people.values() for p in paths]
    names = [name for name, paths in people.items() for _ in paths]
    reply = client.post("/api/people", data={"reference_person": names, "photo_id": photo_id or ""}, files=files)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _wait(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}").json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {status}")


@pytest.mark.slow
def test_a_photo_is_restored_with_references_and_pasted_back(client, face_photos):
    reply = _upload(client, face_photos["old photo.jpg"])
    assert reply.status_code == 200, reply.text
    found = reply.json()
    assert (found["width"], found["height"]) == (384, 384) and len(found["faces"]) == 1
    assert found["faces"][0]["thumbnail"].startswith("data:image/png;base64,")
    assert found["faces"][0]["person"] is None  # no people given yet
    people = _people(client, {"Eileen": [face_photos["ref_a.png"], face_photos["ref_b.png"]]}, found["photo_id"])
    assert [p["name"] for p in people["people"]] == ["Eileen"]
    assert [r["label"] for r in people["people"][0]["references"]] == ["ref_a.png", "ref_b.png"]
    assert people["faces"][0]["person"] == "Eileen" and people["faces"][0]["distance"] < 0.6
    assert any("identity check" in note for note in people["notes"])
    form = {"photo_id": found["photo_id"], "method": "composite", "steps": "3", "seed": "5",
            "people_id": people["people_id"]}  # fmt: skip
    job = client.post("/api/jobs", data=form).json()
    assert "job_id" in job, job
    status = _wait(client, job["job_id"])
    assert status["state"] == "done", status
    assert status["step"] == status["steps"] == 3
    assert [r["label"] for r in status["people"][0]["references"]] == ["ref_a.png", "ref_b.png"]
    assert status["summary"] == "1 face(s) restored: face 0 as Eileen (2 reference(s))."  # numbered as the CLI
    assert [(f["index"], f["person"], f["status"]) for f in status["faces"]] == [(0, "Eileen", "restored")]

    kept = client.get(f"/api/jobs/{job['job_id']}/result.png?download=1")  # the upload's own format: a JPEG
    disposition = kept.headers["content-disposition"]
    assert kept.status_code == 200 and disposition.startswith("attachment")
    assert "old%20photo_restored.jpg" in disposition
    assert kept.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(kept.content)).quantization == Image.open(face_photos["old photo.jpg"]).quantization
    result = client.get(f"/api/jobs/{job['job_id']}/result.png")  # shown on the page: every pixel exactly
    restored = np.asarray(Image.open(io.BytesIO(result.content)))
    before = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{job['job_id']}/before.png").content)))
    original = np.asarray(Image.open(face_photos["old photo.jpg"]).convert("RGB"))
    assert restored.shape == before.shape == original.shape
    np.testing.assert_array_equal(before, original)
    crop = Image.open(io.BytesIO(client.get(f"/api/jobs/{job['job_id']}/faces/0.png").content))
    assert crop.size == (32, 32)  # the restored face at the model's resolution
    assert "no restored face 1" in client.get(f"/api/jobs/{job['job_id']}/faces/1.png").json()["error"]
    changed = np.abs(restored.astype(int) - original).sum(axis=2) > 0
    assert 0.02 < changed.mean() < 0.6  # the face region changed, the rest of the photo did not
    assert not changed[170:].any() and not changed[:, 260:].any() and not changed[:, :80].any()  # the face is above


@pytest.mark.slow
def test_the_page_enlarges_keeps_a_grey_photo_grey_and_says_so(client, face_photos, tmp_path):
    grey = tmp_path / "grey scan.png"
    Image.open(face_photos["old photo.jpg"]).convert("L").save(grey)
    found = _upload(client, grey).json()
    assert client.get("/api/info").json()["backgrounds"] == ["lanczos"]  # no Real-ESRGAN on this server
    form = {"photo_id": found["photo_id"], "method": "refldm", "steps": "2", "upscale": "2", "background": "lanczos"}
    status = _wait(client, client.post("/api/jobs", data=form).json()["job_id"])
    assert status["state"] == "done", status
    assert any("black-and-white" in note for note in status["notes"])
    kept = Image.open(io.BytesIO(client.get(f"/api/jobs/{status['id']}/result.png?download=1").content))
    assert kept.mode == "L" and kept.size == (768, 768)  # twice the size, still one grey channel
    refused = client.post("/api/jobs", data={**form, "background": "realesrgan"}).json()
    assert refused["error"] == "Unknown background 'realesrgan'; this server offers lanczos."
    too_big = client.post("/api/jobs", data={**form, "upscale": "9"}).json()
    assert "--upscale takes a number from 1 to 8" in too_big["error"]


@pytest.mark.slow
def test_a_server_with_real_esrgan_offers_it_and_draws_the_background_with_it(client, service, face_photos, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    from refface.imaging import load_image
    from refface.photo.background import load_upscaler, resize, upscale_pixels
    from tests.photo.upscalers import compact_checkpoint

    monkeypatch.setattr(service, "upscaler", load_upscaler(compact_checkpoint(tmp_path / "x4v3.pth")))
    assert client.get("/api/info").json()["backgrounds"] == ["realesrgan", "lanczos"]
    found = _upload(client, face_photos["old photo.jpg"]).json()
    form = {"photo_id": found["photo_id"], "method": "refldm", "steps": "2", "upscale": "2"}
    results = {}
    for background in ("realesrgan", "lanczos"):
        status = _wait(client, client.post("/api/jobs", data={**form, "background": background}).json()["job_id"])
        assert status["state"] == "done", status
        shown = client.get(f"/api/jobs/{status['id']}/result.png").content
        results[background] = np.asarray(Image.open(io.BytesIO(shown)).convert("RGB"), dtype=int)
    assert results["realesrgan"].shape == results["lanczos"].shape == (768, 768, 3)
    pixels = np.asarray(load_image(face_photos["old photo.jpg"]))
    drawn = resize(upscale_pixels(service.upscaler, pixels, 0), (768, 768)).astype(int)  # the model's x4, halved
    below_face = slice(400, None)  # the face is in the upper half; below it, the background alone
    assert np.abs(results["realesrgan"][below_face] - drawn[below_face]).max() <= 1  # the model drew it
    assert np.abs(results["lanczos"][below_face] - drawn[below_face]).mean() > 1  # a resize is another picture


def test_bad_requests_are_one_sentence(client, face_photos):
    def error(reply, status=400):
        assert reply.status_code == status, reply.text
        message = reply.json()["error"]
        assert "\n" not in message and "Traceback" not in message
        return message

    assert "not an image format" in error(_upload(client, face_photos["notes.txt"]))
    assert "more than the limit" in error(_upload(client, face_photos["huge.png"]))
    big = io.BytesIO(np.random.default_rng(0).bytes(4 * 2**20))
    assert "at most 3 MB" in error(client.post("/api/photos", files={"photo": ("big.png", big, "image/png")}))
    huge_body = io.BytesIO(bytes(9 * 2**20))
    assert "limit of 8 MB" in error(client.post("/api/photos", files={"photo": ("x.png", huge_body)}), 413)
    plain = np.full((200, 200, 3), 128, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(plain).save(buffer, format="PNG")
    assert "No face was found in grey.png" in error(
        client.post("/api/photos", files={"photo": ("../../grey.png", buffer.getvalue(), "image/png")})
    )
    photo_id = _upload(client, face_photos["old photo.jpg"]).json()["photo_id"]
    base = {"photo_id": photo_id, "method": "refldm", "steps": "2"}
    assert "face 3 does not exist" in error(client.post("/api/jobs", data={**base, "face": "3"}))
    assert "is not loaded" in error(client.post("/api/jobs", data={**base, "method": "gfpgan"}))
    assert "at least 1, got 0" in error(client.post("/api/jobs", data={**base, "steps": "0"}))
    assert "between 1 and 200, got 201" in error(client.post("/api/jobs", data={**base, "steps": "201"}))
    assert "not an option of ReF-LDM" in error(client.post("/api/jobs", data={**base, "lq_guidance": "2"}))
    assert "Unknown solver 'euler'" in error(client.post("/api/jobs", data={**base, "solver": "euler"}))
    assert "strength must be greater than 0 and at most 1, got 1.5" in error(
        client.post("/api/jobs", data={**base, "strength": "1.5"})
    )
    assert "'steps' is missing or invalid" in error(client.post("/api/jobs", data={**base, "steps": "many"}))
    assert "expired or is unknown" in error(client.post("/api/jobs", data={**base, "photo_id": "nope"}))
    assert "face 3 does not exist" in error(client.post("/api/jobs", data={**base, "people_of": '{"3": null}'}))
    assert "face numbers such as 0,2" in error(client.post("/api/jobs", data={**base, "faces": "first"}))
    assert "must be JSON" in error(client.post("/api/jobs", data={**base, "people_of": "[1"}))
    assert "no person named 'Zed'" in error(client.post("/api/jobs", data={**base, "people_of": '{"0": "Zed"}'}))
    assert "expired or are unknown" in error(client.post("/api/jobs", data={**base, "people_id": "nope"}))
    refs = [("references", (f"r{i}.png", buffer.getvalue(), "image/png")) for i in range(4)]
    assert "go to /api/people" in error(client.post("/api/jobs", data=base, files=refs[:1]))
    assert "At most 3 reference photos" in error(client.post("/api/people", files=refs))
    assert "came with 1 person name" in error(
        client.post("/api/people", data={"reference_person": "A"}, files=refs[:2])
    )
    assert "No face was found in r0.png; use a photo" in error(client.post("/api/people", files=refs[:1]))
    assert "at least one person" in error(client.post("/api/people", data={"num_refs": "2"}))
    assert "No such restoration" in error(client.get("/api/jobs/does-not-exist"), 404)
    assert "no result" in error(client.get("/api/jobs/does-not-exist/result.png"), 404)
    assert "nothing at this address" in error(client.get("/api/jobs/x/../../../etc/passwd"), 404)


@pytest.mark.slow
def test_every_face_of_a_group_photo_is_restored_as_its_own_person(client, service, group_photos):
    found = _upload(client, group_photos["group.jpg"]).json()
    assert len(found["faces"]) == 2 and all(face["person"] is None for face in found["faces"])
    sets = {"Grace": [group_photos["grace_a.jpg"], group_photos["grace_b.jpg"]],
            "Eileen": [group_photos["eileen_a.jpg"], group_photos["eileen_b.jpg"]]}  # fmt: skip
    people = _people(client, sets, found["photo_id"])
    assert [p["name"] for p in people["people"]] == ["Grace", "Eileen"] and not people["warnings"]
    assert [(face["index"], face["person"]) for face in people["faces"]] == [(0, "Grace"), (1, "Eileen")]
    # a photo uploaded after the people are known is matched at once
    again = client.post("/api/photos", data={"people_id": people["people_id"]},
                        files={"photo": ("g.jpg", group_photos["group.jpg"].read_bytes())}).json()  # fmt: skip
    assert [face["person"] for face in again["faces"]] == ["Grace", "Eileen"]

    calls = []
    pipe = service.models["refldm"]
    original = type(pipe).__call__
    encode = type(pipe).encode_references
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(pipe), "__call__", lambda self, lq, refs=None, **k: calls.append(len(lq)) or original(
            self, lq, refs, **k))  # fmt: skip
        patch.setattr(type(pipe), "encode_references", lambda self, r: calls.append("encode") or encode(self, r))
        form = {"photo_id": found["photo_id"], "method": "refldm", "steps": "2", "people_id": people["people_id"],
                "faces": "all"}  # fmt: skip
        status = _wait(client, client.post("/api/jobs", data=form).json()["job_id"])
        assert status["state"] == "done", status
        assert calls == ["encode", 1, "encode", 1]  # each person's references, each person's face
        rows = [(f["index"], f["person"], f["status"], f["references"]) for f in status["faces"]]
        assert rows == [(0, "Grace", "restored", ["grace_a.jpg", "grace_b.jpg"]),
                        (1, "Eileen", "restored", ["eileen_a.jpg", "eileen_b.jpg"])]  # fmt: skip
        assert status["step"] == status["steps"] == 4  # two calls of two steps
        assert [p["name"] for p in status["people"]] == ["Grace", "Eileen"]
        for index in (0, 1):
            assert client.get(f"/api/jobs/{status['id']}/faces/{index}.png").status_code == 200

        # by hand: the astronaut without references, Grace Hopper left out; her references are not encoded again
        calls.clear()
        chosen = {**form, "faces": "1", "people_of": '{"1": null}'}
        status = _wait(client, client.post("/api/jobs", data=chosen).json()["job_id"])
        assert calls == [1] and status["people"] == []
        assert [(f["index"], f["person"], f["status"]) for f in status["faces"]] == [
            (1, None, "restored-without-references")
        ]
        swapped = {**form, "people_of": '{"0": "Eileen", "1": "Grace"}'}
        status = _wait(client, client.post("/api/jobs", data=swapped).json()["job_id"])
        assert [f["person"] for f in status["faces"]] == ["Eileen", "Grace"]
        assert all(f["distance"] > 0.6 for f in status["faces"])  # the distances say they are someone else
    result = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{status['id']}/result.png").content)))
    before = np.asarray(Image.open(group_photos["group.jpg"]).convert("RGB"))
    changed = np.abs(result.astype(int) - before).sum(axis=2) > 0
    assert changed[:, :520].mean() > 0.01 and changed[:, 520:].mean() > 0.01  # both faces pasted back


def test_an_album_zip_is_unpacked_under_made_up_names_only(tmp_path, face_photos):
    limits = ServeLimits(max_file_bytes=2**20, max_album_photos=3)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(face_photos["ref_a.png"], "../../escape.png")
        zipped.write(face_photos["ref_b.png"], "/abs/olduser/photo.PNG")
        zipped.writestr("readme.txt", "hello")
        zipped.writestr("__MACOSX/._photo.png", b"junk")
    count, passed_over = unpack_album(archive.getvalue(), "album.zip", tmp_path / "album", limits)
    assert passed_over == []
    assert count == 2
    assert sorted(p.name for p in (tmp_path / "album").iterdir()) == ["000.png", "001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["album"]  # nothing written elsewhere
    with pytest.raises(RefFaceError, match="not a zip file"):
        unpack_album(b"PK but not", "album.zip", tmp_path / "b", limits)
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zipped:
        for index in range(4):
            zipped.writestr(f"{index}.png", b"x")
    with pytest.raises(RefFaceError, match="has 4 photos; at most 3"):
        unpack_album(many.getvalue(), "album.zip", tmp_path / "c", limits)
    assert label("../../etc/pass wd<script>.png", "x") == "pass wd_script_.png"
    assert label("", "the photo") == "the photo"


def test_the_queue_runs_one_job_at_a_time_and_refuses_when_full(tmp_path):
    release, running, seen = threading.Event(), [], []

    def work(job):
        running.append(job.id)
        seen.append(len(running))
        release.wait(10)
        running.remove(job.id)
        if job.request == "bad":
            raise RefFaceError("The reference shows nobody.")
        if job.request == "bug":
            raise ZeroDivisionError("division by zero")

    jobs = JobQueue(work, tmp_path, max_pending=3, keep_seconds=0.0)
    submitted = [jobs.new_job(request) for request in ("ok", "bad", "bug")]
    for job in submitted:
        jobs.submit(job)
    extra = jobs.new_job("late")
    with pytest.raises(ServerBusy, match="busy with 3 restorations"):
        jobs.submit(extra)
    assert not extra.folder.exists()
    deadline = time.monotonic() + 5
    while jobs.status(submitted[0])["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [jobs.status(j)["position"] for j in submitted] == [0, 0, 1]
    release.set()
    while any(jobs.status(j)["state"] in ("queued", "running") for j in submitted) and time.monotonic() < deadline + 5:
        time.sleep(0.01)
    states = [(jobs.status(j)["state"], jobs.status(j)["message"]) for j in submitted]
    assert states == [
        ("done", ""),
        ("failed", "The reference shows nobody."),
        ("failed", "The restoration failed unexpectedly (division by zero)."),
    ]
    assert max(seen) == 1  # never two at once
    time.sleep(0.01)
    jobs.expire()  # keep_seconds 0: finished jobs and their folders go
    assert jobs.get(submitted[0].id) is None and not any(j.folder.exists() for j in submitted)
    jobs.close()


def test_references_can_come_from_an_album_zip(client, service, face_photos):
    photo_id = _upload(client, face_photos["old photo.jpg"]).json()["photo_id"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(face_photos["ref_a.png"], "holiday/a.png")
        zipped.write(face_photos["ref_b.png"], "b.png")
        zipped.writestr("notes.txt", "not a photo")
    album = {"album": ("family.zip", archive.getvalue(), "application/zip")}
    people = client.post("/api/people", data={"num_refs": "2", "photo_id": photo_id}, files=album).json()
    assert [p["name"] for p in people["people"]] == ["person-01"], people
    assert sorted(r["label"] for r in people["people"][0]["references"]) == ["000.png#0", "001.png#0"]
    assert any("farthest point sampling" in note for note in people["notes"])
    assert people["faces"][0]["person"] == "person-01"
    form = {"photo_id": photo_id, "method": "refldm", "steps": "2", "people_id": people["people_id"], "faces": "all"}
    status = _wait(client, client.post("/api/jobs", data=form).json()["job_id"])
    assert status["state"] == "done", status
    assert status["faces"][0]["references"] == ["000.png", "001.png"]
    assert {p.name.split("-")[0] for p in service.root.iterdir()} <= {"job", "people"}  # uploads in private folders
    files = [("album", ("a.zip", archive.getvalue())), ("references", ("r.png", face_photos["ref_a.png"].read_bytes()))]
    both = client.post("/api/people", files=files)
    assert "not both" in both.json()["error"]
    service.people.clear()  # forgetting a people set deletes its album
    assert not any(p.name.startswith("people-") for p in service.root.iterdir())


def test_fast_mode_reaches_the_pipeline(client, service, face_photos, monkeypatch):
    """The page's "Fast" box sends solver=dpm++; ReF-LDM samples with it, composite refuses it in one sentence."""
    pipe = service.models["refldm"]
    calls = []
    original = type(pipe).__call__
    monkeypatch.setattr(
        type(pipe), "__call__", lambda self, *a, **k: calls.append(k["options"]) or original(self, *a, **k)
    )
    methods = {m["name"]: m for m in client.get("/api/info").json()["methods"]}
    assert methods["refldm"]["fast_steps"] == 20 and methods["composite"]["fast_steps"] is None
    found = _upload(client, face_photos["old photo.jpg"]).json()
    people = _people(client, {"Eileen": [face_photos["ref_a.png"]]})
    form = {"photo_id": found["photo_id"], "method": "refldm", "steps": "4", "solver": "dpm++",
            "people_id": people["people_id"]}  # fmt: skip
    job = client.post("/api/jobs", data=form).json()
    assert _wait(client, job["job_id"])["state"] == "done"
    assert (calls[-1].solver, calls[-1].steps, calls[-1].strength) == ("dpm++", 4, 1.0)
    job = client.post("/api/jobs", data={**form, "strength": "0.4"}).json()  # the page's Strength field
    assert _wait(client, job["job_id"])["state"] == "done" and calls[-1].strength == 0.4
    refused = client.post("/api/jobs", data={**form, "method": "composite"})
    assert refused.status_code == 400 and refused.json()["error"] == "The solver is not an option of Composite-Context."


def test_the_page_words_no_face_found_itself_from_the_error_s_fields():
    from refface.face.locate import NoFaceFound
    from refface.web.service import page_wording

    for error, wanted in (
        (NoFaceFound("party.jpg"), "No face was found in party.jpg; use a photo in which the face is upright"),
        (NoFaceFound("party.jpg", too_small=3), "The faces in party.jpg are too small to restore; upload a larger"),
    ):
        assert "--aligned" in str(error) or "larger scan" in str(error)  # the command line's own sentence
        with pytest.raises(RefFaceError) as raised, page_wording():
            raise error
        assert str(raised.value).startswith(wanted) and "--" not in str(raised.value)


def test_the_page_chooses_the_detector_a_photo_is_searched_with(client, service):
    from tests.face.test_cascade import degraded_astronaut

    info = client.get("/api/info").json()
    assert info["detectors"] == ["auto (hog)", "cascade", "hog", "cnn"]  # no RetinaFace: no request downloads it
    buffer = io.BytesIO()
    Image.fromarray(degraded_astronaut(160)).save(buffer, format="PNG")  # a face HOG alone misses
    photo = {"photo": ("old.png", buffer.getvalue(), "image/png")}
    for name in ("auto", "hog"):
        missed = client.post("/api/photos", data={"detector": name}, files=photo)
        assert missed.status_code == 400 and "No face was found" in missed.json()["error"]
    found = client.post("/api/photos", data={"detector": "cascade"}, files=photo)
    assert found.status_code == 200 and len(found.json()["faces"]) == 1
    assert service.detector_named("cascade") is service.detector_named("cascade")  # made once
    refused = client.post("/api/photos", data={"detector": "retinaface"}, files=photo)
    assert refused.status_code == 400
    assert refused.json()["error"] == "Unknown face detector 'retinaface'; choose one of auto, cascade, hog, cnn."
