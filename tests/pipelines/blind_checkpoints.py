"""Checkpoints of the blind restorers' released layouts with random weights, wrapped as their releases are.

GFPGANv1.4.pth and codeformer.pth hold `params_ema`; RestoreFormer++.ckpt holds `state_dict` with the network
under `vqvae.` beside training-only weights. The full layouts are what the releases hold (hundreds of MB each);
`TINY_RESTOREFORMER` is the same layout narrower and with one block a level, for quick tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_RESTOREFORMER = {"ch": 32, "mult": (1, 1, 1, 1, 1, 2), "blocks": 1, "z_channels": 32, "codebook": (64, 32)}


def _randomised(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state with every tensor moved by noise, so no layer is left at an identity or zero init."""
    generator = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    return {
        name: tensor + 0.02 * torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }


def save_gfpgan(path: Path, seed: int = 0) -> Path:
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    torch.save({"params_ema": _randomised(GFPGAN(), seed)}, path)
    return path


def save_codeformer(path: Path, seed: int = 0) -> Path:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    torch.save({"params_ema": _randomised(CodeFormer(), seed)}, path)
    return path


def save_restoreformer(path: Path, seed: int = 0, tiny: bool = False) -> Path:
    from refface.models.restoreformer import RestoreFormerPP

    torch.manual_seed(seed)
    network = RestoreFormerPP(**TINY_RESTOREFORMER) if tiny else RestoreFormerPP()
    state = {f"vqvae.{name}": tensor for name, tensor in _randomised(network, seed).items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)  # training-only, as in the release
    torch.save({"state_dict": state, "global_step": 1}, path)
    return path


SAVERS = {"codeformer": save_codeformer, "gfpgan": save_gfpgan, "restoreformer++": save_restoreformer}
