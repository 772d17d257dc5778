"""Who the faces in a photo can be: people with their reference crops, and matching faces to them.

A person is known from their reference crops (used to restore their faces) and from every face of them
seen (used to recognise them). People come from three sources: reference files given for one person, an
unlabelled album whose faces are grouped into people, or one folder per named person. The models copy
identity from whatever references they get, so every source is checked for strangers among a person's
photos and for two people who look like one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from refface.errors import RefFaceError
from refface.face.album import AlbumFace, choose_references, group_people, scan_album, sharpness
from refface.face.detection import FaceDetector
from refface.face.guard import check_identity
from refface.face.identity import IdentityEmbedder
from refface.face.locate import align_references
from refface.imaging import as_rgb_array, load_image

# A matched distance no face can reach: marks pairs that may not be assigned.
_FORBIDDEN = 1e6


@dataclass
class Person:
    """One person: the aligned reference crops that restore them and the identity vectors that recognise them."""

    name: str
    references: list[np.ndarray]  # aligned uint8 crops, the model's references
    labels: list[str]  # one per reference, e.g. "anna_2019.jpg" or "album.jpg#1"
    files: list[Path]  # the photo each reference was taken from
    embeddings: np.ndarray  # [n, d]: every face of this person seen, for matching

    @property
    def reference_names(self) -> list[str]:
        """The reference photos' file names, as the report lists them."""
        return [path.name for path in self.files]

    @cached_property
    def reference_sharpness(self) -> list[float]:
        """Each reference's sharpness (computed once: the identity guard reads it for every face)."""
        return [sharpness(crop) for crop in self.references]


@dataclass(frozen=True)
class Match:
    """The person a face was matched to (None: nobody), and the identity distance to the closest person."""

    person: Person | None
    distance: float | None


@dataclass
class People:
    """The people a run knows, the embedder that recognises them, and what the user should hear about them.

    `named_one` is set when the user said who the face is (reference files for one person): a photo's one
    chosen face is then that person whatever the distance, and the identity guard warns instead.
    """

    people: list[Person]
    embedder: IdentityEmbedder | None
    named_one: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.people)

    def __iter__(self):
        return iter(self.people)

    def get(self, name: str) -> Person:
        for person in self.people:
            if person.name == name:
                return person
        raise RefFaceError(f"There is no person named {name!r}; the people are {', '.join(self.names) or 'none'}.")

    @property
    def names(self) -> list[str]:
        return [person.name for person in self.people]

    @property
    def threshold(self) -> float:
        return self.embedder.same_person_distance if self.embedder is not None else 0.0

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """[faces, people]: each face's distance to the nearest known face of each person."""
        if not self.people or self.embedder is None:
            return np.zeros((len(vectors), 0))
        return np.stack(
            [self.embedder.distances(vectors, person.embeddings).min(axis=1) for person in self.people], axis=1
        )

    def match(self, vectors: np.ndarray) -> list[Match]:
        """The person of each face of ONE photo: nearest under the same-person distance, each person at most once.

        A person appears once in a photo, so the faces and people are paired by an optimal assignment
        (scipy's linear_sum_assignment) over the pairs closer than the threshold; the rest match nobody.
        """
        if not len(vectors):
            return []
        if not self.people:
            return [Match(None, None) for _ in vectors]
        distances = self.distances(np.asarray(vectors))
        nearest = distances.min(axis=1)
        if self.named_one and len(vectors) == 1 and len(self.people) == 1:
            return [Match(self.people[0], float(nearest[0]))]
        cost = np.where(distances < self.threshold, distances, _FORBIDDEN)
        rows, columns = linear_sum_assignment(cost)
        matches = [Match(None, float(d)) for d in nearest]
        for row, column in zip(rows, columns, strict=True):
            if cost[row, column] < _FORBIDDEN:
                matches[row] = Match(self.people[column], float(distances[row, column]))
        return matches


def no_people() -> People:
    """Restore every face from its photo alone."""
    return People([], None)


