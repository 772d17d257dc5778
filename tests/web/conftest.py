"""Shared pieces of the web tests: tiny saved models and photos of a real (public-domain) face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


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


@pytest.fixture(scope="session")
def group_photos(tmp_path_factory) -> dict[str, Path]:
    """Grace Hopper (face 0) and the astronaut (face 1) side by side, degraded, and two references of each."""
    from tests.face.photos import astronaut, grace_hopper, group_photo, place, side_light

    root = tmp_path_factory.mktemp("group")
    Image.fromarray(group_photo()).save(root / "group.jpg", quality=85)
    made = {
        "eileen_a.jpg": place(astronaut(), 10, 1.1)[0],
        "eileen_b.jpg": place(side_light(astronaut()), 3, 1.3)[0],
        "grace_a.jpg": place(grace_hopper(), 0, 0.9)[0],
        "grace_b.jpg": place(side_light(grace_hopper()), -6, 1.0)[0],
    }
    for name, pixels in made.items():
        Image.fromarray(pixels).save(root / name, quality=92)
    return {name: root / name for name in ("group.jpg", *made)}
