"""Background models through spandrel: Real-ESRGAN's released layouts (random weights), tiled as untiled, at the
photo's depth, in the photo given back; and every way of not having one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refface.errors import RefFaceError
from refface.photo.background import Background, load_upscaler, upscale_tiled
from refface.photo.options import PhotoOutput
from refface.photo.original import OriginalPhoto
from refface.restoration.compose import compose
from tests.photo.scenes import aligned_in, scene_and_face
from tests.photo.upscalers import compact_checkpoint, rrdb_checkpoint


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    return compact_checkpoint(tmp_path_factory.mktemp("models") / "realesr-general-x4v3.pth")


@pytest.mark.parametrize(("kind", "scale"), [("compact", 4), ("rrdb", 4), ("rrdb", 2)])
def test_released_layouts_load_through_spandrel_with_their_scale(tmp_path, kind, scale):
    path = tmp_path / f"{kind}{scale}.pth"
    (compact_checkpoint(path) if kind == "compact" else rrdb_checkpoint(path, scale))
    model = load_upscaler(path)
    assert model.scale == scale and model.architecture.name in ("RealESRGAN Compact", "ESRGAN")
    image = torch.rand(1, 3, 18, 26)
    assert model(image).shape == (1, 3, 18 * scale, 26 * scale)


@pytest.mark.parametrize(("height", "width", "tile"), [(70, 90, 32), (64, 130, 48), (33, 41, 40)])
def test_tiles_give_the_untiled_result_within_rounding(compact, height, width, tile):
    model = load_upscaler(compact)
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height))
    with torch.inference_mode():
        whole = model(image)
        tiled = upscale_tiled(model, image, 4, tile)
    assert tiled.shape == whole.shape == (1, 3, 4 * height, 4 * width)
    assert (tiled - whole).abs().max() < 1e-5


def test_a_model_background_keeps_16_bits_and_the_grey_of_a_grey_photo(compact):
    scene, _ = scene_and_face(60)
    grey = np.repeat(scene.photo[..., :1].astype(np.uint16) * 257 + 100, 3, axis=2)
    aligned = aligned_in(scene, OriginalPhoto(grey).rgb8)
    options = PhotoOutput(scale=2, background="realesrgan", background_model=str(compact), tile=64)
    background = Background(options, progress=False)
    made = compose(OriginalPhoto(grey), [(scene.restored, aligned)], options, background)
    assert made.pixels.dtype == np.uint16 and made.pixels.shape == (2 * grey.shape[0], 2 * grey.shape[1], 3)
    assert np.array_equal(made.pixels[..., 0], made.pixels[..., 2])  # the model's colours stay out of it
    lanczos = PhotoOutput(scale=2, background="lanczos")
    plain = compose(OriginalPhoto(grey), [], lanczos, Background(lanczos, progress=False))
    assert np.abs(made.pixels.astype(int) - plain.pixels).mean() > 100  # the model drew it, not a resize


def test_a_named_model_file_also_works_at_scale_one(compact):
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    options = PhotoOutput(background_model=str(compact))
    made = compose(OriginalPhoto(photo), [], options, Background(options, progress=False))
    assert made.pixels.shape == photo.shape and not np.array_equal(made.pixels, photo)


def test_without_real_esrgan_weights_auto_falls_back_to_lanczos_with_a_note_and_realesrgan_refuses():
    photo = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    auto = PhotoOutput(scale=2)
    made = compose(OriginalPhoto(photo), [], auto, Background(auto, progress=False))  # the tests are offline
    assert made.pixels.shape == (60, 80, 3)
    assert any("Real-ESRGAN's weights are not at hand" in note and "Lanczos" in note for note in made.notes)
    insist = PhotoOutput(scale=2, background="realesrgan")
    with pytest.raises(RefFaceError, match="realesr-general-x4v3.pth"):
        compose(OriginalPhoto(photo), [], insist, Background(insist, progress=False))


def test_a_file_that_is_not_an_upscaler_is_one_sentence_naming_it(tmp_path):
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RefFaceError, match=f"The file {junk} is not a super-resolution model"):
        load_upscaler(junk)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(RefFaceError, match=f"The file {other} is not a super-resolution model"):
        load_upscaler(other)
    with pytest.raises(RefFaceError, match="does not exist"):
        load_upscaler(tmp_path / "missing.pth")


def test_the_released_names_are_the_downloadable_models():
    from refface.photo.background import REALESRGAN_MODELS
    from refface.photo.options import RELEASED_MODELS

    assert tuple(REALESRGAN_MODELS) == RELEASED_MODELS
    assert all(len(weight.sha256) == 64 for weight in REALESRGAN_MODELS.values())


def test_a_model_the_options_insist_on_is_loaded_before_any_work(tmp_path, compact):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model")
    with pytest.raises(RefFaceError, match="is not a super-resolution model"):
        Background(PhotoOutput(background_model=str(junk)), progress=False).prepare()
    with pytest.raises(RefFaceError, match="realesr-general-x4v3.pth"):  # offline: the download is refused now
        Background(PhotoOutput(background="realesrgan"), progress=False).prepare()
    ready = Background(PhotoOutput(background_model=str(compact)), progress=False)
    ready.prepare()
    assert ready.model() is not None
    Background(PhotoOutput(scale=2), progress=False).prepare()  # auto: nothing insisted on, nothing loaded
