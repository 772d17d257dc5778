"""The `refface` command: the fixture through PNG files, and one-line errors for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refface.cli import main


@pytest.fixture
def inputs(slim, tmp_path):
    for name in ("lq.png", "ref0.png", "ref1.png", "ref2.png"):
        shutil.copy(slim / name, tmp_path / name)
    return tmp_path


def _model_args(slim):
    return [
        "--checkpoint",
        str(slim / "refldm.ckpt"),
        "--vqgan",
        str(slim / "vqgan.ckpt"),
        "--config",
        str(slim / "config.yaml"),
    ]


def _restore_args(slim, folder, output, *extra, lq=("lq.png",), model=None):
    """A `refface restore` command on the fixture files in `folder`; `model` replaces the official files."""
    refs = [str(folder / f"ref{i}.png") for i in range(3)]
    weights = ["--model", str(model)] if model else _model_args(slim)
    lq_paths = [str(folder / name) for name in lq]
    options = ["--steps", "5", "--seed", "7", "--aligned", "-q"]
    return ["restore", *lq_paths, "--ref", *refs, "--output", str(output), *options, *weights, *extra]


@pytest.mark.slow
def test_console_script_reproduces_the_official_file(slim, inputs):
    output = inputs / "restored.png"
    before = (inputs / "lq.png").read_bytes()
    command = [sys.executable, "-m", "refface.cli", *_restore_args(slim, inputs, output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = np.asarray(Image.open(output), dtype=int)
    want = np.asarray(Image.open(slim / "expected.png").convert("RGB"), dtype=int)
    assert np.abs(got - want).max() <= 1
    assert (inputs / "lq.png").read_bytes() == before


@pytest.mark.slow
def test_several_lq_photos_go_to_a_folder_and_match_single_runs(slim, inputs, capsys):
    shutil.copy(inputs / "lq.png", inputs / "second.png")
    assert main(_restore_args(slim, inputs, inputs / "out", lq=("lq.png", "second.png"))) == 0
    first = np.asarray(Image.open(inputs / "out" / "lq.png"), dtype=int)
    second = np.asarray(Image.open(inputs / "out" / "second.png"), dtype=int)
    want = np.asarray(Image.open(slim / "expected.png").convert("RGB"), dtype=int)
    assert np.abs(first - want).max() <= 1 and np.abs(second - want).max() <= 1


def _error_of(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("refface: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(slim, inputs, capsys, tmp_path):
    out = inputs / "out.png"
    assert "--aligned" in _error_of([a for a in _restore_args(slim, inputs, out) if a != "--aligned"], capsys)
    assert "also an input" in _error_of(_restore_args(slim, inputs, inputs / "ref0.png", "--overwrite"), capsys)
    assert "is a directory" in _error_of(_restore_args(slim, inputs, inputs), capsys)
    (inputs / "bad.png").write_text("not an image")
    args = _restore_args(slim, inputs, out)
    args[args.index("--ref") + 1] = str(inputs / "bad.png")
    assert "bad.png" in _error_of(args, capsys)
    no_refs = ["restore", str(inputs / "lq.png"), "--output", str(out), "--aligned", *_model_args(slim)]
    assert "--no-refs" in _error_of(no_refs, capsys)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "garbage", "wrong-file", "wrong-config"])
def test_bad_checkpoints_give_one_line_errors(slim, inputs, capsys, problem, tmp_path):
    args = _restore_args(slim, inputs, inputs / "out.png")
    position = args.index("--checkpoint") + 1
    if problem == "missing":
        args[position] = str(tmp_path / "nope.ckpt")
    elif problem == "garbage":
        (tmp_path / "g.ckpt").write_bytes(b"PK\x03\x04 broken zip")
        args[position] = str(tmp_path / "g.ckpt")
    elif problem == "wrong-file":
        args[position] = str(slim / "vqgan.ckpt")
    else:
        args.remove("--config")
        args.remove(str(slim / "config.yaml"))
    message = _error_of(args, capsys)
    assert "ckpt" in message
    assert not (inputs / "out.png").exists()


def test_existing_output_is_kept_without_overwrite(slim, inputs, capsys):
    out = inputs / "out.png"
    out.write_bytes(b"precious")
    assert "--overwrite" in _error_of(_restore_args(slim, inputs, out), capsys)
    assert out.read_bytes() == b"precious"


@pytest.mark.slow
def test_convert_then_restore_from_the_saved_folder(slim, inputs, tmp_path, capsys):
    saved = tmp_path / "model"
    assert main(["convert", str(saved), *_model_args(slim)]) == 0
    assert (saved / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert main(_restore_args(slim, inputs, inputs / "o.png", model=saved)) == 0
    got = np.asarray(Image.open(inputs / "o.png"), dtype=int)
    want = np.asarray(Image.open(slim / "expected.png").convert("RGB"), dtype=int)
    assert np.abs(got - want).max() <= 1
    assert "not empty" in _error_of(["convert", str(saved), *_model_args(slim)], capsys)


@pytest.mark.slow
def test_method_options_that_do_not_belong_together_are_one_line(slim, inputs, capsys, tmp_path):
    out = inputs / "out.png"
    composite = ["--method", "composite"]
    assert "has no released weights" in _error_of(
        [a for a in _restore_args(slim, inputs, out, *composite) if a not in _model_args(slim)], capsys
    )
    assert "ReF-LDM's official files" in _error_of(_restore_args(slim, inputs, out, *composite), capsys)
    for extra, option in ((["--schedule", "uniform"], "timestep spacing"), (["--fast"], "solver"),
                          (["--solver", "dpm++"], "solver")):  # fmt: skip
        assert f"The {option} is not an option of Composite-Context" in _error_of(
            _restore_args(slim, inputs, out, *composite, *extra, model=tmp_path), capsys
        )
    assert "contradicts --solver ddim" in _error_of(
        _restore_args(slim, inputs, out, "--fast", "--solver", "ddim"), capsys
    )
    assert "The colour fix is not an option of ReF-LDM" in _error_of(
        _restore_args(slim, inputs, out, "--no-color-fix"), capsys
    )
    assert "no readable model_index.json" in _error_of(
        _restore_args(slim, inputs, out, *composite, model=tmp_path), capsys
    )
    assert not out.exists()


@pytest.mark.slow
def test_fast_mode_is_dpm_solver_with_fewer_steps(slim, inputs, monkeypatch):
    """--fast is DPM-Solver++ in 20 steps unless --steps says otherwise; its output is not the official one."""
    from refface.pipelines.refldm import RefLDMPipeline

    calls = []
    original = RefLDMPipeline.__call__
    monkeypatch.setattr(
        RefLDMPipeline, "__call__", lambda self, *a, **k: calls.append(k["options"]) or original(self, *a, **k)
    )
    args = [a for a in _restore_args(slim, inputs, inputs / "fast.png", "--fast") if a not in ("--steps", "5")]
    assert main(args) == 0
    assert (calls[-1].solver, calls[-1].steps) == ("dpm++", 20)
    assert main(_restore_args(slim, inputs, inputs / "fast5.png", "--fast")) == 0
    assert (calls[-1].solver, calls[-1].steps) == ("dpm++", 5)
    fast = np.asarray(Image.open(inputs / "fast5.png"), dtype=int)
    official = np.asarray(Image.open(slim / "expected.png").convert("RGB"), dtype=int)
    assert fast.shape == official.shape and np.abs(fast - official).max() > 2
