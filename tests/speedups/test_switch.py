"""One switch over the CPU speed-ups, scoped to a thread: turning them off there leaves other threads alone."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from refface import speedups
from refface.pipelines.composite import CompositeContextPipeline
from refface.speedups import winograd
from refface.speedups.lean_vq import LeanEncoder
from refface.speedups.upsample import BroadcastUpsample2D
from refface.speedups.winograd import WinogradConv2d
from tests.conftest import make_tiny_pipeline, random_images

TOL = 1e-4  # the official fixture's tolerance
KWARGS = dict(num_inference_steps=4, seed=3, progress=False)


@pytest.fixture
def winograd_calls(monkeypatch) -> list[int]:
    """Every convolution of the tiny models on F(4x4, 3x3) while the speed-ups are on; the calling threads."""
    threads: list[int] = []
    original = winograd.winograd_conv3x3

    def recorded(*args, **kwargs):
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(winograd, "winograd_conv3x3", recorded)
    monkeypatch.setattr(winograd, "takes_nnpack", lambda x: False)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_PIXELS", 1)
    monkeypatch.setattr(winograd, "KEPT_MIN_SIDE", 1)
    return threads


def test_switch_is_scoped_and_nests():
    assert speedups.active()
    with speedups.disabled():
        assert not speedups.active()
        with speedups.enabled():
            assert speedups.active()
        with speedups.allowed(True):  # a pipeline's own "on" leaves the surrounding "off"
            assert not speedups.active()
        seen = []
        worker = threading.Thread(target=lambda: seen.append(speedups.active()))
        worker.start()
        worker.join()
        assert seen == [True]  # another thread has its own setting
    assert speedups.active()
    with speedups.allowed(False):
        assert not speedups.active()


def test_turning_speedups_off_in_one_thread_leaves_a_concurrent_restoration_alone(winograd_calls):
    pipe = make_tiny_pipeline(seed=21)
    lq, refs = random_images(2, 16, seed=22), random_images(3, 16, seed=23)
    with speedups.disabled():
        plain_alone = pipe(lq, refs, **KWARGS).pixels
    fast_alone = pipe(lq, refs, **KWARGS).pixels
    assert winograd_calls
    winograd_calls.clear()

    meet = threading.Barrier(2, timeout=60)
    results: dict[str, torch.Tensor] = {}
    idents: dict[str, int] = {}
    errors: list[BaseException] = []

    def restore(name: str, off: bool) -> None:
        idents[name] = threading.get_ident()

        def both_inside(index: int, *_):  # every step of both restorations overlaps the other's
            meet.wait()

        try:
            with speedups.allowed(not off):
                results[name] = pipe(lq, refs, step_callback=both_inside, **KWARGS).pixels
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
            meet.abort()

    workers = [threading.Thread(target=restore, args=(name, name == "plain")) for name in ("plain", "fast")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    assert idents["fast"] in winograd_calls and idents["plain"] not in winograd_calls
    torch.testing.assert_close(results["fast"], fast_alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(results["plain"], plain_alone, rtol=0, atol=1e-6)
    assert (results["fast"] - results["plain"]).abs().max() < TOL


def test_a_pipeline_can_turn_its_speedups_off(winograd_calls):
    pipe = make_tiny_pipeline(seed=24)
    lq, refs = random_images(1, 16, seed=25), random_images(2, 16, seed=26)
    fast = pipe(lq, refs, **KWARGS).pixels
    assert winograd_calls
    winograd_calls.clear()
    plain = pipe.enable_speedups(False)(lq, refs, **KWARGS).pixels
    assert winograd_calls == [] and speedups.active()  # the setting is the pipeline's, not the thread's
    assert (fast - plain).abs().max() < TOL
    pipe.enable_speedups(True)(lq, refs, **KWARGS)
    assert winograd_calls


def _installed(*models: nn.Module) -> list[type]:
    kinds = (WinogradConv2d, BroadcastUpsample2D, LeanEncoder)
    return [type(m) for model in models for m in model.modules() if isinstance(m, kinds)]


def test_pipelines_for_training_get_no_speedups_unless_asked():
    from refface.models.composite_parts import tiny_reference_encoders, tiny_text_to_image

    parts = tiny_text_to_image(32)
    pipe = CompositeContextPipeline.assemble(*parts, *tiny_reference_encoders(), speedups=False)
    assert _installed(pipe.unet, pipe.vae) == []
    pipe.enable_speedups()
    assert WinogradConv2d in _installed(pipe.unet, pipe.vae)
    inference = make_tiny_pipeline()
    assert {WinogradConv2d, BroadcastUpsample2D, LeanEncoder} <= set(_installed(inference.unet, inference.vqvae))
    bare = type(inference)(inference.unet.__class__.from_config(inference.unet.config),
                           type(inference.vqvae).from_config(inference.vqvae.config), inference.scheduler,
                           speedups=False)  # fmt: skip
    assert _installed(bare.unet, bare.vqvae) == []


def test_training_builds_its_models_without_speedups():
    from refface.train.build import build_run
    from refface.train.config import load_config

    stage = build_run(load_config("tiny-composite", {"data.size": 32})).stage
    assert _installed(stage.denoiser.unet, stage.vae) == []


def test_a_saved_model_loads_for_training_without_speedups(tmp_path):
    from refface.pipelines.loading import load_composite

    CompositeContextPipeline.tiny().save_pretrained(tmp_path / "model")
    assert _installed(*load_composite(tmp_path / "model", speedups=False).speedup_models()) == []
    assert WinogradConv2d in _installed(*load_composite(tmp_path / "model").speedup_models())
