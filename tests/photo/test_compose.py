"""The photo given back: restored detail kept at the output scale, no seam at the paste, grey and toned photos
kept so, and the scale chosen as asked."""

from __future__ import annotations

import numpy as np
import pytest

from refface.errors import RefFaceError
from refface.evaluation.photo_back import kept_psnr, seam_figure
from refface.face.paste import face_mask, paste_face
from refface.photo.background import Background
from refface.photo.options import PhotoOutput
from refface.photo.original import OriginalPhoto
from refface.photo.tone import photo_tone
from refface.restoration.compose import choose_scale, compose
from tests.photo.scenes import aligned_in, scene_and_face


def _composed(photo: np.ndarray, faces, **options):
    settings = PhotoOutput(**options)
    return compose(OriginalPhoto.from_pixels(photo), faces, settings, Background(settings, progress=False))


@pytest.mark.parametrize(("face_width", "seed"), [(140, 0), (150, 1)])
def test_at_scale_two_the_restored_crop_survives_where_scale_one_loses_it(face_width, seed):
    scene, aligned = scene_and_face(face_width, seed)
    one = _composed(scene.photo, [(scene.restored, aligned)], background="lanczos")
    two = _composed(scene.photo, [(scene.restored, aligned)], scale=2, background="lanczos")
    assert one.pixels.shape == scene.photo.shape
    assert two.pixels.shape == (2 * scene.photo.shape[0], 2 * scene.photo.shape[1], 3)
    kept_one, kept_two = (kept_psnr(made.pixels, scene.restored, aligned) for made in (one, two))
    assert kept_two >= 30.0
    assert kept_one < kept_two - 4.0  # clearly less: the crop was shrunk into the few pixels the face had


def test_the_whole_photo_is_enlarged_and_only_the_face_differs_from_the_resized_photo():
    scene, aligned = scene_and_face(60)
    made = _composed(scene.photo, [(scene.restored, aligned)], scale=3, background="lanczos")
    plain = _composed(scene.photo, [], scale=3, background="lanczos")
    assert made.pixels.shape == plain.pixels.shape == (3 * scene.photo.shape[0], 3 * scene.photo.shape[1], 3)
    weights = face_mask(aligned, made.pixels.shape[:2])
    changed = np.any(made.pixels != plain.pixels, axis=-1)
    assert changed.any() and not (changed & (weights == 0)).any()


def test_the_face_mask_with_the_photo_s_tone_at_its_edge_halves_the_seam_of_the_plain_square():
    for seed, width, shift in ((0, 90, (45, 25, -20)), (1, 120, (-35, -10, 30))):
        scene, aligned = scene_and_face(width, seed)
        shifted = np.clip(scene.restored.astype(np.int16) + np.array(shift), 0, 255).astype(np.uint8)
        square = paste_face(scene.photo, shifted, aligned, mask="square", match_tone=False)  # the paste before
        made = _composed(scene.photo, [(shifted, aligned)])
        before = seam_figure(scene.photo, square, face_mask(aligned, scene.photo.shape[:2], mask="square"))
        after = seam_figure(scene.photo, made.pixels, face_mask(aligned, scene.photo.shape[:2]))
        assert after <= 0.5 * before, (before, after)
        assert after < 0.1  # the edge adds hardly any gradient of its own


def test_a_grey_photo_restored_in_colour_has_no_chroma_anywhere():
    scene, _ = scene_and_face(100)
    grey = np.repeat(scene.photo.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)
    aligned = aligned_in(scene, grey)
    colourful = scene.restored  # a colour face, as the references give it
    for options in ({}, {"scale": 2, "background": "lanczos"}):
        made = _composed(grey, [(colourful, aligned)], **options)
        assert made.tone.kind == "grey" and any("black-and-white" in note for note in made.notes)
        assert np.array_equal(made.pixels[..., 0], made.pixels[..., 1])
        assert np.array_equal(made.pixels[..., 0], made.pixels[..., 2])
    restored = _composed(grey, [(colourful, aligned)], colour="restore")
    assert np.abs(restored.pixels[..., 0].astype(int) - restored.pixels[..., 2]).max() > 20


def _hue(pixels: np.ndarray) -> np.ndarray:
    values = pixels.reshape(-1, 3).astype(np.float64)
    luma = values @ [0.299, 0.587, 0.114]
    return np.degrees(np.arctan2((values[:, 0] - luma) * 0.713, (values[:, 2] - luma) * 0.564))


def test_a_sepia_photo_s_restored_face_takes_the_photo_s_hue():
    scene, _ = scene_and_face(100)
    luma = scene.photo.astype(np.float64) @ [0.299, 0.587, 0.114]
    sepia = np.clip(np.stack([luma * 1.07, luma * 0.88, luma * 0.66], axis=2), 0, 255).astype(np.uint8)
    aligned = aligned_in(scene, sepia)
    made = _composed(sepia, [(scene.restored, aligned)])
    assert made.tone.kind == "toned"
    face = face_mask(aligned, sepia.shape[:2]) > 0.99
    bright = (luma > 40)[face]  # hue is meaningless in the darkest pixels
    photo_hue = np.median(_hue(sepia[face][bright]))
    face_hue = _hue(made.pixels[face][bright])
    assert np.abs(face_hue - photo_hue).mean() < 4.0
    assert np.abs(_hue(scene.restored.reshape(-1, 3)) - photo_hue).mean() > 20  # the crop itself was not sepia


def test_colour_photos_stay_colour_and_keep_forces_the_photo_s_tone():
    scene, aligned = scene_and_face(100)
    assert photo_tone(scene.photo).kind == "colour"
    assert _composed(scene.photo, [(scene.restored, aligned)]).tone.kind == "colour"
    assert photo_tone(scene.photo, "keep").kind == "toned"


def test_auto_scale_keeps_the_largest_face_whole_up_to_four_and_the_megapixel_cap_wins():
    auto = PhotoOutput(scale="auto")
    assert choose_scale(auto, (480, 640), [100.0, 300.0], 512) == (2.0, [])
    assert choose_scale(auto, (480, 640), [512.0], 512) == (1.0, [])
    scale, notes = choose_scale(auto, (480, 640), [60.0], 512)
    assert scale == 4.0 and "stops at 4" in notes[0]
    capped, notes = choose_scale(PhotoOutput(scale=8, max_megapixels=4), (1000, 1000), [100.0], 512)
    assert capped == 2.0 and "--max-megapixels 4" in notes[0]
    assert choose_scale(PhotoOutput(scale=2.5), (100, 100), [], 512) == (2.5, [])


@pytest.mark.parametrize(
    ("options", "flag"),
    [({"scale": 9}, "--upscale"), ({"scale": "big"}, "--upscale"), ({"scale": 0.5}, "--upscale"),
     ({"background": "magic"}, "--background"), ({"scale": 2, "background": "none"}, "--background none"),
     ({"tile": 8}, "--tile"), ({"max_megapixels": 0}, "--max-megapixels"), ({"colour": "sepia"}, "--colour"),
     ({"format": "gif"}, "--format"), ({"background": "lanczos", "background_model": "x.pth"}, "--background-model"),
     ({"background_model": "no-such-model.pth"}, "is not a file, nor one of Real-ESRGAN's released models")],
)  # fmt: skip
def test_each_bad_photo_option_is_one_sentence_naming_its_flag(options, flag):
    with pytest.raises(RefFaceError, match=flag):
        PhotoOutput(**options)
