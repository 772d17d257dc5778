"""From a `TrainConfig` with stage `composite` to a `CompositeStage`: networks, frozen encoders and the loss."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPVisionModel

from refface.errors import RefFaceError
from refface.models.composite_context import CompositeDenoiser, IdentityEncoder
from refface.pipelines.composite import CompositeContextPipeline, DualGuidance
from refface.train.composite_stage import CompositeStage
from refface.train.config import TrainConfig, validation_sampling


def initial_pipeline(config: TrainConfig) -> CompositeContextPipeline:
    """A Composite-Context model to continue from, or a new one from a text-to-image U-Net and the encoders."""
    model = config.model
    if model.init_checkpoint:
        from refface.pipelines.loading import load_composite

        return load_composite(model.init_checkpoint, speedups=False)  # modules to be trained
    from refface.models.composite_parts import load_text_to_image, tiny_reference_encoders, tiny_text_to_image

    if model.architecture == "tiny":
        parts = tiny_text_to_image(config.data.size)
    else:
        parts = load_text_to_image(model.architecture)
    if model.reference_encoders == "tiny":
        encoders = tiny_reference_encoders()
    else:
        encoders = pretrained_reference_encoders(config.loss.arcface_weights, model.farl_weights)
    return CompositeContextPipeline.assemble(*parts, *encoders, speedups=False)  # modules to be trained


def pretrained_reference_encoders(
    arcface_weights: str | Path | None = None, farl_weights: str | Path | None = None
) -> tuple[IdentityEncoder, CLIPVisionModel]:
    """The paper's frozen encoders: ArcFace R50 and FaRL ViT-B/16, from files or downloaded on first use."""
    from refface.face.arcface import default_arcface, load_arcface
    from refface.models.farl import default_farl, load_farl

    arcface = load_arcface(arcface_weights) if arcface_weights else default_arcface()
    farl = load_farl(farl_weights) if farl_weights else default_farl()
    return IdentityEncoder.from_embedder(arcface), farl


def build_composite_stage(config: TrainConfig) -> CompositeStage:
    pipe = initial_pipeline(config)
    if pipe.image_size != config.data.size:
        raise RefFaceError(
            f"The Composite-Context model works on {pipe.image_size}x{pipe.image_size} images but data.size is "
            f"{config.data.size}; set data.size to {pipe.image_size}."
        )
    identity_loss = None
    if config.loss.identity != "none":
        from refface.train.identity_loss import IdentityLoss

        # The loss measures identity with the same frozen ArcFace that encodes the reference.
        identity_loss = IdentityLoss(
            pipe.vae,
            pipe.identity_encoder.embedder,
            pipe.scheduler.alphas_cumprod,
            config.loss.identity,
            config.loss.identity_scale,
            hard_example_lambda=config.loss.hard_example_lambda,
        )
    if config.run.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return CompositeStage(
        CompositeDenoiser(pipe.unet, pipe.context),
        pipe.vae,
        pipe.scheduler,
        pipe.identity_encoder,
        pipe.facial_encoder,
        config.optim.learning_rate,
        config.loss.condition_dropout,
        identity_loss,
        DualGuidance.of(validation_sampling(config)),
        config.loss.diffusion,
        uses_references=config.model.context != "none",
    )