def _check_distinct(people: list[Person], embedder: IdentityEmbedder) -> list[str]:
    """A warning for every two people whose faces are closer than the same-person distance."""
    warnings = []
    for first, a in enumerate(people):
        for b in people[first + 1 :]:
            closest = float(embedder.distances(a.embeddings, b.embeddings).min())
            if closest < embedder.same_person_distance:
                warnings.append(
                    f"{a.name} and {b.name} look like the same person ({embedder.name} distance {closest:.2f} < "
                    f"{embedder.same_person_distance:.2f}); their faces may be given either one's references."
                )
    return warnings


def _reference_person(
    name: str,
    images: Sequence[Image.Image],
    sources: Sequence[str],
    files: Sequence[Path],
    detector: FaceDetector | None,
    embedder: IdentityEmbedder,
    aligned: bool,
    strict: bool,
    notes: list[str],
    warnings: list[str],
) -> Person:
    """A person from their reference photos (the largest face of each; `aligned`: they are aligned crops).

    `sources` name the photos in messages (paths, or the names of uploads), `files` are what the report lists.
    """
    if not images:
        raise RefFaceError(f"{name} has no reference photos; give at least one.")
    if aligned:
        crops = [as_rgb_array(image) for image in images]
    else:
        crops, found = align_references(images, list(sources), detector)
        notes.extend(found)
    labels = [path.name for path in files]
    report = check_identity(embedder, crops, list(labels), strict=strict)
    notes.append(f"{name}: {len(crops)} reference(s) ({', '.join(labels)}); {report.summary()}")
    warnings.extend(report.warnings)
    return Person(name, crops, labels, list(files), embedder.embed(crops))


def people_from_references(
    paths: Sequence[str | Path],
    detector: FaceDetector | None,
    embedder: IdentityEmbedder,
    aligned: bool = False,
    strict: bool = False,
    name: str = "person-01",
) -> People:
    """One person from reference photos (the largest face of each; `aligned`: the files are aligned crops)."""
    notes: list[str] = []
    warnings: list[str] = []
    images = [load_image(p) for p in paths]
    files = [Path(p) for p in paths]
    person = _reference_person(name, images, [str(p) for p in paths], files, detector, embedder, aligned, strict,
                               notes, warnings)  # fmt: skip
    return People([person], embedder, named_one=True, notes=notes, warnings=warnings)


def people_from_images(
    sets: dict[str, Sequence[tuple[str, Image.Image]]],
    detector: FaceDetector | None,
    embedder: IdentityEmbedder,
    strict: bool = False,
    aligned: bool = False,
) -> People:
    """Named people, each from their own (label, photo) pairs, e.g. reference photos uploaded per person
    (`aligned`: the photos are aligned face crops already)."""
    if not sets:
        raise RefFaceError("No people were given: name at least one person with their reference photos.")
    notes: list[str] = []
    warnings: list[str] = []
    people = [
        _reference_person(
            name, [image for _, image in pairs], [label for label, _ in pairs], [Path(label) for label, _ in pairs],
            detector, embedder, aligned, strict, notes, warnings,
        )
        for name, pairs in sets.items()
    ]  # fmt: skip
    warnings.extend(_check_distinct(people, embedder))
    return People(people, embedder, named_one=len(people) == 1, notes=notes, warnings=warnings)


def _album_person(
    name: str, faces: list[AlbumFace], embedder: IdentityEmbedder, count: int, notes: list[str]
) -> Person:
    """A person from their album faces: `count` references chosen as for one person, all faces for matching."""
    vectors = np.stack([face.embedding for face in faces])
    try:
        choice = choose_references(faces, embedder, count)
    except RefFaceError as error:
        notes.append(f"{name}: {str(error).rstrip('.')}; their faces are restored without references.")
        return Person(name, [], [], [], vectors)
    notes.extend(f"{name}: {reason}" for reason in choice.reasons if not reason.startswith("person:"))
    chosen = choice.chosen
    return Person(
        name,
        [face.align().image for face in chosen],
        [face.label for face in chosen],
        [f.path for f in chosen],
        vectors,
    )


