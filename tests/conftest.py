"""Shared test fixtures: the official-slim case from tests/fixtures and tiny random pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from refface import RefLDMPipeline, tiny_architecture
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.schedule import sampling_scheduler

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("REFFACE_FIXTURES", REPO / "tests" / "fixtures"))
SLIM = FIXTURES / "official-slim"


@pytest.fixture(scope="session")
def slim() -> Path:
    if not (SLIM / "case.pt").exists():
        pytest.fail(f"The official fixtures are missing at {SLIM}; set REFFACE_FIXTURES to the fixtures folder.")
    return SLIM


@pytest.fixture(scope="session")
def slim_case(slim: Path) -> dict:
    return torch.load(slim / "case.pt", weights_only=True)


@pytest.fixture(scope="session")
def slim_pipeline(slim: Path) -> RefLDMPipeline:
    return RefLDMPipeline.from_official(slim / "refldm.ckpt", slim / "vqgan.ckpt", slim / "config.yaml")


def restore_official_case(pipe: RefLDMPipeline, case: dict, **extra):
    """The official-slim case's restoration with the official script's settings (seed 7)."""
    inputs = case["inputs"]
    return pipe(
        inputs["lq"],
        inputs["refs"],
        num_inference_steps=inputs["steps"],
        guidance_scale=inputs["cfg_scale"],
        spacing=inputs["schedule"],
        seed=7,
        progress=False,
        **extra,
    )


def make_tiny_pipeline(seed: int = 0) -> RefLDMPipeline:
    torch.manual_seed(seed)
    return RefLDMPipeline.from_architecture(tiny_architecture()).eval_mode()


@pytest.fixture(scope="session")
def tiny_pipeline() -> RefLDMPipeline:
    return make_tiny_pipeline()


def random_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Random images in [-1, 1], [count, 3, size, size]."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def refldm_scheduler(template, steps: int, spacing: str = "uniform_trailing", solver: str = "ddim"):
    """ReF-LDM's sampling scheduler for `steps` steps of `spacing` and `solver` (its options otherwise)."""
    return sampling_scheduler(template, REFLDM_OPTIONS.with_changes(steps=steps, spacing=spacing, solver=solver))
