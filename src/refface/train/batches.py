"""An endless, resumable stream of training batches, sharded over processes.

Each epoch's order is a permutation drawn from (seed, epoch) alone, cut into per-process shards
and batches; a position in the stream is just the number of batches taken. Resuming at position
p starts the loader at that batch of that epoch directly (no batches are loaded to be skipped),
and the dataset's items are themselves keyed by (seed, epoch, index), so a resumed run sees
exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from refface.errors import RefFaceError


def epoch_batches(length: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's batches of one epoch (the incomplete tail is dropped so every process gets the same count)."""
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    per_step = batch_size * world_size
    steps = length // per_step
    return [
        order[step * per_step + rank * batch_size : step * per_step + (rank + 1) * batch_size] for step in range(steps)
    ]


def batch_stream(
    dataset: Dataset,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    start: int = 0,
    workers: int = 0,
) -> Iterator[dict]:
    """Batches from position `start` on, forever; calls `dataset.set_epoch` before each epoch if it has one."""
    per_epoch = len(dataset) // (batch_size * world_size)
    if per_epoch == 0:
        raise RefFaceError(
            f"The training set has {len(dataset)} items, fewer than one batch of {batch_size} "
            f"on each of {world_size} processes; lower run.batch_size or add data."
        )
    epoch, offset = divmod(start, per_epoch)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), batch_size, rank, world_size, seed, epoch)[offset:]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, persistent_workers=False)
        yield from loader
        epoch, offset = epoch + 1, 0
