"""`refface restore` on whole photos and `refface align`, with a tiny random model (no downloads)."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from refface.cli import main
from refface.face.detection import DlibDetector
from refface.face.locate import find_faces
from tests.conftest import make_tiny_pipeline
from tests.face.photos import astronaut, degrade, grace_hopper, place
from tests.face.test_album import write_album


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make_tiny_pipeline(seed=3).save_pretrained(root / "tiny")
    scene, _ = place(astronaut(), -10, 1.1, (330, 290))
    Image.fromarray(degrade(scene, 3)).save(root / "old photo.jpg", quality=70)
    Image.fromarray(place(astronaut(), 8, 1.3)[0]).save(root / "ref1.jpg", quality=92)
    Image.fromarray(place(np.ascontiguousarray(astronaut()[:, ::-1]), 0, 1.2)[0]).save(root / "ref2.png")
    Image.fromarray(place(grace_hopper(), 0, 1.0)[0]).save(root / "hopper.jpg", quality=92)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(root / "noise.png")
    write_album(root / "album")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "cache"))


def _restore(root, output, *extra):
    return ["restore", str(root / "old photo.jpg"), "--output", str(output), "--model", str(root / "tiny"),
            "--steps", "2", "--device", "cpu", "-q", *extra]  # fmt: skip


def _error(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("refface: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.slow
def test_whole_photo_restore_writes_gfpgan_style_outputs_and_keeps_the_rest_of_the_photo(workspace, tmp_path):
    photo_path = workspace / "old photo.jpg"
    before = photo_path.read_bytes()
    out = tmp_path / "out"
    refs = ["--ref", str(workspace / "ref1.jpg"), str(workspace / "ref2.png")]
    assert main(_restore(workspace, out, *refs, "--format", "png")) == 0  # PNG: every other pixel as it was
    assert photo_path.read_bytes() == before
    for part in ("cropped_faces", "restored_faces", "cmp"):
        assert (out / part / "old photo_00.png").is_file()
    result = np.asarray(Image.open(out / "restored_imgs" / "old photo.png"))
    original = np.asarray(Image.open(photo_path).convert("RGB"))
    assert result.shape == original.shape
    face = find_faces(original, DlibDetector(), "largest").faces[0]
    square = np.zeros(original.shape[:2], np.uint8)
    cv2.fillConvexPoly(square, np.round(face.quad.corners).astype(np.int32), 1)
    square = cv2.dilate(square, np.ones((7, 7), np.uint8)).astype(bool)
    changed = np.any(result != original, axis=-1)
    assert changed[square].mean() > 0.3 and not changed[~square].any()
    crop = np.asarray(Image.open(out / "cropped_faces" / "old photo_00.png"))
    assert crop.shape == (512, 512, 3)
    comparison = Image.open(out / "cmp" / "old photo_00.png")
    assert comparison.width == 1024 and comparison.height > 512  # LQ | restored, references underneath


@pytest.mark.slow
def test_album_references_are_chosen_and_explained(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([a for a in _restore(workspace, out, "--refs-dir", str(workspace / "album")) if a != "-q"]) == 0
    printed = capsys.readouterr().out
    assert "people: person-01 (6), person-02 (3)" in printed and "chose" in printed
    assert "skipped damaged.jpg" in printed
    assert (out / "restored_imgs" / "old photo.jpg").is_file()
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert rows[0]["face"] == "0" and rows[0]["person"] == "person-01" and rows[0]["status"] == "restored"
    assert rows[0]["references"] and all(name.startswith("astro_") for name in rows[0]["references"].split(";"))
    hopper = _restore(workspace, tmp_path / "h", "--refs-dir", str(workspace / "album"), "--person")
    assert main([*hopper, str(workspace / "hopper.jpg")]) == 0  # explicit person: Grace Hopper's faces
    rows = list(csv.DictReader((tmp_path / "h" / "report.csv").open()))
    # a named person: the largest face only; the other is in the report as seen and not restored
    assert [(row["face"], row["status"]) for row in rows] == [("0", "restored"), ("", "skipped")]
    assert all(name.startswith("hopper_") for name in rows[0]["references"].split(";"))


@pytest.mark.slow
def test_wrong_person_reference_warns_and_strict_refuses(workspace, tmp_path, capsys):
    refs = ["--ref", str(workspace / "ref1.jpg"), str(workspace / "ref2.png"), str(workspace / "hopper.jpg")]
    assert main(_restore(workspace, tmp_path / "warned", *refs)) == 0
    assert "warning: reference hopper.jpg looks like a different person" in capsys.readouterr().err
    message = _error(_restore(workspace, tmp_path / "strict", *refs, "--strict"), capsys)
    assert "--strict" in message and "hopper.jpg" in message
    assert not (tmp_path / "strict").exists()


@pytest.mark.slow
def test_photo_mistakes_are_one_line_errors(workspace, tmp_path, capsys):
    refs = ["--ref", str(workspace / "ref1.jpg")]
    noise = _restore(workspace, tmp_path / "o", *refs)
    noise[1] = str(workspace / "noise.png")
    assert "No face was found in" in _error(noise, capsys) and "noise.png" in capsys.readouterr().err + noise[1]
    assert "looks like a file" in _error(_restore(workspace, tmp_path / "x.png", *refs), capsys)
    assert "--person only applies" in _error(_restore(workspace, tmp_path / "o", *refs, "--person", "a.jpg"), capsys)
    assert "contradict" in _error(_restore(workspace, tmp_path / "o", *refs, "--no-refs"), capsys)
    bad_ref = _restore(workspace, tmp_path / "o", "--ref", str(workspace / "noise.png"))
    assert "noise.png" in _error(bad_ref, capsys)
    assert "face 3 does not exist" in _error(_restore(workspace, tmp_path / "o", *refs, "--face", "3"), capsys)


@pytest.mark.slow
def test_existing_results_are_kept_without_overwrite(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "restored_imgs").mkdir(parents=True)
    (out / "restored_imgs" / "old photo.jpg").write_bytes(b"precious")
    assert "--overwrite" in _error(_restore(workspace, out, "--no-refs"), capsys)
    assert (out / "restored_imgs" / "old photo.jpg").read_bytes() == b"precious"
    other = tmp_path / "other"
    (other / "cmp").mkdir(parents=True)
    (other / "cmp" / "old photo_00.png").write_bytes(b"kept")
    assert "--overwrite" in _error(_restore(workspace, other, "--no-refs"), capsys)
    assert not (other / "restored_imgs").exists()  # refused before any result was written
    assert main(_restore(workspace, out, "--no-refs", "--overwrite")) == 0
    assert (out / "restored_imgs" / "old photo.jpg").read_bytes() != b"precious"


@pytest.mark.slow
def test_align_command_writes_crops_and_skips_photos_without_faces(workspace, tmp_path, capsys):
    out = tmp_path / "aligned"
    inputs = [str(workspace / n) for n in ("ref1.jpg", "hopper.jpg", "noise.png")]
    assert main(["align", *inputs, "--output", str(out), "-q", "--size", "256"]) == 0
    assert "skipped: No face was found in" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["hopper.png", "ref1.png"]
    assert Image.open(out / "hopper.png").size == (256, 256)
    assert main(["align", str(workspace / "noise.png"), "--output", str(out), "-q"]) == 1
    assert "--overwrite" in _error(["align", inputs[0], "--output", str(out), "--size", "256"], capsys)


@pytest.mark.slow
def test_arcface_identity_check_from_a_weights_file(workspace, tmp_path, capsys):
    import torch

    from refface.face.arcface import iresnet

    torch.manual_seed(0)
    weights = tmp_path / "arcface_small.pth"
    torch.save(iresnet([1, 1, 1, 1]).state_dict(), weights)
    refs = ["--ref", str(workspace / "ref1.jpg"), "--identity", "arcface", "--arcface-weights", str(weights)]
    assert main([a for a in _restore(workspace, tmp_path / "out", *refs) if a != "-q"]) == 0
    assert "identity check (arcface" in capsys.readouterr().out
    missing = _restore(workspace, tmp_path / "o", *refs[:-1], str(tmp_path / "nope.onnx"))
    assert "nope.onnx does not exist" in _error(missing, capsys)
    assert "only applies with --identity arcface" in _error(
        _restore(workspace, tmp_path / "o", "--no-refs", "--arcface-weights", str(weights)), capsys
    )
