"""Time ReF-LDM inference phases and peak memory: CacheKV versus spatial concatenation.

Each configuration runs in a fresh child process so that its peak resident memory (ru_maxrss) is
its own. The weights are random (timing does not depend on them); the architecture is the
released one unless --arch tiny. Per-step times are the median over --timed-steps guided steps;
the 50-step total is composed from the measured phases:
    total = encode refs + reference pass + encode LQ + steps x step + decode

    python benchmarks/bench_inference.py                       # 1 and 5 refs, both variants
    python benchmarks/bench_inference.py --refs 5 --variants cachekv --timed-steps 5
    python benchmarks/bench_inference.py --arch tiny --timed-steps 2   # seconds, for a smoke check

With --compare-official it instead restores one photo end to end twice, in two fresh processes with the
same random weights and inputs: refface's exact mode, and the official code's way of doing the same work
(`benchmarks/official_path.py`: einsum attention, per-photo null references, every null copy attended).
refface's per-model setup (the null-reference cache, made once per model as the weights are loaded once)
happens before the clock starts; the official path makes its null references for every photo, as the
official code does. Before the last line it prints the FLOP floor (`benchmarks/flop_floor.py`: the
official work's counted FLOPs at this machine's fp32 matrix-multiply rate) and each path's time as a
multiple of it. It ends with one line, ratios over the whole restoration (time official/ours, memory ours/official):
    speedup_vs_official=X.XX peak_mem_ratio=Y.YY max_abs_diff=Z

    python benchmarks/bench_inference.py --compare-official --refs 5 --steps 50 [--fast] [--device cuda --dtype bf16]

Both refface rows also time album mode: a further photo of the same person with the reference cache
reused. --fast adds refface's fast mode (DPM-Solver++, 20 steps) and its difference to exact mode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from refface import RefLDMPipeline, released_architecture, tiny_architecture
from refface.models.unet import denoise
from refface.models.vq import decode_quantized, encode_unquantized
from refface.models.winograd import kept_transformed_weights
from refface.pipelines.schedule import FAST_STEPS, sampling_scheduler

ARCHES = {"released": released_architecture, "tiny": tiny_architecture}
FAST_MODE = {"num_inference_steps": FAST_STEPS, "solver": "dpm++"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def spatial_concat_eps(pipe: RefLDMPipeline, x_in: torch.Tensor, refs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The spatial-concatenation baseline: [target | ref_1 | ... | ref_N] along the width, every step.

    x_in: [B, 2C, h, w]; refs: [B, N, C, h, w] (zeros for the null branch of guidance).
    """
    padded = torch.cat([refs, torch.zeros_like(refs)], dim=2)  # zero LQ channels, as CacheKV pads
    wide_refs = torch.cat(padded.unbind(dim=1), dim=-1)
    out = denoise(pipe.unet, torch.cat([x_in, wide_refs], dim=-1), t, None)
    return out[..., : x_in.shape[-1]]


