"""Identity embeddings of a folder of aligned faces: resumable, and sharded over processes with Accelerate.

Embedding FFHQ's 70,000 images takes hours on one device, so the work is cut into fixed chunks by
image position; each finished chunk is saved at once (atomically) and skipped when the job is run
again, and under `accelerate launch` each process takes every n-th chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from refface.errors import RefFaceError, require_file
from refface.face.identity import IdentityEmbedder
from refface.files import atomic_output
from refface.imaging import load_image

META_FILE = "meta.json"


def _save_atomic(array: np.ndarray, target: Path) -> None:
    with atomic_output(target) as stream:
        np.save(stream, array)


def _job_meta(names: Sequence[str], embedder: IdentityEmbedder, chunk_size: int) -> dict:
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return {"embedder": embedder.name, "images": len(names), "names_sha256": digest, "chunk_size": chunk_size}


def _check_work_dir(work_dir: Path, meta: dict, is_main: bool) -> None:
    """Refuse to mix chunks of a different job (other images, model or chunking) into this one."""
    meta_path = work_dir / META_FILE
    if meta_path.exists():
        previous = json.loads(meta_path.read_text())
        if previous != meta:
            raise RefFaceError(
                f"The embedding work folder {work_dir} belongs to another job ({previous['images']} images, "
                f"{previous['embedder']} model); delete it or choose another output folder."
            )
    elif is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta, indent=1))


def load_face_crop(path: Path) -> np.ndarray:
    """An aligned face crop as uint8 RGB; a non-square image is refused because it cannot be an aligned crop."""
    image = np.asarray(load_image(path))
    if image.shape[0] != image.shape[1]:
        raise RefFaceError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, not a square aligned face crop; "
            "run `refface align` on the photos first."
        )
    return image


def embed_images(
    names: Sequence[str],
    images_dir: str | Path,
    embedder: IdentityEmbedder,
    work_dir: str | Path,
    chunk_size: int = 512,
    batch_size: int = 32,
    accelerator=None,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of `images_dir/name` for every name, row i for names[i].

    Chunks already in `work_dir` are reused, so an interrupted job continues where it stopped.
    With an `accelerate.Accelerator` each process embeds chunks rank, rank + n, ...; every process
    returns the full array once all have finished.
    """
    if chunk_size < 1 or batch_size < 1:
        raise RefFaceError("The embedding chunk and batch sizes must be at least 1.")
    images_dir, work_dir = Path(images_dir), Path(work_dir)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    meta = _job_meta(names, embedder, chunk_size)
    _check_work_dir(work_dir, meta, rank == 0)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        _check_work_dir(work_dir, meta, False)

    chunks = range((len(names) + chunk_size - 1) // chunk_size)
    mine = [c for c in chunks if c % world == rank and not (work_dir / f"chunk_{c:06d}.npy").exists()]
    bar = tqdm(total=sum(len(names[c * chunk_size : (c + 1) * chunk_size]) for c in mine), disable=not progress)
    bar.set_description(f"embedding ({embedder.name})" + (f" [process {rank}/{world}]" if world > 1 else ""))
    for chunk in mine:
        part = names[chunk * chunk_size : (chunk + 1) * chunk_size]
        vectors = []
        for start in range(0, len(part), batch_size):
            batch = [load_face_crop(images_dir / name) for name in part[start : start + batch_size]]
            vectors.append(np.asarray(embedder.embed(batch), dtype=np.float32))
            bar.update(len(batch))
        _save_atomic(np.concatenate(vectors), work_dir / f"chunk_{chunk:06d}.npy")
    bar.close()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return np.concatenate([np.load(work_dir / f"chunk_{c:06d}.npy") for c in chunks])


def read_names(path: str | Path) -> list[str]:
    """Image names, one per line (blank lines ignored)."""
    source = require_file(path, "names file")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RefFaceError(f"The names file {source} is not UTF-8 text.") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise RefFaceError(f"The names file {source} lists no images.")
    return names


def load_embeddings(embeddings_path: str | Path, names_path: str | Path) -> tuple[list[str], np.ndarray]:
    """Precomputed embeddings (`.npy`, one row per image) and their names (row i is line i)."""
    source = require_file(embeddings_path, "embeddings file")
    try:
        embeddings = np.load(source, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise RefFaceError(f"The embeddings file {source} is not a readable .npy array ({error}).") from None
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.number):
        raise RefFaceError(
            f"The embeddings file {source} holds an array of shape {embeddings.shape}; expected one numeric "
            "row per image (2-D)."
        )
    names = read_names(names_path)
    if len(names) != len(embeddings):
        raise RefFaceError(
            f"The embeddings file {source} has {len(embeddings)} rows but the names file {names_path} lists "
            f"{len(names)} images; row i must belong to line i."
        )
    return names, embeddings.astype(np.float32)


def check_images_exist(names: Sequence[str], images_dir: str | Path) -> None:
    """Every named image must be in the folder, so the dataset's CSVs never point at nothing."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise RefFaceError(f"The images folder {folder} does not exist or is not a folder.")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise RefFaceError(f"{len(missing)} listed image(s) are not in {folder}: {shown}.")
