"""How `strength` trades restoration for faithfulness to the input: distance to the LQ's VQ round trip and to
the ground truth, per strength.

Run from the repository root: `python benchmarks/bench_strength.py --model runs/tiny-refldm/model`. It restores
held-out items of the synthetic identity task (the task the toy presets train on, so the ground truth is
known) at each `--strengths` value with the item's own references, and reports, in 8-bit levels (mean
absolute difference over pixels): `to VQ round trip`, the distance to the LQ image encoded and decoded by the
model's VQGAN (what a strength near 0 returns), and `to ground truth`. Without `--model` a tiny random
ReF-LDM is used (a smoke run: its numbers mean nothing). Each strength's figures go to OUT/results.json as
soon as they are measured; a rerun skips them (`--fresh` measures again).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from refface.data.synthetic import SyntheticReferenceDataset
from refface.models.vq import decode_quantized, encode_unquantized
from refface.pipelines.loading import load_refldm


def _pipeline(model: str | None):
    if model:
        return load_refldm(model=model)
    from refface import RefLDMPipeline, tiny_architecture

    torch.manual_seed(0)
    return RefLDMPipeline.from_architecture(tiny_architecture()).eval_mode()


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two [0, 1] batches, in 8-bit levels."""
    return round(float((a - b).abs().mean()) * 255, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a ReF-LDM model folder (default: a tiny random one)")
    parser.add_argument("--out", default="bench-strength", help="folder for results.json")
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    parser.add_argument("--items", type=int, default=16, help="held-out synthetic items restored")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--degradation", default="severe", help="the synthetic task's degradation (moderate, severe)")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    setting = {"model": str(Path(args.model).resolve()) if args.model else "tiny random", "items": args.items,
               "steps": args.steps, "degradation": args.degradation}  # fmt: skip
    results = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    if results.get("setting") != setting:
        results = {"setting": setting, "strengths": {}}

    pipe = _pipeline(args.model)
    data = SyntheticReferenceDataset(identities=8, size=pipe.image_size, num_refs=3, degradation=args.degradation,
                                     split="test", flip=False)  # fmt: skip
    items = [data[index] for index in range(min(args.items, len(data)))]
    lq = torch.stack([item["lq"] for item in items])
    gt = (torch.stack([item["gt"] for item in items]) + 1) / 2
    with torch.no_grad():
        round_trip = ((decode_quantized(pipe.vqvae, encode_unquantized(pipe.vqvae, lq)).float() + 1) / 2).clamp(0, 1)
    references = [pipe.encode_references(item["refs"]) for item in items]
    print(f"{len(items)} items, {args.steps} DDIM steps, LQ to VQ round trip {_levels((lq + 1) / 2, round_trip)}")
    print("| strength | steps run | to VQ round trip | to ground truth | seconds |")
    print("|---|---|---|---|---|")
    for strength in args.strengths:
        key = f"{strength:g}"
        if key not in results["strengths"]:
            counted: list[int] = []
            start = time.perf_counter()
            restored = []
            for number, (item, kv) in enumerate(zip(items, references, strict=True)):
                output = pipe(item["lq"][None], kv, num_inference_steps=args.steps, seed=number, strength=strength,
                              progress=False, step_callback=lambda i, t, p, seen=counted: seen.append(t))  # fmt: skip
                restored.append(output.pixels[0])
            pixels = torch.stack(restored)
            results["strengths"][key] = {
                "steps_run": len(counted) // len(items),
                "to_round_trip": _levels(pixels, round_trip),
                "to_ground_truth": _levels(pixels, gt),
                "seconds": round(time.perf_counter() - start, 1),
            }
            results_path.write_text(json.dumps(results, indent=1))
        row = results["strengths"][key]
        print(f"| {key} | {row['steps_run']} | {row['to_round_trip']} | {row['to_ground_truth']} | {row['seconds']} |")
    order = [results["strengths"][f"{s:g}"]["to_round_trip"] for s in sorted(args.strengths, reverse=True)]
    monotone = all(a >= b for a, b in zip(order, order[1:], strict=False))
    print(f"distance to the VQ round trip falls with the strength: {'yes' if monotone else 'no'} ({results_path})")


if __name__ == "__main__":
    main()
