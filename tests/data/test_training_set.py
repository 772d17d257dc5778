"""The training dataset: shapes and ranges, reference repetition/shuffling, joint flips, reproducibility, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from refface.data.augment import ReferenceAugmentation
from refface.data.reference_csv import ReferenceEntry, write_reference_csv
from refface.data.training_set import ReferenceFaceDataset, pick_references
from refface.errors import RefFaceError


def _face_folder(folder, count=6, size=48, seed=0):
    """Random smooth images with a distinct left/right structure, so flips are visible."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 120, size)[None, :, None]
    for i in range(count):
        noise = rng.integers(0, 120, (size // 4, size // 4, 3)).repeat(4, 0).repeat(4, 1)
        Image.fromarray((noise + ramp).clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


ENTRIES = [
    ReferenceEntry("0.png", ("1.png", "2.png")),
    ReferenceEntry("1.png", ("0.png",)),
    ReferenceEntry("3.png", ("4.png", "5.png", "0.png")),
]


def _dataset(tmp_path, **options):
    defaults = {"degradation": "moderate", "num_refs": 4, "size": 32}
    return ReferenceFaceDataset(ENTRIES, _face_folder(tmp_path / "hq"), **{**defaults, **options})


def test_items_have_model_shapes_and_range(tmp_path):
    dataset = _dataset(tmp_path)
    assert len(dataset) == 3
    item = dataset[2]
    assert item["gt"].shape == item["lq"].shape == (3, 32, 32)
    assert item["refs"].shape == (4, 3, 32, 32)
    for key in ("gt", "lq", "refs"):
        assert item[key].dtype == torch.float32 and item[key].min() >= -1 and item[key].max() <= 1
    assert not torch.equal(item["gt"], item["lq"])  # the LQ image is degraded
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["refs"].shape == (3, 4, 3, 32, 32) and batch["name"] == ["0.png", "1.png", "3.png"]


def test_same_seed_and_epoch_reproduce_items_and_new_epochs_differ(tmp_path):
    first, second = _dataset(tmp_path), _dataset(tmp_path)
    for index in range(3):
        a, b = first[index], second[index]
        for key in ("gt", "lq", "refs"):
            assert torch.equal(a[key], b[key])
    second.set_epoch(1)
    assert not torch.equal(first[0]["lq"], second[0]["lq"])


def test_data_loader_workers_do_not_change_items(tmp_path):
    dataset = _dataset(tmp_path)
    serial = list(DataLoader(dataset, batch_size=1, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=1, num_workers=2))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["refs"], b["refs"])


def test_references_repeat_when_fewer_and_shuffle():
    rng = np.random.default_rng(0)
    assert pick_references(["a"], 5, rng, shuffle=True) == ["a"] * 5
    assert pick_references(["a", "b", "c"], 2, rng, shuffle=False) == ["a", "b"]
    orders = {tuple(pick_references(["a", "b", "c"], 3, np.random.default_rng(s), True)) for s in range(30)}
    assert len(orders) == 6  # every permutation occurs
    repeated = pick_references(["a", "b"], 5, np.random.default_rng(3), shuffle=True)
    assert sorted(set(repeated)) == ["a", "b"] and repeated[:2] == repeated[2:4] and repeated[4] == repeated[0]


def test_without_augmentation_references_are_the_images(tmp_path):
    dataset = _dataset(tmp_path, augmentation=None, flip=False, shuffle_refs=False)
    item = dataset[1]  # a single reference (0.png), repeated four times
    assert all(torch.equal(item["refs"][k], item["refs"][0]) for k in range(4))
    assert torch.allclose((item["refs"][0] + 1) * 127.5, _area(tmp_path / "hq" / "0.png"), atol=0.51)
    assert torch.allclose((item["gt"] + 1) * 127.5, _area(tmp_path / "hq" / "1.png"), atol=0.51)


def _area(path):
    import cv2

    image = cv2.resize(np.asarray(Image.open(path)), (32, 32), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float()


def test_flip_mirrors_gt_lq_and_references_together(tmp_path):
    plain = _dataset(tmp_path, augmentation=None, flip=False, shuffle_refs=False)
    flipping = _dataset(tmp_path, augmentation=None, flip=True, shuffle_refs=False)
    flipped_items = 0
    for epoch in range(6):
        plain.set_epoch(epoch)
        flipping.set_epoch(epoch)
        a, b = plain[0], flipping[0]
        if torch.equal(a["gt"], b["gt"]):
            continue
        flipped_items += 1
        assert torch.equal(a["gt"].flip(-1), b["gt"])
        assert torch.equal(a["refs"].flip(-1), b["refs"])
    assert 0 < flipped_items < 6


def test_reference_augmentation_is_seeded_and_keeps_the_global_stream():
    images = torch.rand(3, 3, 40, 40)
    augment = ReferenceAugmentation()
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = augment(images, seed=11)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's generator did not move
    assert torch.equal(a, augment(images, seed=11))
    assert not torch.equal(a, augment(images, seed=12))
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    change = (a - images).abs().mean(dim=(1, 2, 3))
    assert (change > 0.01).all()  # every reference was changed independently
    gentle = ReferenceAugmentation(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert torch.allclose(gentle(images, seed=1), images, atol=1e-5)


def test_given_lq_folder_is_read_instead_of_synthesising(tmp_path):
    lq = _face_folder(tmp_path / "lq", seed=9)  # LQ files are PNGs named after the GT stem
    dataset = _dataset(tmp_path, lq_dir=lq, augmentation=None, flip=False)
    assert torch.allclose((dataset[0]["lq"] + 1) * 127.5, _area(lq / "0.png"), atol=0.51)


def test_bad_inputs_get_one_sentence(tmp_path):
    folder = _face_folder(tmp_path / "hq")
    with pytest.raises(RefFaceError, match=r"not in .*: 9\.png"):
        ReferenceFaceDataset([ReferenceEntry("0.png", ("9.png",))], folder)
    with pytest.raises(RefFaceError, match="at least 0, got -1"):
        ReferenceFaceDataset(ENTRIES, folder, num_refs=-1)
    with pytest.raises(RefFaceError, match="gives 0.png no references"):  # num_refs 0 is the pool without them
        ReferenceFaceDataset([ReferenceEntry("0.png", ())], folder)
    with pytest.raises(RefFaceError, match="Unknown degradation preset"):
        ReferenceFaceDataset(ENTRIES, folder, degradation="blurry")
    csv = write_reference_csv(tmp_path / "refs.csv", ENTRIES)
    assert len(ReferenceFaceDataset(csv, folder)) == 3
    (folder / "2.png").write_bytes(b"broken")
    dataset = ReferenceFaceDataset(ENTRIES, folder, augmentation=None)
    with pytest.raises(RefFaceError, match=r"2\.png"):
        dataset[0]
