"""The blind face restorers both papers compare against (CodeFormer, GFPGAN v1.4, RestoreFormer++), behind the
`RestorationPipeline` contract, so the workflow, the benchmark and `--unknown blind` run them like any method.

Each restores a 512x512 FFHQ-aligned crop in one network pass and takes no references. GFPGAN and CodeFormer are
loaded with spandrel (CodeFormer's architecture is in spandrel-extra-arches, whose licence, like CodeFormer's
weights, is non-commercial); RestoreFormer++ with refface's own network (`refface.models.restoreformer`), since
spandrel reads only the original RestoreFormer. Their inputs and outputs are RGB in [-1, 1], as their authors'
inference scripts normalise them. GFPGAN's StyleGAN decoder draws fresh noise on every pass, as its authors' script
leaves it; here that noise comes from each image's seed, so a result can be made again.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refface.errors import RefFaceError, short_reason
from refface.pipelines.base import (
    CODEFORMER_OPTIONS,
    GFPGAN_OPTIONS,
    RESTOREFORMER_PP_OPTIONS,
    RestorationOutput,
    SamplingOptions,
    options_for,
    seeds_for,
)
from refface.pipelines.inputs import ImageInput, prepare_images
from refface.weights import WeightFile, ensure_weights

FACE_SIZE = 512  # all three restore 512x512 FFHQ-aligned crops


@dataclass(frozen=True)
class BlindKind:
    """One blind restorer: its name (the method's), options, released weights, spandrel's id of its architecture
    (None: refface's own network) and the extra package that holds that architecture, if any."""

    name: str
    options: SamplingOptions
    weights: WeightFile
    architecture: str | None = None
    needs: str | None = None


CODEFORMER_LICENCE = "S-Lab License 1.0 (CodeFormer; non-commercial use only)"
KINDS = {
    "codeformer": BlindKind(
        "codeformer", CODEFORMER_OPTIONS,
        WeightFile("codeformer.pth", "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
                   "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", CODEFORMER_LICENCE),
        architecture="CodeFormer", needs="spandrel_extra_arches",
    ),
    "gfpgan": BlindKind(
        "gfpgan", GFPGAN_OPTIONS,
        WeightFile("GFPGANv1.4.pth", "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
                   "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", "Apache License 2.0 (GFPGAN)"),
        architecture="GFPGAN",
    ),
    # The authors publish no checksum for this file; the loader checks every tensor's presence and shape instead.
    "restoreformer++": BlindKind(
        "restoreformer++", RESTOREFORMER_PP_OPTIONS,
        WeightFile("RestoreFormer++.ckpt",
                   "https://github.com/wzhouxiff/RestoreFormerPlusPlus/releases/download/v1.0.0/RestoreFormer%2B%2B.ckpt",
                   None, "Apache License 2.0 (RestoreFormer++)"),
    ),
}  # fmt: skip


class BlindRestorationPipeline:
    """A blind restorer's network as a restoration pipeline: references are accepted and not used (`uses_references`
    is False), the options are the restorer's (`default_options`), and one call restores a batch of crops."""

    uses_references = False

    def __init__(self, kind: BlindKind, network: torch.nn.Module, source: str) -> None:
        self.kind, self.network, self.source = kind, network.eval().requires_grad_(False), source
        self.default_options = kind.options

    @property
    def components(self) -> dict[str, Any]:
        return {"network": self.network}

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move the network (float16 is refused: spandrel marks all three as float32/bfloat16 models)."""
        if dtype == torch.float16:
            raise RefFaceError(
                f"{self.kind.options.method} does not run in float16 (its layers overflow there); use bf16 or fp32."
            )
        self.network.to(device=device, dtype=dtype)
        return self

    def encode_references(self, references: Sequence[ImageInput]) -> None:
        """A blind restorer has nothing to encode: it restores from the degraded face alone."""
        return None

    @torch.inference_mode()
    def __call__(
        self,
        lq: Sequence[ImageInput] | torch.Tensor,
        references: Any = None,
        *,
        options: SamplingOptions | None = None,
        seed: int | Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        progress: bool = True,
        step_callback=None,
    ) -> RestorationOutput:
        """Restore `lq` (PIL crops, or [-1, 1] tensors of 512x512); `references` are ignored. `seed` (one, or one
        per image) is the noise of GFPGAN's decoder; `noise` and `progress` have no use here. `step_callback` is
        told (index, 0, output) after each image, so a page can show progress."""
        options = options_for(self.default_options, options)
        batch = prepare_images(lq, FACE_SIZE, self.device, self.dtype)
        seeds = seeds_for(options, len(batch), seed)
        outputs = []
        for index, (image, image_seed) in enumerate(zip(batch, seeds, strict=True)):
            restored = self._restore(image[None], options, image_seed)
            outputs.append(restored)
            if step_callback is not None:
                step_callback(index, 0, restored)
        pixels = ((torch.cat(outputs).float() + 1) / 2).clamp(0, 1)
        return RestorationOutput(_to_images(pixels), pixels, None)

    def _restore(self, image: torch.Tensor, options: SamplingOptions, seed: int) -> torch.Tensor:
        if self.kind.name == "codeformer":
            return self.network(image, weight=options.fidelity)[0]
        if self.kind.name == "gfpgan":
            devices = [image.device] if image.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the decoder's noise, from this image's seed only
                torch.manual_seed(seed)
                return self.network(image, return_rgb=False)[0]
        return self.network(image)


def _to_images(pixels: torch.Tensor):
    """[B, 3, H, W] in [0, 1] -> 8-bit PIL images, rounded (as the authors' scripts write them)."""
    from PIL import Image

    array = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(image) for image in array]


def _spandrel_network(kind: BlindKind, path: Path) -> torch.nn.Module:
    import spandrel

    if kind.needs is not None:
        try:
            extra = importlib.import_module(kind.needs)
        except ImportError:
            raise RefFaceError(
                f"{kind.options.method} needs the package {kind.needs.replace('_', '-')} (non-commercial licence); "
                "install it with: pip install 'refface[codeformer]'."
            ) from None
        loader = spandrel.ModelLoader(registry=_registry_with(spandrel, extra))
    else:
        loader = spandrel.ModelLoader()
    try:
        descriptor = loader.load_from_file(path)
    except Exception as error:  # spandrel raises many kinds for files that are not models it knows
        raise RefFaceError(
            f"The file {path} is not a {kind.options.method} checkpoint spandrel can load ({short_reason(error)})."
        ) from None
    if descriptor.architecture.id != kind.architecture:
        raise RefFaceError(f"The file {path} holds a {descriptor.architecture.name} model, not {kind.options.method}.")
    return descriptor.model


def _registry_with(spandrel, extra):
    """spandrel's architectures plus the extra package's, in a registry of their own (the global one is left
    alone, so nothing else in the process changes what it loads)."""
    registry = spandrel.ArchRegistry()
    registry.add(*spandrel.MAIN_REGISTRY)
    registry.add(*extra.EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def _restoreformer_network(kind: BlindKind, path: Path) -> torch.nn.Module:
    from refface.models.checkpoints import read_state_dict
    from refface.models.restoreformer import restoreformer_from_state_dict

    return restoreformer_from_state_dict(read_state_dict(path, f"{kind.options.method} checkpoint"), str(path))


def load_blind(name: str, weights: str | Path | None = None, progress: bool = True) -> BlindRestorationPipeline:
    """Blind restorer `name` (a key of `KINDS`) from `weights` (a file; None: the release, downloaded on first use
    into the cache and checked), on the CPU in float32."""
    kind = KINDS[name]
    if weights is None:
        path = ensure_weights(kind.weights, progress=progress)
    else:
        path = Path(weights)
        if not path.is_file():
            raise RefFaceError(f"The {kind.options.method} weights file {path} does not exist.")
    network = _spandrel_network(kind, path) if kind.architecture else _restoreformer_network(kind, path)
    return BlindRestorationPipeline(kind, network.float(), str(path))
