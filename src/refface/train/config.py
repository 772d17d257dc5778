"""Training configuration: typed dataclasses read from YAML presets or files, checked before any work.

A typo in a config should cost seconds, not a GPU-day: unknown keys and wrong types are refused
with the key's full name, and the built-in presets are plain YAML files any run can start from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from refface.errors import RefFaceError
from refface.pipelines.base import COMPOSITE_OPTIONS, REFLDM_OPTIONS, SamplingOptions

STAGES = ("vqgan", "ldm", "refldm", "composite")
REFERENCE_ENCODERS = ("pretrained", "tiny")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """Which networks to train: a named size (`tiny`, `released`) or an official config YAML, optionally initialised.

    `reference_integration` picks how the denoiser sees references: `cachekv` (ReF-LDM) or one of the
    paper's ablations (`channel-concat`, `cross-attention`, `spatial-concat`).

    Stage `composite` (the Composite-Context method) reads `architecture` as `tiny` or a diffusers
    text-to-image folder (e.g. Stable Diffusion 2) whose U-Net it widens for the LQ latent, and
    `init_checkpoint` as a Composite-Context model or run folder to continue from; `context` is which parts of
    the reference context it trains with (`TRAINING_CONTEXTS`, the paper's Table 4 ablations).
    """

    architecture: str = "released"
    init_checkpoint: str | None = None  # official refldm.ckpt, a refface model folder or a finished run folder
    vqgan_checkpoint: str | None = None  # official vqgan.ckpt, a refface VQGAN run folder or model folder
    reference_integration: str = "cachekv"
    reference_encoders: str = "pretrained"  # composite: ArcFace R50 + FaRL (pretrained) or random tiny stand-ins
    farl_weights: str | None = None  # composite: FaRL .pth; None downloads the released ViT-B/16 ep64
    context: str = "composite"  # composite: composite (ArcFace + FaRL) | identity | appearance | none


@dataclass(frozen=True)
class DataConfig:
    """Where training items come from: an FFHQ-Ref style CSV over an image folder, or the synthetic task."""

    kind: str = "csv"  # csv | folder (an image pool without references: stages vqgan and ldm) | synthetic
    references_csv: str | None = None
    images_dir: str | None = None
    images_list: str | None = None  # folder: the images to use (paths relative to images_dir); None: all of them
    val_references_csv: str | None = None
    size: int = 512
    num_refs: int = 5
    degradation: str = "train"
    # Overrides of the preset's ranges (sigma, scale, noise, jpeg as [low, high]; kernel_size), e.g. for
    # toy image sizes, where the paper's 512-pixel blur and downscale would leave a single flat colour.
    degradation_ranges: dict | None = None
    # Colour jitter of the target photo before degradation (brightness, contrast, saturation; hue a tenth of it)
    color_jitter: float = 0.0
    identities: int = 64  # synthetic only
    photos_per_identity: int = 6  # synthetic only
    pose_spread: float = 1.0  # synthetic only: scales pose variation between photos (PhotoVariation.pose)
    expression: float = 0.0  # synthetic only: per-photo blink / open mouth amount, 0 to 1
    workers: int = 4


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, as the official configs (base learning rate 5e-5, 10k warm-up steps)."""

    learning_rate: float = 5.0e-5
    warmup_steps: int = 10_000
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999


STAGES_WITHOUT_REFERENCES = ("vqgan", "ldm")  # the stages that can train on a plain image pool
# Composite-Context trained with its whole reference context, one part of it, or none (an LQ-only model): the
# paper's Table 4. The parts left out are dropped at every step; validation samples with the same parts.
TRAINING_CONTEXTS = {"composite": "both", "identity": "identity", "appearance": "appearance", "none": "both"}
DIFFUSION_LOSS_NAMES = ("l1", "l2")  # train.diffusion_step.DIFFUSION_LOSSES has one function per name


@dataclass(frozen=True)
class LossConfig:
    """The diffusion loss, the identity loss switch (the paper's ablations) and the condition dropout of guidance
    training."""

    diffusion: str = "l1"  # l1 (both papers' choice) | l2 (MSE, for comparison)
    identity: str = "scaled"  # scaled | unscaled | t<100 | t<500 | none
    identity_scale: float = 0.1
    arcface_weights: str | None = None  # .onnx/.pth; None downloads the default R50
    condition_dropout: float = 0.1
    # composite only: the hard-example identity loss's weight of the reference term (the paper: 0.6)
    hard_example_lambda: float | None = None


@dataclass(frozen=True)
class VQGANConfig:
    """Stage-1 losses (taming-transformers' VQLPIPSWithDiscriminator; defaults of latent-diffusion's FFHQ VQGANs).

    `lpips: none` skips the perceptual term (no download); `vgg` downloads LPIPS-VGG on first use.
    """

    perceptual_weight: float = 1.0
    codebook_weight: float = 1.0
    disc_weight: float = 0.75
    disc_start: int = 0
    disc_layers: int = 3
    lpips: str = "vgg"


@dataclass(frozen=True)
class RunConfig:
    """Length, batch, precision and the cadence of logs, samples and checkpoints."""

    max_steps: int = 150_000
    batch_size: int = 8
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    log_every: int = 50
    sample_every: int = 5_000
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    sample_steps: int | None = None  # None: the method's (refface.pipelines.base)
    guidance_scale: float | None = None  # None: the method's; Composite-Context: both of its guidances
    validation_cases: int = 4
    tracker: str = "none"


@dataclass(frozen=True)
class TrainConfig:
    """One training stage."""

    stage: str = "refldm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits the field type (int is accepted where a float is expected)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _build(cls: type, values: Any, prefix: str, source: str) -> Any:
    if not isinstance(values, dict):
        raise RefFaceError(f"{prefix or 'The config'} in {source} must be a mapping of keys to values.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise RefFaceError(f"Unknown config key {name!r} in {source}; known keys here: {', '.join(fields)}.")
    built = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            built[key] = _build(hint, value, name, source)
            continue
        if isinstance(value, float) and hint is int and value.is_integer():
            value = int(value)
        if not _accepts(hint, value):
            expected = getattr(hint, "__name__", str(hint))
            raise RefFaceError(f"Config key {name!r} in {source} should be {expected}, got {value!r}.")
        built[key] = float(value) if hint is float else value
    return cls(**built)


def check_config(config: TrainConfig, source: str) -> TrainConfig:
    """Value checks that types alone cannot express, each naming its key."""
    from refface.data.degradations import PRESETS, degradation_with_ranges
    from refface.models.reference_integration import INTEGRATIONS
    from refface.train.identity_loss import IDENTITY_WEIGHTINGS

    rules = [
        ("stage", config.stage in STAGES, f"one of {', '.join(STAGES)}"),
        ("data.kind", config.data.kind in ("csv", "folder", "synthetic"), "csv, folder or synthetic"),
        ("data.degradation", config.data.degradation in PRESETS, f"one of {', '.join(PRESETS)}"),
        ("data.num_refs", config.data.num_refs >= 1, "at least 1 (stage ldm loads but ignores them)"),
        (
            "model.reference_integration",
            config.model.reference_integration in INTEGRATIONS,
            f"one of {', '.join(INTEGRATIONS)}",
        ),
        ("run.tracker", config.run.tracker in TRACKERS, f"one of {', '.join(TRACKERS)}"),
        ("run.validation_cases", config.run.validation_cases >= 0, "0 or more"),
        ("vqgan.lpips", config.vqgan.lpips in ("vgg", "none"), "vgg or none"),
        ("data.size", config.data.size >= 8 and config.data.size % 8 == 0, "a multiple of 8"),
        ("data.pose_spread", 0.0 <= config.data.pose_spread <= 6.0, "between 0 and 6"),
        ("data.expression", 0.0 <= config.data.expression <= 1.0, "between 0 and 1"),
        ("loss.identity", config.loss.identity in IDENTITY_WEIGHTINGS, f"one of {', '.join(IDENTITY_WEIGHTINGS)}"),
        ("loss.condition_dropout", 0.0 <= config.loss.condition_dropout < 1.0, "in [0, 1)"),
        ("loss.diffusion", config.loss.diffusion in DIFFUSION_LOSS_NAMES, f"one of {', '.join(DIFFUSION_LOSS_NAMES)}"),
        ("run.mixed_precision", config.run.mixed_precision in MIXED_PRECISION, f"one of {', '.join(MIXED_PRECISION)}"),
        ("run.max_steps", config.run.max_steps >= 1, "at least 1"),
        ("run.batch_size", config.run.batch_size >= 1, "at least 1"),
        ("run.gradient_accumulation", config.run.gradient_accumulation >= 1, "at least 1"),
        ("run.ema_decay", 0.0 <= config.run.ema_decay < 1.0, "in [0, 1)"),
        ("optim.learning_rate", config.optim.learning_rate > 0, "positive"),
        ("data.color_jitter", 0.0 <= config.data.color_jitter <= 1.0, "between 0 and 1"),
        (
            "model.reference_encoders",
            config.model.reference_encoders in REFERENCE_ENCODERS,
            f"one of {', '.join(REFERENCE_ENCODERS)}",
        ),
        (
            "loss.hard_example_lambda",
            config.loss.hard_example_lambda is None
            or (config.stage == "composite" and 0.0 <= config.loss.hard_example_lambda <= 1.0),
            "between 0 and 1, and only set for stage composite",
        ),
    ]
    for every in ("log_every", "sample_every", "checkpoint_every"):
        rules.append((f"run.{every}", getattr(config.run, every) >= 1, "at least 1"))
    for key, ok, expected in rules:
        if not ok:
            section, _, name = key.partition(".")
            value = getattr(getattr(config, section), name) if name else getattr(config, section)
            raise RefFaceError(f"Config key {key!r} in {source} must be {expected}, got {value!r}.")
    try:
        degradation_with_ranges(config.data.degradation, config.data.degradation_ranges)
    except RefFaceError as error:
        raise RefFaceError(f"Config key 'data.degradation_ranges' in {source}: {error}") from None
    if config.stage == "composite" and config.model.architecture == "released" and not config.model.init_checkpoint:
        raise RefFaceError(
            f"Config {source}: stage composite needs model.architecture tiny or a diffusers text-to-image folder "
            "(e.g. Stable Diffusion 2), or model.init_checkpoint with a Composite-Context model to continue."
        )
    if config.data.kind == "csv" and not (config.data.references_csv and config.data.images_dir):
        raise RefFaceError(f"Config {source}: data.kind csv needs data.references_csv and data.images_dir.")
    context = config.model.context
    if context not in TRAINING_CONTEXTS or (context != "composite" and config.stage != "composite"):
        raise RefFaceError(
            f"Config key 'model.context' in {source} must be one of {', '.join(TRAINING_CONTEXTS)} and only set "
            f"for stage composite, got {config.model.context!r}."
        )
    if config.data.kind == "folder" and not config.data.images_dir:
        raise RefFaceError(f"Config {source}: data.kind folder needs data.images_dir.")
    if config.data.kind == "folder" and config.stage not in STAGES_WITHOUT_REFERENCES:
        raise RefFaceError(
            f"Config {source}: stage {config.stage} trains with references, which an image folder does not have; "
            "use data.kind csv (a reference list)."
        )
    if config.data.images_list and config.data.kind != "folder":
        raise RefFaceError(f"Config {source}: data.images_list only applies with data.kind folder.")
    return config


def preset_names() -> list[str]:
    return sorted(p.stem for p in resources.files("refface.train.presets").iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A built-in preset by name (e.g. `tiny-refldm`) or a YAML file, with optional dotted-key overrides."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RefFaceError(f"The training config {path} does not exist.")
        source, text = str(path), path.read_text(encoding="utf-8")
    elif str(name_or_path) in preset_names():
        source = f"preset {name_or_path}"
        text = resources.files("refface.train.presets").joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
    else:
        raise RefFaceError(
            f"{name_or_path!r} is neither a YAML file nor a preset; presets: {', '.join(preset_names())}."
        )
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise RefFaceError(f"The training config {source} is not valid YAML ({error}).") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if key:
            values.setdefault(section, {})[key] = value
        else:
            values[section] = value
    return check_config(_build(TrainConfig, values, "", source), source)


def validation_sampling(config: TrainConfig) -> SamplingOptions:
    """How a run's validation samples are drawn: the method's own options, with the run's `sample_steps` and
    `guidance_scale` where given (for Composite-Context the scale sets both of its guidances)."""
    scale = config.run.guidance_scale
    if config.stage == "composite":
        return COMPOSITE_OPTIONS.with_changes(
            steps=config.run.sample_steps, guidance=scale, lq_guidance=scale,
            context=TRAINING_CONTEXTS[config.model.context],
        )  # fmt: skip
    return REFLDM_OPTIONS.with_changes(steps=config.run.sample_steps, guidance=scale)
