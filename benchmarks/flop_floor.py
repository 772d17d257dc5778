"""The FLOP floor of a ReF-LDM restoration: how fast the official code's work could possibly run here.

Issue 10 states its CPU target as "end-to-end time within 1.2x of the FLOP floor": the floating-point
work of one restoration done the official way, divided by the rate at which this machine multiplies
fp32 matrices. This module counts that work per phase with `torch.utils.flop_counter` on the
meta device (shapes only, nothing is computed) and measures the matrix-multiply rate:

    python benchmarks/flop_floor.py --refs 1 5 [--steps 50]

Counted as the official path does the work (`official_path.py`): the references encoded as one wide
image, the LQ encoded alone, the null references (N zero latents) and the references through the
reference pass, every guided step with the whole U-Net on a batch of 2 attending to all N null
copies (einsum attention), the decode. Convolutions count as direct ones (9 multiply-adds per
output and input channel), so Winograd convolutions, which do fewer multiplications for the same
result, can run below this floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from official_path import use_official_attention
from refface import RefLDMPipeline, released_architecture
from refface.models.cache_kv import ReferenceBatch
from refface.models.config import RefLDMArchitecture
from refface.models.unet import denoise, reference_pass
from refface.models.vq import nearest_codes


def counted_gflop(action: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        action()
    return counter.get_total_flops() / 1e9


@dataclass(frozen=True)
class OfficialWork:
    """GFLOP of each phase of one restoration done the official way."""

    encode_references: float
    encode_lq: float
    reference_passes: float  # the null references and the references, once each
    guided_step: float
    decode: float

    def total(self, steps: int) -> float:
        once = self.encode_references + self.encode_lq + self.reference_passes + self.decode
        return once + steps * self.guided_step


def official_work(arch: RefLDMArchitecture, refs: int) -> OfficialWork:
    """Count the official path's FLOPs for `refs` references on shape-only (meta) tensors."""
    with torch.device("meta"):
        pipe = RefLDMPipeline.from_architecture(arch).eval_mode()
    use_official_attention(pipe)
    vq, unet = pipe.vqvae, pipe.unet
    size, latent, channels = pipe.image_size, pipe.latent_size, pipe.latent_channels
    with torch.no_grad(), torch.device("meta"):
        with FlopCounterMode(display=False) as counter:  # the pass is counted as it builds the cache
            cache = reference_pass(unet, torch.empty(refs, channels, latent, latent))
        step_input = torch.empty(2, 2 * channels, latent, latent)
        # the null references are N zero latents through the same pass: a cache of the same shapes
        context = ReferenceBatch(((1, cache), (1, cache)))
        return OfficialWork(
            encode_references=counted_gflop(lambda: vq.quant_conv(vq.encoder(torch.empty(1, 3, size, refs * size)))),
            encode_lq=counted_gflop(lambda: vq.quant_conv(vq.encoder(torch.empty(1, 3, size, size)))),
            reference_passes=2 * counter.get_total_flops() / 1e9,
            guided_step=counted_gflop(lambda: denoise(unet, step_input, torch.tensor(500), context)),
            decode=counted_gflop(
                lambda: vq.decoder(vq.post_quant_conv(nearest_codes(vq, torch.empty(1, channels, latent, latent))))
            ),
        )


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply rate in GFLOP/s: the fastest of `repeats` square products.

    The fastest, not the median: the floor is a bound on how fast the work could run, and on a shared
    machine a slow sample measures the neighbours, not the hardware.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if min(args.refs) < 1 or args.steps < 1:
        parser.error("--refs and --steps must be at least 1")
    rate = matmul_gflops()
    print(f"fp32 matrix multiply: {rate:.1f} GFLOP/s, CPU threads={torch.get_num_threads()}\n")
    print("| refs | encode refs | encode LQ | reference passes | guided step | decode | total GFLOP | floor s |")
    print("|---|---|---|---|---|---|---|---|")
    for refs in args.refs:
        work = official_work(released_architecture(), refs)
        total = work.total(args.steps)
        print(
            f"| {refs} | {work.encode_references:.0f} | {work.encode_lq:.0f} | {work.reference_passes:.0f} | "
            f"{work.guided_step:.1f} | {work.decode:.0f} | {total:.0f} | {total / rate:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
