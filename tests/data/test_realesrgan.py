"""The second-order Real-ESRGAN degradation: shape, reproducibility, recorded params and sampling rates."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from refface.data.degradations import PRESETS, degrade, sample_rng
from refface.data.realesrgan import SecondOrderDegradation

from .images import astronaut

MODEL = SecondOrderDegradation()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_preset_is_the_x4plus_model():
    preset = PRESETS["realesrgan"]
    assert preset == MODEL and preset.name == "realesrgan" and preset.scale_factor == 4
    assert MODEL.first.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
    assert MODEL.first.kernel_probabilities == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    second = MODEL.second
    assert (second.blur_probability, second.sigma, second.resize_range) == (0.8, (0.2, 1.5), (0.3, 1.2))
    assert second.resize_probabilities == (0.3, 0.4, 0.3)
    assert (second.noise_sigma, second.poisson_scale) == ((1, 25), (0.05, 2.5))


def test_output_shape_reproducibility_and_seed_dependence():
    image = astronaut((96, 128))
    first = degrade(image, MODEL, 0, 0)
    assert first.image.shape == image.shape and first.image.dtype == np.uint8
    assert first.image.tobytes() == degrade(image, MODEL, 0, 0).image.tobytes()
    others = [degrade(image, MODEL, seed, 0).image for seed in (1, 2, 3)]
    assert all(not np.array_equal(first.image, other) for other in others)
    assert all(psnr(other, image) < 35 for other in [first.image, *others])  # visibly degraded


def test_params_are_flat_and_replay_through_apply():
    image = astronaut(64)
    for index in range(6):
        rng = sample_rng(2, index)
        params = MODEL.sample(rng)
        assert all(isinstance(value, str | int | float) for value in params.values())
        for key in ("blur1_kernel", "blur1_size", "resize1_scale", "resize1_mode", "noise1_kind", "noise1_gray"):
            assert key in params
        for key in ("jpeg1_quality", "blur2_kernel", "resize2_scale", "noise2_kind", "final_order", "jpeg2_quality"):
            assert key in params
        assert np.array_equal(MODEL.apply(image, params, rng), degrade(image, MODEL, 2, index).image)


def test_sampled_values_and_rates():
    counts: Counter[str] = Counter()
    trials = 2000
    for seed in range(trials):
        params = MODEL.sample(sample_rng(seed, 0))
        counts[f"blur1:{params['blur1_kernel']}"] += 1
        counts[f"blur2:{params['blur2_kernel']}"] += 1
        counts[f"final:{params['final_kernel']}"] += 1
        counts[f"resize1:{params['resize1_direction']}"] += 1
        counts[f"noise1:{params['noise1_kind']}"] += 1
        counts[f"gray1:{params['noise1_gray']}"] += 1
        counts[f"order:{params['final_order']}"] += 1
        assert params["blur1_size"] in range(7, 22, 2)
        if params["blur1_kernel"] == "sinc":
            low = math.pi / 3 if params["blur1_size"] < 13 else math.pi / 5
            assert low <= params["blur1_omega"] <= math.pi
        else:
            assert 0.2 <= params["blur1_sigma_x"] <= 3.0 and 0.2 <= params["blur1_sigma_y"] <= 3.0
        if params["blur1_kernel"].startswith("generalized"):
            assert 0.5 <= params["blur1_beta"] <= 4.0
        if params["blur1_kernel"].startswith("plateau"):
            assert 1.0 <= params["blur1_beta"] <= 2.0
        if params["blur2_kernel"] not in ("none", "sinc"):
            assert 0.2 <= params["blur2_sigma_x"] <= 1.5
        direction, scale = params["resize1_direction"], params["resize1_scale"]
        assert {"up": 1.0 <= scale <= 1.5, "down": 0.15 <= scale <= 1.0, "keep": scale == 1.0}[direction]
        assert 0.3 <= params["resize2_scale"] <= 1.2
        if params["noise1_kind"] == "gaussian":
            assert 1.0 <= params["noise1_sigma"] <= 30.0
        else:
            assert 0.05 <= params["noise1_scale"] <= 3.0
        if params["noise2_kind"] == "gaussian":
            assert 1.0 <= params["noise2_sigma"] <= 25.0
        assert 30 <= params["jpeg1_quality"] <= 95 and 30 <= params["jpeg2_quality"] <= 95

    def rate(key: str) -> float:
        return counts[key] / trials

    assert rate("blur1:sinc") == pytest.approx(0.1, abs=0.025)
    assert rate("blur1:iso") == pytest.approx(0.9 * 0.45, abs=0.04)
    assert rate("blur1:plateau_iso") == pytest.approx(0.9 * 0.12, abs=0.025)
    assert rate("blur2:none") == pytest.approx(0.2, abs=0.03)
    assert rate("final:pulse") == pytest.approx(0.2, abs=0.03)
    assert rate("resize1:down") == pytest.approx(0.7, abs=0.035)
    assert rate("noise1:gaussian") == pytest.approx(0.5, abs=0.04)
    assert rate("gray1:1") == pytest.approx(0.4, abs=0.04)
    assert rate("order:resize_first") == pytest.approx(0.5, abs=0.04)


def test_smaller_scale_factor_degrades_less():
    image = astronaut(128)
    mild = SecondOrderDegradation(scale_factor=2)
    scores = [
        np.mean([psnr(degrade(image, model, 0, index).image, image) for index in range(6)]) for model in (mild, MODEL)
    ]
    assert scores[0] > scores[1] + 1, scores
