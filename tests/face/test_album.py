"""Identity embedding, album reference selection and the identity guard, end to end on real faces.

The album is generated: photos of the astronaut and of Grace Hopper in different poses, lighting
and mirror images, plus the cases selection must reject (a blurred copy, an exact copy, a tiny
face, a photo with no face, a damaged file).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refface.errors import RefFaceError
from refface.face.album import choose_references, farthest_point_order, group_people, scan_album
from refface.face.detection import DlibDetector
from refface.face.guard import check_identity, lq_is_usable
from refface.face.identity import DlibEmbedder
from refface.face.locate import find_faces
from tests.face.photos import astronaut, degrade, grace_hopper, mirror, place, side_light

ASTRONAUT_PHOTOS = {
    "astro_plain.jpg": lambda a: place(a, 10, 1.1)[0],
    "astro_mirror.jpg": lambda a: place(mirror(a), -8, 1.0)[0],
    "astro_light.jpg": lambda a: place(side_light(a), 3, 1.3)[0],
    "astro_plain_copy.png": lambda a: place(a, 10, 1.1)[0],
    "astro_blurred.jpg": lambda a: degrade(place(a, 5, 1.0)[0], 3),
    "astro_tiny.jpg": lambda a: place(a, 0, 0.45)[0],
}
HOPPER_PHOTOS = {
    "hopper_plain.jpg": lambda g: place(g, 0, 0.9)[0],
    "hopper_mirror.jpg": lambda g: place(mirror(g), 12, 0.8)[0],
    "hopper_light.jpg": lambda g: place(side_light(g), -6, 1.0)[0],
}


class CountingDetector:
    """The dlib detector, counting how many photos it looked at (to see the cache working)."""

    def __init__(self, fail_after: int | None = None):
        self.inner = DlibDetector()
        self.calls = 0
        self.fail_after = fail_after

    def detect(self, image):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.detect(image)

    def landmarks_in_box(self, image, box):
        return self.inner.landmarks_in_box(image, box)


def write_album(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    photos = {**ASTRONAUT_PHOTOS, **HOPPER_PHOTOS}
    for name, make in photos.items():
        source = astronaut() if name.startswith("astro") else grace_hopper()
        Image.fromarray(make(source)).save(folder / name, quality=92)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(folder / "landscape.png")
    (folder / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture(scope="module")
def embedder() -> DlibEmbedder:
    return DlibEmbedder()


@pytest.fixture(scope="module")
def album(tmp_path_factory) -> Path:
    return write_album(tmp_path_factory.mktemp("album"))


@pytest.fixture(scope="module")
def scanned(album, embedder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    detector = CountingDetector()
    scan = scan_album(album, detector, embedder, cache_root=cache, progress=False)
    return scan, cache, detector


@pytest.fixture(scope="module")
def lq_face(embedder):
    """A degraded astronaut photo's aligned face: the photo to restore."""
    scene = degrade(place(astronaut(), -12, 1.0, (300, 260))[0], 4)
    return find_faces(scene, DlibDetector(), "largest").faces[0]


@pytest.mark.slow
def test_dlib_embedder_separates_the_same_person_from_different_people(embedder):
    detector = DlibDetector()
    crops = {}
    for name, make in itertools.chain(ASTRONAUT_PHOTOS.items(), HOPPER_PHOTOS.items()):
        if "blurred" in name or "tiny" in name or "copy" in name:
            continue
        source = astronaut() if name.startswith("astro") else grace_hopper()
        crops[name] = find_faces(make(source), detector, "largest").faces[0].image
    vectors = embedder.embed(list(crops.values()))
    assert vectors.shape == (len(crops), 128)
    distances = embedder.distances(vectors, vectors)
    people = np.array([name.split("_")[0] for name in crops])
    same = people[:, None] == people[None, :]
    off_diagonal = ~np.eye(len(crops), dtype=bool)
    assert distances[same & off_diagonal].max() < embedder.same_person_distance
    assert distances[~same].min() > embedder.same_person_distance
    # Crops at other sizes (a 64 px LQ crop, a 1024 px upscale) embed to nearly the same identity.
    crop = crops["astro_plain.jpg"]
    resized = [np.asarray(Image.fromarray(crop).resize((s, s), Image.Resampling.BICUBIC)) for s in (128, 1024)]
    assert embedder.distances(embedder.embed(resized), vectors[:1]).max() < 0.3


@pytest.mark.slow
def test_album_scan_finds_usable_faces_and_reports_the_rest(scanned):
    scan, _, _ = scanned
    names = {face.path.name for face in scan.faces}
    assert names >= {"astro_plain.jpg", "astro_mirror.jpg", "hopper_plain.jpg", "hopper_light.jpg"}
    assert "no usable face" in scan.skipped["landscape.png"]
    assert "damaged" in scan.skipped["damaged.jpg"] and "damaged.jpg" in scan.skipped["damaged.jpg"]
    assert "notes.txt" not in names and "notes.txt" not in scan.skipped


def test_people_are_grouped_by_identity(scanned, embedder):
    scan, _, _ = scanned
    groups = group_people(scan.faces, embedder)
    people = [{scan.faces[i].path.name.split("_")[0] for i in group} for group in groups]
    assert people[:2] == [{"astro"}, {"hopper"}]  # largest first, each one person
    assert len(groups[1]) == 3 and len(groups[0]) >= 5
    assert all(len(group) == 1 for group in groups[2:])  # stray detections stay on their own


@pytest.mark.slow
def test_selection_follows_the_lq_face_and_drops_poor_faces(scanned, embedder, lq_face):
    scan, _, _ = scanned
    target = embedder.embed([lq_face.image])[0]
    choice = choose_references(scan.faces, embedder, count=5, target=target)
    chosen = [face.path.name for face in choice.chosen]
    assert chosen and all(name.startswith("astro") for name in chosen)
    assert "astro_blurred.jpg" not in chosen and "astro_tiny.jpg" not in chosen
    assert not {"astro_plain.jpg", "astro_plain_copy.png"} <= set(chosen)  # one of the two copies only
    report = "\n".join(choice.reasons)
    assert "closest match to the LQ face" in report
    assert "astro_blurred.jpg#0: blurred" in report
    assert "astro_tiny.jpg#0: only" in report
    assert "a duplicate of" in report


def test_person_example_and_fallbacks(scanned, embedder):
    scan, _, _ = scanned
    hopper_example = find_faces(place(grace_hopper(), 5, 0.7)[0], DlibDetector(), "largest").faces[0].image
    choice = choose_references(scan.faces, embedder, 2, embedder.embed([hopper_example])[0], "--person example")
    assert [f.path.name.split("_")[0] for f in choice.chosen] == ["hopper", "hopper"]
    assert len({f.path.name for f in choice.chosen}) == 2
    # A stranger as the --person example is refused; as the LQ face it falls back to the majority.
    stranger = np.full(128, 0.5)
    with pytest.raises(RefFaceError, match="No album face matches the --person example"):
        choose_references(scan.faces, embedder, 3, stranger, "--person example")
    fallback = choose_references(scan.faces, embedder, 3, stranger)
    assert all(f.path.name.startswith("astro") for f in fallback.chosen)
    assert "matches no album face" in " ".join(fallback.reasons)
    with pytest.raises(RefFaceError, match="at least 1"):
        choose_references(scan.faces, embedder, 0)


def test_two_equally_common_people_are_ambiguous(scanned, embedder):
    scan, _, _ = scanned
    hoppers = [f for f in scan.faces if f.path.name.startswith("hopper")]
    astros = [f for f in scan.faces if f.path.name.startswith("astro")][: len(hoppers)]
    with pytest.raises(RefFaceError, match="ambiguous.*--person"):
        choose_references(astros + hoppers, embedder, 3)


def test_second_scan_uses_the_cache_and_rescans_changed_photos(scanned, album, embedder):
    scan, cache, _ = scanned
    again = CountingDetector()
    repeat = scan_album(album, again, embedder, cache_root=cache, progress=False)
    assert again.calls == 0
    assert [f.label for f in repeat.faces] == [f.label for f in scan.faces]
    changed = album / "hopper_light.jpg"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    scan_album(album, again, embedder, cache_root=cache, progress=False)
    assert again.calls >= 1  # that one photo (and its rotated-search retries, if any) was looked at again


