"""The HTTP side of `refface serve`: one HTML page and a small JSON API over `RestorationService`.

FastAPI rather than Gradio: the page needs a two-step flow (find the faces, then restore the chosen
one), a job queue with progress, and strict upload handling, all of which are a few lines here and
would be workarounds inside Gradio's component model; FastAPI adds two small dependencies instead
of Gradio's large tree. No file is ever read or written at a path a client chose: pages come from
the package, results are found by random job ids, uploads are decoded in memory.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from refface.errors import RefFaceError
from refface.web.guard import HostGuard, allowed_names
from refface.web.jobs import ServerBusy
from refface.web.service import DOWNLOAD, RestorationService, RestoreRequest, data_url, people_reply
from refface.web.uploads import decode_original, decode_upload, label, within_budget

MAX_FIELD_CHARS = 4096  # a form field the page fills by hand (face numbers, people chosen by hand)
SHOWN_CHARS = 40  # at most this much of a client's value is repeated back in a message


class RequestTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (by Content-Length, or while they stream in)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise RequestTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except RequestTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        megabytes = self.max_bytes / 2**20
        body = json.dumps({"error": f"The upload is larger than this server's limit of {megabytes:.0f} MB."}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def shown(value: str) -> str:
    """A client's value as a message repeats it: quoted, and cut short."""
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")


def _bounded(text: str, field: str) -> str:
    if len(text) > MAX_FIELD_CHARS:
        raise RefFaceError(
            f"The field {field!r} is {len(text):,} characters long; at most {MAX_FIELD_CHARS:,} are read."
        )
    return text


def _face_numbers(text: str) -> list[int] | None:
    """'all' -> None (every face); '0,2' -> [0, 2]."""
    if _bounded(text, "faces").strip().lower() == "all":
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise RefFaceError(f"The faces to restore are 'all' or face numbers such as 0,2; got {shown(text)}.") from None


def _people_of(text: str | None) -> dict[int, str | None]:
    """The page's choices by hand, a flat JSON object {"face number": "person name" or null}."""
    if not text:
        return {}
    try:
        choices = json.loads(_bounded(text, "people_of"))
        if not isinstance(choices, dict) or not all(isinstance(v, str | None) for v in choices.values()):
            raise ValueError("not a flat object of names")
        return {int(face): (None if name in (None, "") else name[:60]) for face, name in choices.items()}
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep for the parser
        raise RefFaceError('The people chosen by hand must be JSON such as {"0": "Anna", "1": null}.') from None


