"""Each person's encoded references, made once per run and kept in the user cache between runs.

Encoding references is a VQ encoder pass plus a U-Net pass (ReF-LDM) or two encoder passes
(Composite-Context): seconds per person on a CPU. A run encodes every person once, for all their faces in
all photos, and writes the result to `$REFFACE_CACHE/people/` as safetensors, keyed by the model's weights,
its dtype and device kind, and the reference crops' pixels (so changed reference files, another model or
other settings never hit a stale entry). The folder is bounded: the least recently used entries are
deleted once it grows past `REFFACE_PEOPLE_CACHE_GB` (default 4); deleting the folder clears it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save

from refface.files import atomic_output
from refface.models.cache_kv import ReferenceKV
from refface.models.composite_context import ReferenceFeatures
from refface.restoration.people import Person

FORMAT = 1
DEFAULT_LIMIT_GB = 4.0
# Encoded people kept in memory by one store (a server sees many people over its life).
MEMORY_ENTRIES = 16
# Values sampled from each weight tensor for the model's fingerprint: any training changes all of them.
SAMPLES_PER_TENSOR = 64


def model_fingerprint(pipe) -> str:
    """A digest of the pipeline's weights that is cheap (a strided sample of every tensor) and deterministic."""
    digest = hashlib.sha256(type(pipe).__name__.encode())
    for component, module in sorted(pipe.components.items()):
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            sample = flat[::step][:SAMPLES_PER_TENSOR].to("cpu", torch.float32).numpy()
            digest.update(f"{component}.{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.tobytes())
    return digest.hexdigest()


def _to_tensors(encoded: ReferenceKV | ReferenceFeatures) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if isinstance(encoded, ReferenceKV):
        tensors = {f"k.{name}": t for name, t in encoded.keys.items()}
        tensors.update({f"v.{name}": t for name, t in encoded.values.items()})
        meta = {"kind": "cachekv", "num_references": str(encoded.num_references), "copies": str(encoded.copies)}
        return tensors, meta
    return {"identity": encoded.identity, "facial": encoded.facial}, {"kind": "features"}


def _from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> ReferenceKV | ReferenceFeatures:
    if meta.get("kind") == "cachekv":
        keys = {name[2:]: t for name, t in tensors.items() if name.startswith("k.")}
        values = {name[2:]: t for name, t in tensors.items() if name.startswith("v.")}
        return ReferenceKV(keys, values, int(meta["num_references"]), int(meta["copies"]))
    return ReferenceFeatures(tensors["identity"], tensors["facial"])


def cache_limit_bytes() -> int:
    """REFFACE_PEOPLE_CACHE_GB (default 4) in bytes; 0 turns the persistent cache off."""
    value = os.environ.get("REFFACE_PEOPLE_CACHE_GB", "")
    try:
        gigabytes = float(value) if value else DEFAULT_LIMIT_GB
    except ValueError:
        gigabytes = DEFAULT_LIMIT_GB
    return int(max(gigabytes, 0.0) * 2**30)


class ReferenceStore:
    """`encoded(person)`: the person's references through `pipe.encode_references`, at most once per person.

    `folder` (default none: memory only) persists them between runs; `encodings` counts the real encodings.
    """

    def __init__(self, pipe, folder: Path | None = None, limit_bytes: int | None = None) -> None:
        self.pipe = pipe
        self.folder = folder
        self.limit_bytes = cache_limit_bytes() if limit_bytes is None else limit_bytes
        self.encodings = 0
        self.loaded = 0
        self._memory: OrderedDict[str, object] = OrderedDict()
        self._fingerprint: str | None = None

    def _key(self, person: Person) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.pipe)
        device = torch.device(self.pipe.device).type
        settings = {"format": FORMAT, "model": self._fingerprint, "dtype": str(self.pipe.dtype), "device": device,
                    "speedups": bool(getattr(self.pipe, "_speedups", False))}  # fmt: skip
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for crop in person.references:
            digest.update(str(crop.shape).encode())
            digest.update(np.ascontiguousarray(crop).tobytes())
        return digest.hexdigest()[:40]

    def encoded(self, person: Person | None):
        """The pipeline's encoded references of `person` (None or no references: None, restore without)."""
        if person is None or not person.references:
            return None
        key = self._key(person)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        encoded = self._load(key) if self._persistent else None
        if encoded is None:
            encoded = self.pipe.encode_references([Image.fromarray(crop) for crop in person.references])
            self.encodings += 1
            if self._persistent:
                self._save(key, encoded)
        self._memory[key] = encoded
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)
        return encoded

    @property
    def _persistent(self) -> bool:
        return self.folder is not None and self.limit_bytes > 0

    def _load(self, key: str):
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as opened:
                meta = opened.metadata() or {}
            encoded = _from_tensors(load_file(path, device=str(self.pipe.device)), meta)
        except Exception:  # a damaged or foreign file is only a cache miss
            path.unlink(missing_ok=True)
            return None
        os.utime(path)
        self.loaded += 1
        return encoded

    def _save(self, key: str, encoded) -> None:
        tensors, meta = _to_tensors(encoded)
        target = self.folder / f"{key}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as stream:
            stream.write(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta))
        self._bound()

    def _bound(self) -> None:
        """Delete the least recently used entries until the folder is within its limit."""
        entries = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for path in entries[:-1]:  # never the entry just written
            if total <= self.limit_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)

    def describe(self) -> str:
        """Where the encodings live and how to clear them, for the user."""
        if not self._persistent:
            return f"references encoded {self.encodings} time(s) (not kept between runs)."
        return (
            f"references encoded {self.encodings} time(s), {self.loaded} loaded from {self.folder} (kept up to "
            f"{self.limit_bytes / 2**30:.1f} GB, REFFACE_PEOPLE_CACHE_GB; delete the folder to clear it)."
        )
