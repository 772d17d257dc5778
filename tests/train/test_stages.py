"""The three stages chained through their run folders, weight initialisation across integrations, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refface import RefLDMPipeline, tiny_architecture
from refface.cli import main
from refface.errors import RefFaceError
from refface.models.reference_integration import CacheKVDenoiser, build_denoiser
from refface.models.unet import denoise
from refface.train.build import initialise_denoiser, load_vq
from refface.train.config import load_config
from refface.train.sampling import restore_batch
from refface.train.trainer import train

QUICK = {"data.identities": 8, "data.photos_per_identity": 3, "run.batch_size": 4, "run.validation_cases": 2}


@pytest.mark.slow
def test_vqgan_then_ldm_then_refldm_through_run_folders(tmp_path):
    vqgan, ldm, refldm = tmp_path / "vqgan", tmp_path / "ldm", tmp_path / "refldm"
    train(load_config("tiny-vqgan", {**QUICK, "vqgan.disc_start": 1}), vqgan, max_steps=3, progress=False)
    assert (vqgan / "model" / "vqvae" / "config.json").is_file()
    logged = [r for r in (vqgan / "metrics.jsonl").read_text().splitlines() if '"discriminator_loss"' in r]
    assert logged  # both optimisers' losses are logged

    ldm_config = load_config("tiny-ldm", {**QUICK, "model.vqgan_checkpoint": str(vqgan), "run.sample_steps": 2})
    train(ldm_config, ldm, max_steps=3, progress=False)
    refldm_config = load_config(
        "tiny-refldm",
        {**QUICK, "model.vqgan_checkpoint": str(vqgan), "model.init_checkpoint": str(ldm), "run.sample_steps": 2},
    )
    train(refldm_config, refldm, max_steps=3, progress=False)

    pipe = RefLDMPipeline.from_pretrained(refldm / "model")
    trained_vq = load_vq(str(vqgan), tiny_architecture(32))
    for name, tensor in trained_vq.state_dict().items():
        assert torch.equal(pipe.vqvae.state_dict()[name], tensor), name  # the frozen VQGAN of stage 1
    g = torch.Generator().manual_seed(0)
    out = pipe(torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
               num_inference_steps=3, progress=False)  # fmt: skip
    assert out.pixels.shape == (2, 3, 32, 32) and torch.isfinite(out.pixels).all()


@pytest.mark.parametrize("integration", ["channel-concat", "cross-attention", "spatial-concat"])
def test_ablation_runs_train_and_export(tmp_path, integration):
    config = load_config("tiny-refldm", {**QUICK, "model.reference_integration": integration, "run.sample_steps": 2})
    result = train(config, tmp_path / "run", max_steps=2, progress=False)
    assert (result.model / "denoiser.safetensors").is_file() and (result.model / "vqvae").is_dir()
    assert (tmp_path / "run" / "samples" / "step_00000002.png").is_file()


def test_an_ldm_initialises_every_integration_exactly():
    """Extra input channels start at zero and new layers keep their init, so CacheKV/channel-concat start as the LDM."""
    arch = tiny_architecture().unet
    torch.manual_seed(0)
    ldm = build_denoiser("cachekv", arch, 0)
    g = torch.Generator().manual_seed(1)
    noisy, lq = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    refs = torch.randn(2, 3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        expected = denoise(ldm.unet, torch.cat([noisy, lq], 1), t, None)
        concat = build_denoiser("channel-concat", arch, 3)
        initialise_denoiser(concat, ldm.unet.state_dict(), "ldm")
        torch.testing.assert_close(concat(noisy, lq, refs, t), expected)
        cross = build_denoiser("cross-attention", arch, 3)
        initialise_denoiser(cross, ldm.unet.state_dict(), "ldm")  # its projections are not in the LDM: kept
        assert cross(noisy, lq, refs, t).shape == expected.shape
    bad = dict(ldm.unet.state_dict())
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(RefFaceError, match="extra.weight is not part of this denoiser"):
        initialise_denoiser(build_denoiser("cachekv", arch, 1), bad, "weights.ckpt")
    bad.pop("extra.weight")
    bad.pop("conv_out.bias")
    with pytest.raises(RefFaceError, match="conv_out.bias is missing"):
        initialise_denoiser(build_denoiser("cachekv", arch, 1), bad, "weights.ckpt")


@pytest.mark.parametrize("refs", [0, 2])
def test_validation_sampler_matches_the_pipeline_for_cachekv(refs):
    torch.manual_seed(3)
    pipe = RefLDMPipeline.from_architecture(tiny_architecture())
    g = torch.Generator().manual_seed(4)
    lq = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    references = torch.rand(2, refs, 3, 16, 16, generator=g) * 2 - 1
    denoiser = CacheKVDenoiser(pipe.unet, refs)
    ours = restore_batch(denoiser, pipe.vqvae, pipe.scheduler, lq, references, steps=4, guidance_scale=1.5, seed=9)
    for item in range(2):
        theirs = pipe(lq[item : item + 1], list(references[item]), num_inference_steps=4, seed=9 + item, progress=False)
        torch.testing.assert_close(((ours[item : item + 1] + 1) / 2).clamp(0, 1), theirs.pixels, atol=1e-4, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(5)
    unet = build_denoiser("cachekv", tiny_architecture().unet, 2).unet
    sample = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(6))

    def gradients() -> list[torch.Tensor]:
        unet.zero_grad()
        denoise(unet, sample, torch.tensor([3, 500]), None).square().mean().backward()
        return [p.grad.clone() for p in unet.parameters()]

    plain = gradients()
    unet.enable_gradient_checkpointing()
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b)


def test_presets_command_lists_every_preset(capsys):
    assert main(["train-presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"tiny-vqgan", "tiny-ldm", "tiny-refldm", "vqgan", "ldm", "refldm"} <= set(listed)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_official_checkpoints(slim, slim_pipeline, tmp_path):
    """model.init_checkpoint / vqgan_checkpoint take the authors' files (EMA weights, as their inference)."""
    from refface.train.build import build_architecture, build_stage

    config = load_config(
        "tiny-refldm",
        {
            **QUICK,
            "model.architecture": str(slim / "config.yaml"),
            "model.init_checkpoint": str(slim / "refldm.ckpt"),
            "model.vqgan_checkpoint": str(slim / "vqgan.ckpt"),
            "data.size": 128,
            "run.validation_cases": 0,
        },
    )
    stage = build_stage(config, build_architecture(config))
    for name, tensor in slim_pipeline.unet.state_dict().items():
        assert torch.equal(stage.denoiser.unet.state_dict()[name], tensor), name
    for name, tensor in slim_pipeline.vqvae.state_dict().items():
        assert torch.equal(stage.vq.state_dict()[name], tensor), name
    result = train(config, tmp_path / "run", max_steps=1, progress=False)
    assert result.step == 1 and torch.isfinite(torch.tensor(result.last_metrics["loss"]))
    with pytest.raises(RefFaceError, match="works on 128x128 images but data.size is 32"):
        build_architecture(load_config("tiny-refldm", {"model.architecture": str(slim / "config.yaml")}))


