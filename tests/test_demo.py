"""`refface demo`: the main job end to end on the photos it makes, offline on the test model; and the command
line's start-up, which must not wait for the heavy libraries."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from refface.cli import main
from refface.imaging import load_image
from refface.weights import DownloadFailed


@pytest.mark.slow
def test_the_demo_restores_both_people_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--offline", "--output", str(out), "--quiet"]) == 0
    told = capsys.readouterr().err
    assert "--offline was given" in told and "the restored faces will be noise" in told
    photo = np.asarray(load_image(out / "inputs" / "old_group_photo.jpg"))
    restored = np.asarray(load_image(out / "restored" / "restored_imgs" / "old_group_photo.jpg"))
    assert restored.shape == photo.shape
    changed = np.abs(restored.astype(int) - photo.astype(int)).max(axis=2) > 8
    assert changed[:, :520].any() and changed[:, 520:].any()  # a face restored on each side
    assert 0.01 < changed.mean() < 0.5  # the faces, not the photo
    with open(out / "restored" / "report.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((row["person"], row["status"]) for row in rows) == [
        ("Eileen Collins", "restored"), ("Grace Hopper", "restored")
    ]  # fmt: skip
    pair = np.asarray(load_image(out / "before_after.png"))
    assert pair.shape[1] == 2 * photo.shape[1] and np.array_equal(pair[-photo.shape[0] :, : photo.shape[1]], photo)

    # again into its own folder, with no download to be had and no fixture beside it: a tiny random model
    def offline(weights, directory=None, progress=True):
        raise DownloadFailed(f"Could not download {weights[0].name} (no network).", "no network")

    monkeypatch.setattr("refface.weights.ensure_all", offline)
    monkeypatch.setenv("REFFACE_FIXTURES", str(tmp_path / "nowhere"))
    assert main(["demo", "--output", str(out), "--quiet"]) == 0
    assert "(they could not be downloaded: no network)" in capsys.readouterr().err
    assert (out / "test-model" / "model_index.json").is_file()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("not the demo's")
    assert main(["demo", "--offline", "--output", str(tmp_path / "mine"), "--quiet"]) == 1
    assert "holds files the demo did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "not the demo's"


def test_help_and_argument_errors_do_not_load_the_heavy_libraries():
    code = (
        "import sys\n"
        "from refface.cli import main\n"
        "for argv in (['--help'], ['restore', '--help'], ['restore', 'x.jpg', '--steps', 'many'],\n"
        "             ['benchmark', '--help'], ['degrade', '--help'], ['dataset', 'build', '--help'],\n"
        "             ['serve', '--help'], ['demo', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'dlib') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr
    assert "usage: refface restore" in done.stdout and "invalid int value: 'many'" in done.stderr
