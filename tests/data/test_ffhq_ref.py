"""FFHQ-Ref construction on planted identities: pairs, components, splits, test rule, FPS, files."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from refface.data import ffhq_ref
from refface.data.ffhq_ref import BuildSettings, build_reference_dataset, write_reference_dataset
from refface.data.identity_graph import close_pairs, farthest_point_order, identities_from_pairs
from refface.data.reference_csv import read_reference_csv, read_reference_dataset
from refface.errors import RefFaceError

SPLIT_NAMES = ("train", "val", "test")


def planted(
    seed: int = 0, identities: int = 40, singletons: int = 10, dim: int = 128
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, embeddings and true labels: 1-6 images per identity at distance ~0.05-0.3, shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities + singletons, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows, labels = [], []
    for identity, centre in enumerate(centres):
        count = int(rng.integers(1, 7)) if identity < identities else 1
        for _ in range(count):
            noise = rng.standard_normal(dim)
            rows.append(centre + noise / np.linalg.norm(noise) * rng.uniform(0.25, 0.55))
            labels.append(identity)
    order = rng.permutation(len(rows))
    names = [f"{index:05d}.png" for index in range(len(rows))]
    return names, np.asarray(rows)[order], np.asarray(labels)[order]


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - unit(a) @ unit(b))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as partitions: every pair is together in one labelling exactly when in the other."""
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :]))


# ---------------------------------------------------------------- close pairs and components


def brute_force_pairs(embeddings: np.ndarray) -> np.ndarray:
    rows = unit(embeddings)
    return 1.0 - rows @ rows.T


@pytest.mark.parametrize("block_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("threshold", [0.2, 0.4, 1.0])
def test_close_pairs_match_brute_force(block_size: int, threshold: float) -> None:
    _, embeddings, _ = planted(seed=1, identities=25, singletons=5, dim=64)
    rows, cols, dists = close_pairs(embeddings, threshold, block_size=block_size)
    full = brute_force_pairs(embeddings)
    found = set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert len(found) == rows.size and np.all(rows < cols)
    i, j = np.triu_indices(len(embeddings), k=1)
    certain = {(a, b) for a, b in zip(i, j, strict=True) if full[a, b] < threshold - 1e-5}
    possible = {(a, b) for a, b in zip(i, j, strict=True) if full[a, b] < threshold + 1e-5}
    assert certain <= found <= possible
    assert len(certain) > 0
    np.testing.assert_allclose(dists, full[rows, cols], atol=1e-5)


def test_close_pairs_reject_bad_embeddings() -> None:
    good = np.random.default_rng(0).standard_normal((5, 8))
    with_nan = good.copy()
    with_nan[3, 2] = np.nan
    with pytest.raises(RefFaceError, match=r"row 3 in emb\.npy contains NaN"):
        close_pairs(with_nan, 0.4, source="emb.npy")
    zero = good.copy()
    zero[2] = 0
    with pytest.raises(RefFaceError, match="row 2 .*zero length"):
        close_pairs(zero, 0.4)
    with pytest.raises(RefFaceError, match="2-D array"):
        close_pairs(good[0], 0.4)
    with pytest.raises(RefFaceError, match="between 0 and 2"):
        close_pairs(good, 2.0)


def test_components_are_numbered_by_first_appearance() -> None:
    labels = identities_from_pairs(7, np.array([3, 5, 1]), np.array([0, 3, 4]))
    assert labels.tolist() == [0, 1, 2, 0, 1, 0, 3]
    assert identities_from_pairs(3, np.array([], int), np.array([], int)).tolist() == [0, 1, 2]


# ---------------------------------------------------------------- farthest point sampling


def brute_force_fps(target: np.ndarray, candidates: np.ndarray) -> list[int]:
    """The maximin definition, written out plainly: pick the candidate farthest from everything chosen."""
    chosen: list[int] = []
    remaining = list(range(len(candidates)))
    while remaining:
        best, best_score = -1, -np.inf
        for index in remaining:
            score = min(
                [distance(target, candidates[index])] + [distance(candidates[p], candidates[index]) for p in chosen]
            )
            if score > best_score:
                best, best_score = index, score
        chosen.append(best)
        remaining.remove(best)
    return chosen


@pytest.mark.parametrize("seed", range(8))
def test_fps_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 9))
    target = rng.standard_normal(16)
    candidates = target + rng.standard_normal((count, 16)) * rng.uniform(0.2, 2.0)
    order = farthest_point_order(target, candidates)
    assert order.tolist() == brute_force_fps(target, candidates)
    farthest = np.argmax([distance(target, candidate) for candidate in candidates])
    assert order[0] == farthest