def run_child(variant: str, refs: int, arch_name: str, timed_steps: int) -> dict:
    torch.manual_seed(0)
    pipe = RefLDMPipeline.from_architecture(ARCHES[arch_name]()).eval_mode()
    size = pipe.image_size
    lq = torch.rand(1, 3, size, size) * 2 - 1
    ref_images = torch.rand(refs, 3, size, size) * 2 - 1
    result: dict = {"variant": variant, "refs": refs, "threads": torch.get_num_threads()}
    with torch.no_grad():
        wide = torch.cat(list(ref_images), dim=-1)[None]
        ref_latent, result["encode_refs_s"] = _timed(lambda: encode_unquantized(pipe.vqvae, wide))
        per_ref = torch.cat(ref_latent.split(pipe.latent_size, dim=-1), dim=0)
        lq_latent, result["encode_lq_s"] = _timed(lambda: encode_unquantized(pipe.vqvae, lq))
        x = torch.randn(1, pipe.latent_channels, pipe.latent_size, pipe.latent_size)
        step_times = []
        if variant == "cachekv":
            cache, result["reference_pass_s"] = _timed(lambda: pipe._reference_pass(per_ref))
            _, result["null_cache_once_per_model_s"] = _timed(lambda: pipe.null_references(refs))
            stamps = []
            pipe(
                lq,
                cache,
                num_inference_steps=timed_steps,
                progress=False,
                noise=x,
                step_callback=lambda *_: stamps.append(time.perf_counter()),
            )
            step_times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        else:
            result["reference_pass_s"] = 0.0
            scheduler = sampling_scheduler(pipe.scheduler, timed_steps, "uniform_trailing")
            with kept_transformed_weights():  # as the pipeline's own sampling loop
                for t in scheduler.timesteps:
                    start = time.perf_counter()
                    x_in = torch.cat([x, lq_latent], dim=1)
                    refs_batch = torch.stack([torch.zeros_like(per_ref), per_ref])  # [null, references]
                    eps_null, eps_ref = spatial_concat_eps(pipe, torch.cat([x_in, x_in]), refs_batch, t).chunk(2)
                    eps = eps_null + 1.5 * (eps_ref - eps_null)
                    x = scheduler.step(eps, t, x).prev_sample
                    step_times.append(time.perf_counter() - start)
            step_times = step_times[1:] or step_times
        _, result["decode_s"] = _timed(lambda: decode_quantized(pipe.vqvae, x))
    result["step_s"] = statistics.median(step_times)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return result


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_restoration(path: str, refs: int, arch_name: str, steps: int, output: str, device: str, dtype: str) -> dict:
    """One whole restoration by `path` (official | ours | fast), timed; the image is saved to `output` for the diff.

    The official path always runs in fp32 (the reference implementation); `dtype` applies to refface's paths.
    Peak memory is the process's resident set on a CPU and PyTorch's peak allocation on CUDA.
    """
    from official_path import restore_like_official, use_official_attention

    torch.manual_seed(0)
    target = torch.device(device)
    pipe = RefLDMPipeline.from_architecture(ARCHES[arch_name]()).eval_mode()
    pipe.to(device=target, dtype=torch.float32 if path == "official" else DTYPES[dtype])
    generator = torch.Generator().manual_seed(1)
    size = pipe.image_size
    lq = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    references = torch.rand(refs, 3, size, size, generator=generator) * 2 - 1
    noise = pipe.initial_noise(1, 2024)
    if path != "official":  # per-model setup, like loading the weights: refface makes the null cache once per model
        pipe.null_references(refs)
    start = _clock(target)
    if path == "official":
        moved = (t.to(target) for t in (lq, references, noise))
        image = restore_like_official(use_official_attention(pipe), *moved, steps, 1.5)
    else:
        sampling = {"num_inference_steps": steps} if path == "ours" else FAST_MODE
        image = pipe(lq, references, noise=noise, progress=False, **sampling).pixels
    elapsed = _clock(target) - start
    if target.type == "cuda":
        peak = torch.cuda.max_memory_allocated(target) / 1024**3
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    torch.save(image.float().cpu(), output)
    row = {"path": path, "refs": refs, "seconds": elapsed, "peak_gb": peak}
    if path != "official":  # album mode: a further photo of the same person, the reference cache reused
        person = pipe.encode_references(references)
        another = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
        start = _clock(target)
        pipe(another, person, noise=noise, progress=False, **sampling)
        row["album_seconds"] = _clock(target) - start
    return row


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float((image - reference).square().mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def flop_floor_line(refs: int, arch: str, steps: int, official_s: float, ours_s: float) -> str:
    """Issue 10's CPU yardstick: the official work's counted FLOPs at this machine's matrix-multiply rate."""
    from flop_floor import matmul_gflops, official_work

    work = official_work(ARCHES[arch](), refs).total(steps)
    rate = matmul_gflops()
    floor = work / rate

    def figure(value: float) -> str:  # the released model's thousands of GFLOP and the tiny one's hundredths alike
        return f"{value:.1f}" if value >= 10 else f"{value:.3g}"

    return (
        f"FLOP floor: the official work is {figure(work)} GFLOP, {figure(floor)} s at this machine's {rate:.0f} "
        f"GFLOP/s fp32 matrix multiply; refface exact takes {ours_s / floor:.2f}x the floor, the official path "
        f"{official_s / floor:.2f}x (floor_s={figure(floor)})"
    )


def compare_official(refs: int, arch: str, steps: int, fast: bool, device: str, dtype: str) -> int:
    import tempfile

    rows = {}
    paths = ("official", "ours", "fast") if fast else ("official", "ours")
    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            output = str(Path(folder) / f"{path}.pt")
            command = [sys.executable, __file__, "--restore-child", f"{path}:{refs}:{steps}:{output}",
                       "--arch", arch, "--device", device, "--dtype", dtype]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            rows[path] = json.loads(done.stdout.strip().splitlines()[-1])
            rows[path]["image"] = torch.load(output)
            print(f"{path}: {rows[path]['seconds']:.1f} s, peak {rows[path]['peak_gb']:.2f} GB", file=sys.stderr)
    ours, official = rows["ours"], rows["official"]
    difference = float((ours["image"] - official["image"]).abs().max())
    floor = flop_floor_line(refs, arch, steps, official["seconds"], ours["seconds"]) if device == "cpu" else None
    threads = torch.get_num_threads()
    where = f"CPU threads={threads}" if device == "cpu" else torch.cuda.get_device_name(device)
    memory = "peak RSS GB" if device == "cpu" else "peak allocated GB"
    print(f"\nReF-LDM, {arch} architecture, {refs} reference(s), {steps} DDIM steps, refface in {dtype}, {where}")
    print(f"| path | seconds | {memory} | album: further photo s | difference to refface DDIM |\n|---|---|---|---|---|")
    for name in paths:
        row = rows[name]
        album = f"{row['album_seconds']:.1f}" if "album_seconds" in row else "-"
        gap = row["image"] - ours["image"]
        similarity = f"PSNR {psnr(row['image'], ours['image']):.1f} dB"
        versus = "-" if name == "ours" else f"max {gap.abs().max():.2e}, mean {gap.abs().mean():.2e}, {similarity}"
        exact = "exact" if dtype == "fp32" else f"DDIM {dtype}"
        label = {"official": "official path (fp32)", "ours": f"refface {exact}"}.get(
            name, f"refface fast (DPM-Solver++ {FAST_STEPS}, {dtype})"
        )
        print(f"| {label} | {row['seconds']:.1f} | {row['peak_gb']:.2f} | {album} | {versus} |")
    for name in paths[1:]:
        row = rows[name]
        print(
            f"{name}: album mode {row['album_seconds'] / official['seconds']:.0%} of the official path's per-photo "
            f"time, {official['seconds'] / row['seconds']:.2f}x faster end to end"
        )
    if floor:
        print(floor)
    print(
        f"speedup_vs_official={official['seconds'] / ours['seconds']:.2f} "
        f"peak_mem_ratio={ours['peak_gb'] / official['peak_gb']:.2f} max_abs_diff={difference:.2e}"
    )
    return 0


def total_seconds(row: dict, steps: int) -> float:
    return row["encode_refs_s"] + row["reference_pass_s"] + row["encode_lq_s"] + steps * row["step_s"] + row["decode_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--variants", nargs="+", choices=["cachekv", "spatial"], default=["cachekv", "spatial"])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the composed total")
    parser.add_argument("--timed-steps", type=int, default=3, help="guided steps actually timed per configuration")
    parser.add_argument("--arch", choices=list(ARCHES), default="released")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--compare-official", action="store_true", help="time refface against the official path")
    parser.add_argument("--fast", action="store_true", help="with --compare-official: also time the fast mode")
    parser.add_argument("--device", default="cpu", help="with --compare-official: cpu (default) or cuda")
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="with --compare-official: refface's dtype (default fp32)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--restore-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restore_child:
        path, refs, steps, output = args.restore_child.split(":", 3)
        print(json.dumps(run_restoration(path, int(refs), args.arch, int(steps), output, args.device, args.dtype)))
        return 0
    if args.compare_official:
        if len(args.refs) != 1:
            parser.error("--compare-official takes one --refs count")
        return compare_official(args.refs[0], args.arch, args.steps, args.fast, args.device, args.dtype)
    if args.timed_steps < 2:
        parser.error("--timed-steps must be at least 2 (the first step is warm-up)")

    if args.child:
        variant, refs = args.child.split(":")
        print(json.dumps(run_child(variant, int(refs), args.arch, args.timed_steps)))
        return 0

    rows = []
    for refs in args.refs:
        for variant in args.variants:
            command = [
                sys.executable,
                __file__,
                "--child",
                f"{variant}:{refs}",
                "--arch",
                args.arch,
                "--timed-steps",
                str(args.timed_steps),
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["total_s"] = total_seconds(row, args.steps)
            rows.append(row)
            print(f"done {variant} refs={refs}: step {row['step_s']:.2f}s total {row['total_s']:.1f}s", file=sys.stderr)

    print(
        f"\nReF-LDM inference, {args.arch} architecture, fp32, CPU threads={rows[0]['threads']}, "
        f"{args.steps} steps (per-step = median of {args.timed_steps - 1} timed guided steps)\n"
    )
    header = "| variant | refs | encode refs s | ref pass s | encode LQ s | step s | decode s | total s | peak RSS GB |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['refs']} | {r['encode_refs_s']:.2f} | {r['reference_pass_s']:.2f} | "
            f"{r['encode_lq_s']:.2f} | {r['step_s']:.3f} | {r['decode_s']:.2f} | {r['total_s']:.1f} | "
            f"{r['peak_rss_gb']:.2f} |"
        )
    by_key = {(r["variant"], r["refs"]): r for r in rows}
    for refs in args.refs:
        cache, spatial = by_key.get(("cachekv", refs)), by_key.get(("spatial", refs))
        if cache and spatial:
            print(
                f"refs={refs}: CacheKV/spatial step time {cache['step_s'] / spatial['step_s']:.2f}, "
                f"total {cache['total_s'] / spatial['total_s']:.2f}, "
                f"peak memory {cache['peak_rss_gb'] / spatial['peak_rss_gb']:.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
