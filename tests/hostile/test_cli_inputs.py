"""Hostile and unlucky inputs to the command line: each is one sentence before any output exists, and no run
leaves a file half-written, a stale temporary file or another run's lock behind."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from refface.cli import main
from refface.files import FolderLock
from tests.face.photos import astronaut, place


def _error_of(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("refface: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "inputs" / "photo.jpg"
    path.parent.mkdir()
    Image.fromarray(place(astronaut(), 0, 0.8)[0]).save(path, quality=90)
    return path


def _restore(photo, out, *extra, tiny_models) -> list[str]:
    return ["restore", str(photo), "--no-refs", "--output", str(out), "--model", str(tiny_models["refldm"]),
            "--steps", "2", "-q", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--guidance", "nan"], "guidance must be a finite number, got nan"),
        (["--guidance", "inf"], "guidance must be a finite number, got inf"),
        (["--guidance=-inf"], "guidance must be a finite number, got -inf"),
        (["--strength", "nan"], "strength must be greater than 0 and at most 1, got nan"),
        (["--seed", "18446744073709551616"], "seed must be a whole number from 0 to 18446744073709551615"),
        (["--seed=-1"], "seed must be a whole number from 0 to"),
        (["--steps", "1000000"], "steps must be between 1 and 1000, got 1000000"),
        (["--temporal-smoothing", "nan"], "--temporal-smoothing must be 0 or more frames, got nan"),
        (["--crf", "99"], "--crf must be between 0 and 51"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ],
)
def test_numbers_out_of_range_are_refused_before_any_output(photo, tmp_path, tiny_models, capsys, option, message):
    out = tmp_path / "out"
    assert message in _error_of(_restore(photo, out, *option, tiny_models=tiny_models), capsys)
    assert not out.exists()  # no manifest to make a rerun refuse


def test_composite_lq_guidance_must_be_finite(photo, tmp_path, tiny_models, capsys):
    args = ["restore", str(photo), "--no-refs", "-o", str(tmp_path / "out"), "--method", "composite", "--model",
            str(tiny_models["composite"]), "--lq-guidance", "nan"]  # fmt: skip
    assert "LQ guidance must be a finite number, got nan" in _error_of(args, capsys)


def test_an_output_folder_that_cannot_be_written_is_one_sentence(photo, tmp_path, tiny_models, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    err = _error_of(_restore(photo, tmp_path / "out", tiny_models=tiny_models), capsys)
    assert "Could not write" in err and "manifest.json (Read-only file system)" in err


def test_the_input_folder_as_the_output_folder_is_named_as_such(photo, capsys):
    err = _error_of(["restore", str(photo.parent), "--no-refs", "-o", str(photo.parent)], capsys)
    assert f"The output folder {photo.parent} is the input folder" in err


@pytest.mark.slow
def test_a_killed_run_s_temporary_files_are_removed_and_a_second_run_is_refused_while_one_writes(
    photo, tmp_path, tiny_models, capsys
):
    out = tmp_path / "out"
    (out / "restored_imgs").mkdir(parents=True)
    stale = [out / "restored_imgs" / ".photo.png.x1y2z3.part", out / ".manifest.json.abcdef.part"]
    for path in stale:
        path.write_bytes(b"half a file")
    held = FolderLock(out).acquire()  # another run (its process id is in the lock file)
    try:
        err = _error_of(_restore(photo, out, tiny_models=tiny_models), capsys)
        assert f"Another refface run (process {os.getpid()}) is writing into {out}" in err
        assert all(path.exists() for path in stale)  # nothing touched while the other run holds the folder
    finally:
        held.release()
    assert main(_restore(photo, out, tiny_models=tiny_models)) == 0
    assert not any(path.exists() for path in stale)
    assert not list(out.rglob("*.part"))
    assert (out / "restored_imgs" / "photo.jpg").is_file()
    assert main(_restore(photo, out, tiny_models=tiny_models)) == 0  # the lock was released: the rerun resumes


@pytest.mark.slow
def test_an_animated_or_multi_page_photo_is_restored_from_its_first_frame_with_a_note(tmp_path, tiny_models, capsys):
    face = Image.fromarray(place(astronaut(), 0, 0.8)[0])
    frames = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    folder = tmp_path / "inputs"
    folder.mkdir()
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    code = main(["restore", str(folder / "pages.tif"), "--no-refs", "-o", str(tmp_path / "out"), "--model",
                 str(tiny_models["refldm"]), "--steps", "2"])  # fmt: skip
    assert code == 0
    assert "pages.tif holds 2 frames or pages; the first is restored" in capsys.readouterr().out
    restored = np.asarray(Image.open(tmp_path / "out" / "restored_imgs" / "pages.tif"))
    assert restored.shape == np.asarray(face).shape


def test_serve_limits_must_be_finite_before_anything_loads(capsys):
    for value in ("nan", "inf", "0", "-5"):
        err = _error_of(["serve", f"--max-upload-mb={value}", "--model", "never-read"], capsys)
        assert "--max-upload-mb must be more than 0 and at most 4096" in err
    assert "--max-pending must be a whole number from 1 to 1000" in _error_of(["serve", "--max-pending", "0"], capsys)


def test_a_port_in_use_is_one_sentence_and_nothing_says_ready(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _error_of(["serve", "--port", str(port), "--model", "never-read"], capsys)
    assert f"Cannot listen on 127.0.0.1:{port}" in err and "choose another with --port" in err
    assert "ready" not in capsys.readouterr().out


def test_a_model_whose_weights_are_not_finite_is_refused_naming_the_file(tmp_path, tiny_models, photo, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["refldm"], broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(key for key, value in tensors.items() if value.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights)
    err = _error_of(["restore", str(photo), "--no-refs", "-o", str(tmp_path / "out"), "--model", str(broken),
                     "--steps", "2"], capsys)  # fmt: skip
    assert f"The weights in {broken / 'unet'} are not all finite numbers" in err and name in err


def test_the_offline_message_names_both_released_files_and_the_options(tmp_path, photo, capsys, monkeypatch):
    import urllib.error

    from refface import weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REFFACE_OFFLINE")  # downloads on, but the network fails (urlopen never reaches out)
    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    album = tmp_path / "album"
    album.mkdir()
    err = _error_of(["restore", str(photo), "--refs-dir", str(album), "-o", str(tmp_path / "out")], capsys)
    assert "Could not download refldm.ckpt and vqgan.ckpt (Name or service not known)" in err
    assert str(tmp_path / "cache" / "vqgan.ckpt") in err and "pass your own files' paths" in err
    # (the album is empty: had it been scanned first, that would have been the error)


def test_bytes_of_a_huge_upload_are_counted_exactly():
    from refface.web.uploads import megabytes

    assert megabytes(30 * 2**20) == "30 MB"
    assert megabytes(30 * 2**20 + 1) == "31,457,281 bytes"  # not "30.0 MB", which reads as within the limit
    assert megabytes(1536) == "1,536 bytes"
