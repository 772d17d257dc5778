"""`refface degrade` and `refface dataset build|benchmark|info` end to end, on real faces and planted embeddings."""

from __future__ import annotations

import ast
import csv
import json

import numpy as np
import pytest
from PIL import Image

from refface.cli import main
from refface.data.reference_csv import read_reference_dataset
from refface.face.detection import DlibDetector
from refface.face.locate import find_faces
from tests.face.photos import astronaut, grace_hopper, side_light


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def aligned_faces(tmp_path_factory):
    """Aligned 256 px crops: three looks of the astronaut, three of Grace Hopper."""
    folder = tmp_path_factory.mktemp("aligned")
    detector = DlibDetector()
    looks = {"plain": lambda x: x, "lit": side_light, "mirror": lambda x: np.ascontiguousarray(x[:, ::-1])}
    for person, photo in (("astro", astronaut()), ("hopper", grace_hopper())):
        for look, change in looks.items():
            crop = find_faces(change(photo), detector, "largest", 256).faces[0].image
            Image.fromarray(crop).save(folder / f"{person}_{look}.png")
    return folder


@pytest.mark.slow
def test_dataset_build_embeds_real_faces_into_two_people(aligned_faces, tmp_path, capsys):
    out = tmp_path / "set"
    code, printed, err = _run(
        capsys, "dataset", "build", aligned_faces, out, "--identity", "dlib", "--val-ids", "0", "--test-ids", "1",
        "--min-test-distance", "0.001", "-q",
    )  # fmt: skip
    assert code == 0, err
    identities = list(csv.DictReader((out / "identities.csv").open()))
    groups = {}
    for row in identities:
        groups.setdefault(row["identity"], set()).add(row["image"].split("_")[0])
    assert sorted(map(sorted, groups.values())) == [["astro"], ["hopper"]]
    dataset = read_reference_dataset(out)
    assert len(dataset.references["train"]) == 3 and len(dataset.references["test"]) == 3
    for entry in dataset.references["test"] + dataset.references["train"]:
        assert len(entry.ref_images) == 2 and all(
            r.split("_")[0] == entry.gt_image.split("_")[0] for r in entry.ref_images
        )
    # the embeddings are kept, and rebuilding from them gives the same dataset without embedding again
    assert np.load(out / "embeddings.npy").shape == (6, 128)
    assert not list(tmp_path.glob(".set.embedding*"))  # the resumable work folder is gone once done
    again = tmp_path / "again"
    code, _, err = _run(
        capsys, "dataset", "build", aligned_faces, again, "--embeddings", out / "embeddings.npy", "--names",
        out / "names.txt", "--identity", "dlib", "--val-ids", "0", "--test-ids", "1", "--min-test-distance", "0.001",
    )  # fmt: skip
    assert code == 0, err
    for name in ("train_references.csv", "test_references.csv"):
        assert (out / "reference_mapping" / name).read_text() == (again / "reference_mapping" / name).read_text()


def _planted(tmp_path, people=12, dims=32, seed=0):
    """Embeddings of `people` identities with 1-4 images each, and empty image files for them."""
    rng = np.random.default_rng(seed)
    names, rows = [], []
    images = tmp_path / "images"
    images.mkdir()
    for person in range(people):
        centre = rng.normal(size=dims)
        for look in range(1 + person % 4):
            names.append(f"p{person:02d}_{look}.png")
            rows.append(centre + rng.normal(scale=0.15, size=dims))
            Image.new("RGB", (8, 8)).save(images / names[-1])
    np.save(tmp_path / "emb.npy", np.asarray(rows))
    (tmp_path / "names.txt").write_text("\n".join(names))
    return images