def test_fps_ties_go_to_the_lowest_index() -> None:
    eye = np.eye(3)
    # Candidates 0 and 1 are the same point (distance 2 from the target); 2 is at distance 1.
    assert farthest_point_order(eye[0], np.stack([-eye[0], -eye[0], eye[1]])).tolist() == [0, 2, 1]
    assert farthest_point_order(eye[0], np.stack([eye[1], eye[2]])).tolist() == [0, 1]


# ---------------------------------------------------------------- the builder

SMALL = BuildSettings(val_ids=6, test_ids=4, seed=3)


@pytest.fixture(scope="module")
def built() -> tuple[list[str], np.ndarray, np.ndarray, ffhq_ref.ReferenceDataset]:
    names, embeddings, labels = planted()
    return names, embeddings, labels, build_reference_dataset(names, embeddings, SMALL)


def test_recovers_planted_identities(built) -> None:
    names, _, labels, dataset = built
    assert dataset.names == names
    assert same_partition(dataset.identities, labels)
    assert dataset.statistics["identities"] == len(set(labels.tolist()))
    assert dataset.statistics["identity_source"] == "threshold"


def test_splits_are_identity_disjoint_and_complete(built) -> None:
    names, _, labels, dataset = built
    label_of = dict(zip(names, labels.tolist(), strict=True))
    together = [name for split in SPLIT_NAMES for name in dataset.splits[split]]
    assert sorted(together) == sorted(names)
    ids = {split: {label_of[name] for name in dataset.splits[split]} for split in SPLIT_NAMES}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["val"]) == SMALL.val_ids and len(ids["test"]) == SMALL.test_ids
    sizes = np.bincount(labels)
    assert all(sizes[identity] >= 2 for identity in ids["val"] | ids["test"])
    assert all(sizes[label_of[name]] >= 1 for name in dataset.splits["train"])
    assert {label for label in range(sizes.size) if sizes[label] == 1} <= ids["train"]


def test_splits_are_reproducible_by_seed(built) -> None:
    names, embeddings, _, dataset = built
    again = build_reference_dataset(names, embeddings, SMALL)
    assert again.splits == dataset.splits and again.references == dataset.references
    other = build_reference_dataset(names, embeddings, BuildSettings(val_ids=6, test_ids=4, seed=4))
    assert other.splits["val"] != dataset.splits["val"]


def test_references_are_same_identity_and_split(built) -> None:
    names, embeddings, labels, dataset = built
    label_of = dict(zip(names, labels.tolist(), strict=True))
    row_of = {name: row for row, name in enumerate(names)}
    for split in SPLIT_NAMES:
        members = set(dataset.splits[split])
        targets = [entry.gt_image for entry in dataset.references[split]]
        assert targets == [name for name in dataset.splits[split] if name in set(targets)]  # input order
        for entry in dataset.references[split]:
            assert entry.ref_images and entry.gt_image not in entry.ref_images
            assert len(set(entry.ref_images)) == len(entry.ref_images)
            assert all(label_of[ref] == label_of[entry.gt_image] and ref in members for ref in entry.ref_images)
            target = embeddings[row_of[entry.gt_image]]
            refs = np.stack([embeddings[row_of[ref]] for ref in entry.ref_images])
            assert farthest_point_order(target, refs).tolist() == list(range(len(refs)))
        if split != "test":
            # The references of an image are exactly the images of its identity within the threshold of it, and
            # every image with at least one such image is a target.
            found = dataset.identities
            index_of = {name: row for row, name in enumerate(names)}
            for name in members:
                close = {
                    other
                    for other in members
                    if other != name
                    and found[index_of[other]] == found[index_of[name]]
                    and distance(embeddings[row_of[name]], embeddings[row_of[other]]) < SMALL.threshold
                }
                given = {entry.gt_image: set(entry.ref_images) for entry in dataset.references[split]}
                assert given.get(name, set()) == close


