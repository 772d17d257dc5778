"""Photos, albums and person folders of two real (public-domain) people for the workflow tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_tiny_pipeline
from tests.face.photos import group_photo
from tests.face.test_album import ASTRONAUT_PHOTOS, write_album


@pytest.fixture(scope="session")
def people_workspace(tmp_path_factory) -> Path:
    """tiny/ (a saved tiny model), group.jpg, album/ (both people), astro_album/ and people/Eileen, people/Grace."""
    root = tmp_path_factory.mktemp("people")
    make_tiny_pipeline(seed=3).save_pretrained(root / "tiny")
    Image.fromarray(group_photo()).save(root / "group.jpg", quality=85)
    album = write_album(root / "album")
    (root / "astro_album").mkdir()
    for name in ASTRONAUT_PHOTOS:
        shutil.copy(album / name, root / "astro_album" / name)
    for person, prefix in (("Eileen", "astro_"), ("Grace", "hopper_")):
        (root / "people" / person).mkdir(parents=True)
        for name in ("plain.jpg", "mirror.jpg", "light.jpg"):
            shutil.copy(album / f"{prefix}{name}", root / "people" / person / f"{prefix}{name}")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test its own user cache (album scans, encoded people): no test sees another's."""
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path / "cache"))
