"""Torch datasets over a reference CSV or an image pool: ground truth, its LQ version and N references per item.

Every random choice of an item (degradation, reference order, augmentation, flip) comes from
(seed, epoch, index), so a training run is reproducible whatever the number of data-loader
workers; call `set_epoch` each epoch (as with DistributedSampler) to draw new samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from refface.data.augment import PAPER_AUGMENTATION, ReferenceAugmentation, jitter_colours
from refface.data.degradations import Degradation, degradation_by_name
from refface.data.degrade_folder import list_images
from refface.data.embed import check_images_exist
from refface.data.reference_csv import ReferenceEntry, read_reference_csv
from refface.errors import RefFaceError, require_file
from refface.imaging import load_image, resize_square


def read_square(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB at size x size."""
    return resize_square(np.asarray(load_image(path)), size)


def to_signed_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float [3, H, W] in [-1, 1], the models' input range."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def pool_entries(images_dir: str | Path, images_list: str | Path | None = None) -> list[ReferenceEntry]:
    """An image pool without references (the FFHQ images the VQGAN and the LQ-only LDM train on): the images
    named in `images_list` (one path relative to `images_dir` per line), or every image below `images_dir`."""
    if images_list is None:
        names = list_images(Path(images_dir), recursive=True)
    else:
        listed = require_file(images_list, "image list")
        names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise RefFaceError(f"The image list {listed} names no images.")
    return [ReferenceEntry(name, ()) for name in names]


def pick_references(references: Sequence[str], count: int, rng: np.random.Generator, shuffle: bool) -> list[str]:
    """`count` reference names: shuffled, then repeated when the image has fewer (as the official loader)."""
    chosen = list(references)
    if shuffle:
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    return (chosen * math.ceil(count / len(chosen)))[:count]


class ReferenceFaceDataset(Dataset):
    """Items {"gt", "lq": [3, H, W], "refs": [N, 3, H, W] (all in [-1, 1]), "name", "index"}.

    `lq_dir` reads fixed LQ images (a benchmark set, same file stem as the GT, saved as PNG);
    otherwise LQ images are synthesised on the fly with `degradation` (a preset name or object).
    `num_refs` 0 reads no references ("refs" is [0, 3, H, W]): the stages that train without them, on a pool
    of images (`pool_entries`) or a reference list's targets.
    """

    def __init__(
        self,
        references: str | Path | Sequence[ReferenceEntry],
        images_dir: str | Path,
        degradation: str | Degradation = "train",
        num_refs: int = 5,
        size: int = 512,
        flip: bool = True,
        shuffle_refs: bool = True,
        augmentation: ReferenceAugmentation | None = PAPER_AUGMENTATION,
        lq_dir: str | Path | None = None,
        seed: int = 0,
        color_jitter: float = 0.0,
    ) -> None:
        self.entries = list(read_reference_csv(references) if isinstance(references, (str, Path)) else references)
        if not self.entries:
            raise RefFaceError(f"The reference list {references} has no images.")
        if num_refs < 0:
            raise RefFaceError(f"The number of references per item must be at least 0, got {num_refs}.")
        if num_refs > 0 and (lonely := next((e.gt_image for e in self.entries if not e.ref_images), None)):
            raise RefFaceError(f"The reference list {references} gives {lonely} no references.")
        self.images_dir = Path(images_dir)
        names = {entry.gt_image for entry in self.entries}
        if num_refs > 0:
            names |= {r for entry in self.entries for r in entry.ref_images}
        check_images_exist(sorted(names), self.images_dir)
        self.lq_dir = Path(lq_dir) if lq_dir is not None else None
        if self.lq_dir is not None:
            check_images_exist([self.lq_name(e) for e in self.entries], self.lq_dir)
        self.degradation = degradation_by_name(degradation) if isinstance(degradation, str) else degradation
        self.num_refs, self.size, self.flip, self.shuffle_refs = num_refs, size, flip, shuffle_refs
        self.augmentation = augmentation
        self.color_jitter = color_jitter
        self.seed, self.epoch = seed, 0

    @staticmethod
    def lq_name(entry: ReferenceEntry) -> str:
        return f"{Path(entry.gt_image).stem}.png"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        gt = read_square(self.images_dir / entry.gt_image, self.size)
        if self.color_jitter > 0:
            gt = jitter_colours(gt, self.color_jitter, int(rng.integers(2**62)))
        if self.lq_dir is not None:
            lq = read_square(self.lq_dir / self.lq_name(entry), self.size)
        else:
            lq = self.degradation(gt, rng).image
        if self.num_refs == 0:
            refs = torch.zeros(0, 3, self.size, self.size)
        else:
            names = pick_references(entry.ref_images, self.num_refs, rng, self.shuffle_refs)
            refs = torch.stack([to_signed_tensor(read_square(self.images_dir / n, self.size)) for n in names])
            if self.augmentation is not None:
                refs = self.augmentation((refs + 1.0) / 2.0, int(rng.integers(2**62))) * 2.0 - 1.0
        item = {"gt": to_signed_tensor(gt), "lq": to_signed_tensor(lq), "refs": refs}
        if self.flip and rng.random() < 0.5:
            item = {key: value.flip(-1) for key, value in item.items()}
        return {**item, "name": entry.gt_image, "index": index}
