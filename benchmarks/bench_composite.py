"""Time Composite-Context inference phases at the paper's size, to compare its cost with ReF-LDM's.

The networks are random (timing does not depend on the weights) but full size: a Stable Diffusion 2
(base, 512 px) U-Net widened for the LQ latent, SD's KL autoencoder, ArcFace R50 and FaRL ViT-B/16.
Each reference count runs in a fresh child process so that its peak resident memory is its own.
A guided step is one batched U-Net call over e(z,0,0) and one e(z,lq,c_i) per reference (the
e(z,lq,0) branch has weight s_i - s_c = 0 at the defaults and is skipped). The 50-step total is
composed from the measured phases: encode refs + encode LQ + 50 x step + decode.

    python benchmarks/bench_composite.py                     # 1 and 5 references
    python benchmarks/bench_composite.py --size tiny         # seconds, a smoke check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SIZES = ("sd2", "tiny")


def sd2_pipeline():
    """The paper's scale: SD 2 base U-Net (865M parameters, cross-attention 1024), SD VAE, ArcFace R50, FaRL B/16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModel

    from refface.models.composite_context import IdentityEncoder
    from refface.models.composite_parts import sd_scheduler
    from refface.models.farl import vit_config
    from refface.pipelines.composite import CompositeContextPipeline

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    encoders = IdentityEncoder(), CLIPVisionModel(vit_config())
    return CompositeContextPipeline.assemble(unet, vae, sd_scheduler(), *encoders).eval_mode()


def measure(size: str, refs: int, timed_steps: int) -> dict:
    from refface.models.kl import decode_latents, encode_latents
    from refface.pipelines.composite import CompositeContextPipeline, DualGuidance, guided_prediction

    torch.manual_seed(0)
    pipe = sd2_pipeline() if size == "sd2" else CompositeContextPipeline.tiny(32)
    pixels = pipe.image_size
    generator = torch.Generator().manual_seed(1)
    lq = torch.rand(1, 3, pixels, pixels, generator=generator) * 2 - 1
    references = torch.rand(refs, 3, pixels, pixels, generator=generator) * 2 - 1
    with torch.no_grad():
        start = time.perf_counter()
        features = pipe.encode_references(references)
        encode_refs = time.perf_counter() - start
        start = time.perf_counter()
        lq_latents = encode_latents(pipe.vae, lq)
        encode_lq = time.perf_counter() - start
        latents = torch.randn(lq_latents.shape, generator=generator)
        denoiser, guidance = pipe.denoiser, DualGuidance()
        steps = []
        for index in range(timed_steps + 1):  # the first step warms up and is not counted
            start = time.perf_counter()
            guided_prediction(denoiser, latents, lq_latents, features, torch.tensor(999 - index), guidance)
            steps.append(time.perf_counter() - start)
        step = sorted(steps[1:])[len(steps[1:]) // 2]
        start = time.perf_counter()
        decode_latents(pipe.vae, latents)
        decode = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    total = encode_refs + encode_lq + 50 * step + decode
    return {
        "size": size,
        "refs": refs,
        "encode_refs_s": encode_refs,
        "encode_lq_s": encode_lq,
        "step_s": step,
        "decode_s": decode,
        "total_50_steps_s": total,
        "peak_rss_gb": peak_gb,
        "unet_params_m": sum(p.numel() for p in pipe.unet.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="sd2")
    parser.add_argument("--refs", default="1,5", help="comma-separated reference counts (default 1,5)")
    parser.add_argument("--timed-steps", type=int, default=2, help="guided steps timed after a warm-up (median)")
    parser.add_argument("--out", default="bench-out/composite.json", help="results file (rows are appended)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.size, args.child, args.timed_steps)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(out.read_text()) if out.is_file() else []
    for refs in [int(value) for value in args.refs.split(",")]:
        if any(row["size"] == args.size and row["refs"] == refs for row in done):
            continue  # resumable: finished configurations are kept
        command = [sys.executable, __file__, "--size", args.size, "--timed-steps", str(args.timed_steps),
                   "--child", str(refs)]  # fmt: skip
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        done.append(row)
        out.write_text(json.dumps(done, indent=2) + "\n")
    print("| refs | encode refs s | encode LQ s | step s | decode s | total s (50 steps) | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for row in (r for r in done if r["size"] == args.size):
        print(
            f"| {row['refs']} | {row['encode_refs_s']:.2f} | {row['encode_lq_s']:.2f} | {row['step_s']:.3f} | "
            f"{row['decode_s']:.2f} | {row['total_50_steps_s']:.1f} | {row['peak_rss_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
