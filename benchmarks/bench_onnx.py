"""ONNX export at full size: per-graph onnxruntime-vs-PyTorch differences and step times against refface.

With random weights in the released architecture (timing and float agreement do not depend on the weights;
the VQ codebook is drawn N(0, 1), spread out like a trained one) it
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
from refface.models.cache_kv import ReferenceBatch
from refface.models.unet import denoise_copies
from refface.models.vq import encode_unquantized
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.schedule import sampling_scheduler
from refface.speedups import kept_transformed_weights

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


def interleaved_step_times(
    pipe: RefLDMPipeline, restorer: OnnxRestorer, lq: np.ndarray, refs: np.ndarray, steps: int
) -> tuple[list[float], list[float]]:
    """Wall time of each guided DDIM step both ways, alternating, so load from other processes hits both alike.

    refface: its exact mode's step as its sampling loop runs it (the CPU speed-ups on, transformed weights
    kept for the loop, the layers before the first attention shared by the two guidance branches, the null
    references attended once with a log-count bias). onnxruntime: `onnx_sampler`'s step, one unet.onnx call
    for the batch [null, references] and the numpy DDIM update.
    """
    lq_t = torch.from_numpy(lq).permute(0, 3, 1, 2).float() / 127.5 - 1
    refs_t = torch.from_numpy(refs).permute(0, 3, 1, 2).float() / 127.5 - 1
    cache = pipe.encode_references(refs_t)
    context = ReferenceBatch(((1, pipe.null_references(cache.num_references)), (1, cache)))
    lq_latent = encode_unquantized(pipe.vqvae, lq_t)
    scheduler = sampling_scheduler(pipe.scheduler, REFLDM_OPTIONS.with_changes(steps=steps))
    x = pipe.initial_noise(1, 0)

    keys_values = restorer.encode_references(refs)
    null = restorer.null_references(restorer.reference_count(keys_values))
    onnx_context = {name: np.concatenate([null[name], keys_values[name]]) for name in restorer.kv_names}
    onnx_lq = restorer.encode(to_model_input(lq, restorer.image_size))
    schedule = Schedule(restorer.alphas_cumprod, steps)
    latents = x.numpy()

    ours, theirs = [], []
    with kept_transformed_weights():
        for t in ddim_timesteps(schedule.total, steps, "uniform_trailing"):
            start = time.perf_counter()
            eps = denoise_copies(pipe.unet, torch.cat([x, lq_latent], dim=1), torch.tensor(t), context, copies=2)
            eps_null, eps_ref = eps.chunk(2)
            x = scheduler.step(eps_null + 1.5 * (eps_ref - eps_null), torch.tensor(t), x).prev_sample
            ours.append(time.perf_counter() - start)

            start = time.perf_counter()
            sample = np.concatenate([np.concatenate([latents, latents]), np.concatenate([onnx_lq, onnx_lq])], axis=1)
            eps = restorer.denoise(sample, int(t), onnx_context)
            latents = schedule.step(eps[:1] + np.float32(1.5) * (eps[1:] - eps[:1]), int(t), latents)
            theirs.append(time.perf_counter() - start)
    return ours[1:], theirs[1:]  # the first step of each warms caches up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="released")
    parser.add_argument("--refs", type=int, default=1, help="references for the step times and the restoration")
    parser.add_argument("--timed-steps", type=int, default=4, help="guided steps timed per runtime (median)")
    parser.add_argument("--restore-steps", type=int, default=3, help="DDIM steps of the whole-restoration check")
    parser.add_argument(
        "--folder", help="export here and keep it (one already there is reused; default: a temporary folder)"
    )
    parser.add_argument("--threads", type=int, help="threads for both runtimes (default: PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = args.threads or torch.get_num_threads()

    torch.manual_seed(0)
    pipe = RefLDMPipeline.from_architecture(ARCHES[args.arch]()).eval_mode()
    with torch.no_grad():
        # A trained codebook's vectors are spread out; diffusers' initialisation U(-1/n, 1/n) puts all 8192 within
        # 1e-4 of each other, where the decoder's nearest-code search is a float-rounding tie at every position.
        pipe.vqvae.quantize.embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    size = pipe.image_size
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores; {cpu_flags()})")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads each")
    print(f"architecture: {args.arch} ({size} px), random weights, fp32\n")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch) / "onnx"
        if args.folder and (folder / "refface_onnx.json").is_file():
            print(f"reusing the export in {folder} (same seed, same random weights)")
        else:
            start = time.perf_counter()
            export_onnx(pipe, folder, overwrite=True)
            print(f"export: {time.perf_counter() - start:.0f} s")
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in sorted(folder.glob("*.onnx")))
        print(f"files: {sizes}\n")

        # batch 1, as hosts run it (PyTorch's own VQ decoder is less exact at batch 2: docs/onnx.md)
        for name, difference in verify_export(pipe, folder, batch=1, references=2).items():
            print(f"max abs difference, onnxruntime vs PyTorch, {name}: {difference:.2e}")

        generator = torch.Generator().manual_seed(1)
        lq = torch.randint(0, 256, (1, size, size, 3), generator=generator, dtype=torch.uint8).numpy()
        refs = torch.randint(0, 256, (args.refs, size, size, 3), generator=generator, dtype=torch.uint8).numpy()

        def as_tensor(images: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

        restorer = OnnxRestorer(folder, threads=args.threads)
        print(f"\nload average before timing: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        with torch.no_grad():
            ours, theirs = interleaved_step_times(pipe, restorer, lq, refs, args.timed_steps + 1)
        print(f"load average after timing: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
        print(
            f"guided step ({args.refs} reference(s), median of {args.timed_steps}, alternating): refface exact mode "
            f"{ours_s:.3f} s, onnxruntime {theirs_s:.3f} s (onnxruntime / refface = {theirs_s / ours_s:.2f})"
        )
        print(f"  refface steps: {', '.join(f'{t:.2f}' for t in ours)}")
        print(f"  onnxruntime steps: {', '.join(f'{t:.2f}' for t in theirs)}")

        noise = pipe.initial_noise(1, 7)
        want = pipe(as_tensor(lq), as_tensor(refs), num_inference_steps=args.restore_steps, noise=noise, progress=False)
        got = restorer.restore(lq, list(refs), steps=args.restore_steps, noise=noise.numpy())
        levels = np.abs(got.astype(int) - np.asarray(want.images[0], dtype=int)[None]).max()
        print(f"whole restoration ({args.restore_steps} steps): max difference {levels} 8-bit level(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
