"""From a checked `TrainConfig` to the objects a run needs: architecture, weights, datasets and the stage.

Everything that can fail on user input (missing data files, weights of the wrong shape, an image
size the architecture cannot take) fails here, before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel, VQModel
from torch.utils.data import Dataset

from refface.data.degradations import degradation_with_ranges
from refface.errors import RefFaceError
from refface.models.checkpoints import load_converted, read_state_dict, select_unet_weights, select_vq_weights
from refface.models.config import RefLDMArchitecture, load_official_config, released_architecture, tiny_architecture
from refface.models.convert import apply_rules, unet_rules, vq_rules
from refface.models.reference_integration import ReferenceDenoiser, build_denoiser
from refface.models.vq import build_vqmodel
from refface.pipelines.schedule import make_scheduler
from refface.train.config import TrainConfig, validation_sampling


@dataclass
class RunParts:
    """What `build_run` makes: the stage and the training / validation data."""

    stage: object  # a TrainingStage
    train_set: Dataset
    val_set: Dataset | None
    architecture: RefLDMArchitecture | None  # None for the Composite-Context stage (a text-to-image U-Net)


def build_architecture(config: TrainConfig) -> RefLDMArchitecture:
    name = config.model.architecture
    if name == "tiny":
        arch = tiny_architecture(config.data.size)
    elif name == "released":
        arch = released_architecture()
    else:
        arch = load_official_config(name)
    if arch.image_size != config.data.size:
        raise RefFaceError(
            f"model.architecture {name!r} works on {arch.image_size}x{arch.image_size} images but data.size is "
            f"{config.data.size}; set data.size to {arch.image_size}."
        )
    return arch


def _model_subfolder(path: Path, part: str) -> Path | None:
    """`part` (unet / vqvae) of a refface model folder or of a finished run folder, if there is one."""
    for candidate in (path / part, path / "model" / part):
        if (candidate / "config.json").is_file():
            return candidate
    if part == "vqvae" and (path / "config.json").is_file():
        return path  # a bare VQModel folder
    return None


def load_vq(source: str | None, arch: RefLDMArchitecture) -> VQModel:
    """The VQGAN: an official vqgan.ckpt, a refface model / run folder, or random weights when `source` is None."""
    if source is None:
        return build_vqmodel(arch.vq)
    path = Path(source)
    if path.is_dir():
        folder = _model_subfolder(path, "vqvae")
        if folder is None:
            raise RefFaceError(f"The folder {path} holds no VQGAN (no vqvae/config.json or model/vqvae/config.json).")
        return VQModel.from_pretrained(folder)
    state = read_state_dict(path, "VQGAN checkpoint")
    weights = apply_rules(select_vq_weights(state, {}, path), vq_rules(arch.vq), str(path))
    vq = build_vqmodel(arch.vq)
    load_converted(vq, weights, path)
    return vq


def unet_weights(source: str, arch: RefLDMArchitecture) -> dict[str, torch.Tensor]:
    """Denoiser weights from an official refldm/ldm checkpoint (EMA preferred) or a refface model / run folder."""
    path = Path(source)
    if path.is_dir():
        folder = _model_subfolder(path, "unet")
        if folder is None:
            raise RefFaceError(f"The folder {path} holds no denoiser (no unet/config.json or model/unet/config.json).")
        return UNet2DModel.from_pretrained(folder).state_dict()
    state = read_state_dict(path, "denoiser checkpoint")
    return apply_rules(select_unet_weights(state, path), unet_rules(arch.unet), str(path))


def initialise_denoiser(denoiser: ReferenceDenoiser, weights: dict[str, torch.Tensor], source: str) -> None:
    """Start from another stage's U-Net: the LDM's weights as they are, extra input channels zero, extra layers new.

    A channel-concat denoiser has more input channels than the LDM; the new ones start at zero so
    the initial network is the LDM exactly. Layers an ablation adds (cross-attention projections)
    keep their initialisation; anything else that does not match is an error.
    """
    target = denoiser.unet.state_dict()
    weights = dict(weights)
    conv_in = weights.get("conv_in.weight")
    wanted = target["conv_in.weight"]
    if conv_in is not None and conv_in.shape != wanted.shape and conv_in.shape[1] < wanted.shape[1]:
        widened = torch.zeros_like(wanted)
        widened[:, : conv_in.shape[1]] = conv_in
        weights["conv_in.weight"] = widened
    missing = [key for key in target if key not in weights and ".processor." not in key]
    unexpected = [key for key in weights if key not in target]
    wrong = [key for key in weights if key in target and weights[key].shape != target[key].shape]
    problem = missing[:1] or unexpected[:1] or wrong[:1]
    if problem:
        kind = "is missing" if missing else "is not part of this denoiser" if unexpected else "has the wrong shape"
        raise RefFaceError(f"The denoiser weights in {source} do not fit: {problem[0]} {kind}.")
    denoiser.unet.load_state_dict(weights, strict=False)


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    data = config.data
    degradation = degradation_with_ranges(data.degradation, data.degradation_ranges)
    if data.kind == "synthetic":
        from refface.data.synthetic import PhotoVariation, SyntheticReferenceDataset

        variation = PhotoVariation(data.pose_spread, data.expression)

        def synthetic(split: str, identities: int) -> Dataset:
            return SyntheticReferenceDataset(
                identities,
                data.photos_per_identity,
                data.size,
                data.num_refs,
                degradation,
                config.run.seed,
                split,
                variation=variation,
                color_jitter=data.color_jitter if split == "train" else 0.0,
            )

        return synthetic("train", data.identities), synthetic("val", max(1, config.run.validation_cases))
    from refface.data.training_set import ReferenceFaceDataset, pool_entries

    pool = data.kind == "folder"  # the FFHQ pool: no references, which stages vqgan and ldm do not use
    num_refs = 0 if pool else data.num_refs
    train = ReferenceFaceDataset(
        pool_entries(data.images_dir, data.images_list) if pool else data.references_csv,
        data.images_dir,
        degradation,
        num_refs,
        data.size,
        seed=config.run.seed,
        color_jitter=data.color_jitter,
    )
    val = None
    if data.val_references_csv:
        val = ReferenceFaceDataset(
            data.val_references_csv,
            data.images_dir,
            degradation,
            num_refs,
            data.size,
            flip=False,
            shuffle_refs=False,
            augmentation=None,
            seed=config.run.seed,
        )
    return train, val


def _identity_loss(config: TrainConfig, vq: VQModel, alphas_cumprod: torch.Tensor):
    if config.loss.identity == "none":
        return None
    from refface.face.arcface import default_arcface, load_arcface
    from refface.train.identity_loss import IdentityLoss

    arcface = load_arcface(config.loss.arcface_weights) if config.loss.arcface_weights else default_arcface()
    return IdentityLoss(vq, arcface, alphas_cumprod, config.loss.identity, config.loss.identity_scale)


def _vqgan_stage(config: TrainConfig, vq: VQModel):
    from refface.train.vqgan_losses import VQGANLossSettings
    from refface.train.vqgan_stage import VQGANStage

    settings = VQGANLossSettings(
        perceptual_weight=config.vqgan.perceptual_weight,
        codebook_weight=config.vqgan.codebook_weight,
        disc_weight=config.vqgan.disc_weight,
        disc_start=config.vqgan.disc_start,
        disc_layers=config.vqgan.disc_layers,
    )
    lpips = None
    if config.vqgan.lpips == "vgg":
        from refface.models.lpips import default_lpips

        lpips = default_lpips()
    return VQGANStage(vq, settings, lpips, config.optim.learning_rate)


def build_stage(config: TrainConfig, arch: RefLDMArchitecture):
    """The TrainingStage of `config.stage` with its initial weights."""
    if config.stage == "vqgan":
        return _vqgan_stage(config, load_vq(config.model.init_checkpoint, arch))

    from refface.train.diffusion_stage import DiffusionStage

    vq = load_vq(config.model.vqgan_checkpoint, arch)
    use_references = config.stage == "refldm"
    num_refs = config.data.num_refs if use_references else 0
    denoiser = build_denoiser(config.model.reference_integration, arch.unet, num_refs)
    if config.model.init_checkpoint:
        initialise_denoiser(denoiser, unet_weights(config.model.init_checkpoint, arch), config.model.init_checkpoint)
    if config.run.gradient_checkpointing:
        denoiser.unet.enable_gradient_checkpointing()
    scheduler = make_scheduler(arch.num_train_timesteps, arch.linear_start, arch.linear_end)
    alphas = torch.as_tensor(scheduler.alphas_cumprod).double()
    return DiffusionStage(
        denoiser,
        vq,
        scheduler,
        config.optim.learning_rate,
        config.loss.condition_dropout,
        use_references=use_references,
        identity_loss=_identity_loss(config, vq, alphas) if use_references else None,
        guidance_scale=validation_sampling(config).guidance,
        diffusion_loss=config.loss.diffusion,
    )


def build_run(config: TrainConfig) -> RunParts:
    if config.stage == "composite":
        from refface.train.composite_build import build_composite_stage

        stage = build_composite_stage(config)
        train_set, val_set = build_datasets(config)
        return RunParts(stage, train_set, val_set, None)
    arch = build_architecture(config)
    train_set, val_set = build_datasets(config)
    return RunParts(build_stage(config, arch), train_set, val_set, arch)
