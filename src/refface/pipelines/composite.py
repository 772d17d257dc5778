"""Composite-Context restoration: dual classifier-free guidance and the training-free multi-reference ensemble.

One denoising step predicts (eq. 5 of the paper, with eq. 6's average over N references):

    e = (1 - s_i) e(z, 0, 0) + (s_i - s_c) e(z, lq, 0) + (s_c / N) sum_i e(z, lq, c_i)

where s_i guides toward the LQ image and s_c toward the references. Every term is one slice of a
single batched U-Net call, so N references cost one call per step; terms whose weight is zero (the
middle one at the default s_i = s_c = 1.2) are not computed at all. The result is colour-corrected
toward the LQ input with AdaIN.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionModel

from refface.imaging import to_pil
from refface.models.composite_context import (
    CompositeContext,
    CompositeDenoiser,
    IdentityEncoder,
    ReferenceFeatures,
    encode_reference_features,
    widen_input,
)
from refface.models.composite_parts import tiny_reference_encoders, tiny_text_to_image
from refface.models.kl import decode_latents, encode_latents
from refface.pipelines.base import (
    COMPOSITE_OPTIONS,
    CONTEXT_PARTS,
    RestorationOutput,
    SamplingOptions,
    options_for,
    seeds_for,
)
from refface.pipelines.color_fix import adain_color_fix
from refface.pipelines.inputs import ImageInput, prepare_images
from refface.pipelines.noise import item_noise
from refface.pipelines.sampler import StepCallback, sample
from refface.pipelines.schedule import check_step_count, noised_to, strength_start
from refface.pipelines.speedup_setting import SpeedupSetting, within_speedup_setting


@dataclass(frozen=True)
class DualGuidance:
    """The two guidance scales: s_i toward the LQ image, s_c toward the references (the paper's defaults are
    `COMPOSITE_OPTIONS`', 1.2 / 1.2), and which part of the reference context guides (`CONTEXTS`)."""

    lq: float
    reference: float
    context: str = "both"

    @classmethod
    def of(cls, options: SamplingOptions) -> DualGuidance:
        return cls(options.lq_guidance, options.guidance, options.context or "both")

    def weights(self, num_references: int) -> tuple[float, float, float]:
        """Weights of e(z, 0, 0), e(z, lq, 0) and of each e(z, lq, c_i); they always sum to 1.

        Without references the context term is e(z, lq, 0) itself, which leaves plain LQ guidance.
        """
        if num_references == 0:
            return 1.0 - self.lq, self.lq, 0.0
        return 1.0 - self.lq, self.lq - self.reference, self.reference / num_references


def empty_features(context: CompositeContext, count: int, device: torch.device) -> ReferenceFeatures:
    """Placeholder features for items whose context is dropped (their tokens are masked and zeroed anyway)."""
    config = context.config
    return ReferenceFeatures(
        torch.zeros(count, config.identity_dim, device=device),
        torch.zeros(count, config.facial_tokens, config.facial_dim, device=device),
    )


@dataclass(frozen=True)
class GuidanceBranches:
    """What one step's batched U-Net call takes that is the same at every step of a sampling loop: each
    branch's weight and the conditions it keeps, the branches' reference features and the LQ latents
    repeated once per branch. Planned once per loop, so a step is only the U-Net call and the weighted sum.
    """

    weights: tuple[float, ...]
    lq_latents: torch.Tensor
    features: ReferenceFeatures
    keep_lq: torch.Tensor
    keep_identity: torch.Tensor
    keep_facial: torch.Tensor

    @classmethod
    def plan(
        cls,
        denoiser: CompositeDenoiser,
        lq_latents: torch.Tensor,
        features: ReferenceFeatures | None,
        guidance: DualGuidance,
    ) -> GuidanceBranches:
        batch, device = lq_latents.shape[0], lq_latents.device
        count = 0 if features is None else len(features)
        w_null, w_lq, w_ref = guidance.weights(count)
        # (weight, LQ kept, context kept, reference index or None) per branch; zero-weight branches are skipped
        branches = [(w_null, False, False, None), (w_lq, True, False, None)]
        branches += [(w_ref, True, True, index) for index in range(count)]
        branches = [branch for branch in branches if branch[0] != 0.0]
        blank = empty_features(denoiser.context, batch, device)
        parts = [blank if index is None else features.take([index] * batch) for _, _, _, index in branches]
        keep_lq = torch.tensor([kept for _, kept, _, _ in branches], device=device).repeat_interleave(batch)
        keep_context = torch.tensor([kept for _, _, kept, _ in branches], device=device).repeat_interleave(batch)
        identity, facial = CONTEXT_PARTS[guidance.context]
        return cls(
            weights=tuple(weight for weight, *_ in branches),
            lq_latents=lq_latents.repeat(len(branches), 1, 1, 1),
            features=ReferenceFeatures.cat(parts),
            keep_lq=keep_lq,
            keep_identity=keep_context & identity,
            keep_facial=keep_context & facial,
        )

    def predict(self, denoiser: CompositeDenoiser, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Eq. 5/6 for `latents` ([B, ...], float32 out) at `timestep` (a scalar tensor)."""
        size = len(self.weights)
        output = denoiser(
            latents.repeat(size, 1, 1, 1),
            self.lq_latents,
            self.features,
            timestep.expand(size * latents.shape[0]).to(latents.device),
            keep_lq=self.keep_lq,
            keep_identity=self.keep_identity,
            keep_facial=self.keep_facial,
        ).float()
        return sum(weight * term for weight, term in zip(self.weights, output.chunk(size), strict=True))


def guided_prediction(
    denoiser: CompositeDenoiser,
    latents: torch.Tensor,
    lq_latents: torch.Tensor,
    features: ReferenceFeatures | None,
    timestep: torch.Tensor,
    guidance: DualGuidance,
) -> torch.Tensor:
    """Eq. 5/6 for a batch of B latents of one person with N references, as one batched U-Net call (float32 out)."""
    return GuidanceBranches.plan(denoiser, lq_latents, features, guidance).predict(denoiser, latents, timestep)


def sample_composite(
    denoiser: CompositeDenoiser,
    scheduler: DDIMScheduler,
    lq_latents: torch.Tensor,
    features: ReferenceFeatures | None,
    noise: torch.Tensor,
    steps: int,
    guidance: DualGuidance,
    progress: bool = False,
    step_callback: StepCallback | None = None,
    cuda_graphs: bool = True,
    strength: float = 1.0,
) -> torch.Tensor:
    """DDIM from `noise` to the final latents with dual guidance (a private copy of `scheduler` is stepped);
    `strength` below 1 starts from the LQ latents noised to the timestep nearest strength x T (SDEdit).

    On a GPU the steps after the first replay a CUDA graph of the U-Net call (`StepReplay`) unless
    `cuda_graphs` is False.
    """
    check_step_count(steps, scheduler)
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps)
    start = strength_start(scheduler, strength)
    if start is None:
        latents = noise.to(lq_latents.device, torch.float32) * scheduler.init_noise_sigma
    else:
        latents = noised_to(scheduler, start, lq_latents, noise)
    branches = GuidanceBranches.plan(denoiser, lq_latents, features, guidance)
    return sample(
        lambda x, t: branches.predict(denoiser, x, t), scheduler, latents, progress, step_callback, cuda_graphs,
        start or 0,
    )  # fmt: skip


class CompositeContextPipeline(SpeedupSetting, DiffusionPipeline):
    """Composite-Context restoration on diffusers modules; saves and loads with save_pretrained/from_pretrained.

    Thread-safe for concurrent calls: each call samples with its own copy of the scheduler, and the
    reference features are passed per call (`encode_references` once, restore many photos). On a GPU
    that holds with `cuda_graphs = False` only (see `RefLDMPipeline`).
    """

    model_cpu_offload_seq = "identity_encoder->facial_encoder->vae->unet->vae"
    default_options = COMPOSITE_OPTIONS

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        context: CompositeContext,
        identity_encoder: IdentityEncoder,
        facial_encoder: CLIPVisionModel,
        speedups: bool = True,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            context=context,
            identity_encoder=identity_encoder,
            facial_encoder=facial_encoder,
        )
        # on a GPU each sampling step after the first replays a CUDA graph (same numbers); False: eagerly
        self.cuda_graphs = True
        self.enable_speedups(speedups)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def assemble(
        cls,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        identity_encoder: IdentityEncoder,
        facial_encoder: CLIPVisionModel,
        speedups: bool = True,
    ) -> CompositeContextPipeline:
        """A new model from a text-to-image U-Net: input widened for the LQ latent, fresh W_H / W_G
        (`speedups` False for a model to be trained)."""
        vision = facial_encoder.config
        context = CompositeContext(
            identity_dim=identity_encoder.embedder.backbone.fc.out_features,
            facial_dim=vision.hidden_size,
            facial_tokens=(vision.image_size // vision.patch_size) ** 2 + 1,
            context_dim=unet.config.cross_attention_dim,
        )
        if unet.config.in_channels == vae.config.latent_channels:
            unet = widen_input(unet, vae.config.latent_channels)
        return cls(unet, vae, scheduler, context, identity_encoder, facial_encoder, speedups)

    @classmethod
    def tiny(cls, image_size: int = 32) -> CompositeContextPipeline:
        """A randomly initialised miniature model (tests, CPU smoke runs of the web page and CLI)."""
        unet, vae, scheduler = tiny_text_to_image(image_size)
        return cls.assemble(unet, vae, scheduler, *tiny_reference_encoders()).eval_mode()

    def speedup_models(self) -> tuple[nn.Module, ...]:
        return self.unet, self.vae

    def eval_mode(self) -> CompositeContextPipeline:
        for module in (self.unet, self.vae, self.context, self.identity_encoder, self.facial_encoder):
            module.eval().requires_grad_(False)
        return self

    @property
    def denoiser(self) -> CompositeDenoiser:
        return CompositeDenoiser(self.unet, self.context)

    @property
    def image_size(self) -> int:
        """Working resolution: inputs of another size are resized to it."""
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def _prepare(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        return prepare_images(images, self.image_size, self.device, self.unet.dtype)

    # ----------------------------------------------------------------------------- references
    @torch.no_grad()
    @within_speedup_setting
    def encode_references(self, references: Sequence[ImageInput] | torch.Tensor) -> ReferenceFeatures | None:
        """ArcFace and FaRL features of the reference photos: compute once, reuse for every photo of the person."""
        if len(references) == 0:
            return None
        return encode_reference_features(self.identity_encoder, self.facial_encoder, self._prepare(references))

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    @within_speedup_setting
    def __call__(
        self,
        lq: Sequence[ImageInput] | torch.Tensor,
        references: ReferenceFeatures | Sequence[ImageInput] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        lq_guidance: float | None = None,
        reference_guidance: float | None = None,
        seed: int | Sequence[int] | None = None,
        color_fix: bool | None = None,
        noise: torch.Tensor | None = None,
        progress: bool = True,
        step_callback: StepCallback | None = None,
        strength: float | None = None,
        *,
        options: SamplingOptions | None = None,
        context: str | None = None,
    ) -> RestorationOutput:
        """Restore a batch of LQ face crops of one person with any number of references (None / empty: none).

        `options`: Composite-Context's `SamplingOptions` (default `default_options`: 50 DDIM steps, both
        guidances 1.2, the colour fix, the whole reference context), changed by any keyword given; `context`
        "identity" or "appearance" guides with one part of the reference context (the paper's Table 5).
        `strength` below 1 starts from the LQ latent noised to the timestep nearest strength x T (SDEdit).
        `seed`: the noise seed of every image (default the options'), or one per image.
        """
        options = options_for(
            self.default_options, options, steps=num_inference_steps, guidance=reference_guidance,
            lq_guidance=lq_guidance, color_fix=color_fix, strength=strength, context=context,
        )  # fmt: skip
        lq_batch = self._prepare(lq)
        batch_size = lq_batch.shape[0]
        seeds = seeds_for(options, batch_size, seed)
        if references is not None and not isinstance(references, ReferenceFeatures):
            references = self.encode_references(references)
        lq_latents = encode_latents(self.vae, lq_batch)
        if noise is None:
            noise = item_noise(tuple(lq_latents.shape[1:]), seeds)
        latents = sample_composite(
            self.denoiser,
            self.scheduler,
            lq_latents,
            references,
            noise,
            options.steps,
            DualGuidance.of(options),
            progress,
            step_callback,
            self.cuda_graphs,
            options.strength,
        )
        pixels = ((decode_latents(self.vae, latents).float() + 1.0) / 2.0).clamp(0.0, 1.0)
        if options.color_fix:
            pixels = adain_color_fix(pixels, (lq_batch.float() + 1.0) / 2.0)
        return RestorationOutput(images=to_pil(pixels), pixels=pixels, latents=latents)
