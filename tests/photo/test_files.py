"""The photo given back keeps its file: format, 16-bit depth, ICC profile, EXIF, XMP, resolution, JPEG tables,
and every pixel outside the faces."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from refface.errors import RefFaceError
from refface.face.paste import face_mask
from refface.photo.background import Background
from refface.photo.options import PhotoOutput
from refface.photo.original import PhotoMetadata, load_original, original_from_bytes, upright
from refface.photo.writer import encode_photo, write_photo
from refface.restoration.compose import compose
from tests.photo.scenes import aligned_in, scene_and_face

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description dc:title="Beach, 1962"/></rdf:RDF></x:xmpmeta>'


@cache
def _icc() -> bytes:
    """One sRGB profile for the whole module (a new one carries the time it was made)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Kodak"
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "1962:07:04 10:00:00"  # date taken, in the EXIF sub-directory
    return exif


def _sixteen_bit_scan(tmp_path, seed: int, grey: bool = False):
    """A 16-bit PNG scan of the scene's photo (with fine detail below 8 bits), ICC profile, EXIF and XMP."""
    scene, _ = scene_and_face(90, seed)
    rng = np.random.default_rng(seed)
    pixels = scene.photo.astype(np.uint16) * 257 + rng.integers(0, 257, scene.photo.shape, dtype=np.uint16)
    if grey:
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    metadata = PhotoMetadata(bits=16, grey_file=grey, icc_profile=_icc(), exif=_exif().tobytes(), xmp=XMP,
                             dpi=(600.0, 600.0))  # fmt: skip
    path = tmp_path / f"scan{seed}.png"
    path.write_bytes(encode_photo(pixels, metadata, "PNG")[0])
    return scene, path, pixels


@pytest.mark.parametrize(("seed", "grey"), [(0, False), (1, True)])
def test_a_16_bit_png_comes_back_16_bit_with_its_profile_and_exif_and_every_other_pixel_as_it_was(
    tmp_path, seed, grey
):
    scene, path, pixels = _sixteen_bit_scan(tmp_path, seed, grey)
    original = load_original(path)
    assert original.pixels.dtype == np.uint16 and np.array_equal(original.pixels, pixels)
    aligned = aligned_in(scene, original.rgb8)
    options = PhotoOutput()
    made = compose(original, [(scene.restored, aligned)], options, Background(options, progress=False))
    target, notes = write_photo(made.pixels, original.metadata, tmp_path / "out" / "scan.png")
    assert notes == []
    written = Image.open(target)
    assert written.mode == ("I;16" if grey else "RGB")  # Pillow holds 16-bit RGB as 8-bit: read it at full depth
    assert written.info["icc_profile"] == _icc()
    exif = written.getexif()
    assert exif[0x010F] == "Kodak" and exif.get_ifd(0x8769)[0x9003] == "1962:07:04 10:00:00"
    assert exif[0x0131].startswith("refface") and exif[0x0112] == 1
    back = load_original(target)
    assert back.pixels.dtype == np.uint16 and back.metadata.xmp == XMP
    assert back.metadata.dpi[0] == pytest.approx(600, abs=0.01)
    outside = face_mask(aligned, pixels.shape[:2]) == 0
    assert np.array_equal(back.pixels[outside], pixels[outside])
    inside = face_mask(aligned, pixels.shape[:2]) > 0.99
    assert np.any(back.pixels[inside] % 257 != 0)  # blended at full depth, not at 8 bits scaled up
    assert grey == bool(np.array_equal(back.pixels[..., 0], back.pixels[..., 2]))


