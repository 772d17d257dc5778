"""Released model weights: where they live, and a resumable, verified download into the user cache.

Nothing is ever downloaded by the tests; they exercise this code against a loopback HTTP server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from refface.errors import RefFaceError
from refface.files import write_text_atomically

CHUNK = 1 << 20
OFFLINE_VARIABLE = "REFFACE_OFFLINE"  # set (not 0): never download; what is in the cache is used


@dataclass(frozen=True)
class WeightFile:
    """A downloadable weight file with the checksum it must have.

    `sha256` is None only for files whose authors publish no checksum; their loaders verify the
    content instead (every expected tensor present with its shape).
    """

    name: str
    url: str
    sha256: str | None
    licence: str


RELEASE = "https://github.com/ChiWeiHsiao/ref-ldm/releases/download/1.0.0"
NON_COMMERCIAL = "ReF-LDM release 1.0.0 licence (non-commercial use only; see the official repository)"
REFLDM_WEIGHTS = WeightFile(
    "refldm.ckpt",
    f"{RELEASE}/refldm.ckpt",
    "ad953ba72b52ed32dd280232ff0070bc6cb097a71dce250318730c884e38b778",
    NON_COMMERCIAL,
)
VQGAN_WEIGHTS = WeightFile(
    "vqgan.ckpt",
    f"{RELEASE}/vqgan.ckpt",
    "7b08407b454f5328aaaf1eda35418a5a53dcc68caaf3bcf12ab88b8f21ec1a5d",
    NON_COMMERCIAL,
)


def cache_dir() -> Path:
    """$REFFACE_CACHE, else $XDG_CACHE_HOME/refface, else ~/.cache/refface."""
    if os.environ.get("REFFACE_CACHE"):
        return Path(os.environ["REFFACE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "refface"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(weight: WeightFile, partial: Path, progress: bool) -> None:
    """Append the rest of the file to `partial`, resuming with an HTTP Range request."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(weight.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # already complete
            return
        raise
    with response:
        if have and response.status != 206:  # server ignored the range: start over
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        mode = "ab" if have else "wb"
        with (
            partial.open(mode) as stream,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=weight.name, disable=not progress) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                stream.write(block)
                bar.update(len(block))


class DownloadFailed(RefFaceError):
    """Weights that are not in the cache could not be downloaded (offline, blocked, a server error). `reason` is
    the cause in a few words, for a front end that words its own sentence."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _record(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _verified_before(target: Path, weight: WeightFile) -> bool:
    """Whether `target` was checked against `weight`'s SHA-256 as it is now (same size and modification time)."""
    try:
        record = json.loads(_record(target).read_text(encoding="utf-8"))
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return record == {"sha256": weight.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _remember_verified(target: Path, weight: WeightFile) -> None:
    stat = target.stat()
    record = {"sha256": weight.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError, RefFaceError):  # a read-only cache: verified again next time
        write_text_atomically(_record(target), json.dumps(record))


def _check_cached(target: Path, weight: WeightFile) -> None:
    """A file in the cache (downloaded, or put there by hand) is the release: its SHA-256 checked once, then
    remembered by size and modification time."""
    if weight.sha256 is None or _verified_before(target, weight):
        return
    actual = sha256_of(target)
    if actual != weight.sha256:
        raise RefFaceError(
            f"The file {target} is not the released {weight.name} (SHA-256 {actual[:12]}..., expected "
            f"{weight.sha256[:12]}...); delete it to download it again, or pass your own file's path explicitly."
        )
    _remember_verified(target, weight)


def ensure_weights(weight: WeightFile, directory: Path | None = None, progress: bool = True) -> Path:
    """Path of a verified copy of `weight` in the cache, downloading (or resuming) it if needed."""
    return ensure_all([weight], directory, progress)[0]


def ensure_all(weights: list[WeightFile], directory: Path | None = None, progress: bool = True) -> list[Path]:
    """Verified copies of `weights` in the cache, downloading what is missing; when a download fails, one sentence
    names every file still missing and where to put it."""
    directory = directory or cache_dir()
    paths = []
    for number, weight in enumerate(weights):
        target = directory / weight.name
        if target.exists():
            _check_cached(target, weight)
        else:
            try:
                _download(weight, target, progress)
            except DownloadFailed as failed:
                missing = [w for w in weights[number:] if not (directory / w.name).exists()]
                names = " and ".join(w.name for w in missing)
                by_hand = " and ".join(f"{w.url} at {directory / w.name}" for w in missing)
                raise DownloadFailed(
                    f"Could not download {names} ({failed.reason}); download by hand and put {by_hand}, or pass "
                    "your own files' paths explicitly.",
                    failed.reason,
                ) from None
        paths.append(target)
    return paths


def _download(weight: WeightFile, target: Path, progress: bool) -> None:
    if os.environ.get(OFFLINE_VARIABLE, "") not in ("", "0"):
        reason = f"downloads are off: {OFFLINE_VARIABLE} is set"
        raise DownloadFailed(f"Could not download {weight.name} ({reason}).", reason)
    partial = target.with_name(weight.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _fetch(weight, partial, progress)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = str(getattr(error, "reason", None) or error)
        raise DownloadFailed(f"Could not download {weight.name} ({reason}).", reason) from None
    except OSError as error:
        raise RefFaceError(f"Could not write the download to {partial} ({error.strerror or error}).") from None
    actual = sha256_of(partial) if weight.sha256 is not None else None
    if actual != weight.sha256:
        partial.unlink(missing_ok=True)
        raise RefFaceError(
            f"The downloaded {weight.name} has SHA-256 {actual[:12]}..., expected {weight.sha256[:12]}...; "
            "the partial file was removed, please try again."
        )
    os.replace(partial, target)
    if weight.sha256 is not None:
        _remember_verified(target, weight)
