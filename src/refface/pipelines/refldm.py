"""ReF-LDM inference: restore low-quality face crops with reference photos of the same person.

Reads top to bottom like the official script: encode LQ and references with the VQGAN, cache the
references' keys/values with one U-Net pass at t = 0, run DDIM with classifier-free guidance
toward the references, quantize and decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel, VQModel
from torch import nn

from refface.imaging import to_pil
from refface.models.cache_kv import ReferenceBatch, ReferenceKV
from refface.models.checkpoints import load_converted, read_state_dict, select_unet_weights, select_vq_weights
from refface.models.config import RefLDMArchitecture, load_official_config, released_architecture
from refface.models.convert import apply_rules, unet_rules, vq_rules
from refface.models.unet import build_unet, denoise_copies, install_cache_kv, reference_pass
from refface.models.vq import build_vqmodel, decode_quantized, encode_unquantized
from refface.pipelines.base import REFLDM_OPTIONS, RestorationOutput, SamplingOptions, options_for, seeds_for
from refface.pipelines.inputs import ImageInput, prepare_images
from refface.pipelines.noise import item_noise
from refface.pipelines.sampler import StepCallback, sample
from refface.pipelines.schedule import (
    make_scheduler,
    noised_to,
    sampling_scheduler,
    strength_start,
    use_float64_cumprod,
)
from refface.pipelines.speedup_setting import SpeedupSetting, within_speedup_setting


def weight_stamp(module: torch.nn.Module) -> tuple:
    """Changes whenever any of `module`'s parameters does: replaced (a load, a move) or written in place."""
    return tuple((p.data_ptr(), p._version) for p in module.parameters())


class RefLDMPipeline(SpeedupSetting, DiffusionPipeline):
    """ReF-LDM restoration on diffusers modules; saves and loads with save_pretrained/from_pretrained.

    Thread-safe for concurrent calls: the CacheKV state is passed per call, and each call samples
    with its own copy of the scheduler. On a GPU that holds with `cuda_graphs = False` only: a CUDA
    graph's capture cannot overlap other GPU work, so with graphs (the default) a GPU pipeline serves
    one restoration at a time, as `refface serve` does.

    `speedups` (default True) gives the models refface's CPU speed-ups (`refface.speedups`: same function,
    other rounding); a pipeline wrapping modules that are being trained is built with False.
    """

    model_cpu_offload_seq = "vqvae->unet->vqvae"
    default_options = REFLDM_OPTIONS

    def __init__(self, unet: UNet2DModel, vqvae: VQModel, scheduler: DDIMScheduler, speedups: bool = True):
        super().__init__()
        install_cache_kv(unet)
        use_float64_cumprod(scheduler)
        self.register_modules(unet=unet, vqvae=vqvae, scheduler=scheduler)
        # (device, dtype, latent size) -> the null condition, and the U-Net's `weight_stamp` it was made with
        self._null_cache: dict[tuple, ReferenceKV] = {}
        self._null_stamps: dict[tuple, tuple] = {}
        self.enable_speedups(speedups)
        # On a GPU each sampling step after the first replays a CUDA graph of the U-Net call (same kernels,
        # same numbers; `step_replay`); False runs every step eagerly, e.g. to profile the kernels apart.
        self.cuda_graphs = True

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_architecture(cls, arch: RefLDMArchitecture) -> RefLDMPipeline:
        """A randomly initialised pipeline (tests, benchmarks, training from scratch)."""
        return cls(
            unet=build_unet(arch.unet),
            vqvae=build_vqmodel(arch.vq),
            scheduler=make_scheduler(arch.num_train_timesteps, arch.linear_start, arch.linear_end),
        )

    @classmethod
    def from_official(
        cls,
        checkpoint: str | Path,
        vqgan: str | Path | None = None,
        config: str | Path | None = None,
        use_ema: bool = True,
    ) -> RefLDMPipeline:
        """Load the authors' `refldm.ckpt` (+ `vqgan.ckpt`), EMA weights preferred as in their inference."""
        arch = load_official_config(config) if config is not None else released_architecture()
        state = read_state_dict(checkpoint, "ReF-LDM checkpoint")
        vq_state = read_state_dict(vqgan, "VQGAN checkpoint") if vqgan is not None else None
        with torch.device("meta"):  # no point initialising weights that are replaced right away
            pipe = cls.from_architecture(arch)
        unet_weights = apply_rules(
            select_unet_weights(state, checkpoint, use_ema), unet_rules(arch.unet), str(checkpoint)
        )
        vq_weights = apply_rules(
            select_vq_weights(vq_state, state, checkpoint), vq_rules(arch.vq), str(vqgan or checkpoint)
        )
        for module, weights, source in (
            (pipe.unet, unet_weights, checkpoint),
            (pipe.vqvae, vq_weights, vqgan or checkpoint),
        ):
            load_converted(module, weights, source, assign=True)
        return pipe.eval_mode()

    def speedup_models(self) -> tuple[nn.Module, ...]:
        return self.unet, self.vqvae

    def eval_mode(self) -> RefLDMPipeline:
        self.unet.eval().requires_grad_(False)
        self.vqvae.eval().requires_grad_(False)
        return self

    # ----------------------------------------------------------------------------- properties
    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        """Working resolution: inputs of another size are resized to it."""
        return self.latent_size * 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def _prepare(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """PIL images or [-1, 1] tensors -> a [B, 3, S, S] batch on the model's device and dtype."""
        return prepare_images(images, self.image_size, self.device, self.unet.dtype)

    # ----------------------------------------------------------------------------- references
    def _reference_pass(self, ref_latents: torch.Tensor) -> ReferenceKV:
        """U-Net pass at t = 0 over [ref latent, zeros] (one item per reference), keeping keys/values."""
        return reference_pass(self.unet, ref_latents)

    @torch.no_grad()
    @within_speedup_setting
    def encode_references(self, references: Sequence[ImageInput] | torch.Tensor) -> ReferenceKV:
        """The reusable CacheKV for a set of reference photos of one person.

        As in the official code the references are VQ-encoded as ONE image made by concatenating
        them along the width (so each reference's latent sees its neighbours at the seams), then
        split back into per-reference latents for the U-Net pass.
        """
        if len(references) == 0:
            return ReferenceKV({}, {}, num_references=0)
        batch = self._prepare(references)
        wide = torch.cat(list(batch), dim=-1)[None]
        latent = encode_unquantized(self.vqvae, wide)
        per_reference = torch.cat(latent.split(self.latent_size, dim=-1), dim=0)
        return self._reference_pass(per_reference)

    @within_speedup_setting
    def null_references(self, count: int) -> ReferenceKV:
        """The CFG null condition for `count` references: zero latents through the reference pass.

        The pass over a zero latent does not depend on the input, so it is computed once per
        device/dtype and U-Net weights, and `count` identical copies are represented by one copy plus a
        log(count) attention bias. Any change of the U-Net's weights (fine-tuning, `load_state_dict`, a move
        to another device or dtype) makes it anew.
        """
        key = (str(self.device), self.unet.dtype, self.latent_size)
        stamp = weight_stamp(self.unet)
        cache = self._null_cache.get(key)
        if cache is None or self._null_stamps.get(key) != stamp:
            zero = torch.zeros(
                1, self.latent_channels, self.latent_size, self.latent_size, device=self.device, dtype=self.unet.dtype
            )
            with torch.no_grad():
                cache = self._reference_pass(zero)
            self._null_cache[key], self._null_stamps[key] = cache, stamp
        return cache.repeated(count)

    # ----------------------------------------------------------------------------- sampling
    def initial_noise(self, batch_size: int, seed: int | Sequence[int]) -> torch.Tensor:
        """Noise as the official script draws it: torch.manual_seed(seed); torch.randn(1, C, h, w) on the CPU.

        Each image gets its own draw from its seed (one for all, or one each), so a photo restores the same in
        any batch.
        """
        seeds = seeds_for(self.default_options, batch_size, seed)
        return item_noise((self.latent_channels, self.latent_size, self.latent_size), seeds)

    @torch.no_grad()
    @within_speedup_setting
    def __call__(
        self,
        lq: Sequence[ImageInput] | torch.Tensor,
        references: ReferenceKV | Sequence[ImageInput] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        spacing: str | None = None,
        solver: str | None = None,
        noise: torch.Tensor | None = None,
        progress: bool = True,
        step_callback: StepCallback | None = None,
        strength: float | None = None,
        *,
        options: SamplingOptions | None = None,
    ) -> RestorationOutput:
        """Restore a batch of LQ face crops of one person.

        `references` is a ReferenceKV from `encode_references` (reuse it across photos), images,
        or None / empty for no references (plain LQ-conditioned restoration, no guidance).
        `options`: ReF-LDM's `SamplingOptions` (default `default_options`: 50 DDIM steps, guidance 1.5), changed
        by any keyword given. Guidance follows the official batch order [null references, references].
        `solver` "ddim" is the official sampler (exact mode); "dpm++" (DPM-Solver++, e.g. 20 steps)
        is the fast mode, which changes the output. `strength` below 1 starts from the LQ latent noised to
        the timestep nearest strength x T (SDEdit): fewer steps, more of the input's structure kept.
        `seed`: the noise seed of every image (default the options'), or one per image.
        """
        options = options_for(
            self.default_options, options, steps=num_inference_steps, guidance=guidance_scale, spacing=spacing,
            solver=solver, strength=strength,
        )  # fmt: skip
        lq_batch = self._prepare(lq)
        batch_size = lq_batch.shape[0]
        seeds = seeds_for(options, batch_size, seed)
        if references is None:
            references = ReferenceKV({}, {}, num_references=0)
        elif not isinstance(references, ReferenceKV):
            references = self.encode_references(references)
        lq_latents = encode_unquantized(self.vqvae, lq_batch)

        latents = (noise if noise is not None else self.initial_noise(batch_size, seeds)).to(self.device, torch.float32)
        scheduler = sampling_scheduler(self.scheduler, options)
        start = strength_start(scheduler, options.strength)
        if start is not None:
            latents = noised_to(scheduler, start, lq_latents, latents)
        guidance_scale = options.guidance
        guided = references.num_references > 0 and guidance_scale != 1.0
        if guided:
            context = ReferenceBatch(
                ((batch_size, self.null_references(references.num_references)), (batch_size, references))
            )
        else:
            context = ReferenceBatch(((batch_size, references),))
        model_dtype = self.unet.dtype

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # one copy of the input per guidance branch, in the official order [null references, references]
            model_input = torch.cat([x.to(model_dtype), lq_latents], dim=1)
            eps = denoise_copies(self.unet, model_input, t, context, copies=2 if guided else 1).float()
            if not guided:
                return eps
            eps_null, eps_ref = eps.chunk(2)
            return eps_null + guidance_scale * (eps_ref - eps_null)

        latents = sample(predict, scheduler, latents, progress, step_callback, self.cuda_graphs, start or 0)
        pixels = ((decode_quantized(self.vqvae, latents.to(model_dtype)).float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return RestorationOutput(images=to_pil(pixels), pixels=pixels, latents=latents)
