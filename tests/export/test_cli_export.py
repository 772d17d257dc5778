"""`refface export onnx`: a tiny model end to end with --verify, and one-sentence errors for bad input."""

from __future__ import annotations

import json
import sys

import pytest

from refface.cli import main
from refface.export import onnx_export
from refface.export.settings import exporter_available
from tests.conftest import make_tiny_pipeline


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("refface: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.slow
def test_export_with_verify_prints_each_graphs_difference(slim_export, slim, capsys):
    assert slim_export.exit_code == 0
    lines = slim_export.printed.splitlines()
    assert [line for line in lines if line.startswith("exporting")] == [
        f"exporting {name}.onnx" for name in ("vq_encoder", "vq_decoder", "unet_reference", "unet")
    ]
    differences = {line.split(":")[0]: float(line.rsplit(" ", 1)[1]) for line in lines if "max abs" in line}
    assert set(differences) == {"vq_encoder", "vq_decoder", "unet_reference", "unet"}
    assert max(differences.values()) < 1e-4
    assert [p.name for p in slim_export.folder.parent.iterdir()] == ["onnx"]  # no staging folder left beside it

    again = ["export", "onnx", str(slim_export.folder), "--checkpoint", str(slim / "refldm.ckpt")]
    assert "exists and is not empty; pass --overwrite" in _error(capsys, again)


@pytest.mark.skipif(not exporter_available(), reason="ONNX export needs a newer torch")
def test_interrupted_export_leaves_nothing_and_keeps_the_old_folder(tmp_path, monkeypatch):
    calls = []

    def interrupted(spec, target, opset):
        calls.append(spec.name)
        target.write_bytes(b"half")
        if spec.name == "vq_decoder":  # the second graph
            raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "_export_graph", interrupted)
    pipe = make_tiny_pipeline()
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(pipe, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("previous export")
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(pipe, old, overwrite=True)
    assert calls == ["vq_encoder", "vq_decoder"] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (old / "keep.txt").read_text() == "previous export"


def test_bad_inputs_are_one_sentence(slim, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    assert "pass --overwrite" in _error(
        capsys, ["export", "onnx", str(full), "--checkpoint", str(slim / "refldm.ckpt")]
    )
    a_file = tmp_path / "file.onnx"
    a_file.write_text("x")
    assert "is a file" in _error(capsys, ["export", "onnx", str(a_file), "--overwrite"])
    err = _error(capsys, ["export", "onnx", str(tmp_path / "o"), "--opset", "11"])
    assert "opset 11 is not supported; choose one from 18 to 23" in err
    err = _error(capsys, ["export", "onnx", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "missing.ckpt")])
    assert "missing.ckpt" in err and "does not exist" in err
    assert "does not exist" in _error(capsys, ["export", "onnx", str(tmp_path / "o"), "--model", str(tmp_path / "no")])
    assert not (tmp_path / "o").exists()


def test_composite_context_folder_is_refused_by_name(tmp_path, capsys):
    folder = tmp_path / "composite"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "CompositeContextPipeline"}))
    err = _error(capsys, ["export", "onnx", str(tmp_path / "o"), "--model", str(folder)])
    assert "Composite-Context" in err and "ReF-LDM only" in err


def test_verify_without_onnxruntime_says_so_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = _error(capsys, ["export", "onnx", str(tmp_path / "o"), "--model", str(tmp_path / "never-read"), "--verify"])
    assert "--verify needs onnxruntime" in err and "refface[onnx]" in err


def test_a_torch_too_old_for_the_exporter_is_one_sentence(slim, tmp_path, capsys, monkeypatch):
    from refface.export import settings

    monkeypatch.setattr(settings.metadata, "version", lambda name: "2.9.1+cu128")
    weights = ["--checkpoint", str(slim / "refldm.ckpt"), "--vqgan", str(slim / "vqgan.ckpt")]
    err = _error(capsys, ["export", "onnx", str(tmp_path / "o"), *weights, "--config", str(slim / "config.yaml")])
    assert "ONNX export needs torch 2.13 or newer" in err and "this environment has torch 2.9.1+cu128" in err
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(settings.metadata, "version", lambda name: "2.14.1")
    assert settings.exporter_available()
