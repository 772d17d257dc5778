"""The one restoration workflow: faces -> each face's person -> their references -> restore in batches -> paste.

`PhotoRestorer` is what `refface restore`, the web page and video support call. It finds the chosen faces of
a photo, matches each to a person (`People.match`), restores the faces of one person together with that
person's references (encoded once, by the `ReferenceStore`), pastes the restored crops back with the feathered
mask, and says what happened to every face. `restore_many` streams photos through it a window at a time, so
faces of one person in different photos share pipeline calls and memory does not grow with the archive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from refface.errors import RefFaceError, short_reason
from refface.face.album import sharpness
from refface.face.alignment import ALIGNED_SIZE, AlignedFace
from refface.face.detection import FaceDetector
from refface.face.guard import lq_is_usable
from refface.face.locate import DroppedFace, FaceSearch, NoFaceFound, find_faces
from refface.imaging import as_rgb_array
from refface.photo.background import Background
from refface.photo.original import OriginalPhoto, PhotoMetadata, as_original
from refface.pipelines.base import RestorationPipeline
from refface.restoration.compose import compose
from refface.restoration.people import Match, People, Person, no_people
from refface.restoration.reference_store import ReferenceStore
from refface.restoration.settings import RestoreSettings

RESTORED = "restored"
WITHOUT_REFERENCES = "restored-without-references"
BLIND = "restored-blind"  # a face that matches nobody, restored by the blind restorer (--unknown blind)
SKIPPED = "skipped"
ERROR = "error"

PhotoSource = Callable[[], OriginalPhoto | Image.Image | np.ndarray]


@dataclass
class FaceResult:
    """One face: where it is (`aligned`, None for crop inputs), who it is, and what was done to it."""

    index: int
    crop: np.ndarray  # the aligned input crop
    aligned: AlignedFace | None
    person: Person | None
    distance: float | None  # identity distance to `person`, or to the closest person for an unknown face
    status: str  # restored, restored-without-references, restored-blind, skipped
    restored: np.ndarray | None = None
    message: str = ""
    seed: int | None = None  # this face's noise seed; None: the restorer's

    @property
    def references(self) -> list[str]:
        """The file names of the reference photos this face was restored with."""
        return self.person.reference_names if self.status == RESTORED and self.person is not None else []

    @property
    def person_name(self) -> str:
        return self.person.name if self.person is not None else ""


@dataclass
class PhotoResult:
    """A photo with its restored faces pasted in (None on error), every face's result, and notes for the user.

    `photo`: RGB at the input's depth (uint8, or uint16 for a 16-bit file) and the output scale; `metadata`: the
    input file's, to be written with it; `scale`: how much larger than the input it is.
    """

    source: str
    photo: np.ndarray | None
    faces: list[FaceResult]
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    dropped: list[DroppedFace] = field(default_factory=list)  # faces seen but not restored, and why
    metadata: PhotoMetadata = field(default_factory=PhotoMetadata)
    scale: float = 1.0

    @property
    def restored_faces(self) -> list[FaceResult]:
        return [face for face in self.faces if face.restored is not None]


@dataclass
class _Planned:
    """A photo between planning and pasting: the photo and its faces' plans (or the error that stopped it)."""

    source: str
    original: OriginalPhoto | None
    faces: list[FaceResult]
    notes: list[str]
    error: str | None = None
    dropped: list[DroppedFace] = field(default_factory=list)


