"""Whole restorations through onnxruntime alone (the numpy sampler) against refface on the official-slim case."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refface import load_image
from refface.export.onnx_sampler import OnnxRestorer, OnnxSamplerError

pytestmark = pytest.mark.slow  # every test here reads the shared ONNX export, the slow part


@pytest.fixture(scope="module")
def restorer(slim_onnx) -> OnnxRestorer:
    return OnnxRestorer(slim_onnx)


@pytest.fixture(scope="module")
def fixture_images(slim):
    lq = np.asarray(load_image(slim / "lq.png"))
    refs = [np.asarray(load_image(slim / f"ref{i}.png")) for i in range(3)]
    return lq, refs


def _levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_fixture_restoration_within_one_level(restorer, fixture_images, slim, slim_pipeline):
    lq, refs = fixture_images
    noise = slim_pipeline.initial_noise(1, 7)
    got = restorer.restore(lq, refs, steps=5, noise=noise.numpy())
    assert got.shape == (1, 128, 128, 3) and got.dtype == np.uint8
    ours = np.asarray(
        slim_pipeline(
            [Image.fromarray(lq)], [Image.fromarray(r) for r in refs], num_inference_steps=5, seed=7, progress=False
        ).images[0]
    )
    official = np.asarray(Image.open(slim / "expected.png").convert("RGB"))
    assert _levels(got[0], ours) <= 1
    assert _levels(got[0], official) <= 1
    # and the references matter: two of them give another picture
    two = restorer.restore(lq, refs[:2], steps=5, noise=noise.numpy())
    assert np.abs(two.astype(int) - got.astype(int)).mean() > 1


def test_strength_matches_refface(restorer, fixture_images, slim_pipeline):
    """A light touch (SDEdit) from the LQ latent, with the `uniform` spacing the face-swap hosts use."""
    lq, refs = fixture_images
    noise = slim_pipeline.initial_noise(1, 3)
    got = restorer.restore(lq, refs, steps=8, noise=noise.numpy(), strength=0.4, spacing="uniform")
    want = slim_pipeline(
        [Image.fromarray(lq)],
        [Image.fromarray(r) for r in refs],
        num_inference_steps=8,
        noise=noise,
        strength=0.4,
        spacing="uniform",
        progress=False,
    ).images[0]
    assert _levels(got[0], np.asarray(want)) <= 1
    full = restorer.restore(lq, refs, steps=8, noise=noise.numpy(), spacing="uniform")
    assert np.abs(got.astype(int) - full.astype(int)).mean() > 1  # the light touch is not the full restoration


def test_batch_without_references_and_reused_references(restorer, fixture_images, slim_pipeline):
    lq, refs = fixture_images
    batch = np.stack([lq, refs[0]])
    noise = slim_pipeline.initial_noise(2, [5, 6])
    got = restorer.restore(batch, None, steps=4, noise=noise.numpy())
    want = slim_pipeline(
        [Image.fromarray(a) for a in batch], None, num_inference_steps=4, noise=noise, progress=False
    ).images
    for image, expected in zip(got, want, strict=True):
        assert _levels(image, np.asarray(expected)) <= 1
    # keys/values encoded once serve every photo, with guidance scale 2
    cache = restorer.encode_references(refs[1:])
    got = restorer.restore(batch, cache, steps=4, noise=noise.numpy(), guidance_scale=2.0)
    want = slim_pipeline(
        [Image.fromarray(a) for a in batch],
        [Image.fromarray(r) for r in refs[1:]],
        num_inference_steps=4,
        noise=noise,
        guidance_scale=2.0,
        progress=False,
    ).images
    for image, expected in zip(got, want, strict=True):
        assert _levels(image, np.asarray(expected)) <= 1


def test_sampler_runs_without_torch(slim_onnx, fixture_images, restorer, tmp_path):
    """The copy in the export folder restores with numpy and onnxruntime only: torch cannot be imported."""
    lq, refs = fixture_images
    noise = np.random.default_rng(11).standard_normal((1, 8, 16, 16), dtype=np.float32)
    np.save(tmp_path / "noise.npy", noise)
    np.save(tmp_path / "inputs.npy", np.stack([lq, *refs]))
    script = f"""
import sys, importlib.util
import numpy as np
sys.modules["torch"] = None  # any import of torch now fails
spec = importlib.util.spec_from_file_location("onnx_sampler", {str(slim_onnx / "onnx_sampler.py")!r})
sampler = importlib.util.module_from_spec(spec)
sys.modules["onnx_sampler"] = sampler
spec.loader.exec_module(sampler)
images = np.load({str(tmp_path / "inputs.npy")!r})
restorer = sampler.OnnxRestorer({str(slim_onnx)!r})
out = restorer.restore(images[0], list(images[1:]), steps=3, noise=np.load({str(tmp_path / "noise.npy")!r}))
np.save({str(tmp_path / "out.npy")!r}, out)
assert not any(name == "torch" or name.startswith(("torch.", "refface")) for name in sys.modules if sys.modules[name])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    want = restorer.restore(lq, refs, steps=3, noise=noise)
    assert np.array_equal(np.load(tmp_path / "out.npy"), want)


def test_sampler_command_line_writes_a_png(slim_onnx, slim, tmp_path):
    output = tmp_path / "restored.png"
    done = subprocess.run(
        [
            sys.executable,
            str(slim_onnx / "onnx_sampler.py"),
            str(slim_onnx),
            str(slim / "lq.png"),
            str(slim / "ref0.png"),
            "--output",
            str(output),
            "--steps",
            "2",
            "--strength",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(output).size == (128, 128)


def test_sampler_refuses_bad_inputs_in_one_sentence(restorer, fixture_images, tmp_path):
    lq, refs = fixture_images
    with pytest.raises(OnnxSamplerError, match="128x128"):
        restorer.restore(lq[:64], refs)
    with pytest.raises(OnnxSamplerError, match="uint8"):
        restorer.restore(lq.astype(np.float32), refs)
    with pytest.raises(OnnxSamplerError, match="noise must have shape"):
        restorer.restore(lq, refs, steps=2, noise=np.zeros((1, 8, 8, 8), np.float32))
    with pytest.raises(OnnxSamplerError, match="no refface_onnx.json"):
        OnnxRestorer(tmp_path)