def people_from_album(
    folder: str | Path,
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    count: int = 5,
    example: str | Path | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
) -> People:
    """The people of an unlabelled album (person-01 the most frequent), or only the one an `example` photo shows."""
    scan = scan_album(folder, detector, embedder, cache_root=cache_root, progress=progress)
    notes = [f"album: skipped {name}: {reason}" for name, reason in scan.skipped.items()]
    if not scan.faces:
        raise RefFaceError(f"No usable face was found in the album {folder}, so it gives no references.")
    groups = [[scan.faces[i] for i in group] for group in group_people(scan.faces, embedder)]
    if example is not None:
        crops, _ = align_references([load_image(example)], [str(example)], detector)
        target = embedder.embed(crops)
        closest = [float(embedder.distances(target, np.stack([f.embedding for f in g])).min()) for g in groups]
        best = int(np.argmin(closest))
        if closest[best] >= embedder.same_person_distance:
            raise RefFaceError(
                f"No album face matches the --person example {Path(example).name} (closest {embedder.name} "
                f"distance {closest[best]:.2f}, same-person limit {embedder.same_person_distance})."
            )
        notes.append(
            f"album: the person of {Path(example).name} is the group of {len(groups[best])} album face(s) at "
            f"{embedder.name} distance {closest[best]:.2f}."
        )
        person = _album_person("person-01", groups[best], embedder, count, notes)
        return People([person], embedder, named_one=True, notes=notes)
    people = [
        _album_person(f"person-{number:02d}", group, embedder, count, notes)
        for number, group in enumerate(groups, start=1)
    ]
    notes.insert(
        0,
        f"album: {len(scan.faces)} face(s) of {len(people)} people: "
        + ", ".join(f"{p.name} ({len(g)})" for p, g in zip(people, groups, strict=True))
        + ".",
    )
    return People(people, embedder, notes=notes)


def _folder_person(
    folder: Path,
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    count: int,
    cache_root: Path | None,
    notes: list[str],
    warnings: list[str],
) -> Person | None:
    """The person of one named folder: the largest face of each photo, strangers among them set aside."""
    name = folder.name
    try:
        scan = scan_album(folder, detector, embedder, cache_root=cache_root, progress=False)
    except RefFaceError as error:
        warnings.append(f"skipped the person folder {name}: {str(error).rstrip('.')}.")
        return None
    notes.extend(f"{name}: skipped {photo}: {reason}" for photo, reason in scan.skipped.items())
    faces = [face for face in scan.faces if face.index == 0]
    if not faces:
        warnings.append(f"skipped the person folder {name}: none of its photos shows a usable face.")
        return None
    groups = [[faces[i] for i in group] for group in group_people(faces, embedder)]
    if len(groups) > 1:
        odd = sorted({face.path.name for group in groups[1:] for face in group})
        warnings.append(
            f"the person folder {name} shows more than one person: {', '.join(odd)} look like someone else than "
            f"its other {len(groups[0])} photo(s) and are not used."
        )
    try:
        choice = choose_references(groups[0], embedder, count)
    except RefFaceError as error:
        warnings.append(f"skipped the person folder {name}: {str(error).rstrip('.')}.")
        return None
    chosen = choice.chosen
    notes.append(f"{name}: {len(chosen)} reference(s) ({', '.join(face.path.name for face in chosen)}).")
    return Person(
        name,
        [face.align().image for face in chosen],
        [face.path.name for face in chosen],
        [face.path for face in chosen],
        np.stack([face.embedding for face in groups[0]]),
    )


def people_from_folders(
    root: str | Path,
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    count: int = 5,
    cache_root: Path | None = None,
) -> People:
    """One person per sub-folder of `root`, named by the folder (`root/Anna/*.jpg`, `root/Ben/*.jpg`)."""
    root = Path(root)
    if not root.is_dir():
        raise RefFaceError(f"The people folder {root} {'is a file' if root.exists() else 'does not exist'}; "
                           "--people takes a folder with one sub-folder of photos per person.")  # fmt: skip
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise RefFaceError(f"The people folder {root} has no sub-folders; put each person's photos in DIR/NAME/.")
    notes: list[str] = []
    warnings: list[str] = []
    people = [
        person
        for folder in folders
        if (person := _folder_person(folder, detector, embedder, count, cache_root, notes, warnings)) is not None
    ]
    if not people:
        raise RefFaceError(f"None of the person folders in {root} gives a usable reference face.")
    warnings.extend(_check_distinct(people, embedder))
    return People(people, embedder, notes=notes, warnings=warnings)