def test_16_bit_tiff_keeps_its_depth_profile_xmp_and_resolution(tmp_path):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)
    metadata = PhotoMetadata(bits=16, icc_profile=_icc(), exif=_exif().tobytes(), xmp=XMP, dpi=(300.0, 300.0))
    data, notes = encode_photo(pixels, metadata, "TIFF")
    back = original_from_bytes(data, "scan.tif")
    assert np.array_equal(back.pixels, pixels)
    assert back.metadata.icc_profile == _icc() and back.metadata.xmp == XMP and back.metadata.dpi == (300.0, 300.0)
    assert notes and "EXIF" in notes[0]  # said, not silently lost


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_pixels_are_turned_upright_as_pillow_turns_8_bit_ones(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 65536, (7, 12, 3), dtype=np.uint16)
    eight = np.rint(pixels / 257).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, "PNG", exif=_exif(orientation).tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    assert np.array_equal(np.rint(upright(pixels, orientation) / 257).astype(np.uint8), expected)
    data, _ = encode_photo(pixels, PhotoMetadata(bits=16, exif=_exif(orientation).tobytes()), "PNG")
    assert np.array_equal(original_from_bytes(data, "turned.png").pixels, upright(pixels, orientation))


def test_a_jpeg_keeps_its_exif_its_quantisation_tables_and_nearly_all_its_pixels(tmp_path):
    scene, _ = scene_and_face(90, 3)
    path = tmp_path / "beach.jpg"
    Image.fromarray(scene.photo).save(path, quality=80, exif=_exif().tobytes(), icc_profile=_icc(), xmp=XMP)
    original = load_original(path)
    aligned = aligned_in(scene, original.rgb8)
    options = PhotoOutput()
    made = compose(original, [(scene.restored, aligned)], options, Background(options, progress=False))
    target, _ = write_photo(made.pixels, original.metadata, tmp_path / "out" / "beach.jpg")
    written = Image.open(target)
    assert written.quantization == Image.open(path).quantization  # its own quality, not a new one
    assert written.getexif().get_ifd(0x8769)[0x9003] == "1962:07:04 10:00:00"
    assert written.info["icc_profile"] == _icc() and written.info["xmp"] == XMP
    far = face_mask(aligned, scene.photo.shape[:2], mask="square") == 0
    moved = np.abs(np.asarray(written).astype(int) - original.pixels)[far]
    assert moved.mean() < 1.0 and moved.max() <= 12  # re-quantised with the same tables: small moves only


def test_grey_8_bit_files_stay_one_channel_and_other_formats_convert(tmp_path):
    grey = np.repeat(np.random.default_rng(2).integers(0, 256, (20, 30, 1), dtype=np.uint8), 3, axis=2)
    path, _ = write_photo(grey, PhotoMetadata(grey_file=True), tmp_path / "grey.png")
    assert Image.open(path).mode == "L"
    sixteen = grey.astype(np.uint16) * 257
    data, notes = encode_photo(sixteen, PhotoMetadata(bits=16), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "RGB" and "8 bits" in notes[0]
    with pytest.raises(RefFaceError, match="must end in one of"):
        write_photo(grey, PhotoMetadata(), tmp_path / "grey.gif")


def test_the_output_suffix_follows_the_input_unless_a_format_is_named(tmp_path):
    from pathlib import Path

    assert PhotoOutput().suffix_for(Path("a/scan.TIFF")) == ".tif"
    assert PhotoOutput().suffix_for(Path("beach.JPEG")) == ".jpg"
    assert PhotoOutput(format="png").suffix_for(Path("beach.jpg")) == ".png"


@pytest.mark.slow
def test_the_command_line_enlarges_a_16_bit_scan_and_keeps_its_depth_and_metadata(tmp_path, tiny_models, capsys):
    from refface.cli import main

    _, path, pixels = _sixteen_bit_scan(tmp_path, 2)
    out = tmp_path / "out"
    code = main(["restore", str(path), "--no-refs", "-o", str(out), "--model", str(tiny_models["refldm"]),
                 "--steps", "2", "--upscale", "2", "--detector", "cascade"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Real-ESRGAN's weights are not at hand" in printed and "Lanczos" in printed  # offline: said, not failed
    back = load_original(out / "restored_imgs" / "scan2.png")
    assert back.pixels.dtype == np.uint16 and back.pixels.shape == (2 * pixels.shape[0], 2 * pixels.shape[1], 3)
    assert back.metadata.icc_profile == _icc() and back.metadata.xmp == XMP
    exif = Image.Exif()
    exif.load(back.metadata.exif)
    assert exif[0x010F] == "Kodak" and exif.get_ifd(0x8769)[0x9003] == "1962:07:04 10:00:00"
