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
import shutil
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from refface.errors import RefFaceError
from refface.web.jobs import ServerBusy
from refface.web.service import RestorationService, RestoreRequest, data_url
from refface.web.uploads import decode_upload, label, unpack_album


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


def create_app(service: RestorationService) -> FastAPI:
    """The web app; `service` holds the loaded models (one load per process)."""
    page = resources.files("refface.web").joinpath("static/index.html").read_text(encoding="utf-8")
    limits = service.limits

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="refface", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)

    @app.exception_handler(RefFaceError)
    async def refface_error(request: Request, error: RefFaceError) -> JSONResponse:
        return _error(503 if isinstance(error, ServerBusy) else 400, str(error))

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

    @app.post("/api/photos")
    def add_photo(photo: Annotated[UploadFile, File()]) -> dict:
        name = label(photo.filename, "the photo")
        image = decode_upload(photo.file.read(limits.max_file_bytes + 1), name, limits)
        identifier, stored = service.add_photo(image, name)
        return {
            "photo_id": identifier,
            "width": image.width,
            "height": image.height,
            "faces": [
                {"index": index, "size": round(face.quad.size), "thumbnail": data_url(face.image)}
                for index, face in enumerate(stored.faces)
            ],
        }

    @app.post("/api/jobs")
    def submit(
        photo_id: Annotated[str, Form()],
        method: Annotated[str, Form()],
        face: Annotated[int, Form()] = 0,
        steps: Annotated[int, Form()] = 50,
        guidance: Annotated[float | None, Form()] = None,
        lq_guidance: Annotated[float | None, Form()] = None,
        seed: Annotated[int, Form()] = 2024,
        num_refs: Annotated[int, Form()] = 5,
        solver: Annotated[str | None, Form()] = None,
        references: Annotated[list[UploadFile] | None, File()] = None,
        album: Annotated[UploadFile | None, File()] = None,
    ) -> dict:
        references = references or []
        if len(references) > limits.max_references:
            raise RefFaceError(f"At most {limits.max_references} reference photos can be used.")
        decoded = []
        for number, upload in enumerate(references):
            name = label(upload.filename, f"reference {number + 1}")
            decoded.append((name, decode_upload(upload.file.read(limits.max_file_bytes + 1), name, limits)))
        request = RestoreRequest(
            photo_id, face, method, steps, guidance, lq_guidance, seed, decoded, None, num_refs, solver=solver
        )
        service.check_request(request, has_album=album is not None)
        job = service.jobs.new_job(request)
        try:
            if album is not None:
                album_name = label(album.filename, "the album")
                data = album.file.read(limits.max_request_bytes + 1)
                unpack_album(data, album_name, job.folder / "album", limits)
                request.album = job.folder / "album"
            service.jobs.submit(job)
        except RefFaceError:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        return {"job_id": job.id}

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str) -> JSONResponse:
        job = service.jobs.get(job_id)
        if job is None:
            return _error(404, "No such restoration; it may have expired. Please start again.")
        return JSONResponse(service.jobs.status(job), headers={"Cache-Control": "no-store"})

    def _file(job_id: str, name: str, download: bool = False) -> FileResponse | JSONResponse:
        job = service.jobs.get(job_id)
        if job is None or job.state != "done":
            return _error(404, "This restoration has no result (yet, or any more).")
        filename = f"{job.request.photo_label.rsplit('.', 1)[0]}_restored.png" if download else None
        return FileResponse(job.folder / name, media_type="image/png", filename=filename)

    @app.get("/api/jobs/{job_id}/result.png")
    def result(job_id: str, download: int = 0):
        return _file(job_id, "result.png", download=bool(download))

    @app.get("/api/jobs/{job_id}/before.png")
    def before(job_id: str):
        return _file(job_id, "before.png")

    @app.get("/api/jobs/{job_id}/face.png")
    def restored_face(job_id: str):
        return _file(job_id, "face.png")

    return app
