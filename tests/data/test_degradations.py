"""The ReF-LDM degradation model and presets: each stage's measured effect, ranges and reproducibility."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from refface import RefFaceError
from refface.data.base import add_gaussian_noise, add_poisson_noise, jpeg, to_float, to_uint8
from refface.data.degradations import (
    PRESETS,
    PaperDegradation,
    degradation_by_name,
    degrade,
    degrade_tensor,
    sample_rng,
)

from .images import astronaut

MODEL = PRESETS["train"]


def clean(**overrides) -> dict:
    """Parameters that leave the image (almost) untouched, so one stage can be varied at a time."""
    params = {
        "kernel": "iso",
        "kernel_size": 41,
        "sigma_x": 0.0,
        "sigma_y": 0.0,
        "theta": 0.0,
        "scale": 1.0,
        "noise": 0.0,
        "jpeg_quality": 100,
    }
    params.update(overrides)
    if params["kernel"] == "iso":
        params["sigma_y"] = params["sigma_x"]
    return params


def detail(image: np.ndarray) -> float:
    """Variance of the Laplacian of the luma: high-frequency energy."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def apply(params: dict, image: np.ndarray, seed: int = 0) -> np.ndarray:
    return MODEL.apply(image, params, np.random.default_rng(seed))


def test_clean_parameters_leave_only_the_jpeg_round_trip():
    image = astronaut(128)
    output = apply(clean(), image)
    assert np.array_equal(output, to_uint8(jpeg(to_float(image), 100)))
    assert psnr(output, image) > 34  # quality 100 still subsamples chroma


def test_blur_removes_detail_monotonically_with_sigma():
    image = astronaut(128)
    energies = [detail(apply(clean(sigma_x=sigma), image)) for sigma in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)]
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)), energies
    assert energies[-1] < 0.05 * energies[0]


def test_anisotropic_blur_smears_along_its_long_axis():
    image = astronaut(128)
    along_x = apply(clean(kernel="aniso", sigma_x=6.0, sigma_y=0.3), image).astype(np.float64)
    horizontal = np.abs(np.diff(along_x, axis=1)).mean()
    vertical = np.abs(np.diff(along_x, axis=0)).mean()
    assert vertical > 2 * horizontal


def test_downscale_reduces_effective_resolution():
    image = astronaut(256)
    energies = [detail(apply(clean(scale=scale), image)) for scale in (1.0, 2.0, 4.0, 8.0, 16.0)]
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)), energies


def test_noise_std_matches_delta():
    """Measured on luma: JPEG keeps luma at full resolution (chroma is subsampled even at quality 100)."""
    gray = np.full((128, 128, 3), 128, dtype=np.uint8)
    luma = np.array([0.299, 0.587, 0.114])
    for delta in (5.0, 10.0, 20.0):
        residual = to_float(apply(clean(noise=delta), gray, seed=int(delta))) - 128 / 255
        # Independent channel noise of std s gives luma noise of std s * |luma|.
        assert (residual @ luma).std() == pytest.approx(delta / 255 * np.linalg.norm(luma), rel=0.05)
        assert abs(residual.mean()) < 0.1 * delta / 255


def test_gaussian_noise_stage_is_per_channel():
    flat = np.full((128, 128, 3), 0.5)
    residual = add_gaussian_noise(flat, 10.0, np.random.default_rng(0)) - flat
    assert residual.std(axis=(0, 1)) == pytest.approx([10 / 255] * 3, rel=0.03)
    assert np.abs(np.corrcoef(residual.reshape(-1, 3).T)[np.triu_indices(3, 1)]).max() < 0.03
    shared = add_gaussian_noise(flat, 10.0, np.random.default_rng(0), gray=True) - flat
    assert np.array_equal(shared[..., 0], shared[..., 2]) and shared.std() == pytest.approx(10 / 255, rel=0.03)


def test_lower_jpeg_quality_gives_more_error_and_blocks():
    image = astronaut(256)
    reference = apply(clean(), image)

    def blockiness(output: np.ndarray) -> float:
        steps = np.abs(np.diff(output.astype(np.float64).mean(axis=2), axis=1))
        columns = np.arange(steps.shape[1])
        return steps[:, columns % 8 == 7].mean() / steps[:, columns % 8 != 7].mean()

    outputs = {quality: apply(clean(jpeg_quality=quality), image) for quality in (95, 70, 40, 10)}
    errors = [np.abs(outputs[q].astype(int) - reference.astype(int)).mean() for q in (95, 70, 40, 10)]
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert blockiness(outputs[10]) > 1.5 > 1.2 > blockiness(outputs[95])


