"""The official FFHQ-Ref file formats: reference CSVs, split lists and whole folders."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest

from refface.data.reference_csv import (
    ReferenceEntry,
    read_reference_csv,
    read_reference_dataset,
    read_split_file,
    write_reference_csv,
    write_split_file,
)
from refface.errors import RefFaceError

ENTRIES = [
    ReferenceEntry("00000.png", ("00012.png", "00345.png")),
    ReferenceEntry("00012.png", ("00000.png",)),
    ReferenceEntry("odd 'name', with comma.png", ("00001.png", 'say "hi".png')),
]

OFFICIAL_SNIPPET = """gt_image,ref_image
00000.png,"['00012.png', '00345.png']"
00012.png,['00000.png']
00345.png,"['00000.png', '00012.png']"
"""


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip(tmp_path: Path) -> None:
    path = write_reference_csv(tmp_path / "sub" / "train_references.csv", ENTRIES)
    assert read_reference_csv(path) == ENTRIES


def test_written_csv_reads_like_the_official_code(tmp_path: Path) -> None:
    path = write_reference_csv(tmp_path / "train_references.csv", ENTRIES)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "gt_image,ref_image"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["gt_image"], ast.literal_eval(row["ref_image"])) for row in rows] == [
        (entry.gt_image, list(entry.ref_images)) for entry in ENTRIES
    ]
    assert "\"['00012.png', '00345.png']\"" in path.read_text(encoding="utf-8")


def test_reads_official_snippet(tmp_path: Path) -> None:
    entries = read_reference_csv(write_text(tmp_path / "test_references.csv", OFFICIAL_SNIPPET))
    assert entries == [
        ReferenceEntry("00000.png", ("00012.png", "00345.png")),
        ReferenceEntry("00012.png", ("00000.png",)),
        ReferenceEntry("00345.png", ("00000.png", "00012.png")),
    ]


def test_reads_windows_line_endings_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "val_references.csv"
    path.write_bytes(b"\xef\xbb\xbf" + OFFICIAL_SNIPPET.replace("\n", "\r\n").encode())
    assert len(read_reference_csv(path)) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty"),
        ("image,refs\na.png,\"['b.png']\"\n", r"has no gt_image or ref_image column"),
        (
            "gt_image,ref_image\na.png,\"['b.png'\"\n",
            r"Line 2 of .*bad\.csv has a ref_image value .* not a Python list",
        ),
        ("gt_image,ref_image\na.png,b.png\n", r"Line 2 of .*bad\.csv has a ref_image value .* not a Python list"),
        ("gt_image,ref_image\na.png,\"{'b.png': 1}\"\n", r"Line 2 .* not a list of image names"),
        ("gt_image,ref_image\na.png,[]\n", r"Line 2 of .*bad\.csv lists no reference images for a\.png"),
        ("gt_image,ref_image\na.png,\"['b.png', 3]\"\n", r"Line 2 .* reference 3 that is not an image name"),
        ("gt_image,ref_image\na.png,\"['b.png']\"\nb.png,\"['c.png']\"\na.png,\"['c.png']\"\n", r"Line 4 .* repeats"),
        ("gt_image,ref_image\na.png,\"['b.png', 'a.png']\"\n", r"Line 2 .* lists the target a\.png as its own"),
        ("gt_image,ref_image\n,\"['b.png']\"\n", r"Line 2 .* has no gt_image"),
        ("gt_image,ref_image\na.png\n", r"Line 2 .* has no ref_image value"),
    ],
)
def test_bad_csv_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(RefFaceError, match=message) as caught:
        read_reference_csv(path)
    assert "bad.csv" in str(caught.value)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(RefFaceError, match=r"reference CSV .*nothing\.csv does not exist"):
        read_reference_csv(tmp_path / "nothing.csv")


def test_repeat_names_its_first_line(tmp_path: Path) -> None:
    text = "gt_image,ref_image\na.png,\"['b.png']\"\na.png,\"['c.png']\"\n"
    with pytest.raises(RefFaceError, match=r"Line 3 .* already listed on line 2"):
        read_reference_csv(write_text(tmp_path / "bad.csv", text))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([ReferenceEntry("a.png", ())], "lists no reference images"),
        ([ReferenceEntry("a.png", ("a.png",))], "as its own reference"),
        ([ReferenceEntry("a.png", ("b.png",)), ReferenceEntry("a.png", ("c.png",))], "would repeat the target a.png"),
    ],
)
def test_writer_refuses_what_the_reader_would_reject(tmp_path: Path, entries: list, message: str) -> None:
    with pytest.raises(RefFaceError, match=message):
        write_reference_csv(tmp_path / "out.csv", entries)
    assert not (tmp_path / "out.csv").exists()


def test_split_file_round_trip(tmp_path: Path) -> None:
    path = write_split_file(tmp_path / "train_image.txt", ["00000.png", "00001.png"])
    assert path.read_text() == "00000.png\n00001.png\n"
    assert read_split_file(path) == ["00000.png", "00001.png"]
    assert read_split_file(write_text(tmp_path / "blank.txt", "a.png\r\n\n  b.png  \n")) == ["a.png", "b.png"]
    assert read_split_file(write_split_file(tmp_path / "empty.txt", [])) == []


def test_split_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RefFaceError, match=r"Line 3 of .*dup\.txt repeats a\.png, already listed on line 1"):
        read_split_file(write_text(tmp_path / "dup.txt", "a.png\nb.png\na.png\n"))
    with pytest.raises(RefFaceError, match="split file .* does not exist"):
        read_split_file(tmp_path / "missing.txt")
    with pytest.raises(RefFaceError, match="would list the image a.png twice"):
        write_split_file(tmp_path / "out.txt", ["a.png", "a.png"])
    with pytest.raises(RefFaceError, match="cannot be written"):
        write_split_file(tmp_path / "out.txt", ["a\nb.png"])


def make_official_folder(root: Path, with_test: bool = True) -> Path:
    (root / "reference_mapping").mkdir(parents=True)
    (root / "id_based_ffhq_split").mkdir()
    write_text(root / "reference_mapping" / "train_references.csv", OFFICIAL_SNIPPET)
    write_text(root / "reference_mapping" / "val_references.csv", "gt_image,ref_image\n10.png,\"['11.png']\"\n")
    write_text(root / "id_based_ffhq_split" / "train_image.txt", "00000.png\n00012.png\n00345.png\n00999.png\n")
    write_text(root / "id_based_ffhq_split" / "val_image.txt", "10.png\n11.png\n")
    if with_test:
        write_text(root / "reference_mapping" / "test_references.csv", "gt_image,ref_image\n20.png,\"['21.png']\"\n")
        write_text(root / "id_based_ffhq_split" / "test_image.txt", "20.png\n21.png\n")
    return root


def test_read_official_folder(tmp_path: Path) -> None:
    folder = read_reference_dataset(make_official_folder(tmp_path / "FFHQ-Ref"))
    assert [entry.gt_image for entry in folder.references["train"]] == ["00000.png", "00012.png", "00345.png"]
    assert folder.references["test"] == [ReferenceEntry("20.png", ("21.png",))]
    assert folder.images["train"][-1] == "00999.png"
    assert folder.images["val"] == ["10.png", "11.png"]


def test_missing_test_split_reads_as_empty(tmp_path: Path) -> None:
    folder = read_reference_dataset(make_official_folder(tmp_path / "mine", with_test=False))
    assert folder.references["test"] == [] and folder.images["test"] == []


def test_only_reference_mapping_is_enough(tmp_path: Path) -> None:
    root = tmp_path / "refs"
    (root / "reference_mapping").mkdir(parents=True)
    write_text(root / "reference_mapping" / "train_references.csv", OFFICIAL_SNIPPET)
    folder = read_reference_dataset(root)
    assert len(folder.references["train"]) == 3 and folder.images["train"] == []


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(RefFaceError, match="does not exist"):
        read_reference_dataset(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RefFaceError, match=r"plain has neither reference_mapping/ nor id_based_ffhq_split/"):
        read_reference_dataset(tmp_path / "plain")
    (tmp_path / "hollow" / "reference_mapping").mkdir(parents=True)
    with pytest.raises(RefFaceError, match="contains none of"):
        read_reference_dataset(tmp_path / "hollow")
    write_text(tmp_path / "file.txt", "x")
    with pytest.raises(RefFaceError, match="is a file"):
        read_reference_dataset(tmp_path / "file.txt")


def test_overlapping_splits_are_rejected(tmp_path: Path) -> None:
    root = make_official_folder(tmp_path / "leak")
    write_text(root / "id_based_ffhq_split" / "test_image.txt", "20.png\n21.png\n10.png\n")
    with pytest.raises(RefFaceError, match=r"10\.png is in both .*val_image\.txt and .*test_image\.txt"):
        read_reference_dataset(root)
