"""The blind baselines (CodeFormer, GFPGAN v1.4, RestoreFormer++): their released layouts load, restore like their
networks, and take their own options; what cannot load is one sentence."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refface.cli import main
from refface.errors import RefFaceError
from refface.imaging import to_model_input
from refface.models.restoreformer import RestoreFormerPP, restoreformer_from_state_dict
from refface.pipelines.blind import FACE_SIZE, load_blind
from tests.face.photos import astronaut, degrade
from tests.pipelines.blind_checkpoints import SAVERS, save_restoreformer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _crops(count: int, seed: int) -> list[Image.Image]:
    """A degraded real face and random pictures, at several sizes (each is resized to 512 for the network)."""
    rng = np.random.default_rng(seed)
    face = Image.fromarray(degrade(astronaut()[:300, 100:400])).resize((320, 320))
    noise = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for size in (512, 200, 384)]
    return [face, *noise][:count]


def _rounded(network_output: torch.Tensor) -> np.ndarray:
    return (((network_output + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def tiny_restoreformer(tmp_path_factory) -> Path:
    return save_restoreformer(tmp_path_factory.mktemp("rfpp") / "RestoreFormer++.ckpt", seed=3, tiny=True)


def test_restoreformer_has_the_official_layout():
    """Every tensor of the official VQVAEGANMultiHeadTransformer(head_size=4, ex_multi_scale_num=1), by name and
    shape (the fixture lists them, as the official code makes them)."""
    official = json.loads((FIXTURES / "restoreformer-pp-keys.json").read_text())
    ours = {name: list(tensor.shape) for name, tensor in RestoreFormerPP().state_dict().items()}
    assert ours == official and len(ours) == 441
    assert "decoder.up.4.attn.2.q.weight" in ours  # the 32x32 attention RestoreFormer++ adds


def test_a_release_shaped_file_restores_as_its_network_does(tiny_restoreformer):
    pipe = load_blind("restoreformer++", tiny_restoreformer)
    crops = _crops(3, seed=1)
    output = pipe(crops)
    assert [image.size for image in output.images] == [(FACE_SIZE, FACE_SIZE)] * 3 and output.latents is None
    network = restoreformer_from_state_dict(torch.load(tiny_restoreformer)["state_dict"], "file")
    with torch.no_grad():
        expected = _rounded(network(to_model_input(crops, FACE_SIZE)))
    produced = np.stack([np.asarray(image) for image in output.images])
    assert np.abs(produced.astype(int) - expected.astype(int)).max() <= 1  # batched vs one by one: rounding
    alone = np.asarray(pipe([crops[1]], references=["ignored"]).images[0])
    assert np.array_equal(alone, produced[1])  # a batch restores each crop as alone; references are not used
    assert not np.array_equal(produced[0], produced[1])
    assert pipe.encode_references(crops) is None and not pipe.uses_references


def test_a_file_of_another_layout_is_one_sentence(tiny_restoreformer, tmp_path):
    state = torch.load(tiny_restoreformer)["state_dict"]
    original = {name: value for name, value in state.items() if ".up.4.attn." not in name}
    torch.save({"state_dict": original}, tmp_path / "RestoreFormer.ckpt")
    with pytest.raises(RefFaceError, match="the original RestoreFormer, not RestoreFormer\\+\\+\\); spandrel loads"):
        load_blind("restoreformer++", tmp_path / "RestoreFormer.ckpt")
    broken = dict(state)
    broken["vqvae.decoder.conv_out.weight"] = broken["vqvae.decoder.conv_out.weight"][:, :, :1]
    torch.save({"state_dict": broken}, tmp_path / "broken.ckpt")
    with pytest.raises(RefFaceError, match=r"broken\.ckpt does not fit RestoreFormer\+\+'s layout \(size mismatch"):
        load_blind("restoreformer++", tmp_path / "broken.ckpt")
    torch.save({"conv.weight": torch.randn(3, 3)}, tmp_path / "other.pth")
    for name, message in (
        ("restoreformer++", "is not a RestoreFormer\\+\\+ checkpoint \\(it has no 'encoder.conv_in.weight'\\)"),
        ("gfpgan", "is not a GFPGAN v1.4 checkpoint spandrel can load"),
    ):
        with pytest.raises(RefFaceError, match=message):
            load_blind(name, tmp_path / "other.pth")
    with pytest.raises(RefFaceError, match="holds a RestoreFormer model, not GFPGAN v1.4"):
        load_blind("gfpgan", _spandrel_restoreformer(tmp_path / "rf.pth"))
    with pytest.raises(RefFaceError, match="weights file .*missing.pth does not exist"):
        load_blind("gfpgan", tmp_path / "missing.pth")


def _spandrel_restoreformer(path: Path) -> Path:
    """A small original-RestoreFormer file (one spandrel knows, of another architecture than asked for)."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.save(RestoreFormer(ch=32, ch_mult=(1, 2), n_embed=16, embed_dim=32, z_channels=32).state_dict(), path)
    return path