@pytest.mark.slow
def test_an_interrupted_scan_resumes_where_it_stopped(scanned, album, tmp_path, embedder):
    _, _, full = scanned
    interrupted = CountingDetector(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        scan_album(album, interrupted, embedder, cache_root=tmp_path, progress=False)
    resumed = CountingDetector()
    result = scan_album(album, resumed, embedder, cache_root=tmp_path, progress=False)
    assert 0 < resumed.calls < full.calls
    assert len(result.faces) == len(scanned[0].faces)


@pytest.mark.slow
def test_album_folder_errors(tmp_path, embedder):
    with pytest.raises(RefFaceError, match="does not exist"):
        scan_album(tmp_path / "nope", DlibDetector(), embedder, cache_root=tmp_path)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(RefFaceError, match="is a file"):
        scan_album(tmp_path / "file.jpg", DlibDetector(), embedder, cache_root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefFaceError, match="contains no images"):
        scan_album(tmp_path / "empty", DlibDetector(), embedder, cache_root=tmp_path)


@pytest.mark.slow
def test_identity_guard_names_the_intruder_and_strict_refuses(scanned, embedder, lq_face):
    scan, _, _ = scanned
    by_label = {f.label: f for f in scan.faces}
    astros = [by_label[f"astro_{n}.jpg#0"].align(256).image for n in ("plain", "mirror", "light")]
    hopper = by_label["hopper_plain.jpg#0"].align(256).image
    labels = ["a1", "a2", "a3", "intruder"]

    clean = check_identity(embedder, astros, labels[:3], lq_face.image)
    assert not clean.warnings and "references differ by" in clean.summary()
    mixed = check_identity(embedder, [*astros, hopper], labels, lq_face.image)
    assert len(mixed.warnings) == 1 and "reference intruder looks like a different person" in mixed.warnings[0]
    with pytest.raises(RefFaceError, match="--strict.*intruder"):
        check_identity(embedder, [*astros, hopper], labels, strict=True)
    mild = find_faces(degrade(place(astronaut(), 6, 1.2)[0], 2), DlibDetector(), "largest").faces[0].image
    assert not check_identity(embedder, astros, labels[:3], mild).warnings
    stranger_photo = check_identity(embedder, [hopper], ["h"], mild)
    assert "the photo's face looks like a different person" in stranger_photo.warnings[0]


def test_lq_is_trusted_only_when_large_and_sharp_enough():
    assert lq_is_usable(100.0, [150.0, 200.0], face_size=120)
    assert not lq_is_usable(10.0, [150.0, 200.0], face_size=120)  # far blurrier than the references
    assert not lq_is_usable(100.0, [150.0], face_size=30)  # a face of 30 pixels
    assert lq_is_usable(5.0, [], face_size=None)


def test_farthest_point_order_spreads_the_choice(embedder):
    rng = np.random.default_rng(1)
    for count in (1, 3, 5):
        vectors = rng.normal(size=(12, 8))
        order = farthest_point_order(vectors, embedder, first=4, count=count)
        assert order[0] == 4 and len(order) == len(set(order)) == count
        for step in range(1, count):
            distances = np.linalg.norm(vectors[:, None] - vectors[order[:step]][None], axis=-1).min(axis=1)
            assert distances[order[step]] == pytest.approx(distances.max())
    assert len(farthest_point_order(rng.normal(size=(2, 8)), embedder, 0, 5)) == 2


def test_arcface_identity_embeds_mixed_crop_sizes_with_cosine_distances():
    import torch

    from refface.face.arcface import ArcFaceEmbedder, iresnet
    from refface.face.identity import ArcFaceIdentity

    torch.manual_seed(0)
    identity = ArcFaceIdentity(ArcFaceEmbedder(iresnet([1, 1, 1, 1])), batch_size=2)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for size in (512, 64, 300)]
    vectors = identity.embed(crops)
    assert vectors.shape == (3, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    distances = identity.distances(vectors, vectors)
    assert np.allclose(np.diag(distances), 0, atol=1e-5) and np.allclose(distances, distances.T, atol=1e-6)
    assert np.allclose(identity.embed(crops[:1]), vectors[:1], atol=1e-5)  # batch composition does not matter
