"""Shared pieces of the web tests: tiny saved models and photos of a real (public-domain) face."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


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