def test_half_precision_is_refused_and_codeformer_needs_its_extra(tiny_restoreformer, monkeypatch):
    pipe = load_blind("restoreformer++", tiny_restoreformer)
    with pytest.raises(RefFaceError, match="does not run in float16 .*; use bf16 or fp32"):
        pipe.to(dtype=torch.float16)
    assert pipe.to(dtype=torch.bfloat16).dtype == torch.bfloat16
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)  # as if it were not installed
    wanted = r"needs the package spandrel-extra-arches .*pip install 'refface\[codeformer\]'"
    with pytest.raises(RefFaceError, match=wanted):
        load_blind("codeformer", tiny_restoreformer)


def test_the_cli_notes_that_a_blind_method_does_not_use_references(tiny_restoreformer, tmp_path, capsys):
    crop = tmp_path / "crop.png"
    _crops(1, seed=2)[0].save(crop)
    Image.fromarray(astronaut()[:300, 100:400]).resize((512, 512)).save(tmp_path / "ref.png")
    args = ["restore", "--aligned", str(crop), "--method", "restoreformer++", "--checkpoint", str(tiny_restoreformer),
            "-o", str(tmp_path / "out.png"), "--device", "cpu", "--ref", str(tmp_path / "ref.png")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "RestoreFormer++ restores each face from itself alone: the reference photos are not used" in printed
    expected = load_blind("restoreformer++", tiny_restoreformer)([Image.open(crop)]).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))
    assert main([*args[:-2], "-o", str(tmp_path / "plain.png")]) == 0  # no reference photos needed at all
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(expected))
    for extra, message in (
        (["--steps", "10"], "The number of steps is not an option of RestoreFormer++."),
        (["--fidelity", "0.3"], "The fidelity weight is not an option of RestoreFormer++."),
        (["--dtype", "fp16"], "does not run in float16"),
    ):
        assert main([*args[:-2], "-o", str(tmp_path / "x.png"), *extra]) != 0
        error = capsys.readouterr().err.strip().splitlines()
        assert message in error[-1] and "Traceback" not in "\n".join(error)


# ------------------------------------------------------------------------------------ the released layouts
@pytest.fixture(scope="module")
def released_layouts(tmp_path_factory) -> dict[str, Path]:
    """Each baseline's full released layout, random weights, wrapped as the release (about 1 GB in all)."""
    root = tmp_path_factory.mktemp("baselines")
    return {name: save(root / f"{name}.pth", seed=index) for index, (name, save) in enumerate(SAVERS.items())}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["codeformer", "gfpgan", "restoreformer++"])
def test_each_baseline_restores_a_crop_through_the_cli(released_layouts, tmp_path, name):
    crop = tmp_path / "crop.png"
    _crops(1, seed=4)[0].save(crop)
    args = ["restore", "--aligned", str(crop), "--method", name, "--checkpoint", str(released_layouts[name]),
            "-o", str(tmp_path / "out.png"), "--device", "cpu", "-q"]  # fmt: skip
    assert main(args) == 0
    restored = np.asarray(Image.open(tmp_path / "out.png"))
    expected = load_blind(name, released_layouts[name])([Image.open(crop)]).images[0]
    assert restored.shape == (FACE_SIZE, FACE_SIZE, 3) and np.array_equal(restored, np.asarray(expected))
    assert restored.std() > 1  # not a flat image


@pytest.mark.slow
def test_gfpgan_s_noise_comes_from_the_seed_and_codeformer_takes_its_fidelity(released_layouts):
    crops = _crops(2, seed=5)
    gfpgan = load_blind("gfpgan", released_layouts["gfpgan"])
    first = np.asarray(gfpgan([crops[0]], seed=1).images[0])
    batch = gfpgan([crops[1], crops[0]], seed=[2, 1]).images
    assert np.array_equal(np.asarray(batch[1]), first)  # the same seed, the same noise, in a batch or alone
    other = np.asarray(gfpgan([crops[0]], seed=2).images[0])
    assert not np.array_equal(first, other)  # another seed, another draw of the decoder's noise

    codeformer = load_blind("codeformer", released_layouts["codeformer"])
    assert codeformer.default_options.fidelity == 0.5
    faithful, free = (
        codeformer([crops[0]], options=codeformer.default_options.with_changes(fidelity=w)).pixels for w in (1.0, 0.0)
    )
    assert (faithful - free).abs().max() > 1e-3  # the weight reaches the fusion layers
    with pytest.raises(RefFaceError, match="fidelity weight is not an option of GFPGAN"):
        gfpgan([crops[0]], options=gfpgan.default_options.with_changes(fidelity=0.5))
