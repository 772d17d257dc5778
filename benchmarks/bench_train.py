"""Time training steps of each stage: the tiny presets on a CPU, the paper's sizes on a GPU.

Run from the repository root: `python benchmarks/bench_train.py [--size tiny|paper] [--steps 5]`.
Data comes from the synthetic identity task at the stage's image size, rendered up front so only
the model's step is timed; weights are random (the step time does not depend on them); the identity loss uses a
random-weight ArcFace R50 and the VQGAN's perceptual loss a random-weight LPIPS-VGG, so nothing is
downloaded. Prints one JSON line per configuration: median seconds per optimiser step (after two
warm-up steps) and, on CUDA, the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refface.face.arcface import ArcFaceEmbedder, iresnet50  # noqa: E402
from refface.models.lpips import random_lpips  # noqa: E402
from refface.train.batches import batch_stream  # noqa: E402
from refface.train.config import load_config  # noqa: E402
from refface.train.trainer import Trainer  # noqa: E402

PAPER = {
    # preset, overrides: the paper's batch sizes; the `released` architecture at 512 px
    "vqgan": ("vqgan", {}),
    "ldm": ("ldm", {}),
    "refldm": ("refldm", {}),
}
TINY = {"tiny-vqgan": ("tiny-vqgan", {}), "tiny-ldm": ("tiny-ldm", {}), "tiny-refldm": ("tiny-refldm", {})}


def _offline_weights() -> None:
    """Random-weight stand-ins for the downloaded ArcFace and LPIPS (same architectures, same cost)."""
    import refface.face.arcface as arcface
    import refface.models.lpips as lpips

    arcface.default_arcface = lambda device=None: ArcFaceEmbedder(iresnet50())
    lpips.default_lpips = lambda device=None, directory=None: random_lpips(0)


def measure(name: str, preset: str, overrides: dict, steps: int, precision: str, checkpointing: bool) -> dict:
    values = {
        "data.kind": "synthetic",
        "data.identities": 64,
        "data.photos_per_identity": 4,
        "data.workers": 4 if torch.cuda.is_available() else 0,
        "run.mixed_precision": precision,
        "run.gradient_checkpointing": checkpointing,
        "run.validation_cases": 0,
        **overrides,
    }
    config = load_config(preset, values)
    config = replace(config, run=replace(config.run, max_steps=10**9, checkpoint_every=10**9, sample_every=10**9))
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, Path(folder) / "run", progress=False)
        stream = batch_stream(trainer.train_set, config.run.batch_size, 0, 1, 0, workers=config.data.workers)
        # batches are made up front: this times the model's step, not the synthetic data's rendering
        batches = iter([next(stream) for _ in range((steps + 2) * config.run.gradient_accumulation)])
        times = []
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for index in range(steps + 2):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(batches)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if index >= 2:
                times.append(time.perf_counter() - start)
    record = {
        "stage": name,
        "batch": config.run.batch_size,
        "size": config.data.size,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "seconds_per_step": round(statistics.median(times), 4),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        record["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", nargs="+", default=["no"], help="no / bf16 / fp16 (several: one line each)")
    parser.add_argument("--checkpointing", action="store_true", help="also time with gradient checkpointing")
    parser.add_argument("--stages", nargs="+", help="only these stages")
    args = parser.parse_args()
    _offline_weights()  # the stage builder imports these loaders when it runs, so it gets the stand-ins
    table = PAPER if args.size == "paper" else TINY
    for name, (preset, overrides) in table.items():
        if args.stages and name not in args.stages:
            continue
        for precision in args.precision:
            for checkpointing in (False, True) if args.checkpointing else (False,):
                print(json.dumps(measure(name, preset, overrides, args.steps, precision, checkpointing)), flush=True)


if __name__ == "__main__":
    main()
