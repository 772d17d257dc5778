"""Training configs: presets load, typos and wrong types fail naming the key, before any work."""

from __future__ import annotations

import pytest
import torch

from refface.errors import RefFaceError
from refface.train.config import TrainConfig, load_config, preset_names

PAPER_DATA = {"data.references_csv": "FFHQ-Ref/reference_mapping/train_references.csv", "data.images_dir": "ffhq"}


def test_presets_are_shipped_and_follow_the_paper():
    assert {"tiny-vqgan", "tiny-ldm", "tiny-refldm", "vqgan", "ldm", "refldm"} <= set(preset_names())
    tiny = load_config("tiny-refldm")
    assert tiny.data.kind == "synthetic" and tiny.model.architecture == "tiny" and tiny.loss.identity == "none"
    refldm = load_config("refldm", PAPER_DATA)
    assert (refldm.run.max_steps, refldm.run.batch_size, refldm.data.num_refs) == (150_000, 8, 5)
    assert (refldm.loss.identity, refldm.loss.identity_scale, refldm.loss.condition_dropout) == ("scaled", 0.1, 0.1)
    assert refldm.loss.diffusion == "l1" and load_config("ldm", PAPER_DATA).loss.diffusion == "l1"  # Sec. 3
    assert (refldm.optim.learning_rate, refldm.optim.warmup_steps) == (5e-5, 10_000)
    ldm = load_config("ldm", PAPER_DATA)
    assert (ldm.stage, ldm.run.max_steps, ldm.run.batch_size) == ("ldm", 500_000, 40)
    vqgan = load_config("vqgan", PAPER_DATA)
    assert (vqgan.stage, vqgan.run.max_steps, vqgan.run.batch_size, vqgan.data.size) == ("vqgan", 200_000, 32, 512)
    assert (vqgan.optim.beta1, vqgan.optim.beta2, vqgan.vqgan.lpips) == (0.5, 0.9, "vgg")
    composite = load_config("composite", PAPER_DATA)
    assert composite.run.batch_size * composite.run.gradient_accumulation == 256  # the paper's batch
    assert (composite.optim.learning_rate, composite.loss.diffusion, composite.data.num_refs) == (8e-5, "l1", 1)
    assert load_config("tiny-vqgan").vqgan.lpips == "none"  # CPU presets download nothing
    assert load_config("tiny-ldm").loss.identity == "none" and load_config("tiny-ldm").data.kind == "synthetic"


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "stage: refldm\nmodel: {architecture: tiny}\ndata: {kind: synthetic, size: 16}\nrun: {max_steps: 3}"
    )
    config = load_config(path, {"run.batch_size": 2, "optim.learning_rate": 1})
    assert isinstance(config, TrainConfig)
    assert config.run.max_steps == 3 and config.run.batch_size == 2
    assert config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
    assert config.to_dict()["data"]["size"] == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run: {max_step: 3}", r"Unknown config key 'run.max_step'"),
        ("optimiser: {}", r"Unknown config key 'optimiser'"),
        ("run: {batch_size: eight}", r"'run.batch_size' .* should be int, got 'eight'"),
        ("run: {gradient_checkpointing: 1}", r"'run.gradient_checkpointing' .* should be bool"),
        ("run: {batch_size: 2.5}", r"'run.batch_size' .* should be int"),
        ("run: 5", r"run in .* must be a mapping"),
        ("stage: vae", r"'stage' .* must be one of vqgan, ldm, refldm"),
        ("loss: {identity: t<200}", r"'loss.identity' .* must be one of scaled"),
        ("loss: {diffusion: mse}\ndata: {kind: synthetic}", r"'loss.diffusion' .* must be one of l1, l2, got 'mse'"),
        ("data: {degradation: blurry, kind: synthetic}", r"'data.degradation' .* must be one of train"),
        ("data: {size: 20, kind: synthetic}", r"'data.size' .* a multiple of 8"),
        ("run: {ema_decay: 1.0}\ndata: {kind: synthetic}", r"'run.ema_decay' .* in \[0, 1\)"),
        ("data: {pose_spread: 9, kind: synthetic}", r"'data.pose_spread' .* between 0 and 6, got 9"),
        ("data: {expression: -0.5, kind: synthetic}", r"'data.expression' .* between 0 and 1"),
        ("data: {kind: csv}", r"data.kind csv needs data.references_csv and data.images_dir"),
        ("run: [1, 2", r"is not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RefFaceError, match=message):
        load_config(path)


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(RefFaceError, match="neither a YAML file nor a preset; presets: .*tiny-refldm"):
        load_config("huge-refldm")
    with pytest.raises(RefFaceError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_degradation_ranges_reach_the_training_data():
    """data.degradation_ranges changes the LQ the dataset makes; a bad range names the config key."""
    from refface.train.build import build_datasets

    config = load_config("tiny-ldm", {"data.degradation_ranges": {"scale": [4, 8], "sigma": [0.5, 1]}})
    train, _ = build_datasets(config)
    assert train.degradation.scale == (4.0, 8.0) and train.degradation.noise == (0, 20)
    default, _ = build_datasets(load_config("tiny-ldm"))
    ours, theirs = train[3], default[3]
    assert torch.equal(ours["gt"], theirs["gt"]) or torch.equal(ours["gt"], theirs["gt"].flip(-1))  # same photo
    assert not torch.equal(ours["lq"], theirs["lq"]) and not torch.equal(ours["lq"], theirs["lq"].flip(-1))
    with pytest.raises(RefFaceError, match="'data.degradation_ranges' in preset tiny-ldm: Unknown degradation range"):
        load_config("tiny-ldm", {"data.degradation_ranges": {"blur": [1, 2]}})
