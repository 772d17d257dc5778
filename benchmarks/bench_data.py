"""Time the data pipeline: LQ synthesis per preset, the training item, and the FFHQ-Ref builder at full scale.

Run from the repository root: `python benchmarks/bench_data.py [--images 70000]`. The builder runs on
planted embeddings shaped like FFHQ's (70,000 x 512; about 20,000 images in identities of 2-6), in a
child process so its peak memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import timed  # noqa: E402
from tests.face.photos import astronaut  # noqa: E402

from refface.data.degradations import PRESETS, degrade  # noqa: E402
from refface.data.reference_csv import ReferenceEntry  # noqa: E402
from refface.data.training_set import ReferenceFaceDataset  # noqa: E402


def planted_embeddings(count: int, dims: int = 512, seed: int = 0) -> np.ndarray:
    """FFHQ-like structure: about 20,000 of `count` images (scaled) in identities of 2-6, the rest alone."""
    rng = np.random.default_rng(seed)
    rows, grouped = [], int(count * 20_000 / 70_000)
    while len(rows) < grouped:
        centre = rng.normal(size=dims)
        rows.extend(centre + rng.normal(scale=0.45, size=dims) for _ in range(int(rng.integers(2, 7))))
    rows = rows[:grouped]
    rows.extend(rng.normal(size=(count - len(rows), dims)))
    return np.asarray(rows, dtype=np.float32)[rng.permutation(count)]


def builder_child(count: int) -> dict:
    from refface.data.ffhq_ref import build_reference_dataset

    embeddings = planted_embeddings(count)
    names = [f"{i:05d}.png" for i in range(count)]
    start = time.perf_counter()
    dataset = build_reference_dataset(names, embeddings)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    targets = sum(len(entries) for entries in dataset.references.values())
    return {"images": count, "seconds": seconds, "peak_gib": peak, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=70_000, help="builder size (default FFHQ's 70,000)")
    parser.add_argument("--repeats", type=int, default=20, help="samples per degradation timing")
    parser.add_argument("--builder-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.builder_child:
        print(json.dumps(builder_child(args.builder_child)))
        return

    face = astronaut()
    rows = []
    for name in PRESETS:
        counter = iter(range(10**9))
        seconds = timed(lambda name=name, counter=counter: degrade(face, name, 0, next(counter)), args.repeats)
        rows.append((f"degrade 512x512, preset {name}, per image", f"{seconds * 1000:.1f} ms"))
    with tempfile.TemporaryDirectory() as folder:
        for i in range(6):
            Image.fromarray(np.roll(face, 7 * i, axis=1)).save(Path(folder) / f"{i}.png")
        entries = [ReferenceEntry("0.png", tuple(f"{i}.png" for i in range(1, 6)))]
        dataset = ReferenceFaceDataset(entries, folder, "train", num_refs=5)
        counter = iter(range(10**9))

        def item():
            dataset.set_epoch(next(counter))
            return dataset[0]

        seconds = timed(item, max(args.repeats // 4, 3))
        rows.append(("training item (GT + train LQ + 5 augmented refs, 512 px)", f"{seconds * 1000:.0f} ms"))
    child = subprocess.run(
        [sys.executable, __file__, "--builder-child", str(args.images)], capture_output=True, text=True, check=True
    )
    built = json.loads(child.stdout.strip().splitlines()[-1])
    rows.append(
        (
            f"FFHQ-Ref builder, {built['images']:,} x 512 embeddings ({built['targets']:,} targets)",
            f"{built['seconds']:.0f} s, peak {built['peak_gib']:.2f} GiB",
        )
    )
    print("| operation | time |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
