"""Sampling options: checked once when made, each method's defaults in one place, the pipeline contract."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from refface import methods
from refface.errors import RefFaceError
from refface.pipelines.base import (
    COMPOSITE_OPTIONS,
    REFLDM_OPTIONS,
    SEED_MAX,
    options_for,
    seeds_for,
)
from refface.pipelines.noise import item_noise
from tests.conftest import make_tiny_pipeline, random_images


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "at least 1, got 0"),
        ({"steps": -3}, "at least 1, got -3"),
        ({"steps": 2.5}, "whole number of at least 1, got 2.5"),
        ({"steps": True}, "whole number of at least 1, got True"),
        ({"guidance": float("nan")}, "guidance must be a finite number, got nan"),
        ({"guidance": float("inf")}, "guidance must be a finite number, got inf"),
        ({"guidance": "2"}, "guidance must be a finite number"),
        ({"strength": 0.0}, "greater than 0 and at most 1, got 0.0"),
        ({"strength": float("nan")}, "greater than 0 and at most 1, got nan"),
        ({"strength": "0.5"}, "greater than 0 and at most 1, got '0.5'"),
        ({"seed": -1}, "from 0 to 18446744073709551615, got -1"),
        ({"seed": SEED_MAX + 1}, "got 18446744073709551616"),
        ({"seed": 1.5}, "whole number"),
        ({"spacing": "quadratic"}, "Unknown timestep spacing 'quadratic'"),
        ({"solver": "euler"}, "Unknown solver 'euler'"),
    ],
)
def test_every_value_is_checked_when_the_options_are_made(changes, message):
    with pytest.raises(RefFaceError, match=message):
        REFLDM_OPTIONS.with_changes(**changes)


def test_composite_lq_guidance_is_checked_too():
    with pytest.raises(RefFaceError, match="LQ guidance must be a finite number, got inf"):
        COMPOSITE_OPTIONS.with_changes(lq_guidance=float("inf"))


def test_the_reference_context_is_composite_s_and_recorded_only_when_one_part_is_chosen():
    with pytest.raises(RefFaceError, match="Unknown reference context 'arcface'; choose one of both, identity"):
        COMPOSITE_OPTIONS.with_changes(context="arcface")
    with pytest.raises(RefFaceError, match=r"^The reference context is not an option of ReF-LDM\.$"):
        REFLDM_OPTIONS.with_changes(context="identity")
    assert COMPOSITE_OPTIONS.context == "both" and "context" not in COMPOSITE_OPTIONS.recorded()
    assert "context" not in REFLDM_OPTIONS.recorded()  # manifests made before the option still match
    assert COMPOSITE_OPTIONS.with_changes(context="appearance").recorded()["context"] == "appearance"


def test_whole_numbers_of_any_kind_are_taken_as_ints():
    options = REFLDM_OPTIONS.with_changes(steps=np.int64(7), seed=np.uint64(SEED_MAX))
    assert (options.steps, options.seed) == (7, SEED_MAX)
    assert type(options.steps) is int and type(options.seed) is int


def test_options_are_frozen_and_none_keeps_a_value():
    assert REFLDM_OPTIONS.with_changes(steps=None, guidance=None) is not REFLDM_OPTIONS
    assert REFLDM_OPTIONS.with_changes(steps=None, guidance=None) == REFLDM_OPTIONS
    with pytest.raises(dataclasses.FrozenInstanceError):
        REFLDM_OPTIONS.steps = 3


def test_an_option_a_method_lacks_is_one_sentence_naming_it_and_the_method():
    with pytest.raises(RefFaceError, match=r"^The guidance toward the LQ image is not an option of ReF-LDM\.$"):
        REFLDM_OPTIONS.with_changes(lq_guidance=1.0)
    with pytest.raises(RefFaceError, match=r"^The timestep spacing and the solver are not options of Composite"):
        COMPOSITE_OPTIONS.with_changes(spacing="uniform", solver="ddim")


def test_the_pipelines_defaults_are_the_registry_s():
    from refface.pipelines.blind import KINDS

    for method in methods.METHODS:
        if method.uses_references:
            assert method.pipeline_class().default_options is method.defaults
        else:  # one pipeline class for the blind restorers; each kind's options are the registry's
            assert KINDS[method.name].options is method.defaults
    assert (REFLDM_OPTIONS.steps, REFLDM_OPTIONS.guidance, REFLDM_OPTIONS.spacing) == (50, 1.5, "uniform_trailing")
    assert (COMPOSITE_OPTIONS.guidance, COMPOSITE_OPTIONS.lq_guidance, COMPOSITE_OPTIONS.color_fix) == (1.2, 1.2, True)


def test_a_call_takes_the_options_or_keywords_and_refuses_another_method_s():
    chosen = options_for(REFLDM_OPTIONS, None, steps=3, guidance=None)
    assert chosen == REFLDM_OPTIONS.with_changes(steps=3)
    given = REFLDM_OPTIONS.with_changes(steps=9, seed=4)
    assert options_for(REFLDM_OPTIONS, given, guidance=2.0) == given.with_changes(guidance=2.0)
    with pytest.raises(RefFaceError, match="options are Composite-Context's; a ReF-LDM pipeline takes its own"):
        options_for(REFLDM_OPTIONS, COMPOSITE_OPTIONS)


def test_seeds_per_image():
    options = REFLDM_OPTIONS.with_changes(seed=11)
    assert seeds_for(options, 3, None) == [11, 11, 11]
    assert seeds_for(options, 2, 5) == [5, 5]
    assert seeds_for(options, 2, [np.int64(3), 4]) == [3, 4]
    with pytest.raises(RefFaceError, match="Got 1 seeds for 2 images"):
        seeds_for(options, 2, [3])
    with pytest.raises(RefFaceError, match="from 0 to"):
        seeds_for(options, 1, [-2])


def test_a_pipeline_restores_the_same_with_options_as_with_keywords():
    pipe = make_tiny_pipeline(seed=1)
    size = pipe.image_size
    lq, refs = random_images(2, size, seed=2), random_images(3, size, seed=3)
    options = methods.get("refldm").sampling(steps=3, guidance=2.0, seed=9)
    by_options = pipe(lq, refs, options=options, progress=False)
    by_keywords = pipe(lq, refs, num_inference_steps=3, guidance_scale=2.0, seed=9, progress=False)
    torch.testing.assert_close(by_options.pixels, by_keywords.pixels, rtol=0, atol=0)
    per_image = pipe(lq, refs, options=options, seed=[9, 10], progress=False)  # the call's seeds, one per image
    torch.testing.assert_close(per_image.pixels[:1], by_options.pixels[:1], rtol=0, atol=0)
    assert (per_image.pixels[1] - by_options.pixels[1]).abs().max() > 1e-3
    shape = (pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    assert torch.equal(pipe.initial_noise(2, [9, 10]), item_noise(shape, [9, 10]))
