"""A run's settings: built once from a front end's choices, every check and default made there."""

from __future__ import annotations

from pathlib import Path

import pytest

from refface import methods
from refface.errors import RefFaceError
from refface.pipelines.base import FAST_STEPS, REFLDM_OPTIONS
from refface.restoration.settings import ReferenceSource, RestoreSettings, face_choice
from refface.video.options import VideoOptions


def test_defaults_are_the_method_s_and_the_run_s():
    settings = RestoreSettings.build()
    assert settings.method == "refldm" and settings.sampling == REFLDM_OPTIONS
    assert (settings.faces, settings.unknown, settings.batch_size, settings.strict) == ("auto", "no-refs", 4, False)
    assert settings.sources is None  # a front end with its model loaded
    assert RestoreSettings.build(loads_model=True).sources == methods.ModelSources()  # the release
    with pytest.raises(RefFaceError, match="Composite-Context method has no released weights"):
        RestoreSettings.build(method="composite", loads_model=True)
    composite = RestoreSettings.build(method="composite", model="folder-not-made-yet", steps=7)
    assert composite.sampling == methods.get("composite").defaults.with_changes(steps=7)


def test_fast_mode_is_dpm_solver_at_its_own_steps_unless_told():
    assert RestoreSettings.build(fast=True).sampling.steps == FAST_STEPS
    assert RestoreSettings.build(fast=True, steps=8).sampling.steps == 8
    assert RestoreSettings.build(solver="dpm++").sampling.steps == FAST_STEPS  # the same decision as --fast
    with pytest.raises(RefFaceError, match="--fast samples with DPM-Solver\\+\\+; it contradicts --solver ddim"):
        RestoreSettings.build(fast=True, solver="ddim")


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"faces": "most"}, "all, largest, auto or a face number, got 'most'"),
        ({"faces": -1}, "Face numbers start at 0, got -1"),
        ({"unknown": "ignore"}, "'no-refs', 'skip' or 'blind', got 'ignore'"),
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"identity": "facenet"}, "Unknown identity model 'facenet'"),
        ({"detector": "yolo"}, "Unknown face detector 'yolo'"),
        ({"device": "tpu"}, "Unknown device 'tpu'"),
        ({"dtype": "fp8"}, "Unknown dtype 'fp8'"),
        ({"arcface_weights": "r50.onnx"}, "--arcface-weights only applies with --identity arcface"),
        ({"guidance": float("nan")}, "guidance must be a finite number"),
        ({"method": "gfpgan2"}, "Unknown method 'gfpgan2'"),
        ({"method": "gfpgan", "steps": 10}, r"^The number of steps is not an option of GFPGAN v1\.4\.$"),
        ({"method": "gfpgan", "strength": 0.5}, r"^The strength is not an option of GFPGAN v1\.4\.$"),
        ({"method": "restoreformer++", "guidance": 2.0}, "guidance toward the references is not an option of Rest"),
        ({"method": "codeformer", "fidelity": 1.5}, "fidelity weight must be between 0 and 1, got 1.5"),
        ({"fidelity": 0.7}, "The fidelity weight is not an option of ReF-LDM"),
        ({"method": "gfpgan", "model": "folder"}, "A blind restorer loads one weights file"),
        ({"blind_method": "codeformer"}, "--blind-method and --blind-weights only apply with --unknown blind"),
        ({"unknown": "blind", "blind_method": "refldm"}, "'refldm' is not a blind restorer; choose one of codeformer"),
        ({"unknown": "blind", "fidelity": 0.7}, "The fidelity weight is not an option of GFPGAN v1.4"),
        ({"unknown": "blind", "blind_weights": "gone.pth"}, r"^The weights file gone\.pth does not exist\.$"),
        ({"checkpoint": "x.ckpt", "method": "composite"}, "ReF-LDM's official files"),
        ({"output": "restored.png"}, "For whole photos --output is a folder"),
    ],
)
def test_each_bad_choice_is_one_sentence(choices, message):
    with pytest.raises(RefFaceError, match=message):
        RestoreSettings.build(**choices)


