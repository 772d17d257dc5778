"""What the web page does, on the Python API: find faces, choose references, check identity, restore, paste back.

The models are loaded once, when the service is made; restorations run on the job queue's single
worker, and face detection (shared by requests and the worker) is serialised by a lock.
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from refface import methods
from refface.errors import RefFaceError
from refface.face.alignment import AlignedFace
from refface.web.jobs import Job, JobQueue
from refface.web.limits import ServeLimits

THUMBNAIL = 96


@dataclass
class StoredPhoto:
    """An uploaded photo whose faces were found, waiting for the user to pick one and press Restore."""

    label: str
    pixels: np.ndarray
    faces: list[AlignedFace]
    touched: float = field(default_factory=time.monotonic)


@dataclass
class RestoreRequest:
    """Everything a job needs; images are already decoded, the album already unpacked into the job's folder."""

    photo_id: str
    face: int
    method: str
    steps: int
    guidance: float | None
    lq_guidance: float | None
    seed: int
    references: list[tuple[str, Image.Image]]  # (label, photo)
    album: Path | None
    num_refs: int = 5
    photo_label: str = "photo"
    solver: str | None = None  # "dpm++": ReF-LDM's fast mode


@contextlib.contextmanager
def page_wording():
    """Say "no face found" in the page's terms: the library's sentence suggests command-line options."""
    try:
        yield
    except RefFaceError as error:
        found = re.match(r"No face was found in (.+?); try --detector", str(error))
        if found is None:
            raise
        raise RefFaceError(
            f"No face was found in {found.group(1)}; use a photo in which the face is upright and at least about "
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


class RestorationService:
    """The models, the face tools, the uploaded photos and the job queue of one `refface serve` process."""

    def __init__(self, models: dict, detector, embedder, limits: ServeLimits, root: Path) -> None:
        if not models:
            raise RefFaceError("refface serve needs at least one model.")
        self.models, self.detector, self.embedder, self.limits = models, detector, embedder, limits
        self.root = root
        self._faces_lock = threading.Lock()
        self._photos: dict[str, StoredPhoto] = {}
        self._photos_lock = threading.Lock()
        self.jobs = JobQueue(self._restore, root, limits.max_pending, limits.keep_seconds)

    # ------------------------------------------------------------------------------ page data
    def info(self) -> dict:
        return {
            "methods": [
                {
                    "name": method.name,
                    "label": method.label,
                    "guidance": method.guidance,
                    "lq_guidance": method.lq_guidance,
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

    def add_photo(self, photo: Image.Image, label: str) -> tuple[str, StoredPhoto]:
        """Find the faces of an uploaded photo and keep it for the restoration the user will ask for."""
        from refface.face.locate import find_faces

        pixels = np.asarray(photo.convert("RGB"))
        with self._faces_lock, page_wording():
            search = find_faces(pixels, self.detector, "all", source=label)
        stored = StoredPhoto(label, pixels, search.faces)
        identifier = secrets.token_urlsafe(16)
        with self._photos_lock:
            self._forget_old_photos()
            self._photos[identifier] = stored
        return identifier, stored

    def photo(self, identifier: str) -> StoredPhoto:
        with self._photos_lock:
            stored = self._photos.get(identifier)
            if stored is None:
                raise RefFaceError("The uploaded photo has expired or is unknown; please upload it again.")
            stored.touched = time.monotonic()
            return stored

    def _forget_old_photos(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self._photos.items() if now - p.touched > self.limits.keep_seconds]:
            del self._photos[key]

    # ------------------------------------------------------------------------------ jobs
    def check_request(self, request: RestoreRequest, has_album: bool = False) -> None:
        """Every mistake a request can have, found before it is queued (and the photo's label noted)."""
        if request.method not in self.models:
            raise RefFaceError(
                f"The method {request.method!r} is not loaded; this server has {', '.join(self.models)}."
            )
        if not 1 <= request.steps <= self.limits.max_steps:
            raise RefFaceError(
                f"The number of steps must be between 1 and {self.limits.max_steps}, got {request.steps}."
            )
        self._sampling_options(request)
        stored = self.photo(request.photo_id)
        if not 0 <= request.face < len(stored.faces):
            raise RefFaceError(f"The photo has {len(stored.faces)} face(s); face {request.face} does not exist.")
        request.photo_label = stored.label
        if request.references and has_album:
            raise RefFaceError("Give reference photos or an album, not both.")
        if len(request.references) > self.limits.max_references:
            raise RefFaceError(f"At most {self.limits.max_references} reference photos can be used.")
        if has_album and not 1 <= request.num_refs <= self.limits.max_references:
            raise RefFaceError(f"The number of album references must be between 1 and {self.limits.max_references}.")

    @staticmethod
    def _sampling_options(request: RestoreRequest) -> dict:
        method = methods.get(request.method)
        return method.sampling_options(request.steps, request.guidance, request.lq_guidance, solver=request.solver)

    def _restore(self, job: Job) -> None:
        """The worker's part: references, identity check, restoration with progress, paste-back, files."""
        from refface.face.album import choose_references, scan_album, sharpness
        from refface.face.guard import check_identity, lq_is_usable
        from refface.imaging import save_image
        from refface.photo import align_references, restore_faces

        request: RestoreRequest = job.request
        stored = self.photo(request.photo_id)
        face = stored.faces[request.face]
        update = self.jobs.update

        crops, labels, notes = [], [], []
        if request.album is not None:
            update(job, stage="choosing references from the album")
            with self._faces_lock:
                scan = scan_album(request.album, self.detector, self.embedder, cache_root=job.folder, progress=False)
                notes += [f"skipped album photo {name}: {reason}" for name, reason in scan.skipped.items()]
                target = self.embedder.embed([face.image])[0]
                choice = choose_references(scan.faces, self.embedder, request.num_refs, target, "LQ face")
                crops = [chosen.align().image for chosen in choice.chosen]
            labels = [f"album photo {chosen.label}" for chosen in choice.chosen]
            notes += choice.reasons
        elif request.references:
            update(job, stage="aligning the references")
            with self._faces_lock, page_wording():
                crops, found = align_references(
                    [image for _, image in request.references], [name for name, _ in request.references], self.detector
                )
            labels, notes = [name for name, _ in request.references], notes + found
        summary, warnings = "No references: the face is restored from the photo alone.", []
        if crops:
            usable = lq_is_usable(sharpness(face.image), [sharpness(c) for c in crops], face.quad.size)
            report = check_identity(self.embedder, crops, labels, face.image if usable else None)
            summary, warnings = report.summary(), report.warnings
        update(
            job,
            notes=notes,
            summary=summary,
            warnings=warnings,
            references=[{"label": name, "thumbnail": data_url(c)} for name, c in zip(labels, crops, strict=True)],
        )

        pipe = self.models[request.method]
        options = self._sampling_options(request)
        update(job, stage="encoding the references", steps=request.steps, step=0)
        references = pipe.encode_references([Image.fromarray(c) for c in crops])

        def progress(index: int, timestep: int, prediction) -> None:
            update(job, stage="restoring", step=index + 1)

        def restore(batch: list[Image.Image]) -> list[Image.Image]:
            return pipe(batch, references, seed=request.seed, progress=False, step_callback=progress, **options).images

        result, restored = restore_faces(stored.pixels, [face], restore)
        update(job, stage="saving the result")
        save_image(Image.fromarray(np.asarray(result)), job.folder / "result.png")
        save_image(Image.fromarray(stored.pixels), job.folder / "before.png")
        save_image(Image.fromarray(restored[0].restored), job.folder / "face.png")

    def close(self) -> None:
        self.jobs.close()
