"""Training the Composite-Context method: the hard-example identity loss, gradient paths, a tiny run, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refface.cli import main
from refface.data.augment import jitter_colours
from refface.errors import RefFaceError
from refface.face.arcface import ArcFaceEmbedder, iresnet
from refface.models.composite_parts import sd_scheduler, tiny_text_to_image
from refface.pipelines.loading import load_composite
from refface.train.build import build_run
from refface.train.composite_stage import epsilon_from_prediction
from refface.train.config import load_config
from refface.train.identity_loss import IdentityLoss
from refface.train.run_folder import read_metrics
from refface.train.trainer import train

FAST = {
    "data.identities": 8,
    "data.photos_per_identity": 3,
    "run.batch_size": 3,
    "run.log_every": 5,
    "run.checkpoint_every": 100,
    "run.sample_every": 1000,
    "run.validation_cases": 2,
    "run.sample_steps": 2,
}


@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
    """Random ArcFace features of random decodes are denormal floats, which are several times slower on CPUs."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.mark.slow
def test_hard_example_loss_mixes_the_two_identity_distances():
    torch.manual_seed(0)
    _, vae, scheduler = tiny_text_to_image(32)
    arcface = ArcFaceEmbedder(iresnet((1, 1, 1, 1))).eval()
    generator = torch.Generator().manual_seed(1)
    noisy, eps = torch.randn(3, 4, 16, 16, generator=generator), torch.randn(3, 4, 16, 16, generator=generator)
    hq, ref = (
        torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1,
        torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1,
    )
    timesteps = torch.tensor([5, 300, 800])

    def loss(mix):
        module = IdentityLoss(vae, arcface, scheduler.alphas_cumprod, "scaled", 0.1, hard_example_lambda=mix)
        return module(noisy, eps, timesteps, hq, None if mix is None else ref).loss

    plain, zero, one, paper = loss(None), loss(0.0), loss(1.0), loss(0.6)
    torch.testing.assert_close(zero, plain, rtol=0, atol=0)  # lambda = 0 is the ID loss toward the HQ image
    torch.testing.assert_close(paper, 0.4 * zero + 0.6 * one, rtol=1e-5, atol=1e-7)
    assert abs(float(one - zero)) > 1e-6  # the reference term is a different distance


def test_v_prediction_is_turned_back_into_noise():
    scheduler = sd_scheduler(prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(2)
    clean, noise = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 250, 600, 999])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    velocity = scheduler.get_velocity(clean, noise, timesteps)
    torch.testing.assert_close(
        epsilon_from_prediction(scheduler, velocity, noisy, timesteps), noise, rtol=1e-4, atol=1e-4
    )
    assert epsilon_from_prediction(sd_scheduler(), noise, noisy, timesteps) is noise


def test_gradients_reach_the_projections_and_the_unet_but_not_the_frozen_encoders():
    torch.manual_seed(3)
    parts = build_run(load_config("tiny-composite", {**FAST, "loss.condition_dropout": 0.0}))
    stage = parts.stage
    items = [parts.train_set[i] for i in range(3)]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("gt", "lq", "refs")}
    modules = stage.trainable()
    (term,) = stage.losses(modules, batch, torch.Generator().manual_seed(4), 0)
    term.loss.backward()
    assert term.logs["identity"] > 0 and term.logs["diffusion"] > 0
    context, unet = stage.denoiser.context, stage.denoiser.unet
    for name, parameter in [
        ("W_H", context.identity_proj.weight),
        ("W_G", context.facial_proj.weight),
        ("null token", context.null_token),
        ("U-Net input", unet.conv_in.weight),
        ("U-Net cross-attention", next(p for n, p in unet.named_parameters() if "attn2.to_k" in n)),
    ]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert unet.conv_in.weight.grad[:, 4:].abs().sum() > 0  # the zero-initialised LQ channels learn too
    for frozen in (stage.identity_encoder, stage.facial_encoder, stage.vae):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


@pytest.mark.slow
def test_tiny_composite_training_loss_falls_and_exports_a_restorable_model(tmp_path):
    torch.manual_seed(5)
    result = train(load_config("tiny-composite", FAST), tmp_path / "run", max_steps=20, progress=False)
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [5, 10, 15, 20]
    assert logged[-1]["loss"] < 0.8 * logged[0]["loss"], logged
    assert all(r["identity"] > 0 and r["loss"] == pytest.approx(r["diffusion"] + r["identity"]) for r in logged)
    assert result.model is not None and (tmp_path / "run" / "samples" / "step_00000020.png").is_file()

    pipe = load_composite(tmp_path / "run")  # a run folder is read through its model/
    generator = torch.Generator().manual_seed(6)
    output = pipe(torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1,
                  num_inference_steps=2, progress=False)  # fmt: skip
    assert output.pixels.shape == (1, 3, 32, 32) and torch.isfinite(output.pixels).all()

    from PIL import Image

    rng = np.random.default_rng(7)
    for name in ("lq", "ref"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    code = main(["restore", str(tmp_path / "lq.png"), "--ref", str(tmp_path / "ref.png"), "--aligned", "--method",
                 "composite", "--model", str(tmp_path / "run" / "model"), "--steps", "2", "-o",
                 str(tmp_path / "out.png"), "-q"])  # fmt: skip
    assert code == 0 and Image.open(tmp_path / "out.png").size == (32, 32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.architecture": "released"}, "stage composite needs model.architecture tiny"),
        ({"loss.hard_example_lambda": 1.5}, "'loss.hard_example_lambda'"),
        ({"data.color_jitter": -0.1}, "'data.color_jitter'"),
        ({"model.reference_encoders": "small"}, "'model.reference_encoders'"),
    ],
)
def test_composite_config_mistakes_name_their_key(overrides, message):
    with pytest.raises(RefFaceError, match=message):
        load_config("tiny-composite", overrides)


