"""Time the blind baselines (CodeFormer, GFPGAN v1.4, RestoreFormer++) per face, with their released layouts.

Each baseline runs in a fresh child process (so its peak resident memory is its own) on checkpoints of the
released layouts with random weights (the time does not depend on the weights; nothing is downloaded): the file
is loaded, one face is restored untimed, then `--faces` faces are restored one call each and the median is
reported. The crops are the astronaut's face from scikit-image, degraded, at 512x512.

    python benchmarks/bench_baselines.py                       # all three, 3 faces each, on the CPU
    python benchmarks/bench_baselines.py --faces 10 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("codeformer", "gfpgan", "restoreformer++")


def _child(name: str, faces: int, device: str, dtype: str) -> dict:
    import torch
    from PIL import Image

    from refface.data.demo_photos import astronaut, degrade
    from refface.devices import torch_dtype
    from refface.pipelines.blind import load_blind

    sys.path.insert(0, str(ROOT))  # the release-layout checkpoint builders live with the tests
    from tests.pipelines.blind_checkpoints import SAVERS

    crop = Image.fromarray(degrade(astronaut()[:300, 100:400])).resize((512, 512))
    with tempfile.TemporaryDirectory() as folder:
        path = SAVERS[name](Path(folder) / f"{name}.pth")
        started = time.perf_counter()
        pipe = load_blind(name, path).to(device=device, dtype=torch_dtype(dtype))
        loaded = time.perf_counter() - started
    pipe([crop])  # untimed: the first call sets up the kernels
    times = []
    for _ in range(faces):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        pipe([crop])
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1e6  # fmt: skip
    return {"name": name, "load_s": loaded, "face_s": statistics.median(times), "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=3, help="timed faces per baseline (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--only", choices=NAMES, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.only:
        print(json.dumps(_child(args.only, args.faces, args.device, args.dtype)))
        return
    rows = []
    for name in NAMES:
        command = [sys.executable, __file__, "--only", name, "--faces", str(args.faces), "--device", args.device,
                   "--dtype", args.dtype]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    memory = "peak GPU GB" if args.device == "cuda" else "peak RSS GB"
    print(f"| baseline | load s | s per face | {memory} |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['load_s']:.1f} | {row['face_s']:.2f} | {row['peak_gb']:.2f} |")


if __name__ == "__main__":
    main()
