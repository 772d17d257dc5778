"""The resumable `refface degrade` folder job: outputs, CSV, resuming after an interrupt, and refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import refface.data.degrade_folder as folder_job
from refface import RefFaceError
from refface.data.degradations import degrade
from refface.data.degrade_folder import PARTIAL_NAME, degrade_images, list_images

from .images import crop

NAMES = ["b.png", "a.png", "c.jpg", "d.png", "e.png"]


@pytest.fixture()
def in_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hq"
    folder.mkdir()
    for number, name in enumerate(NAMES):
        Image.fromarray(crop(150 + 40 * number, 180 + 20 * number)).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def output_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_list_images(in_dir, tmp_path):
    assert list_images(in_dir) == ["a.png", "b.png", "c.jpg", "d.png", "e.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefFaceError, match="has no"):
        list_images(tmp_path / "empty")
    with pytest.raises(RefFaceError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_writes_pngs_and_params_csv(in_dir, tmp_path):
    out = tmp_path / "lq"
    csv_path = degrade_images(NAMES, in_dir, out, "severe", seed=4, progress=False)
    assert csv_path == out / "degradation_params.csv" and not (out / PARTIAL_NAME).exists()
    expected_files = ["a.png", "b.png", "c.png", "d.png", "degradation_params.csv", "e.png"]
    assert sorted(p.name for p in out.iterdir()) == expected_files
    rows = read_csv(csv_path)
    keys = sorted(degrade(crop(0, 0), "severe", 0, 0).params)
    assert list(rows[0]) == ["index", "image", "preset", "seed", *keys]
    assert [row["image"] for row in rows] == NAMES and [row["index"] for row in rows] == ["0", "1", "2", "3", "4"]
    for index, (name, row) in enumerate(zip(NAMES, rows, strict=True)):
        hq = np.asarray(Image.open(in_dir / name).convert("RGB"))
        expected = degrade(hq, "severe", 4, index)  # index = position in the list, not sorted order
        assert np.array_equal(np.asarray(Image.open(out / (Path(name).stem + ".png"))), expected.image)
        assert row["preset"] == "severe" and row["seed"] == "4"
        assert float(row["sigma_x"]) == expected.params["sigma_x"] and row["kernel"] == expected.params["kernel"]


def test_same_seed_gives_identical_bytes_and_size_option(in_dir, tmp_path):
    degrade_images(NAMES, in_dir, tmp_path / "one", "moderate", seed=0, size=32, progress=False)
    degrade_images(NAMES, in_dir, tmp_path / "two", "moderate", seed=0, size=32, progress=False)
    assert output_bytes(tmp_path / "one") == output_bytes(tmp_path / "two")
    assert Image.open(tmp_path / "one" / "a.png").size == (32, 32)
    degrade_images(NAMES, in_dir, tmp_path / "three", "moderate", seed=1, size=32, progress=False)
    assert output_bytes(tmp_path / "one")["a.png"] != output_bytes(tmp_path / "three")["a.png"]


def test_interrupted_run_resumes_to_identical_bytes(in_dir, tmp_path, monkeypatch):
    degrade_images(NAMES, in_dir, tmp_path / "straight", "realesrgan", seed=7, progress=False)

    calls: list[int] = []
    real_degrade = folder_job.degrade

    def interrupting(image, degradation, seed, index):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(index)
        return real_degrade(image, degradation, seed, index)

    monkeypatch.setattr(folder_job, "degrade", interrupting)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        degrade_images(NAMES, in_dir, resumed, "realesrgan", seed=7, progress=False)
    assert (resumed / PARTIAL_NAME).exists() and not (resumed / "degradation_params.csv").exists()
    with (resumed / PARTIAL_NAME).open("a") as stream:
        stream.write('{"index": 2, "ima')  # a row torn by a kill mid-write

    calls.clear()
    monkeypatch.setattr(folder_job, "degrade", lambda *args: (calls.append(args[3]), real_degrade(*args))[1])
    degrade_images(NAMES, in_dir, resumed, "realesrgan", seed=7, progress=False)
    assert calls == [2, 3, 4]  # only the images the first run did not finish
    assert output_bytes(resumed) == output_bytes(tmp_path / "straight")


def test_finished_output_needs_overwrite(in_dir, tmp_path):
    out = tmp_path / "lq"
    degrade_images(NAMES[:2], in_dir, out, "train", seed=0, progress=False)
    with pytest.raises(RefFaceError, match="already exist.*--overwrite"):
        degrade_images(NAMES[:2], in_dir, out, "train", seed=0, progress=False)
    with pytest.raises(RefFaceError, match="broken"):
        (in_dir / "broken.png").write_bytes(b"garbage")
        degrade_images([*NAMES, "broken.png"], in_dir, out, "severe", seed=1, overwrite=True, progress=False)
    assert not (out / "degradation_params.csv").exists()  # an aborted overwrite no longer claims to be finished
    degrade_images(NAMES, in_dir, out, "severe", seed=1, overwrite=True, progress=False)
    assert [row["preset"] for row in read_csv(out / "degradation_params.csv")] == ["severe"] * len(NAMES)


@pytest.mark.parametrize(
    ("changes", "word"), [({"degradation": "moderate"}, "preset"), ({"seed": 3}, "seed"), ({"size": 48}, "size")]
)
def test_resume_with_other_settings_is_refused(in_dir, tmp_path, monkeypatch, changes, word):
    out = tmp_path / "lq"
    monkeypatch.setattr(folder_job, "save_image", _fail_on_third_save(folder_job.save_image))
    with pytest.raises(KeyboardInterrupt):
        degrade_images(NAMES, in_dir, out, "severe", 0, progress=False)
    monkeypatch.undo()
    settings = {"degradation": "severe", "seed": 0, "size": None} | changes
    with pytest.raises(RefFaceError, match=f"different {word}.*--overwrite"):
        degrade_images(NAMES, in_dir, out, progress=False, **settings)
    with pytest.raises(RefFaceError, match="different image list"):
        degrade_images(list(reversed(NAMES)), in_dir, out, "severe", 0, progress=False)
    degrade_images(NAMES, in_dir, out, progress=False, overwrite=True, **settings)


def _fail_on_third_save(save):
    saved: list[Path] = []

    def wrapper(image, path):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(path)
        return save(image, path)

    return wrapper


def test_refusals(in_dir, tmp_path):
    with pytest.raises(RefFaceError, match="input folder"):
        degrade_images(NAMES, in_dir, in_dir, "severe", 0, progress=False)
    (in_dir / "sub").mkdir()
    (in_dir / "sub" / "x.png").write_bytes((in_dir / "a.png").read_bytes())
    with pytest.raises(RefFaceError, match="overwrite an input"):
        degrade_images(["sub/x.png"], in_dir, in_dir / "sub", "severe", 0, progress=False)
    (in_dir / "b.jpg").write_bytes((in_dir / "c.jpg").read_bytes())
    with pytest.raises(RefFaceError, match=r"b\.png and b\.jpg"):
        degrade_images(["b.png", "b.jpg"], in_dir, tmp_path / "lq", "severe", 0, progress=False)
    (in_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(RefFaceError, match="broken.png"):
        degrade_images(["a.png", "broken.png"], in_dir, tmp_path / "lq", "severe", 0, progress=False)
    with pytest.raises(RefFaceError, match="missing.png"):
        degrade_images(["missing.png"], in_dir, tmp_path / "lq2", "severe", 0, progress=False)
    with pytest.raises(RefFaceError, match="Unknown degradation preset"):
        degrade_images(NAMES, in_dir, tmp_path / "lq3", "awful", 0, progress=False)
