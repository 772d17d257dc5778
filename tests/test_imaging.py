"""Reading real-world image files and writing results safely."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from refface import RefFaceError, load_image, save_image
from refface.imaging import check_output_path, to_model_input, to_pil


def _rgb(seed: int, size=(20, 12)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def test_modes_become_rgb(tmp_path):
    pixels = _rgb(0)
    Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(pixels).convert("L").save(tmp_path / "l.png")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "c.jpg")
    for name in ("p.png", "l.png", "c.jpg"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (20, 12)
    gray = np.asarray(load_image(tmp_path / "l.png"))
    assert np.array_equal(gray[..., 0], np.asarray(Image.fromarray(pixels).convert("L")))


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = np.asarray(load_image(tmp_path / "a.png"))
    assert image[0, 0].tolist() == [200, 0, 0]
    assert image[3, 3].tolist() == [255, 255, 255]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = np.asarray(load_image(tmp_path / "deep.png"))[..., 0].astype(int)
    assert abs(image - np.round(values / 257.0)).max() <= 1
    assert image.max() == 255 and image.min() == 0


def test_exif_rotation_is_applied(tmp_path):
    pixels = _rgb(1, size=(30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "rot.jpg").size == (10, 30)


def _bomb_png(path, width, height):
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_text("hello, I am text"), "not an image format"),
        (lambda p: _bomb_png(p, 100_000, 100_000), "decompression bomb"),
        (lambda p: p.write_bytes(_png_bytes()[:60]), "damaged or unreadable"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_files_fail_with_one_sentence_naming_the_file(tmp_path, make, needle):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(RefFaceError, match=needle) as error:
        load_image(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(_rgb(2, size=(64, 64))).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pixel_limit_is_configurable(tmp_path):
    Image.fromarray(_rgb(3)).save(tmp_path / "x.png")
    with pytest.raises(RefFaceError, match="limit"):
        load_image(tmp_path / "x.png", max_pixels=100)


def test_model_input_scaling_and_resize():
    images = [Image.fromarray(_rgb(4, size=(16, 16))), Image.fromarray(_rgb(5, size=(40, 24)))]
    batch = to_model_input(images, 16)
    assert batch.shape == (2, 3, 16, 16)
    assert torch.allclose(
        batch[0], torch.from_numpy(np.asarray(images[0], dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    )
    assert batch.min() >= -1 and batch.max() <= 1


def test_to_pil_truncates_like_the_official_writer():
    pixels = torch.tensor([0.0, 0.999, 0.5, 1.2]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert np.asarray(to_pil(pixels)[0])[..., 0].tolist() == [[0, 254], [127, 255]]


def test_output_checks(tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(_rgb(6)).save(source)
    before = source.read_bytes()
    with pytest.raises(RefFaceError, match="also an input"):
        check_output_path(source, [source], overwrite=True)
    with pytest.raises(RefFaceError, match="is a directory"):
        check_output_path(tmp_path, [source])
    with pytest.raises(RefFaceError, match="must end in"):
        check_output_path(tmp_path / "out.xyz", [source])
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep me")
    with pytest.raises(RefFaceError, match="--overwrite"):
        check_output_path(existing, [source])
    assert check_output_path(existing, [source], overwrite=True) == existing
    assert source.read_bytes() == before and existing.read_bytes() == b"keep me"


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    image = Image.fromarray(_rgb(7))
    target = save_image(image, tmp_path / "sub" / "out.png")
    assert np.array_equal(np.asarray(Image.open(target)), np.asarray(image))
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]


@pytest.mark.parametrize("umask", [0o022, 0o007, 0o002])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    """Outputs are as readable as any file the user creates, not private like mkstemp's temporaries."""
    import os

    from refface.files import write_text_atomically
    from refface.imaging import save_image

    previous = os.umask(umask)
    try:
        save_image(Image.new("RGB", (4, 4)), tmp_path / "image.png")
        write_text_atomically(tmp_path / "table.md", "| a |\n")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("image.png", "table.md", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected
