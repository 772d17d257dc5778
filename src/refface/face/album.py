"""Choosing references from a photo album: find the person's faces, drop poor ones, keep K diverse ones.

The models follow their references blindly, so a stranger's face among them turns the result into
that stranger. Album faces are grouped into people (faces closer than the embedder's same-person
distance are linked; connected groups are people, as FFHQ-Ref builds its identities), the group of
the wanted person is picked, low-resolution, blurred, turned-away and duplicate faces are dropped,
and K faces are taken by farthest point sampling on identity distance (as FFHQ-Ref orders its
references) so they show the person in different conditions.

Scanning is the slow part, so results are cached per file (size and modification time) in the
user cache and written after every photo: an interrupted scan resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from refface.errors import RefFaceError
from refface.face.alignment import AlignedFace, align_face, big_enough, ffhq_quad, yaw_asymmetry
from refface.face.detection import DetectedFace, FaceDetector
from refface.face.farthest_point import fps_from_distances
from refface.face.identity import IdentityEmbedder
from refface.face.locate import EXTREME_YAW, detect_faces
from refface.files import write_text_atomically
from refface.imaging import SAVE_FORMATS, load_image

CACHE_VERSION = 1
THUMBNAIL = 24
# References should carry real detail: faces smaller than this in their photo are not used.
MIN_REFERENCE_SIZE = 128
# A face this much less sharp than the person's typical face is treated as blurred.
BLUR_RATIO = 0.35
# Thumbnails this correlated are the same picture (a copy, a resized or re-saved file).
DUPLICATE_CORRELATION = 0.97


@dataclass(frozen=True)
class AlbumFace:
    """One face found in an album photo, with what selection needs to judge it."""

    path: Path
    index: int
    face: DetectedFace
    embedding: np.ndarray
    sharpness: float
    thumbnail: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.path.name}#{self.index}"

    @property
    def size(self) -> float:
        return ffhq_quad(self.face.landmarks).size

    @property
    def yaw(self) -> float:
        return yaw_asymmetry(self.face.landmarks)

    def align(self, size: int = 512) -> AlignedFace:
        return align_face(np.asarray(load_image(self.path)), self.face, size)


@dataclass
class AlbumScan:
    """Every usable face of an album, and the photos that gave none (with the reason)."""

    faces: list[AlbumFace]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class ReferenceChoice:
    """The chosen faces, in farthest-point order, and a human-readable account of the decision."""

    chosen: list[AlbumFace]
    reasons: list[str] = field(default_factory=list)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop at 256 px: low for blurred or upscaled faces."""
    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (256, 256), interpolation=cv2.INTER_AREA if grey.shape[0] > 256 else cv2.INTER_CUBIC)
    return float(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F).var())


def thumbnail(crop: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)


def album_photos(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    root = Path(folder)
    if not root.exists():
        raise RefFaceError(f"The album folder {root} does not exist.")
    if not root.is_dir():
        raise RefFaceError(f"The album {root} is a file; --refs-dir takes a folder of photos.")
    photos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SAVE_FORMATS)
    if not photos:
        raise RefFaceError(f"The album folder {root} contains no images ({', '.join(sorted(SAVE_FORMATS))}).")
    return photos