def test_the_reference_source_is_worked_out_once():
    assert ReferenceSource.choose(ref=["a.jpg", "b.jpg"]) == ReferenceSource("files", (Path("a.jpg"), Path("b.jpg")))
    album = ReferenceSource.choose(refs_dir="album", person="me.jpg", count=3)
    assert album == ReferenceSource("album", (Path("album"),), Path("me.jpg"), 3) and album.given
    assert not ReferenceSource.choose(no_refs=True).given
    with pytest.raises(RefFaceError, match="No reference photos were given"):
        ReferenceSource.choose()
    with pytest.raises(RefFaceError, match="--ref and --people contradict each other"):
        ReferenceSource.choose(ref=["a.jpg"], people="people")
    with pytest.raises(RefFaceError, match="--person only applies"):
        ReferenceSource.choose(people="people", person="me.jpg")
    with pytest.raises(RefFaceError, match="--num-refs must be at least 1, got 0"):
        ReferenceSource.choose(refs_dir="album", count=0)
    with pytest.raises(RefFaceError, match="--people needs whole photos"):
        RestoreSettings.build(references=ReferenceSource.choose(people="people"), aligned=True)


def test_what_a_run_records(tmp_path):
    settings = RestoreSettings.build(
        steps=9, seed=3, references=ReferenceSource.choose(refs_dir=str(tmp_path), count=2), faces=1,
        video=VideoOptions(detect_every=2),
    )  # fmt: skip
    recorded = settings.recorded()
    assert recorded["sampling"]["steps"] == 9 and recorded["sampling"]["seed"] == 3
    assert (recorded["references"], recorded["reference_paths"], recorded["num_refs"]) == (
        "refs-dir", [str(tmp_path.resolve())], 2
    )
    assert recorded["face"] == 1 and "video" not in recorded
    assert settings.recorded(with_video=True)["video"]["detect_every"] == 2
    other = RestoreSettings.build(steps=9, seed=4, references=settings.references, faces=1)
    assert other.recorded() != recorded  # another seed is another run


def test_the_command_line_and_the_library_make_the_same_settings(tmp_path):
    from refface.cli import build_parser
    from refface.cli.restore import restore_settings

    args = build_parser("restore").parse_args(
        ["restore", "photo.jpg", "--refs-dir", "album", "--num-refs", "3", "-o", str(tmp_path / "out"), "--steps",
         "12", "--guidance", "2", "--seed", "5", "--face", "1", "--unknown", "skip", "--batch-size", "2",
         "--detect-every", "3"]
    )  # fmt: skip
    assert restore_settings(args) == RestoreSettings.build(
        steps=12, guidance=2.0, seed=5, references=ReferenceSource.choose(refs_dir="album", count=3), faces=1,
        unknown="skip", batch_size=2, output=tmp_path / "out", video=VideoOptions(detect_every=3), loads_model=True,
    )  # fmt: skip


def test_face_choice_is_one_rule_for_the_command_line_and_the_library():
    assert face_choice("all") == "all" and face_choice(2) == 2
    from refface.cli.common import face_selection

    assert face_selection("2") == 2 and face_selection("largest") == "largest"
    with pytest.raises(Exception, match="Face numbers start at 0, got -1"):
        face_selection("-1")


def test_unknown_faces_restored_blind_get_their_restorer_once():
    from refface.pipelines.base import CODEFORMER_OPTIONS, GFPGAN_OPTIONS

    chosen = RestoreSettings.build(unknown="blind")
    assert (chosen.blind, chosen.blind_sampling, chosen.blind_sources) == ("gfpgan", GFPGAN_OPTIONS, None)
    assert chosen.recorded()["blind"] == "gfpgan" and chosen.recorded()["blind_sampling"]["method"] == "GFPGAN v1.4"
    assert "blind" not in RestoreSettings.build().recorded()  # manifests of runs without it are unchanged
    coded = RestoreSettings.build(unknown="blind", blind_method="codeformer", fidelity=0.8)
    assert coded.blind_sampling == CODEFORMER_OPTIONS.with_changes(fidelity=0.8)
    assert coded.sampling == RestoreSettings.build().sampling  # the fidelity went where it is an option
    assert RestoreSettings.build(method="codeformer", fidelity=0.3).sampling.fidelity == 0.3
    with pytest.raises(RefFaceError, match="Name the blind restorer .* exactly when unknown faces are restored blind"):
        RestoreSettings(unknown="blind")


def test_a_blind_method_needs_no_references_and_says_it_does_not_use_them():
    assert ReferenceSource.choose(needed=False) == ReferenceSource("none")
    with pytest.raises(RefFaceError, match="No reference photos were given"):
        ReferenceSource.choose()
    given = RestoreSettings.build(method="gfpgan", references=ReferenceSource.choose(ref=["a.jpg"], needed=False))
    assert given.notes() == [
        "GFPGAN v1.4 restores each face from itself alone: the reference photos are not used in the restoration, "
        "only to decide which faces are restored."
    ]
    assert RestoreSettings.build(method="gfpgan", references=ReferenceSource.choose(needed=False)).notes() == []
    assert RestoreSettings.build(references=ReferenceSource.choose(ref=["a.jpg"])).notes() == []