def test_a_chain_links_one_identity_but_references_only_the_close_images() -> None:
    """A-B and B-C under the threshold, A-C far over it: one identity (the splits keep them together), but A's
    only reference is B, C's only B, and B has both."""
    rng = np.random.default_rng(11)
    a, c = unit(rng.standard_normal((2, 32)))
    c = unit(c - (c @ a) * a)  # orthogonal to a: A-C distance 1.0
    b = unit(a + c)  # 0.29 from each
    other = unit(rng.standard_normal((2, 32)))
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    embeddings = np.stack([a, b, c, other[0], other[0] + 0.05 * other[1]])
    dataset = build_reference_dataset(names, embeddings, BuildSettings(val_ids=0, test_ids=0))
    assert dataset.identities[0] == dataset.identities[1] == dataset.identities[2] != dataset.identities[3]
    refs = {entry.gt_image: set(entry.ref_images) for entry in dataset.references["train"]}
    assert refs == {"a.png": {"b.png"}, "b.png": {"a.png", "c.png"}, "c.png": {"b.png"}, "d.png": {"e.png"},
                    "e.png": {"d.png"}}  # fmt: skip
    assert dataset.statistics["images_without_references"] == 0
    assert dataset.statistics["splits"]["train"]["references_per_image_histogram"] == {"1": 4, "2": 1}


def test_test_references_respect_min_distance(built) -> None:
    names, embeddings, _, dataset = built
    row_of = {name: row for row, name in enumerate(names)}
    for entry in dataset.references["test"]:
        for ref in entry.ref_images:
            assert distance(embeddings[row_of[entry.gt_image]], embeddings[row_of[ref]]) >= SMALL.min_test_distance


def near_duplicate_case() -> tuple[list[str], np.ndarray]:
    """Identity A: a0, a1 (a near-copy of a0), a2; identity B: b0 and its near-copy b1."""
    rng = np.random.default_rng(5)
    a, b = unit(rng.standard_normal((2, 64)))
    rows = [
        a + unit(rng.standard_normal(64)) * 0.4,
        None,
        a + unit(rng.standard_normal(64)) * 0.4,
        b,
        None,
    ]
    rows[1] = rows[0] + unit(rng.standard_normal(64)) * 0.01
    rows[4] = rows[3] + unit(rng.standard_normal(64)) * 0.01
    return ["a0.png", "a1.png", "a2.png", "b0.png", "b1.png"], np.stack(rows)


def test_near_duplicates_are_removed_from_test_only() -> None:
    names, embeddings = near_duplicate_case()
    test_all = build_reference_dataset(names, embeddings, BuildSettings(val_ids=0, test_ids=2))
    refs = {entry.gt_image: entry.ref_images for entry in test_all.references["test"]}
    assert refs == {"a0.png": ("a2.png",), "a1.png": ("a2.png",), "a2.png": refs["a2.png"]}
    assert set(refs["a2.png"]) == {"a0.png", "a1.png"}
    assert test_all.statistics["test_targets_dropped"] == 2  # b0 and b1 had only each other
    assert test_all.statistics["images_without_references"] == 2
    assert test_all.statistics["test_references_removed"] == 4  # a0<->a1 and b0<->b1, both ways
    assert test_all.splits["test"] == names  # dropped targets stay in the split list
    train_all = build_reference_dataset(names, embeddings, BuildSettings(val_ids=0, test_ids=0))
    assert len(train_all.references["train"]) == 5
    assert train_all.statistics["test_targets_dropped"] == 0


def test_given_identity_labels_are_honoured(built) -> None:
    names, embeddings, labels, _ = built
    given = [f"celeb{label // 2}" for label in labels]  # merges planted identities pairwise
    dataset = build_reference_dataset(names, embeddings, SMALL, identities=given)
    assert same_partition(dataset.identities, np.asarray(given))
    assert dataset.statistics["identity_source"] == "given" and dataset.statistics["pairs_linked"] is None
    label_of = dict(zip(names, given, strict=True))
    for split in ("train", "val"):
        for entry in dataset.references[split]:
            assert all(label_of[ref] == label_of[entry.gt_image] for ref in entry.ref_images)
    with pytest.raises(RefFaceError, match=f"Got {len(names)} images but 3 identity labels"):
        build_reference_dataset(names, embeddings, SMALL, identities=given[:3])


