"""Loading a finished diffusion run back, for every reference integration, from its own config snapshot."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from refface import RefLDMPipeline
from refface.errors import RefFaceError
from refface.models.reference_ablations import ABLATIONS
from refface.models.reference_integration import CacheKVDenoiser
from refface.train.config import load_config
from refface.train.sampling import restore_batch
from refface.train.trained_model import load_trained_model
from refface.train.trainer import train

QUICK = {"data.identities": 6, "data.photos_per_identity": 3, "run.batch_size": 4, "run.validation_cases": 0}


def _inputs(refs: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(refs)
    return torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(3, refs, 3, 32, 32, generator=g) * 2 - 1


def test_a_cachekv_run_loads_as_the_pipeline_it_exported(tmp_path):
    train(load_config("tiny-refldm", QUICK), tmp_path / "run", max_steps=2, progress=False)
    model = load_trained_model(tmp_path / "run")
    assert isinstance(model.denoiser, CacheKVDenoiser) and model.uses_references and model.denoiser.num_refs == 3
    assert not model.denoiser.training
    pipe = RefLDMPipeline.from_pretrained(tmp_path / "run" / "model")
    lq, refs = _inputs(2)
    ours = restore_batch(model.denoiser, model.vq, model.scheduler, lq, refs, steps=3, guidance_scale=1.5, seed=5)
    for item in range(3):
        theirs = pipe(lq[item : item + 1], list(refs[item]), num_inference_steps=3, seed=5 + item, progress=False)
        torch.testing.assert_close(((ours[item : item + 1] + 1) / 2).clamp(0, 1), theirs.pixels, atol=1e-4, rtol=0)


@pytest.mark.parametrize("integration", sorted(ABLATIONS))
def test_an_ablation_run_loads_its_exported_weights(tmp_path, integration):
    config = load_config("tiny-refldm", {**QUICK, "model.reference_integration": integration, "data.num_refs": 2})
    train(config, tmp_path / "run", max_steps=2, progress=False)
    model = load_trained_model(tmp_path / "run")
    assert type(model.denoiser) is ABLATIONS[integration] and model.denoiser.num_refs == 2
    saved = load_file(str(tmp_path / "run" / "model" / "denoiser.safetensors"))
    loaded = model.denoiser.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    lq, refs = _inputs(2)
    out = restore_batch(model.denoiser, model.vq, model.scheduler, lq, refs, steps=2, guidance_scale=1.5, seed=0)
    assert out.shape == (3, 3, 32, 32) and torch.isfinite(out).all()


def test_an_ldm_run_loads_without_references_and_bad_folders_are_named(tmp_path):
    train(load_config("tiny-ldm", QUICK), tmp_path / "ldm", max_steps=2, progress=False)
    model = load_trained_model(tmp_path / "ldm")
    assert not model.uses_references and model.denoiser.num_refs == 0

    with pytest.raises(RefFaceError, match="not a training run folder"):
        load_trained_model(tmp_path / "nowhere")
    train(load_config("tiny-vqgan", QUICK), tmp_path / "vqgan", max_steps=1, progress=False)
    with pytest.raises(RefFaceError, match="vqgan stage, not a diffusion model"):
        load_trained_model(tmp_path / "vqgan")
    shutil.rmtree(tmp_path / "ldm" / "model")
    with pytest.raises(RefFaceError, match="has not exported a model yet"):
        load_trained_model(tmp_path / "ldm")
