"""The synthetic identity task: item format, reproducibility, split disjointness and that references matter."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from refface.data.synthetic import PhotoVariation, SyntheticReferenceDataset, make_identity, photo_rng, render
from refface.data.training_set import to_signed_tensor
from refface.errors import RefFaceError


def _high_pass_energy(images: torch.Tensor) -> float:
    """Mean squared difference from a sigma-1 Gaussian blur: the detail a severe degradation removes."""
    pixels = images.reshape(-1, *images.shape[-3:]).permute(0, 2, 3, 1).numpy()
    return float(np.mean([(p - cv2.GaussianBlur(p, (0, 0), 1.0)) ** 2 for p in pixels]))


@pytest.mark.parametrize(("size", "num_refs"), [(32, 1), (48, 3), (64, 5)])
def test_items_have_model_shapes_and_range_and_collate(size, num_refs):
    dataset = SyntheticReferenceDataset(identities=3, photos_per_identity=4, size=size, num_refs=num_refs)
    assert len(dataset) == 12
    item = dataset[5]
    assert item["gt"].shape == item["lq"].shape == (3, size, size)
    assert item["refs"].shape == (num_refs, 3, size, size)
    for key in ("gt", "lq", "refs"):
        assert item[key].dtype == torch.float32 and item[key].min() >= -1 and item[key].max() <= 1
    assert item["name"] == "train_00001_01.png" and item["index"] == 5
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["refs"].shape == (4, num_refs, 3, size, size) and batch["gt"].shape == (4, 3, size, size)
    assert batch["index"].tolist() == [0, 1, 2, 3] and len(batch["name"]) == 4


def test_render_is_uint8_rgb_and_reproducible_from_the_rng():
    identity = make_identity(np.random.default_rng(3))
    photo = render(identity, 48, np.random.default_rng(1))
    assert photo.dtype == np.uint8 and photo.shape == (48, 48, 3) and photo.std() > 10
    assert np.array_equal(photo, render(identity, 48, np.random.default_rng(1)))
    assert not np.array_equal(photo, render(identity, 48, np.random.default_rng(2)))  # new pose and lighting


def test_same_seed_reproduces_items_and_epochs_change_only_the_sampling():
    first, second = (SyntheticReferenceDataset(identities=2, photos_per_identity=3, seed=7) for _ in range(2))
    for index in range(len(first)):
        a, b = first[index], second[index]
        for key in ("gt", "lq", "refs"):
            assert torch.equal(a[key], b[key])
    second.set_epoch(1)
    assert any(not torch.equal(first[i]["lq"], second[i]["lq"]) for i in range(len(first)))
    for index in range(len(first)):  # the target photo is the same, up to the joint flip
        gt = second[index]["gt"]
        assert torch.equal(gt, first[index]["gt"]) or torch.equal(gt, first[index]["gt"].flip(-1))
    other_seed = SyntheticReferenceDataset(identities=2, photos_per_identity=3, seed=8)
    assert not np.array_equal(other_seed.photo(0, 0), first.photo(0, 0))


def test_target_photos_do_not_depend_on_the_epoch_without_flips():
    dataset = SyntheticReferenceDataset(identities=2, photos_per_identity=3, flip=False)
    before = [dataset[i]["gt"] for i in range(len(dataset))]
    dataset.set_epoch(5)
    assert all(torch.equal(a, dataset[i]["gt"]) for i, a in enumerate(before))
    assert torch.equal(before[4], to_signed_tensor(dataset.photo(1, 1)))


def test_data_loader_workers_do_not_change_items():
    dataset = SyntheticReferenceDataset(identities=2, photos_per_identity=3)
    serial = list(DataLoader(dataset, batch_size=2, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=2, num_workers=2))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["refs"], b["refs"])


def test_splits_share_no_identity_or_photo():
    splits = {
        name: SyntheticReferenceDataset(identities=16, photos_per_identity=2, split=name)
        for name in ("train", "val", "test")
    }
    for name, dataset in splits.items():
        for other_name, other in splits.items():
            if name < other_name:
                assert not set(dataset.identities) & set(other.identities)
                photos = {p.tobytes() for i in range(4) for p in dataset.photos(i)}
                assert not photos & {p.tobytes() for i in range(4) for p in other.photos(i)}
    with pytest.raises(RefFaceError, match="split"):
        SyntheticReferenceDataset(split="validation")


def test_references_are_other_photos_of_the_same_identity():
    dataset = SyntheticReferenceDataset(identities=3, photos_per_identity=4, num_refs=5, flip=False)
    for index in range(len(dataset)):
        identity, target = dataset.locate(index)
        photos = [to_signed_tensor(p) for p in dataset.photos(identity)]
        refs = dataset[index]["refs"]
        sources = [next(j for j, photo in enumerate(photos) if torch.equal(ref, photo)) for ref in refs]
        assert target not in sources and set(sources) == set(range(4)) - {target}
    pair = SyntheticReferenceDataset(identities=2, photos_per_identity=2, num_refs=3, flip=False)
    refs = pair[2]["refs"]  # identity 1, photo 0: its only other photo, repeated
    assert all(torch.equal(ref, to_signed_tensor(pair.photo(1, 1))) for ref in refs)


def test_flips_mirror_target_and_references_together():
    dataset = SyntheticReferenceDataset(identities=4, photos_per_identity=3, num_refs=2)
    plain = SyntheticReferenceDataset(identities=4, photos_per_identity=3, num_refs=2, flip=False)
    flipped = 0
    for index in range(len(dataset)):
        item, reference = dataset[index], plain[index]
        mirrored = not torch.equal(item["gt"], reference["gt"])
        flipped += mirrored
        expected = {key: reference[key].flip(-1) if mirrored else reference[key] for key in ("gt", "lq", "refs")}
        assert all(torch.equal(item[key], expected[key]) for key in expected)
    assert 0 < flipped < len(dataset)


def test_photos_of_one_identity_are_closer_than_photos_of_different_identities():
    dataset = SyntheticReferenceDataset(identities=20, photos_per_identity=2, size=32, split="val")
    photos = [[p.astype(np.float32) / 255 for p in dataset.photos(i)] for i in range(20)]
    same = np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b in photos])
    different = np.mean([np.sqrt(np.mean((photos[i][0] - photos[(i + 1) % 20][1]) ** 2)) for i in range(20)])
    assert same < 0.7 * different


def test_severe_degradation_removes_the_identity_texture():
    dataset = SyntheticReferenceDataset(identities=4, photos_per_identity=3, size=32, degradation="severe")
    for epoch in range(2):  # 8-32x downscales of a 32 px image, down to a single pixel, must not fail
        dataset.set_epoch(epoch)
        batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
        assert _high_pass_energy(batch["lq"]) < 0.01 * _high_pass_energy(batch["gt"])
    # The high frequencies of a photo are the texture: without it a photo has little fine detail.
    identity = dataset.identities[0]
    plain = dataclasses.replace(
        identity, texture=tuple(dataclasses.replace(g, colour=(0.0, 0.0, 0.0)) for g in identity.texture)
    )
    photos = [to_signed_tensor(render(i, 32, np.random.default_rng(0))) for i in (identity, plain)]
    assert _high_pass_energy(photos[1]) < 0.5 * _high_pass_energy(photos[0])


def test_bad_settings_are_reported():
    with pytest.raises(RefFaceError, match="2 photos"):
        SyntheticReferenceDataset(photos_per_identity=1)
    with pytest.raises(RefFaceError, match="at least 1"):
        SyntheticReferenceDataset(num_refs=0)
    with pytest.raises(RefFaceError, match="identity"):
        SyntheticReferenceDataset(identities=0)
    with pytest.raises(RefFaceError, match="4 pixels"):
        SyntheticReferenceDataset(size=2)
    dataset = SyntheticReferenceDataset(identities=1, photos_per_identity=2)
    with pytest.raises(IndexError):
        dataset[2]
    with pytest.raises(RefFaceError, match="No photo"):
        dataset.photo(1, 0)


def test_pose_spread_and_expression_make_photos_of_a_person_differ_more():
    def spread(variation: PhotoVariation) -> float:
        dataset = SyntheticReferenceDataset(12, 3, 32, split="val", variation=variation)
        photos = [[p.astype(np.float32) / 255 for p in dataset.photos(i)] for i in range(12)]
        return float(np.mean([np.sqrt(np.mean((a - b) ** 2)) for a, b, _ in photos]))

    default, posed, expressive = spread(PhotoVariation()), spread(PhotoVariation(3.0)), spread(PhotoVariation(1, 1))
    assert posed > 1.2 * default and expressive > default  # lighting differs in all three
    same = SyntheticReferenceDataset(4, 2, 32, variation=PhotoVariation())
    assert np.array_equal(same.photo(3, 1), SyntheticReferenceDataset(4, 2, 32).photo(3, 1))
    for bad in ({"pose": -1.0}, {"pose": 7.0}, {"expression": 1.5}):
        with pytest.raises(RefFaceError, match="synthetic"):
            PhotoVariation(**bad)


def test_render_as_draws_another_person_in_the_same_conditions():
    variation = PhotoVariation(2.0, 0.5)
    dataset = SyntheticReferenceDataset(3, 2, 32, seed=4, split="test", variation=variation)
    assert np.array_equal(dataset.render_as(1, 1, 0), dataset.photo(1, 0))
    expected = render(dataset.identities[2], 32, photo_rng(4, "test", 1, 0), variation)
    assert np.array_equal(dataset.render_as(2, 1, 0), expected)
    assert not np.array_equal(dataset.render_as(2, 1, 0), dataset.photo(2, 0))
    with pytest.raises(RefFaceError, match="drawn as identity 3"):
        dataset.render_as(3, 1, 0)
