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
With --device cuda every path first restores one photo untimed (its time is printed as "first s") and
the seconds are the median of --repeats further restorations; memory is PyTorch's peak allocation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from refface import RefLDMPipeline, released_architecture, tiny_architecture
from refface.cli.common import checked_dtype
from refface.devices import DTYPE_NAMES, torch_dtype
from refface.models.unet import denoise
from refface.models.vq import decode_quantized, encode_unquantized
from refface.pipelines.base import FAST_STEPS, REFLDM_OPTIONS
from refface.pipelines.schedule import sampling_scheduler
from refface.speedups.winograd import kept_transformed_weights
from timing import peak_memory_gb

ARCHES = {"released": released_architecture, "tiny": tiny_architecture}
FAST_MODE = {"num_inference_steps": FAST_STEPS, "solver": "dpm++"}


def _timed(fn, device: torch.device):
    start = _clock(device)
    result = fn()
    return result, _clock(device) - start


def _clock(device: torch.device) -> float:
    """A host clock reading after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def spatial_concat_eps(pipe: RefLDMPipeline, x_in: torch.Tensor, refs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The spatial-concatenation baseline: [target | ref_1 | ... | ref_N] along the width, every step.

    x_in: [B, 2C, h, w]; refs: [B, N, C, h, w] (zeros for the null branch of guidance).
    """
    padded = torch.cat([refs, torch.zeros_like(refs)], dim=2)  # zero LQ channels, as CacheKV pads
    wide_refs = torch.cat(padded.unbind(dim=1), dim=-1)
    out = denoise(pipe.unet, torch.cat([x_in, wide_refs], dim=-1), t, None)
    return out[..., : x_in.shape[-1]]


def run_child(
    variant: str, refs: int, arch_name: str, timed_steps: int, device: str = "cpu", dtype: str = "fp32"
) -> dict:
    """Each phase of one restoration timed apart. On CUDA the phases run once untimed first (warm-up)."""
    torch.manual_seed(0)
    target = torch.device(device)
    pipe = RefLDMPipeline.from_architecture(ARCHES[arch_name]()).eval_mode().to(device=target, dtype=torch_dtype(dtype))
    size = pipe.image_size
    lq = (torch.rand(1, 3, size, size) * 2 - 1).to(target, pipe.unet.dtype)
    ref_images = (torch.rand(refs, 3, size, size) * 2 - 1).to(target, pipe.unet.dtype)
    noise = torch.randn(1, pipe.latent_channels, pipe.latent_size, pipe.latent_size)

    def phases() -> dict:
        result: dict = {"variant": variant, "refs": refs, "threads": torch.get_num_threads()}
        wide = torch.cat(list(ref_images), dim=-1)[None]
        ref_latent, result["encode_refs_s"] = _timed(lambda: encode_unquantized(pipe.vqvae, wide), target)
        per_ref = torch.cat(ref_latent.split(pipe.latent_size, dim=-1), dim=0)
        lq_latent, result["encode_lq_s"] = _timed(lambda: encode_unquantized(pipe.vqvae, lq), target)
        x = noise.to(target)
        step_times = []
        if variant == "cachekv":
            cache, result["reference_pass_s"] = _timed(lambda: pipe._reference_pass(per_ref), target)
            _, result["null_cache_once_per_model_s"] = _timed(lambda: pipe.null_references(refs), target)
            stamps = []
            x = pipe(
                lq,
                cache,
                num_inference_steps=timed_steps,
                progress=False,
                noise=noise,
                step_callback=lambda *_: stamps.append(_clock(target)),
            ).latents
            step_times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        else:
            result["reference_pass_s"] = 0.0
            scheduler = sampling_scheduler(pipe.scheduler, REFLDM_OPTIONS.with_changes(steps=timed_steps))
            with kept_transformed_weights():  # as the pipeline's own sampling loop
                for t in scheduler.timesteps:
                    start = _clock(target)
                    x_in = torch.cat([x.to(lq_latent.dtype), lq_latent], dim=1)
                    refs_batch = torch.stack([torch.zeros_like(per_ref), per_ref])  # [null, references]
                    eps = spatial_concat_eps(pipe, torch.cat([x_in, x_in]), refs_batch, t.to(target)).float()
                    eps_null, eps_ref = eps.chunk(2)
                    eps = eps_null + 1.5 * (eps_ref - eps_null)
                    x = scheduler.step(eps, t, x).prev_sample
                    step_times.append(_clock(target) - start)
            step_times = step_times[1:] or step_times
        _, result["decode_s"] = _timed(lambda: decode_quantized(pipe.vqvae, x.to(pipe.unet.dtype)), target)
        result["step_s"] = statistics.median(step_times)
        return result

    with torch.no_grad():
        if target.type == "cuda":
            phases()
        result = phases()
    result["peak_rss_gb"] = peak_memory_gb(target)
    return result


