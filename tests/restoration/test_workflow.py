"""The workflow object on the Python API: matching, one encoding per person, shared batches, the kept encodings,
resuming an interrupted archive run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from refface.errors import RefFaceError
from refface.face.detection import DlibDetector
from refface.face.identity import DlibEmbedder, euclidean_distances
from refface.imaging import load_image
from refface.pipelines.composite import CompositeContextPipeline
from refface.restoration import PhotoRestorer, ReferenceStore
from refface.restoration.archive import prepare_archive, run_archive
from refface.restoration.archive_inputs import list_photos
from refface.restoration.people import People, Person, people_from_album
from refface.restoration.settings import RestoreSettings
from tests.conftest import make_tiny_pipeline
from tests.face.photos import group_photo


def settings(batch_size: int = 4) -> RestoreSettings:
    return RestoreSettings.build(steps=2, batch_size=batch_size)


class CountingPipe:
    """A pipeline that counts reference encodings and denoising calls (and the batch of each call)."""

    def __init__(self, pipe):
        self.pipe, self.encodings, self.batches = pipe, 0, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def encode_references(self, references):
        self.encodings += 1
        return self.pipe.encode_references(references)

    def __call__(self, lq, references=None, *options, **keywords):
        self.batches.append(len(lq))
        return self.pipe(lq, references, *options, **keywords)


@pytest.fixture(scope="module")
def detector():
    return DlibDetector()


@pytest.fixture(scope="module")
def album_people(people_workspace, detector, tmp_path_factory):
    cache = tmp_path_factory.mktemp("scan")
    return people_from_album(people_workspace / "album", detector, DlibEmbedder(), 3, cache_root=cache, progress=False)


@dataclass
class Flat:
    """An embedder stand-in over 2-d points, for matching tests with known distances."""

    name: str = "flat"
    same_person_distance: float = 0.6

    def distances(self, a, b):
        return euclidean_distances(a, b)


def _person(name, *points):
    crop = np.zeros((8, 8, 3), np.uint8)
    return Person(name, [crop], [f"{name}.jpg"], [], np.array(points, dtype=float))


def test_faces_of_one_photo_are_matched_to_different_people_under_the_threshold():
    anna, ben = _person("Anna", [0, 0], [0.1, 0]), _person("Ben", [1, 0])
    people = People([anna, ben], Flat())
    # both faces are nearest to Anna, but one person appears once in a photo: the second is Ben (under 0.6)
    matches = people.match(np.array([[0.05, 0], [0.45, 0], [5, 5]]))
    assert [m.person.name if m.person else None for m in matches] == ["Anna", "Ben", None]
    assert matches[1].distance == pytest.approx(0.55) and matches[2].distance > 4
    # one face far from Ben's only photo: nobody, unless the user named the person (then it is theirs)
    assert People([ben], Flat()).match(np.array([[3.0, 0]]))[0].person is None
    forced = People([ben], Flat(), named_one=True).match(np.array([[3.0, 0]]))[0]
    assert forced.person is ben and forced.distance == pytest.approx(2.0)
    assert People([], None).match(np.zeros((2, 2))) == People([], None).match(np.ones((2, 2)))


@pytest.mark.slow
def test_each_person_is_encoded_once_and_their_faces_share_batches(people_workspace, detector, album_people):
    group = group_photo()
    photos = [(f"group{i}", lambda flipped=i % 2: group[:, ::-1] if flipped else group) for i in range(3)]
    counted = CountingPipe(make_tiny_pipeline(seed=3))
    restorer = PhotoRestorer(counted, album_people, detector, settings(batch_size=4))
    results = list(restorer.restore_many(photos))
    assert counted.encodings == 2  # two people, six faces
    assert counted.batches == [3, 3]  # the three faces of each person in one call
    for result in results:
        names = {face.person_name for face in result.faces}
        assert names == {"person-01", "person-02"} and result.error is None
    singles = CountingPipe(make_tiny_pipeline(seed=3))
    one_by_one = PhotoRestorer(singles, album_people, detector, settings(batch_size=1))
    again = list(one_by_one.restore_many(photos))
    assert singles.encodings == 2 and singles.batches == [1] * 6
    for first, second in zip(results, again, strict=True):  # batching does not change a face's restoration
        for a, b in zip(first.faces, second.faces, strict=True):
            assert np.abs(a.restored.astype(int) - b.restored.astype(int)).max() <= 1


def test_encoded_people_are_kept_between_runs_and_invalidated_by_other_weights(tmp_path, album_people):
    pipe = CountingPipe(make_tiny_pipeline(seed=3))
    first = ReferenceStore(pipe, tmp_path / "people")
    kv = [first.encoded(person) for person in album_people if person.references]
    assert pipe.encodings == 2 and len(list((tmp_path / "people").glob("*.safetensors"))) == 2
    again = ReferenceStore(pipe, tmp_path / "people")
    loaded = [again.encoded(person) for person in album_people if person.references]
    assert pipe.encodings == 2 and again.encodings == 0 and again.loaded == 2
    for a, b in zip(kv, loaded, strict=True):
        assert a.keys.keys() == b.keys.keys() and a.num_references == b.num_references
        assert all(torch.equal(a.keys[n], b.keys[n]) and torch.equal(a.values[n], b.values[n]) for n in a.keys)
    other = CountingPipe(make_tiny_pipeline(seed=4))  # other weights: another entry
    ReferenceStore(other, tmp_path / "people").encoded(album_people.people[0])
    assert other.encodings == 1
    changed = Person("x", [np.flipud(c) for c in album_people.people[0].references], [], [], np.zeros((1, 128)))
    ReferenceStore(pipe, tmp_path / "people").encoded(changed)  # other reference pixels: another entry
    assert pipe.encodings == 3
    small = ReferenceStore(pipe, tmp_path / "bounded", limit_bytes=1)
    for person in album_people.people[:2]:
        small.encoded(person)
    assert len(list((tmp_path / "bounded").glob("*.safetensors"))) == 1  # the bound keeps the newest only
    assert "delete the folder to clear it" in small.describe()


def test_composite_features_round_trip_through_the_store(tmp_path, album_people):
    torch.manual_seed(0)
    pipe = CountingPipe(CompositeContextPipeline.tiny(32))
    person = album_people.people[0]
    made = ReferenceStore(pipe, tmp_path).encoded(person)
    kept = ReferenceStore(pipe, tmp_path).encoded(person)
    assert pipe.encodings == 1
    assert torch.equal(made.identity, kept.identity) and torch.equal(made.facial, kept.facial)


@pytest.mark.slow
def test_an_interrupted_archive_run_resumes_at_the_next_photo(people_workspace, detector, album_people, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for number in range(3):
        shutil.copy(people_workspace / "group.jpg", archive / f"photo{number}.jpg")
    photos, _ = list_photos([archive], tmp_path / "out")
    recorded = {"seed": 1}

    def stop_after_first(photo, result):
        raise KeyboardInterrupt

    counted = CountingPipe(make_tiny_pipeline(seed=3))
    restorer = PhotoRestorer(counted, album_people, detector, settings(batch_size=1))
    with pytest.raises(KeyboardInterrupt):
        prepared = prepare_archive(tmp_path / "out", photos, recorded, overwrite=False)
        run_archive(prepared, restorer, progress=False, on_photo=stop_after_first)
    assert len(counted.batches) == 2  # photo0's two faces (photo1 was not reached: window = batch size 1)
    resumed = CountingPipe(make_tiny_pipeline(seed=3))
    prepared = prepare_archive(tmp_path / "out", photos, recorded, overwrite=False)
    assert prepared.resuming
    summary = run_archive(prepared, PhotoRestorer(resumed, album_people, detector, settings(batch_size=1)),
                          progress=False)  # fmt: skip
    assert summary.resumed == 1 and summary.photos == 2 and len(resumed.batches) == 4
    assert [row["photo"] for row in summary.rows] == ["photo0"] * 2 + ["photo1"] * 2 + ["photo2"] * 2
    with pytest.raises(RefFaceError, match="seed 1 now 2"):
        prepare_archive(tmp_path / "out", photos, {"seed": 2}, overwrite=False)


@pytest.mark.slow
def test_a_photo_can_be_restored_with_people_chosen_by_hand(people_workspace, detector, album_people):
    restorer = PhotoRestorer(make_tiny_pipeline(seed=3), album_people, detector, settings())
    photo = load_image(people_workspace / "group.jpg")
    faces, _ = restorer.find(photo)
    hopper = faces[0].person_name
    astronaut = faces[1].person_name
    result = restorer.restore(photo, people_of={0: astronaut, 1: None})
    assert result.faces[0].person_name == astronaut and result.faces[0].status == "restored"
    assert result.faces[0].distance > 0.6  # Grace Hopper is not the astronaut, and the distance says so
    assert result.faces[1].status == "restored-without-references" and result.faces[1].references == []
    assert hopper != astronaut
    with pytest.raises(RefFaceError, match="no person named 'Zed'"):
        restorer.restore(photo, people_of={0: "Zed"})
    with pytest.raises(RefFaceError, match="face 5 does not exist"):
        restorer.restore(Image.fromarray(np.asarray(photo)), people_of={5: None})