def test_jpeg_colour_order_matches_an_rgb_encoder():
    """OpenCV encodes BGR; handing it RGB would subsample the wrong chroma. Compare with Pillow (RGB)."""
    image = astronaut(128)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=50)
    pillow = np.asarray(Image.open(buffer).convert("RGB")).astype(int)
    ours = to_uint8(jpeg(to_float(image), 50)).astype(int)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 50])
    swapped = cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(int)
    assert np.abs(ours - pillow).mean() < 0.5 < 1.0 < np.abs(swapped - pillow).mean()


def test_poisson_noise_follows_photon_counts():
    ramp = np.tile(np.arange(256, dtype=np.float64) / 255, (256, 1))[..., None].repeat(3, axis=2)  # 256 levels
    rng = np.random.default_rng(0)
    noise = add_poisson_noise(ramp, 1.0, rng) - ramp
    middle = noise[:, 120:136]  # level ~0.5, 256 "photons" per unit -> std sqrt(0.5 / 256)
    assert middle.std() == pytest.approx(math.sqrt(0.5 / 256), rel=0.1)
    doubled = add_poisson_noise(ramp, 2.0, np.random.default_rng(0)) - ramp
    assert doubled[:, 120:136].std() == pytest.approx(2 * middle.std(), rel=0.02)
    gray = add_poisson_noise(ramp, 1.0, np.random.default_rng(1), gray=True)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (160, 96), (8, 8)])
@pytest.mark.parametrize("name", ["train", "severe", "realesrgan"])
def test_output_shape_and_dtype(shape, name):
    image = astronaut(shape)
    result = degrade(image, name, seed=3, index=1)
    assert result.image.shape == image.shape and result.image.dtype == np.uint8


def test_sampled_params_stay_in_preset_ranges():
    for name in ("train", "moderate", "severe"):
        preset = PRESETS[name]
        kinds = []
        for seed in range(300):
            params = preset.sample(sample_rng(seed, 7))
            kinds.append(params["kernel"])
            assert preset.sigma[0] <= params["sigma_x"] <= preset.sigma[1]
            assert preset.sigma[0] <= params["sigma_y"] <= preset.sigma[1]
            assert preset.scale[0] <= params["scale"] <= preset.scale[1]
            assert preset.noise[0] <= params["noise"] <= preset.noise[1]
            assert isinstance(params["jpeg_quality"], int)
            assert preset.jpeg[0] <= params["jpeg_quality"] <= preset.jpeg[1]
            assert params["kernel_size"] == 41
            if params["kernel"] == "iso":
                assert params["sigma_y"] == params["sigma_x"] and params["theta"] == 0.0
            else:
                assert -math.pi <= params["theta"] <= math.pi
        assert 0.4 < kinds.count("aniso") / len(kinds) < 0.6


def test_preset_ranges_are_the_papers():
    expected = {
        "train": ((0, 16), (1, 32), (0, 20), (30, 100)),
        "moderate": ((0, 8), (1, 8), (0, 15), (60, 100)),
        "severe": ((8, 16), (8, 32), (0, 20), (30, 100)),
    }
    for name, ranges in expected.items():
        preset = degradation_by_name(name)
        assert (preset.sigma, preset.scale, preset.noise, preset.jpeg) == ranges and preset.name == name


def test_severe_is_worse_than_moderate():
    image = astronaut(128)
    scores = {
        name: np.mean([psnr(degrade(image, name, 0, index).image, image) for index in range(8)])
        for name in ("moderate", "severe")
    }
    assert scores["severe"] < scores["moderate"] - 2, scores


def test_same_seed_and_index_reproduce_bytes():
    image = astronaut(96)
    for name in ("train", "realesrgan"):
        first, again = degrade(image, name, 5, 2), degrade(image, name, 5, 2)
        assert first.image.tobytes() == again.image.tobytes() and first.params == again.params
        assert not np.array_equal(first.image, degrade(image, name, 5, 3).image)
        assert not np.array_equal(first.image, degrade(image, name, 6, 2).image)