def test_statistics_are_json_and_consistent(built) -> None:
    _, _, _, dataset = built
    statistics = json.loads(json.dumps(dataset.statistics))
    assert statistics["threshold"] == 0.4 and statistics["pairs_linked"] > 0
    for split in SPLIT_NAMES:
        row = statistics["splits"][split]
        counts = [len(entry.ref_images) for entry in dataset.references[split]]
        assert row["images"] == len(dataset.splits[split]) and row["targets"] == len(counts)
        assert sum(row["references_per_image_histogram"].values()) == len(counts)
        assert row["references_per_image"]["max"] == max(counts) and row["references"] == sum(counts)
    assert statistics["splits"]["val"]["identities"] == SMALL.val_ids
    # Every image of an identity with several images has one within the threshold (that is what joined it),
    # so the images without references are the single ones and the test targets the minimum distance emptied.
    expected = statistics["single_image_identities"] + statistics["test_targets_dropped"]
    assert statistics["images_without_references"] == expected > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 0.0}, "threshold must be a cosine distance between 0 and 2, got 0.0"),
        ({"threshold": 2.5}, "between 0 and 2, got 2.5"),
        ({"min_test_distance": 0.0}, "minimum test reference distance .* got 0.0"),
        ({"min_test_distance": 2.0}, "minimum test reference distance .* got 2.0"),
        (
            {"val_ids": 30, "test_ids": 20},
            r"Only \d+ identities in ffhq_arcface\.npy have references, fewer than the 30 validation \+ 20",
        ),
        ({"threshold": 0.01}, r"closer than the threshold 0.01 \(the closest pair is 0\.\d+ apart\).*larger threshold"),
    ],
)
def test_bad_settings(built, change: dict, message: str) -> None:
    names, embeddings, _, _ = built
    settings = BuildSettings(**{**SMALL.__dict__, **change})
    with pytest.raises(RefFaceError, match=message):
        build_reference_dataset(names, embeddings, settings, source="ffhq_arcface.npy")


def test_bad_inputs(built) -> None:
    names, embeddings, _, _ = built
    with pytest.raises(RefFaceError, match=r"1 image name\(s\) appear more than once for emb\.npy: 00000\.png"):
        build_reference_dataset([names[0], *names[:-1]], embeddings, SMALL, source="emb.npy")
    with pytest.raises(RefFaceError, match=f"Got {len(names)} embeddings but {len(names) - 1} image names"):
        build_reference_dataset(names[:-1], embeddings, SMALL)
    broken = embeddings.copy()
    broken[4, 0] = np.nan
    with pytest.raises(RefFaceError, match=r"row 4 \(00004\.png\) in emb\.npy contains NaN"):
        build_reference_dataset(names, broken, SMALL, source="emb.npy")


# ---------------------------------------------------------------- writing


def test_write_official_layout(built, tmp_path: Path) -> None:
    _, _, _, dataset = built
    out = write_reference_dataset(dataset, tmp_path / "FFHQ-Ref")
    for split in SPLIT_NAMES:
        assert (out / "reference_mapping" / f"{split}_references.csv").is_file()
        assert (out / "id_based_ffhq_split" / f"{split}_image.txt").is_file()
    assert (out / "references_per_image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| test |" in (out / "statistics.md").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["FFHQ-Ref"]  # no temporary folders left

    statistics = json.loads((out / "statistics.json").read_text())
    loaded = read_reference_dataset(out)
    for split in SPLIT_NAMES:
        assert loaded.references[split] == dataset.references[split]
        assert loaded.images[split] == dataset.splits[split]
        assert statistics["splits"][split]["targets"] == len(loaded.references[split])
        assert statistics["splits"][split]["images"] == len(loaded.images[split])
        with (out / "reference_mapping" / f"{split}_references.csv").open(newline="") as handle:
            total = sum(len(ast.literal_eval(row["ref_image"])) for row in csv.DictReader(handle))
        assert statistics["splits"][split]["references"] == total

    with (out / "identities.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == dataset.names
    assert [int(row["identity"]) for row in rows] == dataset.identities.tolist()
    assert all(row["image"] in dataset.splits[row["split"]] for row in rows)


def test_refuses_non_empty_folder_and_overwrites_on_request(built, tmp_path: Path) -> None:
    _, _, _, dataset = built
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RefFaceError, match="out is not empty"):
        write_reference_dataset(dataset, out)
    assert (out / "keep.txt").read_text() == "old"
    write_reference_dataset(dataset, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "statistics.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    (tmp_path / "empty").mkdir()
    assert (write_reference_dataset(dataset, tmp_path / "empty") / "statistics.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RefFaceError, match="is a file"):
        write_reference_dataset(dataset, tmp_path / "file")


def test_failure_leaves_nothing_behind(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, _, dataset = built

    def broken_plot(statistics: dict, path: Path) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(ffhq_ref, "_plot_references_per_image", broken_plot)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_reference_dataset(dataset, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="plot failed"):
        write_reference_dataset(dataset, old, overwrite=True)
    assert [path.name for path in tmp_path.iterdir()] == ["old"]
    assert [path.name for path in old.iterdir()] == ["keep.txt"]


def test_written_csv_has_read_reference_csv_format(built, tmp_path: Path) -> None:
    _, _, _, dataset = built
    out = write_reference_dataset(dataset, tmp_path / "d")
    assert read_reference_csv(out / "reference_mapping" / "val_references.csv") == dataset.references["val"]