def create_app(service: RestorationService, names: frozenset[str] | None = None) -> FastAPI:
    """The web app; `service` holds the loaded models (one load per process). `names`: what clients may call the
    server (default: the loopback names, for a server on 127.0.0.1)."""
    page = resources.files("refface.web").joinpath("static/index.html").read_text(encoding="utf-8")
    limits = service.limits

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="refface", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(HostGuard, names=names if names is not None else allowed_names("127.0.0.1"))

    @app.exception_handler(RefFaceError)
    async def refface_error(request: Request, error: RefFaceError) -> JSONResponse:
        return _error(503 if isinstance(error, ServerBusy) else 400, service.public(str(error)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = "There is nothing at this address." if error.status_code == 404 else str(error.detail)
        return _error(error.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return _error(400, f"The field {field!r} is missing or invalid ({first.get('msg', 'invalid')}).")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    def info() -> dict:
        return service.info()

    def _decoded(uploads: list[UploadFile], fallback: str) -> list[tuple[str, Image.Image]]:
        """The uploads decoded, once their sizes and pixels together are within the server's limits."""
        read = [
            (label(upload.filename, f"{fallback} {number}"), upload.file.read(limits.max_file_bytes + 1))
            for number, upload in enumerate(uploads)
        ]
        within_budget(read, limits.max_request_pixels, "The photos of this request", limits)
        return [(name, decode_upload(data, name, limits)) for name, data in read]

    @app.post("/api/photos")
    def add_photo(
        photo: Annotated[UploadFile, File()],
        people_id: Annotated[str | None, Form()] = None,
        detector: Annotated[str, Form()] = "auto",
    ) -> dict:
        name = label(photo.filename, "the photo 0")
        original = decode_original(photo.file.read(limits.max_file_bytes + 1), name, limits)
        identifier, stored = service.add_photo(original, name, detector)
        height, width = original.pixels.shape[:2]
        return {
            "photo_id": identifier,
            "width": width,
            "height": height,
            "notes": stored.notes,
            "faces": [
                {**match, "size": round(face.quad.size), "thumbnail": data_url(face.image)}
                for face, match in zip(stored.faces, service.faces_of(identifier, people_id), strict=True)
            ],
        }

    @app.post("/api/people")
    def add_people(
        references: Annotated[list[UploadFile] | None, File()] = None,
        reference_person: Annotated[list[str] | None, Form()] = None,
        album: Annotated[UploadFile | None, File()] = None,
        num_refs: Annotated[int, Form()] = 5,
        photo_id: Annotated[str | None, Form()] = None,
    ) -> dict:
        """The people of a restoration: reference photos each named by `reference_person` (default one person),
        or an album zip grouped into people; with `photo_id`, the person each face of that photo matches."""
        references = references or []
        names = reference_person or []
        if names and len(names) != len(references):
            raise RefFaceError(f"{len(references)} reference photo(s) came with {len(names)} person name(s).")
        people_sets: dict[str, list] = {}
        for name, photo in zip(names or ["person-01"] * len(references), _decoded(references, "reference"),
                               strict=True):  # fmt: skip
            people_sets.setdefault(name.strip()[:60] or "person-01", []).append(photo)
        packed = None
        if album is not None:
            packed = (label(album.filename, "the album"), album.file.read(limits.max_request_bytes + 1))
        people_id, people = service.add_people(people_sets, packed, num_refs)
        reply = {"people_id": people_id, "people": people_reply(people), "notes": people.notes,
                 "warnings": people.warnings}  # fmt: skip
        if photo_id:
            reply["faces"] = service.faces_of(photo_id, people_id)
        return reply

    @app.post("/api/jobs")
    def submit(
        photo_id: Annotated[str, Form()],
        method: Annotated[str, Form()],
        faces: Annotated[str, Form()] = "0",
        steps: Annotated[int, Form()] = 50,
        guidance: Annotated[float | None, Form()] = None,
        lq_guidance: Annotated[float | None, Form()] = None,
        seed: Annotated[int, Form()] = 2024,
        solver: Annotated[str | None, Form()] = None,
        strength: Annotated[float, Form()] = 1.0,
        people_id: Annotated[str | None, Form()] = None,
        people_of: Annotated[str | None, Form()] = None,
        face: Annotated[int | None, Form()] = None,
        upscale: Annotated[str, Form()] = "1",
        colour: Annotated[str, Form()] = "auto",
        background: Annotated[str | None, Form()] = None,
        references: Annotated[list[UploadFile] | None, File()] = None,
        album: Annotated[UploadFile | None, File()] = None,
    ) -> dict:
        """Restore `faces` ("all" or face numbers, e.g. "0,2"; `face` N is "N") of a photo, each as the person it
        matches among `people_id`'s people or as `people_of` says (JSON: {"0": "Anna", "1": null}: no references)."""
        if references or album is not None:
            raise RefFaceError("Reference photos and albums go to /api/people; pass the people_id it returns.")
        chosen = [face] if face is not None else _face_numbers(faces)
        photo = service.photo_output(_bounded(upscale, "upscale"), _bounded(colour, "colour"), background or None)
        settings = service.settings_for(
            method, steps=steps, guidance=guidance, lq_guidance=lq_guidance, seed=seed, solver=solver or None,
            strength=strength, photo=photo,
        )  # fmt: skip
        request = RestoreRequest(photo_id, chosen, settings, people_id or None, _people_of(people_of))
        service.check_request(request)
        job = service.jobs.new_job(request)
        service.jobs.submit(job)
        return {"job_id": job.id}

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str) -> JSONResponse:
        job = service.jobs.get(job_id)
        if job is None:
            return _error(404, "No such restoration; it may have expired. Please start again.")
        return JSONResponse(service.jobs.status(job), headers={"Cache-Control": "no-store"})

    def _file(job_id: str, name: str) -> FileResponse | JSONResponse:
        job = service.jobs.get(job_id)
        if job is None or job.state != "done":
            return _error(404, "This restoration has no result (yet, or any more).")
        return FileResponse(job.folder / name, media_type="image/png")

    @app.get("/api/jobs/{job_id}/result.png")
    def result(job_id: str, download: int = 0):
        if not download:
            return _file(job_id, "result.png")
        job = service.jobs.get(job_id)
        kept = sorted(job.folder.glob(f"{DOWNLOAD}.*")) if job is not None and job.state == "done" else []
        if not kept:
            return _error(404, "This restoration has no result (yet, or any more).")
        filename = f"{job.request.photo_label.rsplit('.', 1)[0]}_restored{kept[0].suffix}"
        media = mimetypes.guess_type(kept[0].name)[0] or "application/octet-stream"
        return FileResponse(kept[0], media_type=media, filename=filename)

    @app.get("/api/jobs/{job_id}/before.png")
    def before(job_id: str):
        return _file(job_id, "before.png")

    @app.get("/api/jobs/{job_id}/faces/{index}.png")
    def restored_face(job_id: str, index: int):
        job = service.jobs.get(job_id)
        if job is None or job.state != "done" or not (job.folder / f"face-{index:02d}.png").is_file():
            return _error(404, f"This restoration has no restored face {index}.")
        return _file(job_id, f"face-{index:02d}.png")

    return app