def test_the_hard_example_lambda_belongs_to_the_composite_stage_and_the_base_must_be_a_model(tmp_path):
    with pytest.raises(RefFaceError, match="only set for stage composite"):
        load_config("tiny-refldm", {"loss.hard_example_lambda": 0.6})
    with pytest.raises(RefFaceError, match="not a diffusers text-to-image folder"):
        build_run(load_config("tiny-composite", {**FAST, "model.architecture": str(tmp_path)}))


def test_colour_jitter_is_seeded_and_changes_the_target():
    image = np.random.default_rng(8).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a, b, c = jitter_colours(image, 0.3, 1), jitter_colours(image, 0.3, 1), jitter_colours(image, 0.3, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, image)
    assert jitter_colours(image, 0.0, 1) is image


def test_a_text_to_image_folder_is_the_starting_point(tmp_path):
    torch.manual_seed(9)
    unet, vae, scheduler = tiny_text_to_image(32)
    base = tmp_path / "t2i"
    unet.save_pretrained(base / "unet")
    vae.save_pretrained(base / "vae")
    sd_scheduler(prediction_type="v_prediction").save_pretrained(base / "scheduler")
    stage = build_run(load_config("tiny-composite", {**FAST, "model.architecture": str(base)})).stage
    widened = stage.denoiser.unet
    assert widened.config.in_channels == 8 and stage.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(widened.conv_in.weight[:, :4], unet.conv_in.weight)
    assert widened.conv_in.weight[:, 4:].abs().max() == 0
    down = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    torch.testing.assert_close(widened.state_dict()[down], unet.state_dict()[down])
    with pytest.raises(RefFaceError, match="works on 32x32 images but data.size is 64"):
        build_run(load_config("tiny-composite", {**FAST, "model.architecture": str(base), "data.size": 64}))
    sd_scheduler(prediction_type="sample").save_pretrained(base / "scheduler")
    with pytest.raises(RefFaceError, match="predicts 'sample'; the Composite-Context method trains epsilon or v_pred"):
        build_run(load_config("tiny-composite", {**FAST, "model.architecture": str(base)}))


class _RecordingDenoiser(torch.nn.Module):
    """Wraps the denoiser and keeps the condition masks of its last call."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.masks = inner, {}

    def forward(self, *args, **kwargs):
        self.masks = {key: kwargs[key].clone() for key in ("keep_lq", "keep_identity", "keep_facial")}
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize(
    ("context", "identity", "facial", "sampled"),
    [("composite", True, True, "both"), ("identity", True, False, "identity"),
     ("appearance", False, True, "appearance"), ("none", False, False, "both")],
)  # fmt: skip
def test_the_table_4_contexts_train_and_validate_with_their_parts_only(context, identity, facial, sampled):
    overrides = {**FAST, "loss.condition_dropout": 0.0, "model.context": context}
    parts = build_run(load_config("tiny-composite", overrides))
    stage = parts.stage
    items = [parts.train_set[i] for i in range(3)]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("gt", "lq", "refs")}
    modules = {**stage.trainable(), "denoiser": _RecordingDenoiser(stage.denoiser)}
    (term,) = stage.losses(modules, batch, torch.Generator().manual_seed(2), 0)
    masks = modules["denoiser"].masks
    assert masks["keep_lq"].all() and torch.isfinite(term.loss)
    assert masks["keep_identity"].tolist() == [identity] * 3 and masks["keep_facial"].tolist() == [facial] * 3
    assert stage.guidance.context == sampled and stage.uses_references == (context != "none")
    rows = stage.sample(stage.trainable(), batch, 2, 0)  # validation: with the trained parts (none: no references)
    assert rows.output.shape == batch["gt"].shape and torch.isfinite(rows.output).all()


def test_the_training_context_is_checked():
    with pytest.raises(RefFaceError, match="'model.context' .* must be one of composite, identity, appearance, none"):
        load_config("tiny-composite", {"model.context": "arcface"})
    with pytest.raises(RefFaceError, match="only set for stage composite, got 'none'"):
        load_config("tiny-refldm", {"model.context": "none"})