def _pool(folder, count: int = 6, size: int = 40):
    """A folder of random photos in FFHQ's layout (numbered subfolders), without any reference list."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for index in range(count):
        path = folder / f"{index // 3:05d}" / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return folder


def test_the_image_pool_trains_the_stages_without_references(tmp_path):
    from refface.data.training_set import ReferenceFaceDataset, pool_entries

    pool = _pool(tmp_path / "ffhq")
    entries = pool_entries(pool)
    assert [e.gt_image for e in entries] == [f"{i // 3:05d}/{i:05d}.png" for i in range(6)]
    assert all(e.ref_images == () for e in entries)
    item = ReferenceFaceDataset(entries, pool, "train", 0, 32)[2]
    assert item["gt"].shape == (3, 32, 32) and item["refs"].shape == (0, 3, 32, 32)
    listed = tmp_path / "train.txt"
    listed.write_text("00001/00004.png\n00000/00000.png\n\n")
    assert [e.gt_image for e in pool_entries(pool, listed)] == ["00001/00004.png", "00000/00000.png"]
    folder = {"data.kind": "folder", "data.images_dir": str(pool), "run.batch_size": 2, "run.validation_cases": 1}
    train(load_config("tiny-vqgan", {**folder, "vqgan.disc_start": 1}), tmp_path / "vqgan", max_steps=2,
          progress=False)  # fmt: skip
    assert (tmp_path / "vqgan" / "model" / "vqvae" / "config.json").is_file()
    ldm = {**folder, "data.images_list": str(listed), "model.vqgan_checkpoint": str(tmp_path / "vqgan"),
           "run.sample_steps": 2}  # fmt: skip
    train(load_config("tiny-ldm", ldm), tmp_path / "ldm", max_steps=2, progress=False)
    assert (tmp_path / "ldm" / "model").is_dir()


def test_an_image_pool_is_refused_where_references_are_needed(tmp_path):
    folder = {"data.kind": "folder", "data.images_dir": str(tmp_path)}
    with pytest.raises(RefFaceError, match="stage refldm trains with references, which an image folder does not"):
        load_config("tiny-refldm", folder)
    with pytest.raises(RefFaceError, match="data.kind folder needs data.images_dir"):
        load_config("tiny-vqgan", {"data.kind": "folder"})
    with pytest.raises(RefFaceError, match="data.images_list only applies with data.kind folder"):
        load_config("tiny-vqgan", {"data.images_list": "x.txt"})
    with pytest.raises(RefFaceError, match=r"The image list .*absent\.txt"):
        from refface.data.training_set import pool_entries

        pool_entries(tmp_path, tmp_path / "absent.txt")