class PhotoRestorer:
    """Restores every chosen face of a photo with its own person's references.

    `pipe`: a method's pipeline (None for a restorer that only finds and matches faces). `people`: who the faces
    can be (None: nobody, every face is restored from its photo alone). `settings`: the run's checked settings,
    of which the restorer reads the sampling options (None: the pipeline's defaults), which faces (`faces`;
    "auto" is the largest face when the user named one person, else all), what becomes of unknown faces, the
    batch size and `strict` (default: `RestoreSettings()`). `store`: where encoded references are kept (default:
    memory). `background`: how enlarged photos get their background (default: as the settings' photo options
    say, on the pipeline's device). `blind`: the blind restorer's pipeline for faces that match nobody, which
    settings with `unknown` "blind" need. `step_callback` goes to every pipeline call; `batch_callback(number, total,
    faces)` is told before each call which faces it restores (1-based number of `total` calls), for progress on a
    page.
    """

    def __init__(
        self,
        pipe: RestorationPipeline | None,
        people: People | None = None,
        detector: FaceDetector | None = None,
        settings: RestoreSettings | None = None,
        *,
        store: ReferenceStore | None = None,
        background: Background | None = None,
        blind: RestorationPipeline | None = None,
        aligned_size: int = ALIGNED_SIZE,
        progress: bool = False,
        step_callback=None,
        batch_callback: Callable[[int, int, list[FaceResult]], None] | None = None,
    ) -> None:
        self.pipe, self.detector, self.blind = pipe, detector, blind
        self.settings = settings if settings is not None else RestoreSettings()
        if self.settings.unknown == "blind" and blind is None and pipe is not None:
            raise RefFaceError("Unknown faces are to be restored blind, but no blind restorer was loaded.")
        self.people = people if people is not None else no_people()
        faces = self.settings.faces
        self.select = faces if faces != "auto" else ("largest" if self.people.named_one else "all")
        self.store = store if store is not None else ReferenceStore(pipe)
        device = getattr(pipe, "device", "cpu") if pipe is not None else "cpu"
        self.background = background or Background(self.settings.photo, device, progress=progress)
        self.aligned_size = aligned_size
        self.progress, self.step_callback, self.batch_callback = progress, step_callback, batch_callback
        self.faces_restored = 0

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def seed(self) -> int:
        """The noise seed of a face that has none of its own."""
        return (self.settings.sampling or self.pipe.default_options).seed

    # ------------------------------------------------------------------------------ planning
    def find(self, photo: Image.Image | np.ndarray, source: str = "the photo") -> tuple[list[FaceResult], list[str]]:
        """The chosen faces of a photo, each matched to a person (nothing restored yet), and notes."""
        faces, search = self._search(photo, source)
        return faces, list(search.notes)

    def _search(self, photo: Image.Image | np.ndarray, source: str) -> tuple[list[FaceResult], FaceSearch]:
        if self.detector is None:
            raise RefFaceError("Whole photos need a face detector; pass one, or restore aligned crops.")
        search = find_faces(as_original(photo).rgb8, self.detector, self.select, self.aligned_size, source)
        return self.match_faces(search.faces, source), search

    def match_faces(self, aligned: Sequence[AlignedFace], source: str = "the photo") -> list[FaceResult]:
        """Faces found earlier (e.g. shown to a user before choosing references), each matched to a person."""
        return self._plan([face.image for face in aligned], aligned, source)

    def _plan(self, crops: list[np.ndarray], aligned: Sequence[AlignedFace | None], source: str) -> list[FaceResult]:
        matches = self._match(crops)
        return [
            self.planned(index, crop, where, match, source)
            for index, (crop, where, match) in enumerate(zip(crops, aligned, matches, strict=True))
        ]

    def planned(
        self, index: int, crop: np.ndarray, aligned: AlignedFace | None, match: Match, source: str
    ) -> FaceResult:
        """A face matched elsewhere (e.g. a video's face track, by its identity over many frames), checked
        against its person's references and given its status, as a face of a photo would be."""
        face = FaceResult(index, crop, aligned, match.person, match.distance, "")
        self._check_named(face, source)
        return self._with_status(face)

    def match_vectors(self, vectors: np.ndarray) -> list[Match]:
        """Identity vectors of faces seen together, each matched to a different person (or to nobody)."""
        if not len(self.people) or not len(vectors):
            return [Match(None, None) for _ in range(len(vectors))]
        return self.people.match(vectors)

    def _match(self, crops: list[np.ndarray]) -> list[Match]:
        if not len(self.people) or not crops:
            return [Match(None, None) for _ in crops]
        return self.match_vectors(self.people.embedder.embed(crops))

    def _check_named(self, face: FaceResult, source: str) -> None:
        """A face the user named whose identity differs from the references: warned, or refused with --strict."""
        person, threshold = face.person, self.people.threshold
        if person is None or face.distance is None or face.distance < threshold or not person.references:
            return
        size = face.aligned.quad.size if face.aligned is not None else None
        if not lq_is_usable(sharpness(face.crop), person.reference_sharpness, size):
            return
        warning = (
            f"face {face.index} of {source} looks like a different person from {person.name}'s references "
            f"({self.people.embedder.name} distance {face.distance:.2f} >= {threshold:.2f})"
        )
        if self.settings.strict:
            raise RefFaceError(f"Identity check failed (--strict): {warning}.")
        face.message = warning + "."

    def _with_status(self, face: FaceResult) -> FaceResult:
        if face.person is not None:
            with_references = face.person.references and self.settings.method_entry.uses_references
            face.status = RESTORED if with_references else WITHOUT_REFERENCES
        else:
            face.status = {"skip": SKIPPED, "blind": BLIND}.get(self.settings.unknown, WITHOUT_REFERENCES)
        return face

    def assign(self, faces: list[FaceResult], people_of: dict[int, str | None]) -> list[FaceResult]:
        """Change the person of faces by their index: a person's name, or None for "restore without references"."""
        by_index = {face.index: face for face in faces}
        for index, name in people_of.items():
            if index not in by_index:
                raise RefFaceError(f"The photo has {len(faces)} face(s); face {index} does not exist.")
            face = by_index[index]
            if name is None:
                face.person, face.status = None, WITHOUT_REFERENCES
                continue
            face.person = self.people.get(name)
            vector = self.people.embedder.embed([face.crop])
            face.distance = float(self.people.distances(vector)[0, self.people.names.index(name)])
            face.message = ""
            self._check_named(face, "the photo")
            self._with_status(face)
        return faces

    # ------------------------------------------------------------------------------ restoring
    def batches(self, faces: Sequence[FaceResult]) -> list[tuple[Person | None, list[FaceResult]]]:
        """The pipeline calls that restore `faces`: each person's faces (or those without references, or those
        restored blind) together, at most `batch_size` a call; skipped faces are in none."""
        groups: dict[tuple[str, int], tuple[Person | None, list[FaceResult]]] = {}
        for face in faces:
            if face.status == SKIPPED:
                continue
            person = face.person if face.status == RESTORED else None
            groups.setdefault((face.status, id(person)), (person, []))[1].append(face)
        return [
            (person, group[start : start + self.batch_size])
            for person, group in groups.values()
            for start in range(0, len(group), self.batch_size)
        ]

    def restore_faces(self, faces: Sequence[FaceResult]) -> None:
        """Restore the faces that need it (their `restored` is set), those of one person together in batches of
        `batch_size`, each from its own `seed` when it has one."""
        batches = self.batches(faces)
        for number, (person, batch) in enumerate(batches, start=1):
            references = self.store.encoded(person)
            if self.batch_callback is not None:
                self.batch_callback(number, len(batches), batch)
            crops = [Image.fromarray(face.crop) for face in batch]
            own_seeds = any(face.seed is not None for face in batch)
            seeds = [self.seed if face.seed is None else face.seed for face in batch] if own_seeds else None
            blind = batch[0].status == BLIND
            pipe, options = (self.blind, self.settings.blind_sampling) if blind else (self.pipe, self.settings.sampling)
            output = pipe(
                crops, references, options=options, seed=seeds, progress=self.progress,
                step_callback=self.step_callback,
            )  # fmt: skip
            for face, image in zip(batch, output.images, strict=True):
                face.restored = np.asarray(image.convert("RGB"))
            self.faces_restored += len(batch)

    def _paste(self, planned: _Planned) -> PhotoResult:
        if planned.error is not None:
            return PhotoResult(planned.source, None, planned.faces, planned.notes, planned.error)
        restored = [(face.restored, face.aligned) for face in planned.faces
                    if face.restored is not None and face.aligned is not None]  # fmt: skip
        made = compose(planned.original, restored, self.settings.photo, self.background)
        return PhotoResult(
            planned.source, made.pixels, planned.faces, [*planned.notes, *made.notes], dropped=planned.dropped,
            metadata=planned.original.metadata, scale=made.scale,
        )  # fmt: skip

    def restore(
        self,
        photo: OriginalPhoto | Image.Image | np.ndarray,
        source: str = "the photo",
        people_of: dict[int, str | None] | None = None,
        faces: list[FaceResult] | None = None,
    ) -> PhotoResult:
        """Restore one photo's chosen faces (`people_of` overrides matched persons by face index); errors raise.

        `faces`: faces of this photo found and matched earlier (`find`, `match_faces`), instead of finding them
        again; only those are restored.
        """
        notes: list[str] = []
        dropped: list[DroppedFace] = []
        original = as_original(photo)
        if faces is None:
            faces, search = self._search(original.rgb8, source)
            notes, dropped = list(search.notes), search.dropped
        if people_of:
            self.assign(faces, people_of)
        planned = _Planned(source, original, faces, notes, dropped=dropped)
        self.restore_faces(faces)
        return self._paste(planned)

    def restore_many(
        self, photos: Iterable[tuple[str, PhotoSource]], window: int | None = None
    ) -> Iterator[PhotoResult]:
        """Restore a stream of (name, loader) photos, `window` photos at a time (default: the batch size).

        A photo that cannot be read, or shows no usable face, comes back with its `error` and the stream goes
        on; at most `window` decoded photos are held at once.
        """
        window = window or self.batch_size
        pending: list[_Planned] = []
        for source, load in photos:
            pending.append(self._plan_photo(source, load))
            if len(pending) >= window:
                yield from self._finish(pending)
                pending = []
        if pending:
            yield from self._finish(pending)

    def _plan_photo(self, source: str, load: PhotoSource) -> _Planned:
        frames: list[str] = []
        try:
            original = as_original(load())
            if original.frames > 1:
                frames.append(f"{source} holds {original.frames} frames or pages; the first is restored.")
        except RefFaceError as error:
            return _Planned(source, None, [], [], str(error))
        except OSError as error:
            return _Planned(source, None, [], [], f"{source} could not be read ({short_reason(error)}).")
        try:
            faces, search = self._search(original.rgb8, source)
        except NoFaceFound as nothing:  # passed over: the photo is kept as it is
            return _Planned(source, original, [], [*frames, str(nothing)])
        except RefFaceError as error:
            return _Planned(source, None, [], [], str(error))
        return _Planned(source, original, faces, [*frames, *search.notes], dropped=search.dropped)

    def _finish(self, pending: list[_Planned]) -> list[PhotoResult]:
        self.restore_faces([face for planned in pending for face in planned.faces])
        return [self._paste(planned) for planned in pending]

    def restore_crops(self, crops: Sequence[Image.Image | np.ndarray], source: str = "the crop") -> list[FaceResult]:
        """Restore already aligned face crops, each matched to a person like a face found in a photo."""
        arrays = [as_rgb_array(crop) for crop in crops]
        faces = []
        for number, crop in enumerate(arrays):
            face = self._plan([crop], [None], f"{source} {number}" if len(arrays) > 1 else source)[0]
            face.index = number
            faces.append(face)
        self.restore_faces(faces)
        return faces
