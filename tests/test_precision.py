"""Half precision on a CPU without native support is named before any model work (it is unusably slow there)."""

from __future__ import annotations

import pytest
import torch

from refface import precision
from refface.cli import main
from refface.cli.common import checked_dtype
from refface.errors import RefFaceError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_precision_is_always_native(dtype, monkeypatch):
    monkeypatch.setattr(precision, "_onednn_supports", lambda dtype: pytest.fail("full precision needs no check"))
    assert precision.native_on_cpu(dtype)
    assert precision.precision_warning(torch.device("cpu"), dtype) is None


@pytest.mark.parametrize(
    ("dtype", "name", "needs"), [(torch.bfloat16, "bf16", "AVX-512 or AMX"), (torch.float16, "fp16", "AVX512-FP16")]
)
def test_half_precision_follows_the_cpus_own_support(dtype, name, needs, monkeypatch):
    asked = []
    monkeypatch.setattr(precision, "_onednn_supports", lambda d: asked.append(d) or False)
    warning = precision.precision_warning(torch.device("cpu"), dtype)
    assert asked == [dtype]
    assert warning.startswith(f"{name} has no native support on this CPU") and "--dtype fp32" in warning
    assert f"PyTorch needs {needs}" in warning
    assert precision.precision_warning(torch.device("cuda"), dtype) is None  # a GPU's half precision is native
    monkeypatch.setattr(precision, "_onednn_supports", lambda d: True)
    assert precision.precision_warning(torch.device("cpu"), dtype) is None


def test_this_builds_check_answers_without_raising():
    for dtype in (torch.bfloat16, torch.float16):
        assert isinstance(precision.native_on_cpu(dtype), bool)


def test_checked_dtype_warns_on_stderr_and_still_returns_the_dtype(monkeypatch, capsys):
    monkeypatch.setattr(precision, "_onednn_supports", lambda d: False)
    assert checked_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    assert capsys.readouterr().err.startswith("refface: warning: bf16 has no native support")
    assert checked_dtype(torch.device("cpu"), "fp32") is torch.float32
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_restore_warns_before_loading_the_model(slim, tmp_path, monkeypatch, capsys):
    from refface.restoration.settings import RestoreSettings

    def not_loaded(settings):
        raise RefFaceError("the model is not loaded in this test.")

    monkeypatch.setattr(precision, "_onednn_supports", lambda d: False)
    monkeypatch.setattr(RestoreSettings, "load_pipeline", not_loaded)
    refs = [str(slim / f"ref{i}.png") for i in range(3)]
    argv = ["restore", str(slim / "lq.png"), "--ref", *refs, "--aligned", "--device", "cpu", "--dtype", "fp16"]
    assert main([*argv, "--output", str(tmp_path / "out.png"), "-q"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("refface: warning: fp16 has no native support on this CPU")
    assert err[-1] == "refface: error: the model is not loaded in this test."