def _cache_file(folder: Path, cache_root: Path, detector: FaceDetector, embedder: IdentityEmbedder) -> Path:
    """One scan per album, detector and embedder: another detector finds other faces."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    found_by = getattr(detector, "name", type(detector).__name__)
    return cache_root / "albums" / f"{digest}-{found_by}-{embedder.name}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("photos", {}) if data.get("version") == CACHE_VERSION else {}


def _write_cache(path: Path, photos: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({"version": CACHE_VERSION, "photos": photos}))


def _photo_key(photo: Path) -> str:
    stat = photo.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _scan_photo(photo: Path, detector: FaceDetector, embedder: IdentityEmbedder) -> dict:
    image = np.asarray(load_image(photo))
    faces = [f for f in detect_faces(image, detector) if big_enough(f)]
    crops = [align_face(image, face, 256).image for face in faces]
    vectors = embedder.embed(crops) if crops else []
    return {
        "faces": [
            {
                "box": list(face.box),
                "score": face.score,
                "landmarks": face.landmarks.tolist(),
                "embedding": np.asarray(vector).tolist(),
                "sharpness": sharpness(crop),
                "thumbnail": thumbnail(crop).tolist(),
            }
            for face, crop, vector in zip(faces, crops, vectors, strict=True)
        ]
    }


def scan_album(
    folder: str | Path,
    detector: FaceDetector,
    embedder: IdentityEmbedder,
    cache_root: Path | None = None,
    progress: bool = True,
) -> AlbumScan:
    """Every usable face in the album, reusing (and extending) the cached scan."""
    from refface.weights import cache_dir

    photos = album_photos(folder)
    cache_path = _cache_file(Path(folder), cache_root or cache_dir(), detector, embedder)
    cached = _read_cache(cache_path)
    entries: dict = {}
    for photo in tqdm(photos, desc="scanning album", unit="photo", disable=not progress):
        key = _photo_key(photo)
        entry = cached.get(photo.name)
        if entry is None or entry.get("key") != key:
            try:
                entry = {"key": key, **_scan_photo(photo, detector, embedder)}
            except RefFaceError as error:
                entry = {"key": key, "faces": [], "error": str(error)}
            cached[photo.name] = entry
            _write_cache(cache_path, cached)
        entries[photo.name] = entry
    faces, skipped = [], {}
    for photo in photos:
        entry = entries[photo.name]
        if not entry["faces"]:
            skipped[photo.name] = entry.get("error") or "no usable face found"
        for index, item in enumerate(entry["faces"]):
            detected = DetectedFace(tuple(item["box"]), item["score"], np.asarray(item["landmarks"]))
            faces.append(
                AlbumFace(
                    photo,
                    index,
                    detected,
                    np.asarray(item["embedding"]),
                    item["sharpness"],
                    np.asarray(item["thumbnail"], dtype=np.float32),
                )
            )
    return AlbumScan(faces, skipped)


def group_people(faces: list[AlbumFace], embedder: IdentityEmbedder) -> list[list[int]]:
    """Indices of faces grouped into people, largest group first."""
    if not faces:
        return []
    vectors = np.stack([f.embedding for f in faces])
    linked = embedder.distances(vectors, vectors) < embedder.same_person_distance
    count, labels = connected_components(linked, directed=False)
    groups = [list(np.flatnonzero(labels == k)) for k in range(count)]
    return sorted(groups, key=len, reverse=True)


def _is_duplicate(candidate: AlbumFace, kept: list[AlbumFace]) -> AlbumFace | None:
    a = candidate.thumbnail.ravel() - candidate.thumbnail.mean()
    for other in kept:
        b = other.thumbnail.ravel() - other.thumbnail.mean()
        correlation = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9))
        if correlation > DUPLICATE_CORRELATION:
            return other
    return None


def farthest_point_order(vectors: np.ndarray, embedder: IdentityEmbedder, first: int, count: int) -> list[int]:
    """Greedy farthest point sampling from face `first`: each next face is the one least like those already chosen.

    The same maximin order the dataset builder uses for references, with `first` in the target's role.
    """
    distances = embedder.distances(vectors, vectors)
    others = np.array([i for i in range(len(vectors)) if i != first], dtype=np.int64)
    order = fps_from_distances(distances[first, others], distances[np.ix_(others, others)])
    return [first, *others[order[: max(count - 1, 0)]].tolist()]


def _pick_person(
    faces: list[AlbumFace],
    groups: list[list[int]],
    embedder: IdentityEmbedder,
    target: np.ndarray | None,
    target_kind: str,
    reasons: list[str],
) -> list[int]:
    if target is not None:
        distances = embedder.distances(target[None], np.stack([f.embedding for f in faces]))[0]
        best = int(np.argmin(distances))
        if distances[best] < embedder.same_person_distance:
            group = next(g for g in groups if best in g)
            reasons.append(
                f"person: the {len(group)} album face(s) grouped with {faces[best].label}, the closest match to the "
                f"{target_kind} ({embedder.name} distance {distances[best]:.2f})."
            )
            return group
        if target_kind == "--person example":
            raise RefFaceError(
                f"No album face matches the --person example (closest: {faces[best].label} at {embedder.name} "
                f"distance {distances[best]:.2f}, same-person limit {embedder.same_person_distance})."
            )
        reasons.append(
            f"the {target_kind} matches no album face (closest {embedder.name} distance {distances[best]:.2f}); "
            "falling back to the album's most frequent person."
        )
    if len(groups) > 1 and len(groups[0]) == len(groups[1]):
        raise RefFaceError(
            f"The album shows several people equally often ({len(groups[0])} faces each), so the person to use is "
            "ambiguous; name them with --person EXAMPLE_PHOTO."
        )
    reasons.append(f"person: the album's most frequent person ({len(groups[0])} of {len(faces)} faces).")
    return groups[0]


def choose_references(
    faces: list[AlbumFace],
    embedder: IdentityEmbedder,
    count: int = 5,
    target: np.ndarray | None = None,
    target_kind: str = "LQ face",
    min_size: float = MIN_REFERENCE_SIZE,
) -> ReferenceChoice:
    """Pick `count` references of one person from the album faces, saying why each was kept or dropped."""
    if count < 1:
        raise RefFaceError(f"The number of references must be at least 1, got {count}.")
    if not faces:
        raise RefFaceError("No usable face was found in the album.")
    reasons: list[str] = []
    person = [
        faces[i] for i in _pick_person(faces, group_people(faces, embedder), embedder, target, target_kind, reasons)
    ]

    typical = float(np.median([f.sharpness for f in person]))
    kept: list[AlbumFace] = []
    for face in sorted(person, key=lambda f: f.sharpness * f.size, reverse=True):
        if face.size < min_size:
            reasons.append(f"dropped {face.label}: only {face.size:.0f} px across (references need {min_size:.0f}).")
        elif face.yaw > EXTREME_YAW:
            reasons.append(f"dropped {face.label}: turned far to the side (asymmetry {face.yaw:.2f}).")
        elif face.sharpness < BLUR_RATIO * typical:
            reasons.append(f"dropped {face.label}: blurred (sharpness {face.sharpness:.0f}, typical {typical:.0f}).")
        elif (original := _is_duplicate(face, kept)) is not None:
            reasons.append(f"dropped {face.label}: a duplicate of {original.label}.")
        else:
            kept.append(face)
    if not kept:
        raise RefFaceError(
            "None of the person's album faces is usable as a reference (too small, blurred or turned away); "
            "add sharper photos or pass --ref files."
        )
    vectors = np.stack([f.embedding for f in kept])
    if target is not None:
        first = int(np.argmin(embedder.distances(target[None], vectors)[0]))
    else:
        first = int(np.argmin(embedder.distances(vectors.mean(axis=0, keepdims=True), vectors)[0]))
    order = farthest_point_order(vectors, embedder, first, count)
    chosen = [kept[i] for i in order]
    reasons.append(
        f"chose {len(chosen)} of {len(kept)} usable faces by farthest point sampling: "
        + ", ".join(f.label for f in chosen)
        + "."
    )
    if len(chosen) < count:
        reasons.append(f"only {len(chosen)} usable face(s) for the {count} references asked for.")
    return ReferenceChoice(chosen, reasons)
