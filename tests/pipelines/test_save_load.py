"""diffusers-format save/load keeps the model and its behaviour."""

from __future__ import annotations

import torch

from refface import RefLDMPipeline
from refface.pipelines.loading import load_refldm
from tests.conftest import make_tiny_pipeline, random_images


def test_save_pretrained_round_trip(tmp_path):
    pipe = make_tiny_pipeline(seed=21)
    pipe.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    assert (tmp_path / "tiny" / "vqvae" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_refldm(model=tmp_path / "tiny")
    assert isinstance(loaded, RefLDMPipeline)
    lq, refs = random_images(2, 16, seed=22), random_images(2, 16, seed=23)
    kwargs = dict(num_inference_steps=3, seed=5, progress=False)
    assert torch.equal(pipe(lq, refs, **kwargs).latents, loaded(lq, refs, **kwargs).latents)
