"""ONNX export at full size: per-graph onnxruntime-vs-PyTorch differences and step times against refface.

With random weights in the released architecture (timing and float agreement do not depend on the weights) it
exports the four graphs, runs each in onnxruntime on random inputs against refface's PyTorch path (fp32, CPU,
`refface.export.verify`), times one guided sampling step both ways in this one process (refface's exact mode
with its default speed-ups, and `onnx_sampler`'s step: one unet.onnx call for both guidance branches plus the
numpy DDIM update), and restores one random face both ways from the same noise, reporting the largest
difference in 8-bit levels.

    python benchmarks/bench_onnx.py                      # released architecture, 1 reference, 4 timed steps
    python benchmarks/bench_onnx.py --refs 3 --timed-steps 6
    python benchmarks/bench_onnx.py --arch tiny          # seconds, a smoke check
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from refface import RefLDMPipeline, released_architecture, tiny_architecture
from refface.export.onnx_export import export_onnx
from refface.export.onnx_sampler import OnnxRestorer, Schedule, ddim_timesteps, to_model_input
from refface.export.verify import verify_export

ARCHES = {"released": released_architecture, "tiny": tiny_architecture}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return ", ".join(name for name in ("avx2", "avx512f", "amx_tile") if name in flags) or "none of avx2/avx512f/amx"


def refface_step_times(pipe: RefLDMPipeline, lq: torch.Tensor, refs: torch.Tensor, steps: int) -> list[float]:
    """Wall time of each guided step of refface's exact mode (the pipeline's own loop, step callback stamps)."""
    cache = pipe.encode_references(refs)
    pipe.null_references(cache.num_references)  # per model, made before the clock as in a served model
    stamps: list[float] = []
    pipe(
        lq,
        cache,
        num_inference_steps=steps,
        progress=False,
        seed=0,
        step_callback=lambda *_: stamps.append(time.perf_counter()),
    )
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def onnx_step_times(restorer: OnnxRestorer, lq: np.ndarray, refs: np.ndarray, steps: int) -> list[float]:
    """Wall time of each guided step of the numpy sampler: one unet.onnx call (both branches) and the update."""
    keys_values = restorer.encode_references(refs)
    count = restorer.reference_count(keys_values)
    null = restorer.null_references(count)
    context = {name: np.concatenate([null[name], keys_values[name]]) for name in restorer.kv_names}
    lq_latent = restorer.encode(to_model_input(lq, restorer.image_size))
    schedule = Schedule(restorer.alphas_cumprod, steps)
    latents = np.random.default_rng(0).standard_normal(lq_latent.shape, dtype=np.float32)
    times = []
    for t in ddim_timesteps(schedule.total, steps, "uniform_trailing"):
        start = time.perf_counter()
        sample = np.concatenate([np.concatenate([latents, latents]), np.concatenate([lq_latent, lq_latent])], axis=1)
        eps = restorer.denoise(sample, int(t), context)
        eps = eps[:1] + np.float32(1.5) * (eps[1:] - eps[:1])
        latents = schedule.step(eps, int(t), latents)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="released")
    parser.add_argument("--refs", type=int, default=1, help="references for the step times and the restoration")
    parser.add_argument("--timed-steps", type=int, default=4, help="guided steps timed per runtime (median)")
    parser.add_argument("--restore-steps", type=int, default=3, help="DDIM steps of the whole-restoration check")
    parser.add_argument("--folder", help="export here (default: a temporary folder, removed at the end)")
    args = parser.parse_args()

    torch.manual_seed(0)
    pipe = RefLDMPipeline.from_architecture(ARCHES[args.arch]()).eval_mode()
    size = pipe.image_size
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores; {cpu_flags()})")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
    print(f"architecture: {args.arch} ({size} px), random weights, fp32\n")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch) / "onnx"
        start = time.perf_counter()
        export_onnx(pipe, folder, overwrite=True)
        print(f"export: {time.perf_counter() - start:.0f} s")
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in sorted(folder.glob("*.onnx")))
        print(f"files: {sizes}\n")

        for name, difference in verify_export(pipe, folder, batch=2, references=2).items():
            print(f"max abs difference, onnxruntime vs PyTorch, {name}: {difference:.2e}")

        generator = torch.Generator().manual_seed(1)
        lq = torch.randint(0, 256, (1, size, size, 3), generator=generator, dtype=torch.uint8).numpy()
        refs = torch.randint(0, 256, (args.refs, size, size, 3), generator=generator, dtype=torch.uint8).numpy()

        def as_tensor(images: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

        restorer = OnnxRestorer(folder)
        timed = args.timed_steps + 1  # the first step is not timed (it warms caches up)
        with torch.no_grad():
            ours = statistics.median(refface_step_times(pipe, as_tensor(lq), as_tensor(refs), timed))
        ort = statistics.median(onnx_step_times(restorer, lq, refs, timed))
        print(
            f"\nguided step ({args.refs} reference(s), batch [null, references], median of {args.timed_steps}): "
            f"refface exact mode {ours:.3f} s, onnxruntime {ort:.3f} s (onnxruntime / refface = {ort / ours:.2f})"
        )

        noise = pipe.initial_noise(1, 7)
        want = pipe(as_tensor(lq), as_tensor(refs), num_inference_steps=args.restore_steps, noise=noise, progress=False)
        got = restorer.restore(lq, list(refs), steps=args.restore_steps, noise=noise.numpy())
        levels = np.abs(got.astype(int) - np.asarray(want.images[0], dtype=int)[None]).max()
        print(f"whole restoration ({args.restore_steps} steps): max difference {levels} 8-bit level(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
