"""What a training stage gives the trainer: trainable modules, their losses, frozen helpers and samples.

The trainer (`refface.train.trainer`) owns everything common to the three stages of the paper:
Accelerate, optimisers, warm-up, EMA, checkpoints, metrics, the data position and the NaN guard.
A stage only says which modules it trains and how a batch becomes losses. Losses come from a
generator of `LossTerm`s so a stage with two optimisers (the VQGAN and its discriminator) can
compute its second loss after the first one has been applied, as taming-transformers does, and
every module is called through its (possibly DDP-wrapped) `forward`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn


@dataclass
class LossTerm:
    """One loss to back-propagate and the optimiser that steps on it; `logs` are detached floats."""

    optimizer: str
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class SampleRows:
    """Images for a sample grid, each [B, 3, S, S] in [-1, 1]; `refs` is [B, N, 3, S, S] (N may be 0)."""

    lq: torch.Tensor
    refs: torch.Tensor
    output: torch.Tensor
    gt: torch.Tensor


class TrainingStage(Protocol):
    """One stage of training (VQGAN, LQ-only LDM, ReF-LDM)."""

    def trainable(self) -> dict[str, nn.Module]:
        """Optimiser name -> the module it trains (in training mode, parameters requiring grad)."""
        ...

    def learning_rates(self) -> dict[str, float]:
        """Optimiser name -> base learning rate (before warm-up)."""
        ...

    def ema_target(self) -> str | None:
        """The trainable module whose exponential moving average is kept and used for samples."""
        ...

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the frozen helpers (VQGAN, ArcFace, LPIPS) to the training device."""
        ...

    def losses(
        self, modules: dict[str, nn.Module], batch: dict, generator: torch.Generator, step: int
    ) -> Iterator[LossTerm]:
        """Losses of one micro-batch, in the order they are applied; `modules` may be DDP-wrapped."""
        ...

    def sample(self, modules: dict[str, nn.Module], batch: dict, steps: int, seed: int) -> SampleRows:
        """Outputs for a few fixed validation items, with the (EMA) modules given."""
        ...

    def export(self, modules: dict[str, nn.Module], folder: Path) -> None:
        """Write the trained model (EMA weights where kept) as a folder later stages and `refface` load."""
        ...


class SingleDenoiserStage:
    """The trainer-facing part of a stage that trains one module, `self.denoiser`, at `self.learning_rate` with EMA."""

    denoiser: nn.Module
    learning_rate: float

    def trainable(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    def learning_rates(self) -> dict[str, float]:
        return {"denoiser": self.learning_rate}

    def ema_target(self) -> str | None:
        return "denoiser"