def run_restoration(
    path: str, refs: int, arch_name: str, steps: int, output: str, device: str, dtype: str, repeats: int = 1
) -> dict:
    """One whole restoration by `path` (official | ours | fast), timed; the image is saved to `output` for the diff.

    The official path always runs in fp32 (the reference implementation); `dtype` applies to refface's paths.
    Peak memory is the process's resident set on a CPU and PyTorch's peak allocation on CUDA. On CUDA the
    first restoration (kernel loading, cuBLAS/cuDNN set-up, the allocator's growth) is reported apart as
    `first_seconds` and `seconds` is the median of `repeats` restorations after it, as a server sees them.
    """
    from official_path import restore_like_official, use_official_attention

    torch.manual_seed(0)
    target = torch.device(device)
    pipe = RefLDMPipeline.from_architecture(ARCHES[arch_name]()).eval_mode()
    pipe.to(device=target, dtype=torch.float32 if path == "official" else torch_dtype(dtype))
    generator = torch.Generator().manual_seed(1)
    size = pipe.image_size
    lq = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    references = torch.rand(refs, 3, size, size, generator=generator) * 2 - 1
    noise = pipe.initial_noise(1, 2024)
    if path != "official":  # per-model setup, like loading the weights: refface makes the null cache once per model
        pipe.null_references(refs)
    sampling = {"num_inference_steps": steps} if path == "ours" else FAST_MODE

    def restore() -> torch.Tensor:
        if path == "official":
            moved = (t.to(target) for t in (lq, references, noise))
            return restore_like_official(use_official_attention(pipe), *moved, steps, 1.5)
        return pipe(lq, references, noise=noise, progress=False, **sampling).pixels

    on_gpu = target.type == "cuda"
    runs = 1 + repeats if on_gpu else 1  # a CPU restoration takes minutes: one, with no warm-up to set apart
    row: dict = {"path": path, "refs": refs}
    times = []
    for _ in range(runs):
        start = _clock(target)
        image = restore()
        times.append(_clock(target) - start)
    row["first_seconds"], row["seconds"] = times[0], statistics.median(times[1:] if on_gpu else times)
    row["peak_gb"] = peak_memory_gb(target)
    torch.save(image.float().cpu(), output)
    if path != "official":  # album mode: a further photo of the same person, the reference cache reused
        person = pipe.encode_references(references)
        another = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
        album = []
        for _ in range(runs - 1 if on_gpu else 1):
            start = _clock(target)
            pipe(another, person, noise=noise, progress=False, **sampling)
            album.append(_clock(target) - start)
        row["album_seconds"] = statistics.median(album)
    return row


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float((image - reference).square().mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def flop_floor_line(refs: int, arch: str, steps: int, official_s: float, ours_s: float, ours: str = "exact") -> str:
    """Issue 10's CPU yardstick: the official work's counted FLOPs at this machine's matrix-multiply rate."""
    from flop_floor import matmul_gflops, official_work

    work = official_work(ARCHES[arch](), refs).total(steps)
    rate = matmul_gflops()
    floor = work / rate

    def figure(value: float) -> str:  # the released model's thousands of GFLOP and the tiny one's hundredths alike
        return f"{value:.1f}" if value >= 10 else f"{value:.3g}"

    return (
        f"FLOP floor: the official work is {figure(work)} GFLOP, {figure(floor)} s at this machine's {rate:.0f} "
        f"GFLOP/s fp32 matrix multiply; refface {ours} takes {ours_s / floor:.2f}x the floor, the official path "
        f"{official_s / floor:.2f}x (floor_s={figure(floor)})"
    )


def compare_official(
    refs: int, arch: str, steps: int, fast: bool, device: str, dtype: str, repeats: int, images: str | None = None
) -> int:
    """`images`: a folder to keep each path's restored image in (`official.pt`, `ours.pt`, `fast.pt`), so two
    runs (before and after a change) can be compared bit for bit."""
    import contextlib
    import tempfile

    rows = {}
    paths = ("official", "ours", "fast") if fast else ("official", "ours")
    kept = contextlib.nullcontext(images) if images else tempfile.TemporaryDirectory()
    with kept as folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for path in paths:
            output = str(Path(folder) / f"{path}.pt")
            command = [sys.executable, __file__, "--restore-child", f"{path}:{refs}:{steps}:{output}",
                       "--arch", arch, "--device", device, "--dtype", dtype, "--repeats", str(repeats)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            rows[path] = json.loads(done.stdout.strip().splitlines()[-1])
            rows[path]["image"] = torch.load(output)
            print(f"{path}: {rows[path]['seconds']:.3f} s, peak {rows[path]['peak_gb']:.2f} GB", file=sys.stderr)
    ours, official = rows["ours"], rows["official"]
    difference = float((ours["image"] - official["image"]).abs().max())
    exact = "exact" if dtype == "fp32" else f"DDIM {dtype}"
    floor = flop_floor_line(refs, arch, steps, official["seconds"], ours["seconds"], exact) if device == "cpu" else None
    on_gpu = device != "cpu"
    if on_gpu:
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        where = f"{torch.cuda.get_device_name(device)} (fp32 TF32: matmul {tf32[0]}, convolutions {tf32[1]})"
        timing = f"median of {repeats} after one warm-up restoration"
    else:
        where, timing = f"CPU threads={torch.get_num_threads()}", "one restoration"
    memory = "peak allocated GB" if on_gpu else "peak RSS GB"
    fastest = min(min(row["seconds"], row.get("album_seconds", row["seconds"])) for row in rows.values())
    digits = 3 if on_gpu or fastest < 10 else 1  # tiny models and fast CPUs take well under a second
    print(f"\nReF-LDM, {arch} architecture, {refs} reference(s), {steps} DDIM steps, refface in {dtype}, {where}")
    print(f"Seconds: {timing}" + ("; first: the warm-up restoration itself" if on_gpu else ""))
    first = " first s |" if on_gpu else ""
    print(f"| path | seconds |{first} {memory} | album: further photo s | difference to refface DDIM |")
    print("|---" * (5 + on_gpu) + "|")
    for name in paths:
        row = rows[name]
        album = f"{row['album_seconds']:.{digits}f}" if "album_seconds" in row else "-"
        gap = row["image"] - ours["image"]
        similarity = f"PSNR {psnr(row['image'], ours['image']):.1f} dB"
        versus = "-" if name == "ours" else f"max {gap.abs().max():.2e}, mean {gap.abs().mean():.2e}, {similarity}"
        label = {"official": "official path (fp32)", "ours": f"refface {exact}"}.get(
            name, f"refface fast (DPM-Solver++ {FAST_STEPS}, {dtype})"
        )
        cold = f" {row['first_seconds']:.{digits}f} |" if on_gpu else ""
        print(f"| {label} | {row['seconds']:.{digits}f} |{cold} {row['peak_gb']:.2f} | {album} | {versus} |")
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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="fp32", help="refface's dtype (default fp32; the official path: fp32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="with --device cuda: timed restorations after one warm-up (default 5)"
    )
    parser.add_argument("--images", help="with --compare-official: keep the restored images (.pt) in this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--restore-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not (args.child or args.restore_child):
        checked_dtype(torch.device(args.device), args.dtype)  # warns where this CPU lacks native half precision
    if args.restore_child:
        path, refs, steps, output = args.restore_child.split(":", 3)
        print(
            json.dumps(
                run_restoration(path, int(refs), args.arch, int(steps), output, args.device, args.dtype, args.repeats)
            )
        )
        return 0
    if args.compare_official:
        if len(args.refs) != 1:
            parser.error("--compare-official takes one --refs count")
        return compare_official(
            args.refs[0], args.arch, args.steps, args.fast, args.device, args.dtype, args.repeats, args.images
        )
    if args.timed_steps < 2:
        parser.error("--timed-steps must be at least 2 (the first step is warm-up)")

    if args.child:
        variant, refs = args.child.split(":")
        print(json.dumps(run_child(variant, int(refs), args.arch, args.timed_steps, args.device, args.dtype)))
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
                "--device",
                args.device,
                "--dtype",
                args.dtype,
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
        f"\nReF-LDM inference, {args.arch} architecture, {args.dtype}, "
        + (f"CPU threads={rows[0]['threads']}, " if args.device == "cpu" else f"{args.device}, ")
        + f"{args.steps} steps (per-step = median of {args.timed_steps - 1} timed guided steps)\n"
    )
    memory = "peak RSS GB" if args.device == "cpu" else "peak allocated GB"
    header = f"| variant | refs | encode refs s | ref pass s | encode LQ s | step s | decode s | total s | {memory} |"
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
