"""`refface restore` on a group photo and on an archive: every face restored as its own person, reported."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from refface.cli import main
from refface.imaging import load_image
from tests.distributed import failure, torchrun
from tests.face.photos import grace_hopper, place


def _restore(workspace, output, *extra, inputs=None):
    inputs = inputs or [str(workspace / "group.jpg")]
    return ["restore", *inputs, "--output", str(output), "--model", str(workspace / "tiny"), "--steps", "2",
            "--device", "cpu", "-q", *extra]  # fmt: skip


def _report(output) -> list[dict]:
    with open(output / "report.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _error(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("refface: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.slow
def test_each_face_of_a_group_photo_is_restored_with_its_own_persons_references(people_workspace, tmp_path):
    out = tmp_path / "out"
    assert main(_restore(people_workspace, out, "--refs-dir", str(people_workspace / "album"))) == 0
    header = (out / "report.csv").read_text().splitlines()[0]
    assert header.startswith("photo,face,person,references,distance,status,")
    hopper, astronaut = _report(out)
    assert (hopper["face"], astronaut["face"]) == ("0", "1")
    assert {hopper["person"], astronaut["person"]} == {"person-01", "person-02"}
    assert hopper["status"] == astronaut["status"] == "restored"
    assert {name[:6] for name in hopper["references"].split(";")} == {"hopper"}
    assert {name[:5] for name in astronaut["references"].split(";")} == {"astro"}
    assert float(hopper["distance"]) < 0.6 and float(astronaut["distance"]) < 0.6
    document = json.loads((out / "report.json").read_text())
    assert document["settings"]["references"] == "refs-dir" and len(document["faces"]) == 2
    assert [person["name"] for person in document["people"]][:2] == ["person-01", "person-02"]
    assert Image.open(out / "people.png").height >= 2 * 96
    for kind in ("cropped_faces", "restored_faces", "cmp"):
        assert sorted(p.name for p in (out / kind).iterdir()) == ["group_00.png", "group_01.png"]


@pytest.mark.slow
def test_a_second_run_loads_every_persons_references_instead_of_encoding_them(people_workspace, tmp_path, capsys):
    album = str(people_workspace / "album")
    assert main([a for a in _restore(people_workspace, tmp_path / "first", "--refs-dir", album) if a != "-q"]) == 0
    assert "references encoded 2 time(s), 0 loaded from" in capsys.readouterr().out
    assert main([a for a in _restore(people_workspace, tmp_path / "second", "--refs-dir", album) if a != "-q"]) == 0
    printed = capsys.readouterr().out
    assert "references encoded 0 time(s), 2 loaded from" in printed and "delete the folder to clear it" in printed
    first = np.asarray(Image.open(tmp_path / "first" / "restored_imgs" / "group.jpg"))
    second = np.asarray(Image.open(tmp_path / "second" / "restored_imgs" / "group.jpg"))
    assert np.array_equal(first, second)  # the kept encodings restore exactly as fresh ones


@pytest.mark.slow
def test_a_light_touch_is_recorded_and_a_strength_outside_zero_to_one_is_refused(people_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(_restore(people_workspace, out, "--refs-dir", str(people_workspace / "album"), "--strength", "0.5")) == 0
    )
    assert json.loads((out / "report.json").read_text())["settings"]["sampling"]["strength"] == 0.5
    message = _error(_restore(people_workspace, tmp_path / "bad", "--no-refs", "--strength", "1.2"), capsys)
    assert message == "refface: error: The strength must be greater than 0 and at most 1, got 1.2."
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_person_folders_name_the_people_in_the_report(people_workspace, tmp_path):
    out = tmp_path / "out"
    assert main(_restore(people_workspace, out, "--people", str(people_workspace / "people"))) == 0
    hopper, astronaut = _report(out)
    assert (hopper["person"], astronaut["person"]) == ("Grace", "Eileen")
    assert hopper["references"].split(";") and all(n.startswith("hopper_") for n in hopper["references"].split(";"))


@pytest.mark.slow
def test_a_face_of_nobody_known_is_restored_without_references_or_left_untouched(people_workspace, tmp_path):
    album = str(people_workspace / "astro_album")
    out = tmp_path / "out"
    assert main(_restore(people_workspace, out, "--refs-dir", album)) == 0
    hopper, astronaut = _report(out)
    assert (hopper["person"], hopper["references"], hopper["status"]) == ("", "", "restored-without-references")
    assert astronaut["status"] == "restored" and astronaut["person"] == "person-01"

    skipped = tmp_path / "skip"
    lossless = ["--format", "png"]  # a JPEG written again moves its pixels a little; PNG keeps them
    assert main(_restore(people_workspace, skipped, "--refs-dir", album, "--unknown", "skip", *lossless)) == 0
    hopper, astronaut = _report(skipped)
    assert hopper["status"] == "skipped" and hopper["output"] == "" and astronaut["status"] == "restored"
    before = np.asarray(load_image(people_workspace / "group.jpg"))
    after = np.asarray(Image.open(skipped / "restored_imgs" / "group.png").convert("RGB"))
    assert np.array_equal(after[:, 540:], before[:, 540:])  # Grace Hopper's half: not one pixel changed
    assert np.any(after[:, :500] != before[:, :500])
    assert not (skipped / "restored_faces" / "group_00.png").exists()


@pytest.mark.slow
def test_an_archive_folder_is_restored_recursively_and_bad_files_do_not_stop_it(people_workspace, tmp_path, capsys):
    archive = tmp_path / "archive"
    (archive / "1962").mkdir(parents=True)
    shutil.copy(people_workspace / "group.jpg", archive / "1962" / "group.jpg")
    Image.fromarray(place(grace_hopper(), 0, 0.8)[0]).save(archive / "hopper only.jpg")
    (archive / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 300, 3), np.uint8)).save(archive / "wall.png")
    os.symlink("..", archive / "1962" / "loop")
    out = archive / "restored"  # the output inside the input folder: never read as input
    args = [a for a in _restore(people_workspace, out, "--refs-dir", str(people_workspace / "astro_album"),
                                "--unknown", "skip", inputs=[str(archive)]) if a != "-q"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "symlink loop" in captured.out
    assert "damaged.jpg" in captured.err
    rows = _report(out)
    by_photo = {}
    for row in rows:
        by_photo.setdefault(row["photo"], []).append(row)
    assert list(by_photo) == ["1962/group", "damaged", "hopper only", "wall"]
    assert [r["status"] for r in by_photo["1962/group"]] == ["skipped", "restored"]
    assert by_photo["damaged"][0]["status"] == "error" and "damaged.jpg" in by_photo["damaged"][0]["message"]
    assert [r["status"] for r in by_photo["hopper only"]] == ["skipped"]  # her only face matches nobody
    assert by_photo["wall"][0]["status"] == "skipped" and "No face was found" in by_photo["wall"][0]["message"]
    assert (out / "restored_imgs" / "1962" / "group.jpg").is_file()
    assert not (out / "restored_imgs" / "wall.png").exists()

    # a second run resumes: everything is done, nothing is restored again, the report is the same
    assert main(_restore(people_workspace, out, "--refs-dir", str(people_workspace / "astro_album"), "--unknown",
                         "skip", inputs=[str(archive)])) == 0  # fmt: skip
    assert _report(out) == rows
    changed = _restore(people_workspace, out, "--refs-dir", str(people_workspace / "astro_album"), "--seed", "7",
                       inputs=[str(archive)])  # fmt: skip
    message = _error(changed, capsys)
    assert "other settings" in message and "seed 2024 now 7" in message and "unknown 'skip' now 'no-refs'" in message


@pytest.mark.slow
def test_bad_people_sources_are_one_sentence_and_odd_folders_are_warned_about(people_workspace, tmp_path, capsys):
    empty_album = tmp_path / "empty_album"
    empty_album.mkdir()
    Image.fromarray(np.full((100, 100, 3), 128, np.uint8)).save(empty_album / "grey.png")
    assert "No usable face was found in the album" in _error(
        _restore(people_workspace, tmp_path / "o", "--refs-dir", str(empty_album)), capsys
    )
    assert not (tmp_path / "o").exists()

    people = tmp_path / "people"
    shutil.copytree(people_workspace / "people", people)
    (people / "Nobody").mkdir()
    (people / "Mixed").mkdir()
    for name in ("astro_plain.jpg", "astro_light.jpg", "hopper_mirror.jpg"):
        source = people_workspace / "album" / name
        shutil.copy(source, people / "Mixed" / name)
    out = tmp_path / "out"
    assert main(_restore(people_workspace, out, "--people", str(people))) == 0
    err = capsys.readouterr().err
    assert "skipped the person folder Nobody" in err
    assert "the person folder Mixed shows more than one person: hopper_mirror.jpg" in err
    assert "Eileen and Mixed look like the same person" in err
    assert {row["person"] for row in _report(out)} <= {"Eileen", "Grace", "Mixed"}

    assert "--people" in _error(_restore(people_workspace, tmp_path / "p", "--people", str(tmp_path / "none")), capsys)
    both = _restore(people_workspace, tmp_path / "p", "--people", str(people), "--refs-dir", str(people))
    assert "contradict" in _error(both, capsys)


@pytest.mark.slow
def test_a_photo_whose_faces_are_all_unknown_is_kept_as_it_is(people_workspace, tmp_path):
    photo = tmp_path / "hopper.png"
    Image.fromarray(place(grace_hopper(), 0, 0.8)[0]).save(photo)
    out = tmp_path / "out"
    album = str(people_workspace / "astro_album")
    assert main(_restore(people_workspace, out, "--refs-dir", album, "--unknown", "skip", inputs=[str(photo)])) == 0
    (row,) = _report(out)
    assert row["status"] == "skipped" and row["person"] == ""
    after = np.asarray(Image.open(out / "restored_imgs" / "hopper.png").convert("RGB"))
    assert np.array_equal(after, np.asarray(load_image(photo)))


@pytest.mark.slow
def test_two_processes_share_an_archive_and_the_main_one_writes_the_report(people_workspace, tmp_path):
    """A real two-process run (torchrun, gloo on the CPU), as `accelerate launch -m refface.cli restore` makes."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for number in range(4):
        shutil.copy(people_workspace / "group.jpg", archive / f"photo{number}.jpg")
    out = tmp_path / "out"
    arguments = _restore(people_workspace, out, "--refs-dir", str(people_workspace / "album"), inputs=[str(archive)])
    done = torchrun("-m", "refface.cli", *arguments, timeout=600,
                    env={**os.environ, "REFFACE_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert done.returncode == 0, failure(done)
    rows = _report(out)
    assert [row["photo"] for row in rows] == [f"photo{n}" for n in range(4) for _ in range(2)]
    assert all(row["status"] == "restored" for row in rows)
    shares = {}
    for rank in (0, 1):
        lines = (out / ".progress" / f"rank-{rank}.jsonl").read_text().splitlines()
        shares[rank] = [json.loads(line)["photo"] for line in lines]
    assert shares == {0: ["photo0", "photo2"], 1: ["photo1", "photo3"]}


@pytest.mark.slow
def test_a_face_that_matches_nobody_can_be_restored_by_a_blind_restorer(people_workspace, tmp_path, capsys):
    from refface.pipelines.blind import load_blind
    from tests.pipelines.blind_checkpoints import save_restoreformer

    weights = save_restoreformer(tmp_path / "RestoreFormer++.ckpt", seed=5, tiny=True)
    shutil.copytree(people_workspace / "people" / "Grace", tmp_path / "people" / "Grace")  # Eileen is nobody here
    out = tmp_path / "out"
    blind = ["--unknown", "blind", "--blind-method", "restoreformer++", "--blind-weights", str(weights)]
    args = _restore(people_workspace, out, "--people", str(tmp_path / "people"), "--face", "all", *blind, "--format",
                    "png")  # fmt: skip
    assert main(args) == 0
    hopper, astronaut = _report(out)
    assert (hopper["person"], hopper["status"]) == ("Grace", "restored")
    assert (astronaut["person"], astronaut["status"], astronaut["references"]) == ("", "restored-blind", "")
    # The unknown face is exactly the blind restorer's work on its crop; Grace's is the diffusion model's (32 px).
    crop = Image.open(out / "cropped_faces" / "group_01.png")
    expected = load_blind("restoreformer++", weights)([crop]).images[0].resize((512, 512))
    restored = Image.open(out / "restored_faces" / "group_01.png")
    assert restored.size == (512, 512) and np.array_equal(np.asarray(restored), np.asarray(expected))
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["unknown"] == "blind" and settings["blind"] == "restoreformer++"
    assert settings["blind_model"][1] == str(weights.resolve())
    # A resumed run with another blind restorer is refused, as any change of settings is.
    other = _restore(people_workspace, out, "--people", str(tmp_path / "people"), "--face", "all", "--unknown", "blind",
                     "--blind-weights", str(weights), "--format", "png")  # fmt: skip
    message = _error(other, capsys)
    assert "other settings" in message and "blind 'restoreformer++' now 'gfpgan'" in message
