"""ReF-LDM's reference-integration ablation (the paper's Table 2), reproduced on a CPU with a known answer.

    python benchmarks/mechanism.py                 # the full study, about an hour on 2 CPU cores
    python benchmarks/mechanism.py --quick         # a few steps of everything, to check that it runs
    python benchmarks/mechanism.py --out DIR       # where runs, results, table and grid go

The task is the synthetic identity task (`refface.data.synthetic`) with large pose variation and
per-photo expressions, so references are not pixel-aligned with the target. The degradation is the
paper's `severe` model with its blur and downscale fitted to 32-pixel faces (`data.degradation_ranges`:
sigma 0.5-1 px, an LQ of 4-8 px): the paper's 512-pixel values would leave a 1-4 px LQ, one flat colour
that says nothing of where the face is, whereas a severely degraded real face still shows its layout.
The LQ keeps position, size and colours and loses the fine pattern and marks, which only the references
show. Everything is trained by the project's
trainer from the same presets the tiny training runs use:

1. a VQGAN (stage 1) and an LQ-only LDM (stage 2) on the training identities;
2. from that LDM, with the same data, steps and learning rate, one fine-tune per variant:
   no references (the LDM trained on), channel-concat, cross-attention, spatial-concat, CacheKV.

Each variant then restores held-out identities (the `test` split) from held-out reference photos.
The identity score is ground truth by construction (`refface.data.synthetic_identity`): cosine
similarity of the restoration's identity signal with the true person's (the stand-in for IDS)
and re-identification accuracy among the split's people; PSNR and SSIM measure fidelity.
Cost: median time of one guided denoising step and the peak memory PyTorch allocates while
restoring, with 1 and 5 references. Every stage is a run folder, so an interrupted study resumes
where it stopped (`--out` the same folder); results are cached per variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import VQModel
from kornia.metrics import ssim
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import peak_allocated_bytes  # noqa: E402

from refface.data.degradations import degradation_with_ranges  # noqa: E402
from refface.data.synthetic import PhotoVariation, SyntheticReferenceDataset  # noqa: E402
from refface.data.synthetic_identity import SyntheticIdentityScorer  # noqa: E402
from refface.files import write_text_atomically  # noqa: E402
from refface.imaging import save_image  # noqa: E402
from refface.models.vq import decode_quantized, encode_unquantized  # noqa: E402
from refface.pipelines.base import REFLDM_OPTIONS  # noqa: E402
from refface.pipelines.schedule import sampling_scheduler  # noqa: E402
from refface.train.config import load_config  # noqa: E402
from refface.train.diffusion_step import encode_references_wide  # noqa: E402
from refface.train.sampling import restore_batch  # noqa: E402
from refface.train.trained_model import TrainedDiffusionModel, load_trained_model  # noqa: E402
from refface.train.trainer import train  # noqa: E402
from refface.train.validation import psnr  # noqa: E402

VARIANTS = ("no-references", "channel-concat", "cross-attention", "spatial-concat", "cachekv")
LABELS = {
    "no-references": "No references (LDM)",
    "channel-concat": "Channel-concat",
    "cross-attention": "Cross-attention",
    "spatial-concat": "Spatial-concat",
    "cachekv": "CacheKV (ReF-LDM)",
}


@dataclass(frozen=True)
class Budget:
    """Steps of each stage, the data and the evaluation size; `--quick` shrinks all of it."""

    vqgan_steps: int = 3000
    ldm_steps: int = 2000
    variant_steps: int = 800
    train_identities: int = 1000
    test_identities: int = 48
    targets_per_identity: int = 2
    sample_steps: int = 25
    timed_steps: int = 20


QUICK = Budget(
    vqgan_steps=4,
    ldm_steps=4,
    variant_steps=3,
    train_identities=16,
    test_identities=6,
    targets_per_identity=1,
    sample_steps=3,
    timed_steps=2,
)

SIZE, NUM_REFS, PHOTOS, SEED = 32, 5, 6, 0
VARIATION = PhotoVariation(pose=3.0, expression=1.0)
DEGRADATION_RANGES = {"sigma": [0.5, 1.0], "scale": [4.0, 8.0], "kernel_size": 5}
DEGRADATION = degradation_with_ranges("severe", DEGRADATION_RANGES)

# The tiny architecture with self-attention at both latent resolutions (8x8 and 4x4), so reference
# tokens reach the fine level, and a 256-entry codebook so the VQGAN keeps the identity colours. The
# VQGAN leaves out its mid-block attention (latent-diffusion's attn_type none): at this size it slows
# learning (val PSNR 16.8 vs 15.7 dB after 300 steps).
ARCHITECTURE = {
    "model": {
        "params": {
            "timesteps": 1000,
            "linear_start": 0.0015,
            "linear_end": 0.0155,
            "unet_config": {
                "params": {
                    "image_size": 8,
                    "in_channels": 8,
                    "out_channels": 4,
                    "model_channels": 64,
                    "channel_mult": [1, 2],
                    "num_res_blocks": 1,
                    "attention_resolutions": [1, 2],
                    "num_head_channels": 32,
                }
            },
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "n_embed": 256,
                    "ddconfig": {
                        "resolution": SIZE,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 2, 2],
                        "num_res_blocks": 1,
                        "z_channels": 4,
                        "attn_resolutions": [],
                        "attn_type": "none",
                    },
                }
            },
        }
    }
}


def _data(budget: Budget, num_refs: int) -> dict:
    return {
        "data.kind": "synthetic",
        "data.size": SIZE,
        "data.num_refs": num_refs,
        "data.degradation": "severe",
        "data.degradation_ranges": DEGRADATION_RANGES,
        "data.identities": budget.train_identities,
        "data.photos_per_identity": PHOTOS,
        "data.pose_spread": VARIATION.pose,
        "data.expression": VARIATION.expression,
        "data.workers": 0,
    }


def _run(preset: str, overrides: dict, steps: int, folder: Path, quiet: bool) -> Path:
    """Train (or resume, or skip when finished) one stage into `folder`."""
    cadence = max(1, min(250, steps))
    values = {
        **overrides,
        "run.seed": SEED,
        "run.checkpoint_every": cadence,
        "run.keep_checkpoints": 1,
        "run.sample_every": steps,
        "run.log_every": max(1, min(50, steps)),
        "run.validation_cases": 4,
        "run.sample_steps": 10,
    }
    config = load_config(preset, values)
    if (folder / "model").is_dir():
        return folder
    started = time.perf_counter()
    train(config, folder, max_steps=steps, resume=(folder / "config.yaml").is_file(), progress=not quiet)
    print(f"  {folder.name}: {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def train_all(out: Path, budget: Budget, quiet: bool) -> dict[str, Path]:
    """The VQGAN, the LDM and one fine-tune per variant; finished stages are skipped."""
    arch = out / "architecture.yaml"
    write_text_atomically(arch, yaml.safe_dump(ARCHITECTURE, sort_keys=False))
    model = {"model.architecture": str(arch.resolve())}
    runs = out / "runs"
    # Reconstruction only (no adversarial term): the study needs the VQGAN to keep identity colours and layout,
    # not to invent sharp detail, and without the discriminator its steps cost half as much.
    vq_losses = {"vqgan.disc_start": budget.vqgan_steps + 1}
    vqgan = _run("tiny-vqgan", {**model, **vq_losses, **_data(budget, 1)}, budget.vqgan_steps, runs / "vqgan", quiet)
    common = {**model, "model.vqgan_checkpoint": str(vqgan.resolve())}
    ldm = _run("tiny-ldm", {**common, **_data(budget, 1)}, budget.ldm_steps, runs / "ldm", quiet)
    start = {**common, "model.init_checkpoint": str(ldm.resolve())}
    folders = {}
    for variant in VARIANTS:
        if variant == "no-references":
            overrides, preset = {**start, **_data(budget, 1)}, "tiny-ldm"
        else:
            overrides = {**start, **_data(budget, NUM_REFS), "model.reference_integration": variant}
            preset = "tiny-refldm"
        folders[variant] = _run(preset, overrides, budget.variant_steps, runs / variant, quiet)
    return folders


@dataclass
class TestCases:
    """Held-out people and photos: LQ, references (the person's other photos) and GT, in [-1, 1]."""

    dataset: SyntheticReferenceDataset
    indices: list[int]
    lq: torch.Tensor
    refs: torch.Tensor
    gt: torch.Tensor


def held_out_cases(budget: Budget) -> TestCases:
    dataset = SyntheticReferenceDataset(
        budget.test_identities, PHOTOS, SIZE, NUM_REFS, DEGRADATION, SEED, "test", flip=False, variation=VARIATION
    )
    indices = [i * PHOTOS + j for i in range(budget.test_identities) for j in range(budget.targets_per_identity)]
    items = [dataset[i] for i in indices]
    stack = {key: torch.stack([item[key] for item in items]) for key in ("lq", "refs", "gt")}
    return TestCases(dataset, indices, stack["lq"], stack["refs"], stack["gt"])


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def restore(
    model: TrainedDiffusionModel, cases: TestCases, steps: int, batch: int = 16, noise_offset: int = 0
) -> torch.Tensor:
    """Every case restored; case i starts from the noise of seed SEED + noise_offset + i."""
    outputs = []
    for first in range(0, len(cases.indices), batch):
        part = slice(first, first + batch)
        refs = cases.refs[part] if model.uses_references else cases.refs[part, :0]
        outputs.append(
            restore_batch(
                model.denoiser, model.vq, model.scheduler, cases.lq[part], refs, steps, 1.5, SEED + noise_offset + first
            )
        )
    return torch.cat(outputs)


def quality(outputs: torch.Tensor, cases: TestCases) -> dict[str, float]:
    """Identity score and re-identification (ground truth), PSNR and SSIM against the GT photo."""
    scorer = SyntheticIdentityScorer(cases.dataset)
    scores = [
        scorer.score(image, *cases.dataset.locate(index))
        for image, index in zip(_to_uint8(outputs), cases.indices, strict=True)
    ]
    unit_out, unit_gt = (outputs.clamp(-1, 1) + 1) / 2, (cases.gt + 1) / 2
    return {
        "identity": float(np.mean([s.similarity for s in scores])),
        "reid_percent": 100.0 * float(np.mean([s.correct for s in scores])),
        "psnr": float(psnr(outputs, cases.gt).mean()),
        "ssim": float(ssim(unit_out.float(), unit_gt.float(), 7).mean()),
        "chance_percent": 100.0 / len(cases.dataset.identities),
    }


def _timing_inputs(model: TrainedDiffusionModel, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LQ latent and `count` reference latents of one held-out case (None for the LQ-only model)."""
    cases = SyntheticReferenceDataset(
        2, PHOTOS, SIZE, NUM_REFS, DEGRADATION, SEED, "test", flip=False, variation=VARIATION
    )
    item = cases[0]
    lq_latent = encode_unquantized(model.vq, item["lq"][None])
    if not model.uses_references:
        return lq_latent, None
    refs = item["refs"][None, :count]
    if model.config.model.reference_integration == "channel-concat":
        refs = refs[:, torch.arange(NUM_REFS) % count]  # built for 5 references: fewer are repeated, as the loader does
    return lq_latent, encode_references_wide(model.vq, refs)


def _guided_eps(model: TrainedDiffusionModel, latents, lq_latent, contexts, timestep) -> torch.Tensor:
    """Guidance 1.5 as in the paper: a pass with the references and one with zeroed ones."""
    eps = model.denoiser.predict(latents, lq_latent, contexts[0], timestep)
    if contexts[1] is None:
        return eps
    return eps + 0.5 * (eps - model.denoiser.predict(latents, lq_latent, contexts[1], timestep))


@torch.no_grad()
def cost(model: TrainedDiffusionModel, count: int, budget: Budget) -> dict[str, float]:
    """Median ms of one guided step, and the peak MiB PyTorch allocates restoring (encode refs, 2 steps, decode)."""
    lq_latent, ref_latents = _timing_inputs(model, count)
    first = REFLDM_OPTIONS.with_changes(steps=budget.sample_steps)
    timestep = sampling_scheduler(model.scheduler, first).timesteps[:1]

    def contexts() -> tuple:
        if ref_latents is None:
            return None, None
        encode = model.denoiser.encode_references
        return encode(ref_latents), encode(torch.zeros_like(ref_latents))

    ready, latents = contexts(), torch.randn_like(lq_latent)
    for _ in range(2):
        _guided_eps(model, latents, lq_latent, ready, timestep)
    times = []
    for _ in range(budget.timed_steps):
        start = time.perf_counter()
        _guided_eps(model, latents, lq_latent, ready, timestep)
        times.append(time.perf_counter() - start)
    del ready

    def restoration() -> None:
        context = contexts()
        for _ in range(2):
            _guided_eps(model, latents, lq_latent, context, timestep)
        decode_quantized(model.vq, latents)

    peak = peak_allocated_bytes(restoration)
    return {f"step_ms_{count}": 1000 * statistics.median(times), f"peak_mib_{count}": peak / 2**20}


def evaluate(variant: str, run: Path, cases: TestCases, budget: Budget, out: Path) -> dict:
    """Quality and cost of one variant, cached in out/results/<variant>.json and out/outputs/<variant>.pt."""
    cached = out / "results" / f"{variant}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    model = load_trained_model(run)
    torch.manual_seed(SEED)
    outputs = restore(model, cases, budget.sample_steps)
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    torch.save(outputs, out / "outputs" / f"{variant}.pt")
    result = {"variant": variant, **quality(outputs, cases)}
    for count in (1, NUM_REFS):
        result.update(cost(model, count, budget))
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(cached, json.dumps(result, indent=2))
    return result


NOISE_OFFSETS = (0, 1000, 2000)


def noise_spread(runs: dict[str, Path], cases: TestCases, budget: Budget, out: Path) -> str:
    """Identity score and re-ID of every variant from three sets of starting noises: how much of a gap is luck.

    Cached per variant in out/results/<variant>-noise.json; the first set is the table's own restorations.
    """
    lines = [
        "| Reference integration | " + " | ".join(f"noise set {i + 1}" for i in range(len(NOISE_OFFSETS))) + " |",
        "|---" * (len(NOISE_OFFSETS) + 1) + "|",
    ]
    for variant in VARIANTS:
        cached = out / "results" / f"{variant}-noise.json"
        if cached.is_file():
            scores = json.loads(cached.read_text(encoding="utf-8"))
        else:
            model = load_trained_model(runs[variant])
            main = torch.load(out / "outputs" / f"{variant}.pt")  # set 1 is the table's, restored by `evaluate`
            outputs = [main, *(restore(model, cases, budget.sample_steps, noise_offset=o) for o in NOISE_OFFSETS[1:])]
            scores = [quality(images, cases) for images in outputs]
            write_text_atomically(cached, json.dumps(scores, indent=2))
        cells = [f"{q['identity']:.3f} ({q['reid_percent']:.1f} %)" for q in scores]
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
    lines += ["", "Identity score (re-ID %) per set of starting noises; set 1 is the main table's."]
    return "\n".join(lines)


def vqgan_ceiling(vqgan_run: Path, cases: TestCases) -> dict:
    """The GT through the VQGAN: the best any variant can score with this autoencoder."""
    vq = VQModel.from_pretrained(vqgan_run / "model" / "vqvae").eval()
    with torch.no_grad():
        reconstruction = decode_quantized(vq, encode_unquantized(vq, cases.gt))
    return {"variant": "vqgan-ceiling", **quality(reconstruction, cases)}


BASELINE_LABELS = {"lq-input": "*The LQ input itself*", "vqgan-ceiling": "*GT through the VQGAN (ceiling)*"}


def table(results: list[dict], baselines: list[dict]) -> str:
    """Markdown in the layout of the paper's Table 2: identity, fidelity, then cost with 1 and 5 references.

    `baselines` (the LQ input, the VQGAN ceiling) bracket what a variant can reach and have no cost columns.
    """
    lines = [
        "| Reference integration | Identity score ↑ | Re-ID % ↑ | PSNR ↑ | SSIM ↑ "
        "| ms/step, 1 ref | ms/step, 5 refs | peak MiB, 1 ref | peak MiB, 5 refs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {LABELS[r['variant']]} | {r['identity']:.3f} | {r['reid_percent']:.1f} | {r['psnr']:.2f} "
            f"| {r['ssim']:.3f} | {r['step_ms_1']:.1f} | {r['step_ms_5']:.1f} "
            f"| {r['peak_mib_1']:.1f} | {r['peak_mib_5']:.1f} |"
        )
    for b in baselines:
        lines.append(
            f"| {BASELINE_LABELS[b['variant']]} | {b['identity']:.3f} | {b['reid_percent']:.1f} "
            f"| {b['psnr']:.2f} | {b['ssim']:.3f} | | | | |"
        )
    chance = (results or baselines)[0]["chance_percent"]
    lines.append("")
    lines.append(f"Re-ID chance level: {chance:.1f} % ({round(100 / chance)} held-out people).")
    return "\n".join(lines)


def grid(cases: TestCases, outputs: dict[str, torch.Tensor], rows: int, scale: int = 3) -> Image.Image:
    """LQ | references | each variant | GT for the first `rows` cases, upscaled for viewing, with a header."""
    columns = ["LQ", *[f"ref {i + 1}" for i in range(NUM_REFS)], *[LABELS[v] for v in outputs], "GT"]
    tile = SIZE * scale
    header = 14
    canvas = Image.new("RGB", (tile * len(columns), header + tile * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for column, label in enumerate(columns):
        draw.text((column * tile + 2, 1), label.split(" (")[0][:16], fill="black")
    for row in range(rows):
        images = [cases.lq[row], *cases.refs[row], *[o[row] for o in outputs.values()], cases.gt[row]]
        for column, image in enumerate(_to_uint8(torch.stack(images))):
            picture = Image.fromarray(image).resize((tile, tile), Image.NEAREST)
            canvas.paste(picture, (column * tile, header + row * tile))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/mechanism"))
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (CI): checks that it runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for stage in ("vqgan", "ldm", "variant"):
        parser.add_argument(f"--{stage}-steps", type=int, help=f"override the {stage} training steps")
    parser.add_argument("--noise-spread", action="store_true", help="also score each variant from 3 noise sets")
    args = parser.parse_args()
    budget = QUICK if args.quick else Budget()
    steps = {f"{s}_steps": getattr(args, f"{s}_steps") for s in ("vqgan", "ldm", "variant")}
    budget = replace(budget, **{key: value for key, value in steps.items() if value})
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = train_all(args.out, budget, args.quiet)
    cases = held_out_cases(budget)
    results = [evaluate(variant, runs[variant], cases, budget, args.out) for variant in VARIANTS]
    baselines = [{"variant": "lq-input", **quality(cases.lq, cases)}, vqgan_ceiling(args.out / "runs" / "vqgan", cases)]
    text = table(results, baselines)
    write_text_atomically(args.out / "table.md", text + "\n")
    write_text_atomically(args.out / "results.json", json.dumps({"results": results, "baselines": baselines}, indent=2))
    outputs = {v: torch.load(args.out / "outputs" / f"{v}.pt") for v in VARIANTS}
    save_image(grid(cases, outputs, rows=min(6, len(cases.indices))), args.out / "grid.png")
    print(text)
    if args.noise_spread:
        spread = noise_spread(runs, cases, budget, args.out)
        write_text_atomically(args.out / "noise_spread.md", spread + "\n")
        print("\n" + spread)
    print(f"\ntable: {args.out / 'table.md'}  grid: {args.out / 'grid.png'}  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
