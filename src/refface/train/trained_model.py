"""Load the exported model of a finished diffusion run, whatever its reference integration.

A CacheKV run exports a `RefLDMPipeline` folder that `refface restore --model` loads; the ablation
runs export `denoiser.safetensors` + `vqvae/`. Comparing them (the mechanism benchmark, an
evaluation of ablations) needs both back as the same `ReferenceDenoiser` interface, rebuilt from
the run's own config snapshot so no setting has to be repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from refface.errors import RefFaceError
from refface.models.reference_integration import CacheKVDenoiser, ReferenceDenoiser, build_denoiser
from refface.models.unet import install_cache_kv
from refface.pipelines.schedule import make_scheduler
from refface.train.build import build_architecture
from refface.train.config import TrainConfig, load_config
from refface.train.run_folder import RunFolder

__all__ = ["TrainedDiffusionModel", "load_trained_model"]


@dataclass
class TrainedDiffusionModel:
    """The exported (EMA) denoiser, the VQGAN and the noise schedule of one run, in eval mode."""

    denoiser: ReferenceDenoiser
    vq: VQModel
    scheduler: DDIMScheduler
    config: TrainConfig

    @property
    def uses_references(self) -> bool:
        return self.config.stage == "refldm"


def load_trained_model(run: str | Path, device: str | torch.device = "cpu") -> TrainedDiffusionModel:
    """The model a finished `ldm` / `refldm` run exported to `run/model/`."""
    folder = RunFolder(Path(run))
    if not folder.config.is_file():
        raise RefFaceError(f"{folder.root} is not a training run folder (it has no config.yaml).")
    config = load_config(folder.config)
    if config.stage not in ("ldm", "refldm"):
        raise RefFaceError(f"The run {folder.root} trained a {config.stage} stage, not a diffusion model.")
    if not (folder.model / "vqvae" / "config.json").is_file():
        raise RefFaceError(f"The run {folder.root} has not exported a model yet (no model/vqvae); finish or resume it.")
    arch = build_architecture(config)
    num_refs = config.data.num_refs if config.stage == "refldm" else 0
    weights = folder.model / "denoiser.safetensors"
    if weights.is_file():
        denoiser = build_denoiser(config.model.reference_integration, arch.unet, num_refs)
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as error:
            raise RefFaceError(f"The denoiser weights {weights} are not readable ({error}).") from None
        missing, unexpected = denoiser.load_state_dict(state, strict=False)
        if missing or unexpected:
            key = (missing or unexpected)[0]
            raise RefFaceError(f"The denoiser weights {weights} do not fit the run's config: {key} is wrong.")
    elif (folder.model / "unet" / "config.json").is_file():
        unet = UNet2DModel.from_pretrained(folder.model / "unet")
        install_cache_kv(unet)
        denoiser = CacheKVDenoiser(unet, num_refs)
    else:
        raise RefFaceError(f"The run {folder.root} exported no denoiser (model/unet or model/denoiser.safetensors).")
    vq = VQModel.from_pretrained(folder.model / "vqvae")
    scheduler = make_scheduler(arch.num_train_timesteps, arch.linear_start, arch.linear_end)
    return TrainedDiffusionModel(denoiser.to(device).eval(), vq.to(device).eval(), scheduler, config)