def test_dataset_build_from_embeddings_writes_the_official_layout(tmp_path, capsys):
    images = _planted(tmp_path)
    out = tmp_path / "ffhq-ref"
    code, printed, err = _run(
        capsys, "dataset", "build", images, out, "--embeddings", tmp_path / "emb.npy", "--names",
        tmp_path / "names.txt", "--val-ids", "2", "--test-ids", "2", "--seed", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "Reference dataset statistics" in printed
    for split in ("train", "val", "test"):
        assert (out / "reference_mapping" / f"{split}_references.csv").is_file()
        assert (out / "id_based_ffhq_split" / f"{split}_image.txt").is_file()
    with (out / "reference_mapping" / "val_references.csv").open() as handle:
        for row in csv.DictReader(handle):  # readable exactly as the official loader reads it
            refs = ast.literal_eval(row["ref_image"])
            assert refs and all(r.split("_")[0] == row["gt_image"].split("_")[0] for r in refs)
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["identities"] == 12 and statistics["val_ids"] == 2 and statistics["test_ids"] == 2
    assert (out / "references_per_image.png").stat().st_size > 1000

    code, printed, _ = _run(capsys, "dataset", "info", out)
    assert code == 0 and "val:" in printed and "test:" in printed

    code, _, err = _run(
        capsys, "dataset", "build", images, out, "--embeddings", tmp_path / "emb.npy", "--names", tmp_path / "names.txt"
    )
    assert code == 1 and "exists and is not empty" in err and "--overwrite" in err


def test_given_identities_with_all_test_ids_make_a_celeba_style_set(tmp_path, capsys):
    images = _planted(tmp_path)
    names = (tmp_path / "names.txt").read_text().split()
    (tmp_path / "identity.txt").write_text("\n".join(f"{n} {n.split('_')[0]}" for n in names))
    out = tmp_path / "celeba-ref"
    code, _, err = _run(
        capsys, "dataset", "build", images, out, "--embeddings", tmp_path / "emb.npy", "--names",
        tmp_path / "names.txt", "--identities", tmp_path / "identity.txt", "--val-ids", "0", "--test-ids", "all",
        "--min-test-distance", "0.001", "-q",
    )  # fmt: skip
    assert code == 0, err
    dataset = read_reference_dataset(out)
    assert not dataset.references["train"] and not dataset.references["val"]
    assert {e.gt_image.split("_")[0] for e in dataset.references["test"]} == {f"p{p:02d}" for p in range(12) if p % 4}

    (tmp_path / "bad.txt").write_text("p00_0.png\n")
    code, _, err = _run(
        capsys, "dataset", "build", images, tmp_path / "x", "--embeddings", tmp_path / "emb.npy", "--names",
        tmp_path / "names.txt", "--identities", tmp_path / "bad.txt",
    )  # fmt: skip
    assert code == 1 and "Line 1 of" in err and "bad.txt" in err


def test_dataset_build_input_errors_are_one_line(tmp_path, capsys):
    images = _planted(tmp_path)
    code, _, err = _run(capsys, "dataset", "build", images, tmp_path / "o", "--embeddings", tmp_path / "emb.npy")
    assert code == 1 and "--embeddings and --names go together" in err
    (tmp_path / "short.txt").write_text("p00_0.png\n")
    code, _, err = _run(
        capsys, "dataset", "build", images, tmp_path / "o", "--embeddings", tmp_path / "emb.npy", "--names",
        tmp_path / "short.txt",
    )  # fmt: skip
    assert code == 1 and "rows but the names file" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(
        capsys, "dataset", "build", images, tmp_path / "o", "--embeddings", tmp_path / "emb.npy", "--names",
        tmp_path / "names.txt", "--val-ids", "50",
    )  # fmt: skip
    assert code == 1 and "identities" in err and "50" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_degrade_and_benchmark_are_reproducible(aligned_faces, tmp_path, capsys):
    code, printed, err = _run(
        capsys, "degrade", aligned_faces, tmp_path / "a", "--preset", "severe", "--seed", "0", "-q"
    )
    assert code == 0, err
    code, _, _ = _run(capsys, "degrade", aligned_faces, tmp_path / "b", "--preset", "severe", "--seed", "0", "-q")
    names = sorted(p.name for p in aligned_faces.glob("*.png"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    rows = list(csv.DictReader((tmp_path / "a" / "degradation_params.csv").open()))
    assert [r["image"] for r in rows] == names and {r["preset"] for r in rows} == {"severe"}
    assert all(8 <= float(r["scale"]) <= 32 for r in rows)
    code, _, err = _run(capsys, "degrade", aligned_faces, tmp_path / "a", "--preset", "severe", "-q")
    assert code == 1 and "--overwrite" in err

    built = tmp_path / "set"
    _run(
        capsys, "dataset", "build", aligned_faces, built, "--identity", "dlib", "--val-ids", "0", "--test-ids", "2",
        "--min-test-distance", "0.001", "-q",
    )  # fmt: skip
    test_csv = built / "reference_mapping" / "test_references.csv"
    for folder in ("m1", "m2"):
        code, _, err = _run(
            capsys, "dataset", "benchmark", test_csv, aligned_faces, tmp_path / folder, "--preset", "moderate",
            "--size", "128", "-q",
        )  # fmt: skip
        assert code == 0, err
    lq = sorted((tmp_path / "m1").glob("*.png"))
    assert len(lq) == 6 and Image.open(lq[0]).size == (128, 128)
    assert all(p.read_bytes() == (tmp_path / "m2" / p.name).read_bytes() for p in lq)
    assert (tmp_path / "m1" / "references.csv").read_text() == test_csv.read_text()
