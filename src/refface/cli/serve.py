"""`refface serve`: the web page, on this machine (loopback by default)."""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from refface.cli.common import DEVICE_NAMES, DTYPE_NAMES, checked_dtype, resolve_device, say
from refface.errors import RefFaceError

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "serve": "a local web page: upload a photo and references, restore, download",
}


def load_models(folders: list[str] | None, device, dtype) -> dict:
    """Method name -> pipeline, one per --model folder (its method read from the folder), else the default's release."""
    from refface import methods

    if not folders:
        method = methods.get(methods.DEFAULT)
        return {method.name: method.load().to(device=device, dtype=dtype)}
    models = {}
    for folder in folders:
        method, source = methods.of_folder(folder)
        if method.name in models:
            raise RefFaceError(f"Two --model folders hold {method.label} models; give one of each kind at most.")
        models[method.name] = method.load(method.sources(model=source)).to(device=device, dtype=dtype)
    return models


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything slow: a port in use is one sentence, and "ready" is only said
    once the server can be reached."""
    if not 1 <= port <= 65535:
        raise RefFaceError(f"--port must be between 1 and 65535, got {port}.")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as error:
        raise RefFaceError(f"--host {host} is not an address of this machine ({error}).") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise RefFaceError(
            f"Cannot listen on {host}:{port} ({error.strerror or error}); another program may be using the port: "
            "choose another with --port."
        ) from None
    return sock


def _stop_on_sigterm(signum, frame) -> None:
    """A service manager's stop: leave through the same clean-up as Ctrl+C (uploads and results deleted)."""
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from refface.face.detectors import choose_detector
    from refface.face.identity import DlibEmbedder
    from refface.photo.background import cached_upscaler
    from refface.web.app import create_app
    from refface.web.guard import allowed_names
    from refface.web.limits import ServeLimits
    from refface.web.service import RestorationService

    limits = ServeLimits.from_megabytes(args.max_upload_mb, args.max_pending)
    sock = listening_socket(args.host, args.port)
    root = None
    service = None
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        device = resolve_device(args.device)
        models = load_models(args.model, device, checked_dtype(device, args.dtype))
        detector, notes = choose_detector(args.detector, device)
        for note in notes:
            say(args, f"note: {note}")
        embedder = DlibEmbedder(shape_predictor=detector.shape_predictor)
        upscaler = cached_upscaler(device)
        if upscaler is None:
            say(args, "note: Real-ESRGAN's weights are not in the cache: enlarged photos get a Lanczos background "
                      "(`refface download` fetches them).")  # fmt: skip
        root = Path(tempfile.mkdtemp(prefix="refface-serve-"))  # private (0700), outside anything served
        service = RestorationService(models, detector, embedder, limits, root, upscaler)
        app = create_app(service, allowed_names(args.host, args.allow_host or ()))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            say(args, f"note: serving on {args.host}: anyone who can reach this machine can use the page.")
        say(args, f"refface: {', '.join(models)} ready on http://{args.host}:{args.port}/ (Ctrl+C stops)")
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        if service is not None:
            service.close()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        sock.close()
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    from refface import methods
    from refface.restoration.settings import DETECTORS

    serve = commands.add_parser("serve", help=COMMANDS["serve"])
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument(
        "--allow-host", action="append", help="another name or address clients reach this server by (repeatable)"
    )
    labels = [method.label for method in methods.METHODS]
    several = "both" if len(labels) == 2 else "several"
    serve.add_argument(
        "--model", action="append", help=f"model folder ({' or '.join(labels)}; repeat for {several}); "
        f"default: the released {methods.get(methods.DEFAULT).label} weights"
    )  # fmt: skip
    serve.add_argument("--device", choices=DEVICE_NAMES, default="auto")
    serve.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    serve.add_argument("--detector", choices=DETECTORS, default="auto", help="face detector (default: best at hand)")
    serve.add_argument("--max-upload-mb", type=float, default=30, help="largest photo accepted, in MB (default 30)")
    serve.add_argument("--max-pending", type=int, default=4, help="restorations that may wait at once (default 4)")
    serve.add_argument("--quiet", "-q", action="store_true")
    serve.set_defaults(handler=cmd_serve)
