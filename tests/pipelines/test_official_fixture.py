"""Exactness against the official ReF-LDM code (tests/fixtures/official-slim)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from refface import RefLDMPipeline, load_image
from refface.models.vq import encode_unquantized
from tests.conftest import restore_official_case

TOL = 1e-4


def test_latents_eps_and_image_match_official(slim_pipeline, slim_case):
    inputs, expected = slim_case["inputs"], slim_case["expected"]
    pipe = slim_pipeline

    lq_latent = encode_unquantized(pipe.vqvae, inputs["lq"])
    assert (lq_latent - expected["lq_latent"]).abs().max() < TOL
    wide = torch.cat(list(inputs["refs"]), dim=-1)[None]
    assert (encode_unquantized(pipe.vqvae, wide) - expected["ref_latent"]).abs().max() < TOL

    seen = []
    out = restore_official_case(pipe, slim_case, step_callback=lambda i, t, eps: seen.append((t, eps.clone())))
    assert [t for t, _ in seen] == expected["timesteps"].tolist()[::-1]
    assert (seen[0][1] - expected["first_eps"]).abs().max() < TOL
    # The final latent reaches |x| ~ 150, so float32 rounding alone is ~1e-5 there.
    assert (out.latents - expected["latent"]).abs().max() < TOL
    assert (out.pixels - expected["image"]).abs().max() < TOL


def test_seeded_noise_is_the_official_draw(slim_pipeline, slim_case):
    assert torch.equal(slim_pipeline.initial_noise(1, 7), slim_case["inputs"]["xT"])


def test_raw_weights_are_not_what_comes_out(slim, slim_pipeline, slim_case):
    inputs = slim_case["inputs"]
    kwargs = dict(num_inference_steps=5, seed=7, progress=False)
    ema_image = slim_pipeline(inputs["lq"], inputs["refs"], **kwargs).pixels
    raw = RefLDMPipeline.from_official(slim / "refldm.ckpt", slim / "vqgan.ckpt", slim / "config.yaml", use_ema=False)
    raw_image = raw(inputs["lq"], inputs["refs"], **kwargs).pixels
    assert (raw_image - slim_case["raw_weights_image"]).abs().max() < TOL  # the raw path is also faithful
    assert (ema_image - slim_case["raw_weights_image"]).abs().mean() > 0.01


def test_png_files_reproduce_official_output_file(slim, slim_pipeline):
    lq = load_image(slim / "lq.png")
    refs = [load_image(slim / f"ref{i}.png") for i in range(3)]
    got = np.asarray(slim_pipeline([lq], refs, num_inference_steps=5, seed=7, progress=False).images[0], dtype=int)
    want = np.asarray(Image.open(slim / "expected.png").convert("RGB"), dtype=int)
    assert np.abs(got - want).max() <= 1


def test_references_matter(slim_pipeline, slim_case):
    inputs = slim_case["inputs"]
    kwargs = dict(num_inference_steps=5, seed=7, progress=False)
    all_refs = slim_pipeline(inputs["lq"], inputs["refs"], **kwargs).pixels
    two_refs = slim_pipeline(inputs["lq"], inputs["refs"][:2], **kwargs).pixels
    no_refs = slim_pipeline(inputs["lq"], None, **kwargs).pixels
    assert (all_refs - two_refs).abs().mean() > 0.005
    assert (all_refs - no_refs).abs().mean() > 0.005
