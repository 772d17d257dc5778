"""Shared test fixtures: the official-slim case from tests/fixtures and tiny random pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refface import RefLDMPipeline, tiny_architecture
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.schedule import sampling_scheduler

# Tests never download: a detector or model whose weights are not in the cache falls back or says so at once.
os.environ["REFFACE_OFFLINE"] = "1"

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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random ReF-LDM and a tiny random Composite-Context model, saved as `--model` folders (32 px)."""
    from refface import RefLDMPipeline, tiny_architecture
    from refface.pipelines.composite import CompositeContextPipeline

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    RefLDMPipeline.from_architecture(tiny_architecture(32)).save_pretrained(root / "refldm")
    CompositeContextPipeline.tiny(32).save_pretrained(root / "composite")
    return {"refldm": root / "refldm", "composite": root / "composite"}


@pytest.fixture(scope="session")
def face_photos(tmp_path_factory) -> dict[str, Path]:
    """A degraded photo of the astronaut (the LQ) and two altered copies as references."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    photo = Image.fromarray(data.astronaut())
    photo.resize((128, 128), Image.Resampling.BILINEAR).resize((384, 384), Image.Resampling.BILINEAR).save(
        root / "old photo.jpg", quality=60
    )
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "ref_a.png")
    photo.resize((400, 400)).save(root / "ref_b.png")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((7000, 6000, 3), dtype=np.uint8)).save(root / "huge.png")  # 42 MP, small file
    return {name: root / name for name in ("old photo.jpg", "ref_a.png", "ref_b.png", "notes.txt", "huge.png")}