def test_params_and_rng_state_determine_apply():
    """degrade() is sample() then apply() on the same generator; apply() draws only the noise."""
    image = astronaut(96)
    rng = sample_rng(1, 4)
    params = MODEL.sample(rng)
    assert np.array_equal(MODEL.apply(image, params, rng), degrade(image, MODEL, 1, 4).image)
    assert np.array_equal(apply(params, image, seed=9), apply(params, image, seed=9))
    quiet = dict(params, noise=0.0)
    assert np.array_equal(apply(quiet, image, seed=1), apply(quiet, image, seed=2))


def test_input_validation():
    image = astronaut(64)
    assert np.array_equal(degrade(image / 255.0, "train", 0, 0).image, degrade(image, "train", 0, 0).image)
    for bad in (image[..., 0], image[..., :2], np.dstack([image, image[..., :1]]), image.astype(np.int16)):
        with pytest.raises(RefFaceError, match="image to degrade"):
            degrade(bad, "train", 0, 0)
    with pytest.raises(RefFaceError, match=r"\[0, 1\]"):
        degrade(image * 2.0, "train", 0, 0)
    with pytest.raises(RefFaceError, match="lack 'scale'"):
        MODEL.apply(image, {k: v for k, v in clean().items() if k != "scale"}, np.random.default_rng(0))
    with pytest.raises(RefFaceError, match="non-negative"):
        sample_rng(-1, 0)
    with pytest.raises(RefFaceError, match="kernel size"):
        PaperDegradation((0, 1), (1, 2), (0, 1), (50, 60), kernel_size=40)
    with pytest.raises(RefFaceError, match="range"):
        PaperDegradation((3, 1), (1, 2), (0, 1), (50, 60))


def test_presets_are_read_only_and_names_are_checked():
    assert set(PRESETS) == {"train", "moderate", "severe", "realesrgan"}
    with pytest.raises(TypeError):
        PRESETS["mine"] = MODEL  # type: ignore[index]
    with pytest.raises(RefFaceError, match="train, moderate, severe, realesrgan"):
        degradation_by_name("awful")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degrade_tensor_matches_numpy_path(dtype):
    images = np.stack([astronaut(64), astronaut(64)[::-1].copy(), astronaut(64)[:, ::-1].copy()])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype) / 255
    result = degrade_tensor(batch, "severe", 11, [4, 0, 9])
    assert result.shape == batch.shape and result.dtype == dtype and result.device == batch.device
    for image, index, tensor in zip(images, [4, 0, 9], result, strict=True):
        expected = degrade(image, "severe", 11, index).image
        assert torch.equal((tensor * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected))
    single = degrade_tensor(batch[1], "severe", 11, [0])
    assert torch.equal(single, result[1])
    with pytest.raises(RefFaceError, match="indices"):
        degrade_tensor(batch, "severe", 11, [0, 1])
    with pytest.raises(RefFaceError, match="float BCHW"):
        degrade_tensor(batch[:, :1], "severe", 11, [0, 1, 2])


def test_degradation_ranges_replace_only_what_they_name():
    """A toy-size severe degradation: new blur and downscale ranges, the preset's noise and JPEG ranges."""
    from refface.data.degradations import degradation_with_ranges

    custom = degradation_with_ranges("severe", {"sigma": [0.5, 1], "scale": [4, 8], "kernel_size": 5})
    severe = PRESETS["severe"]
    assert (custom.sigma, custom.scale, custom.kernel_size) == ((0.5, 1.0), (4.0, 8.0), 5)
    assert (custom.noise, custom.jpeg) == (severe.noise, severe.jpeg)
    rng = np.random.default_rng(3)
    for _ in range(20):
        params = custom.sample(rng)
        assert 0.5 <= params["sigma_x"] <= 1 and 4 <= params["scale"] <= 8
    assert degradation_with_ranges("moderate", None) is PRESETS["moderate"]


@pytest.mark.parametrize(
    ("name", "ranges", "needle"),
    [
        ("severe", {"blur": [1, 2]}, "Unknown degradation range 'blur'"),
        ("severe", {"scale": 4}, "must be \\[low, high\\]"),
        ("severe", {"sigma": [3, 1]}, "sigma range"),
        ("severe", {"kernel_size": 4}, "odd"),
        ("realesrgan", {"sigma": [1, 2]}, "Only the paper's presets"),
        ("blurry", {"sigma": [1, 2]}, "Unknown degradation preset"),
    ],
)
def test_bad_degradation_ranges_fail_with_one_sentence(name, ranges, needle):
    from refface.data.degradations import degradation_with_ranges

    with pytest.raises(RefFaceError, match=needle) as error:
        degradation_with_ranges(name, ranges)
    assert "\n" not in str(error.value)
