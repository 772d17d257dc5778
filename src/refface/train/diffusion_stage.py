"""Stages 2 and 3 of the paper: the LQ-conditioned LDM and the ReF-LDM fine-tune, in a frozen VQGAN's latent space.

Both train a `ReferenceDenoiser` with the eps-prediction loss; the ReF-LDM stage adds references
(CacheKV or an ablation), condition dropout and optionally the timestep-scaled identity loss.
The LDM stage is the same denoiser seeing no references, so its weights initialise ReF-LDM as is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import DDIMScheduler, VQModel
from torch import nn

from refface.models.reference_integration import CacheKVDenoiser, ReferenceDenoiser
from refface.pipelines.base import REFLDM_OPTIONS
from refface.train.diffusion_step import diffusion_step, encode_batch
from refface.train.identity_loss import IdentityLoss
from refface.train.sampling import restore_batch
from refface.train.stage import LossTerm, SampleRows, SingleDenoiserStage


class DiffusionStage(SingleDenoiserStage):
    """Trains `denoiser` on batches {"gt", "lq", "refs"}; `use_references=False` is the LQ-only LDM stage."""

    def __init__(
        self,
        denoiser: ReferenceDenoiser,
        vq: VQModel,
        scheduler: DDIMScheduler,
        learning_rate: float,
        condition_dropout: float,
        use_references: bool = True,
        identity_loss: IdentityLoss | None = None,
        guidance_scale: float = REFLDM_OPTIONS.guidance,
        diffusion_loss: str = "l1",
    ) -> None:
        self.denoiser = denoiser.train().requires_grad_(True)
        self.vq = vq.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).double()
        self.learning_rate = learning_rate
        self.condition_dropout = condition_dropout
        self.use_references = use_references
        self.identity_loss = identity_loss
        self.guidance_scale = guidance_scale
        self.diffusion_loss = diffusion_loss

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        self.vq.to(device)
        if self.identity_loss is not None:
            self.identity_loss.to(device)

    def _references(self, batch: dict) -> torch.Tensor | None:
        return batch["refs"] if self.use_references else None

    def losses(
        self, modules: dict[str, nn.Module], batch: dict, generator: torch.Generator, step: int
    ) -> Iterator[LossTerm]:
        latents = encode_batch(self.vq, batch["gt"], batch["lq"], self._references(batch))
        output = diffusion_step(
            modules["denoiser"],
            latents,
            self.alphas_cumprod,
            generator,
            self.condition_dropout,
            self.identity_loss,
            batch["gt"] if self.identity_loss is not None else None,
            self.diffusion_loss,
        )
        logs = {"diffusion": output.diffusion}
        if self.identity_loss is not None:
            logs["identity"] = output.identity
        yield LossTerm("denoiser", output.loss, logs)

    def sample(self, modules: dict[str, nn.Module], batch: dict, steps: int, seed: int) -> SampleRows:
        refs = batch["refs"] if self.use_references else batch["refs"][:, :0]
        output = restore_batch(
            modules["denoiser"], self.vq, self.scheduler, batch["lq"], refs, steps, self.guidance_scale, seed
        )
        return SampleRows(lq=batch["lq"], refs=refs, output=output.float(), gt=batch["gt"])

    def export(self, modules: dict[str, nn.Module], folder: Path) -> None:
        """A CacheKV denoiser becomes a `RefLDMPipeline` folder (`refface restore --model`); ablations save weights."""
        denoiser = modules["denoiser"]
        if isinstance(denoiser, CacheKVDenoiser):
            from refface.pipelines.refldm import RefLDMPipeline

            pipe = RefLDMPipeline(unet=denoiser.unet, vqvae=self.vq, scheduler=self.scheduler, speedups=False)
            pipe.save_pretrained(folder)
            return
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in denoiser.state_dict().items()}
        save_file(state, str(folder / "denoiser.safetensors"), metadata={"integration": denoiser.name})
        self.vq.save_pretrained(folder / "vqvae")
