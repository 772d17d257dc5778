"""What the web page does, over the library's workflow: keep the uploads, say who each face is, run jobs.

The models are loaded once, when the service is made; restorations run on the job queue's single worker
through `PhotoRestorer`, and face detection and embedding (shared by requests and the worker) are
serialised by a lock.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import re
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from refface import methods
from refface.errors import RefFaceError
from refface.face.alignment import AlignedFace
from refface.face.locate import NoFaceFound, find_faces
from refface.imaging import save_image
from refface.photo.background import Background
from refface.photo.options import PhotoOutput, parse_scale
from refface.photo.original import OriginalPhoto
from refface.photo.writer import write_photo
from refface.restoration.people import People, people_from_album, people_from_images
from refface.restoration.photo_restorer import RESTORED, WITHOUT_REFERENCES, FaceResult, PhotoRestorer
from refface.restoration.reference_store import ReferenceStore
from refface.restoration.settings import RestoreSettings
from refface.web.jobs import Job, JobQueue
from refface.web.kept import Kept
from refface.web.limits import ServeLimits
from refface.web.uploads import unpack_album

THUMBNAIL = 96
DOWNLOAD = "download"  # the restored photo as the user keeps it: the upload's format, depth and metadata


@dataclass
class StoredPhoto:
    """An uploaded photo whose faces were found, waiting for the user to say who they are and press Restore."""

    label: str
    original: OriginalPhoto
    faces: list[AlignedFace]
    notes: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> np.ndarray:
        """The 8-bit RGB copy the faces were found on."""
        return self.original.rgb8

    @property
    def size(self) -> int:
        """The bytes its arrays hold (what the server's memory bound counts)."""
        eight_bit = self.pixels.nbytes if self.original.pixels.dtype != np.uint8 else 0
        return self.original.pixels.nbytes + eight_bit + sum(face.image.nbytes for face in self.faces)


class OneAtATime:
    """A face tool (the detector, the embedder) shared by the requests and the restoration worker: each call holds
    the shared lock alone, so a long album scan lets other users' calls in between its photos."""

    def __init__(self, tool, lock: threading.RLock) -> None:
        self._tool, self._lock = tool, lock

    def __getattr__(self, name: str):
        value = getattr(self._tool, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked


@dataclass
class StoredPeople:
    """The people a user gave (reference photos per person, or an album), with the folder their files live in."""

    people: People
    folder: Path | None = None


@dataclass
class RestoreRequest:
    """Everything a job needs: the photo, which faces, the run's settings, the people and any choices made by
    hand."""

    photo_id: str
    faces: list[int] | None  # None: every face of the photo
    settings: RestoreSettings
    people_id: str | None = None  # None: restore without references
    people_of: dict[int, str | None] = field(default_factory=dict)  # by hand: a person's name, None for no references
    photo_label: str = "photo"


@contextlib.contextmanager
def page_wording():
    """Say "no face found" in the page's terms (the library's sentence suggests command-line options)."""
    try:
        yield
    except NoFaceFound as nothing:
        if nothing.too_small:
            raise RefFaceError(
                f"The faces in {nothing.source} are too small to restore; upload a larger scan of the photo."
            ) from None
        raise RefFaceError(
            f"No face was found in {nothing.source}; use a photo in which the face is upright and at least about "
            "40 pixels wide."
        ) from None


def data_url(image: np.ndarray | Image.Image, size: int = THUMBNAIL) -> str:
    """A small PNG of `image` as a data URL, for thumbnails in JSON replies."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    picture = picture.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def people_reply(people: People) -> list[dict]:
    """Each person with their references' labels and thumbnails."""
    return [
        {
            "name": person.name,
            "references": [
                {"label": label, "thumbnail": data_url(crop)}
                for label, crop in zip(person.labels, person.references, strict=True)
            ],
        }
        for person in people
    ]


def _face_reply(face: FaceResult) -> dict:
    return {
        "index": face.index,
        "person": face.person_name or None,
        "distance": None if face.distance is None else round(face.distance, 3),
        "status": face.status,
        "references": face.references,
        "message": face.message,
    }


def _summary(faces: list[FaceResult]) -> str:
    """One sentence on what was done to each face, for the page."""
    told = []
    for face in faces:
        if face.status == RESTORED:
            told.append(f"face {face.index} as {face.person_name} ({len(face.references)} reference(s))")
        elif face.status == WITHOUT_REFERENCES:
            told.append(f"face {face.index} without references")
    restored = sum(1 for face in faces if face.restored is not None)
    return f"{restored} face(s) restored: " + "; ".join(told) + "." if told else "No face was restored."


class RestorationService:
    """The models, the face tools, the uploads and the job queue of one `refface serve` process.

    Who each face is and how it is restored is `PhotoRestorer`'s work; this class only keeps what the page
    uploaded between its steps and turns the workflow's results into replies and files.
    """

    def __init__(self, models: dict, detector, embedder, limits: ServeLimits, root: Path, upscaler=None) -> None:
        if not models:
            raise RefFaceError("refface serve needs at least one model.")
        lock = threading.RLock()  # dlib's detector and embedder are shared by requests and the worker
        self.models, self.limits, self.root = models, limits, root
        self.upscaler = upscaler  # Real-ESRGAN, loaded at start where its weights were at hand; else None
        self.detector = OneAtATime(detector, lock) if detector is not None else None
        self._lock = lock
        self._detectors = {"auto": self.detector}  # the page's other choices, made when first asked for
        self.embedder = OneAtATime(embedder, lock) if embedder is not None else None
        self.photos: Kept[StoredPhoto] = Kept(
            limits.keep_seconds, "The uploaded photo has expired or is unknown; please upload it again.",
            max_items=limits.max_kept_photos, max_bytes=limits.max_kept_bytes, size=lambda stored: stored.size,
        )  # fmt: skip
        self.people: Kept[StoredPeople] = Kept(
            limits.keep_seconds, "The people given have expired or are unknown; please give them again.", _forget_files,
            max_items=limits.max_kept_people,
        )  # fmt: skip
        # encoded references per model, in memory: restoring the same people again encodes nothing
        self.stores = {name: ReferenceStore(pipe) for name, pipe in models.items()}
        self.jobs = JobQueue(self._restore, root, limits.max_pending, limits.keep_seconds)

    # ------------------------------------------------------------------------------ page data
    def detector_choices(self) -> list[str]:
        """What the page offers: the server's detector ("auto") and dlib's searches (RetinaFace only where the
        server has it: a request never starts a download)."""
        server = getattr(self.detector, "name", "auto")
        return ["auto", *(n for n in ("retinaface", "cascade", "hog", "cnn") if n != "retinaface" or server == n)]

    def detector_named(self, name: str):
        if name not in self.detector_choices():
            raise RefFaceError(f"Unknown face detector {name!r}; choose one of {', '.join(self.detector_choices())}.")
        with self._lock:
            if name not in self._detectors:
                from refface.face.detectors import choose_detector

                found, _ = choose_detector(name, shape_predictor=getattr(self.detector, "shape_predictor", None))
                self._detectors[name] = OneAtATime(found, self._lock)
        return self._detectors[name]

    def background_choices(self) -> list[str]:
        """The backgrounds of an enlarged photo the page offers: Real-ESRGAN only where the server loaded it."""
        return ["realesrgan", "lanczos"] if self.upscaler is not None else ["lanczos"]

    def photo_output(self, upscale: str = "1", colour: str = "auto", background: str | None = None) -> PhotoOutput:
        """How a job's photo is given back, as the page chose it: within the server's pixel limit, with the
        server's own backgrounds only (a request never starts a download)."""
        choices = self.background_choices()
        background = background or choices[0]
        if background not in choices:
            raise RefFaceError(f"Unknown background {background!r}; this server offers {', '.join(choices)}.")
        scale = parse_scale(upscale)
        # auto: the server's loaded Real-ESRGAN when enlarging, the photo's own pixels at scale 1
        drawn = "auto" if background == "realesrgan" or scale == 1.0 else "lanczos"
        return PhotoOutput.build(
            scale=scale, colour=colour, max_megapixels=self.limits.max_pixels / 1e6, background=drawn
        )

    def info(self) -> dict:
        return {
            "backgrounds": self.background_choices(),
            "detectors": [
                f"auto ({getattr(self.detector, 'name', 'auto')})" if name == "auto" else name
                for name in self.detector_choices()
            ],
            "methods": [
                {
                    "name": method.name,
                    "label": method.label,
                    "guidance": method.defaults.guidance,
                    "lq_guidance": method.defaults.lq_guidance,
                    "fast_steps": method.fast_steps,
                }
                for method in map(methods.get, self.models)
            ],
            "limits": {
                "max_file_mb": self.limits.max_file_bytes / 2**20,
                "max_request_mb": self.limits.max_request_bytes / 2**20,
                "max_megapixels": self.limits.max_pixels / 1e6,
                "max_references": self.limits.max_references,
                "max_steps": self.limits.max_steps,
            },
        }

    def add_photo(self, photo: OriginalPhoto, label: str, detector: str = "auto") -> tuple[str, StoredPhoto]:
        """Find the faces of an uploaded photo (with the detector the page chose) and keep it, at its own depth
        and with its metadata, for the restoration the user will ask for."""
        finder = self.detector_named(detector)
        with page_wording():
            search = find_faces(photo.rgb8, finder, "all", source=label)
        notes = list(search.notes)
        if photo.frames > 1:
            notes.append(f"{label} holds {photo.frames} frames or pages; the first is restored.")
        stored = StoredPhoto(label, photo, search.faces, notes)
        return self.photos.add(stored), stored

    def add_people(
        self,
        references: dict[str, list[tuple[str, Image.Image]]],
        album: tuple[str, bytes] | None,
        num_refs: int,
    ) -> tuple[str, People]:
        """People from reference photos per person, or from an album zip (grouped into people), kept by id.

        The album is unpacked into a private folder that lives as long as the people do; a photo of it that cannot
        be read is passed over with a note, as on the command line. No message names the folder.
        """
        if references and album is not None:
            raise RefFaceError("Give reference photos or an album, not both.")
        for name, photos in references.items():
            if len(photos) > self.limits.max_references:
                raise RefFaceError(f"At most {self.limits.max_references} reference photos can be used ({name}).")
        if album is not None and not 1 <= num_refs <= self.limits.max_references:
            raise RefFaceError(f"The number of album references must be between 1 and {self.limits.max_references}.")
        if not references and album is None:
            raise RefFaceError("Give reference photos of at least one person, or an album.")
        folder = self.root / f"people-{secrets.token_urlsafe(12)}" if album is not None else None
        try:
            with page_wording():
                if folder is not None:
                    _, passed_over = unpack_album(album[1], album[0], folder / "album", self.limits)
                    people = people_from_album(folder / "album", self.detector, self.embedder, num_refs,
                                               cache_root=folder / "scan", progress=False)  # fmt: skip
                    people.notes[:0] = passed_over
                else:
                    people = people_from_images(references, self.detector, self.embedder)
        except RefFaceError as error:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise RefFaceError(self.public(str(error))) from None
        people.notes[:] = [self.public(note) for note in people.notes]
        people.warnings[:] = [self.public(warning) for warning in people.warnings]
        return self.people.add(StoredPeople(people, folder)), people

    def public(self, message: str) -> str:
        """`message` without the server's private folders: a file under them is named by its file name only."""
        for root in {str(self.root), str(self.root.resolve())}:
            message = re.sub(re.escape(root) + r"[^\s,;:()'\"]*/", "", message)
            message = message.replace(root, "the server's upload folder")
        return message

    def faces_of(self, photo_id: str, people_id: str | None) -> list[dict]:
        """Each face of a photo with the person it matches (none without people), as the page shows them."""
        stored = self.photos.get(photo_id)
        people = self.people.get(people_id).people if people_id else None
        restorer = PhotoRestorer(None, people)
        return [_face_reply(face) for face in restorer.match_faces(stored.faces, stored.label)]

    # ------------------------------------------------------------------------------ jobs
    def settings_for(self, method: str, **choices) -> RestoreSettings:
        """The settings of a restoration the page asked for: one of this server's methods, its options as the
        form chose them (None: the method's default), within the server's step limit."""
        if method not in self.models:
            raise RefFaceError(f"The method {method!r} is not loaded; this server has {', '.join(self.models)}.")
        settings = RestoreSettings.build(method=method, faces="all", **choices)
        steps = settings.sampling.steps
        if steps > self.limits.max_steps:
            raise RefFaceError(f"The number of steps must be between 1 and {self.limits.max_steps}, got {steps}.")
        return settings

    def check_request(self, request: RestoreRequest) -> None:
        """Every mistake a request can have beyond its settings, found before it is queued (and the photo's label
        noted)."""
        stored = self.photos.get(request.photo_id)
        count = len(stored.faces)
        for index in [*(request.faces or []), *request.people_of]:
            if not 0 <= index < count:
                raise RefFaceError(f"The photo has {count} face(s); face {index} does not exist.")
        if request.faces == []:
            raise RefFaceError("No face was chosen to restore.")
        people = self.people.get(request.people_id).people if request.people_id else None
        for name in request.people_of.values():
            if name is not None and (people is None or name not in people.names):
                known = ", ".join(people.names) if people is not None else "none were given"
                raise RefFaceError(f"There is no person named {name!r}; the people are {known}.")
        request.photo_label = stored.label

    def _restore(self, job: Job) -> None:
        """The worker's part: the workflow over the stored photo's chosen faces, with progress, then the files."""
        request: RestoreRequest = job.request
        stored = self.photos.get(request.photo_id)
        kept = self.people.get(request.people_id) if request.people_id else None
        people = kept.people if kept is not None else None
        update = self.jobs.update
        batch = {"number": 1, "total": 1}

        def on_batch(number: int, total: int, faces: list[FaceResult]) -> None:
            batch.update(number=number, total=total)
            who = faces[0].person_name or "without references"
            update(job, stage=f"restoring {len(faces)} face(s) {'as ' if faces[0].person else ''}{who}")

        settings = request.settings
        steps = settings.sampling.steps

        def on_step(index: int, timestep: int, prediction) -> None:
            done = (batch["number"] - 1) * steps + index + 1
            update(job, step=done, steps=batch["total"] * steps)

        pipe = self.models[settings.method]
        background = Background(settings.photo, pipe.device, progress=False, loaded=self.upscaler)
        restorer = PhotoRestorer(
            pipe, people, None, settings, store=self.stores[settings.method], background=background,
            step_callback=on_step, batch_callback=on_batch,
        )  # fmt: skip
        faces = restorer.match_faces(stored.faces, stored.label)  # among all the photo's faces, as the page showed
        if request.faces is not None:
            faces = [face for face in faces if face.index in request.faces]
        chosen = {face.index for face in faces}
        restorer.assign(faces, {i: name for i, name in request.people_of.items() if i in chosen})
        used = [p for p in (people or []) if any(f.person is p and f.status == RESTORED for f in faces)]
        update(
            job,
            stage="encoding the references",
            notes=list(people.notes) if people is not None else [],
            warnings=[*(people.warnings if people is not None else []), *(f.message for f in faces if f.message)],
            people=people_reply(People(used, None)),
            steps=steps,
            step=0,
        )
        result = restorer.restore(stored.original, stored.label, faces=faces)
        update(job, stage="saving the result", summary=_summary(faces))
        shown = result.photo if result.photo.dtype == np.uint8 else OriginalPhoto(result.photo).rgb8
        save_image(Image.fromarray(shown), job.folder / "result.png")
        suffix = settings.photo.suffix_for_format(result.metadata.format)
        _, kept_notes = write_photo(result.photo, result.metadata, job.folder / f"{DOWNLOAD}{suffix}")
        save_image(Image.fromarray(stored.pixels), job.folder / "before.png")
        for face in result.restored_faces:
            save_image(Image.fromarray(face.restored), job.folder / f"face-{face.index:02d}.png")
        told = [*(people.notes if people is not None else []), *result.notes, *kept_notes]
        update(job, faces=[_face_reply(face) for face in faces], notes=told)

    def close(self) -> None:
        self.jobs.close()
        self.people.clear()


def _forget_files(kept: StoredPeople) -> None:
    if kept.folder is not None:
        shutil.rmtree(kept.folder, ignore_errors=True)
