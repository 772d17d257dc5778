"""`refface evaluate` and `refface benchmark`: the papers' metrics and tables for restorations."""

from __future__ import annotations

import argparse

from refface.cli.common import DTYPE_NAMES, add_guidance_options, checked_dtype, resolve_device, say

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "evaluate": "score restorations against ground truth (IDS, LPIPS, PSNR, ...)",
    "benchmark": "restore a paper's test set with a method, score it, and write the papers' tables",
}


def _metric_list(text: str) -> list[str]:
    from refface.evaluation.catalogue import METRICS

    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        bad = unknown[0] if unknown else text
        raise argparse.ArgumentTypeError(f"unknown metric {bad!r}; choose from {', '.join(METRICS)}")
    return names


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from refface.evaluation.evaluate import METRICS, evaluate_cases, find_cases

    cases = find_cases(args.pred, args.gt, args.refs, args.refs_dir)
    options = _evaluation_options(args, resolve_device(args.device))
    result = evaluate_cases(cases, args.out, args.metrics or METRICS, Path(args.pred), options)
    if not args.quiet:
        print((result.out / "summary.md").read_text(encoding="utf-8"), end="")
    say(args, f"Tables: {result.out / 'per_image.csv'}, {result.out / 'summary.csv'}, {result.out / 'summary.md'}")
    return 0


def _counts(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected reference counts like 1,3,5,8 or none, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"reference counts must be at least 1, got {text!r}")
    return counts


def _evaluation_options(args: argparse.Namespace, device):
    from refface.evaluation.evaluate import EvaluationOptions

    return EvaluationOptions(
        device, args.batch_size, not args.no_download, args.arcface_weights, args.fid_reference, not args.quiet
    )


def cmd_benchmark(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from refface import methods
    from refface.evaluation.benchmark import run_benchmark
    from refface.evaluation.evaluate import METRICS
    from refface.evaluation.paper_sets import locate_set
    from refface.evaluation.restorers import benchmark_sampling, build_restorer

    method, _ = methods.benchmark_method(args.method)
    fix = False if args.no_color_fix else None
    options = benchmark_sampling(
        method, args.steps, args.guidance, args.spacing, args.seed, args.lq_guidance, fix, args.context, args.fidelity
    )
    sources = method.sources(args.model, args.checkpoint, args.vqgan, args.config)
    data = locate_set(args.set, args.data, args.images, args.lq, args.csv, args.refs_dir)
    state = PartialState()
    device = state.device if state.num_processes > 1 else resolve_device(args.device)
    restorer = build_restorer(args.method, options, device, checked_dtype(device, args.dtype), sources)
    if state.is_main_process:
        say(args, f"{data.layout.title}: {len(data.cases)} images; {args.method} on {device}.")
    report = run_benchmark(
        data,
        restorer,
        args.method,
        args.out,
        max_refs=args.max_refs,
        sweep=args.sweep,
        metrics=args.metrics or METRICS,
        limit=args.limit,
        examples=args.examples,
        progress=not args.quiet,
        evaluation=_evaluation_options(args, device),
        state=state,
    )
    if state.is_main_process:
        if not args.quiet:
            print((report.folder / "table.md").read_text(encoding="utf-8"), end="")
        say(args, f"Tables and contact sheet: {report.folder}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `refface evaluate` and `refface benchmark` on the `refface` parser."""
    from refface import methods
    from refface.evaluation.catalogue import METRICS, SETS
    from refface.evaluation.restorers import BENCHMARK_SPACING

    evaluate = commands.add_parser("evaluate", help=COMMANDS["evaluate"])
    evaluate.add_argument("--pred", required=True, help="folder of restored images")
    evaluate.add_argument("--gt", required=True, help="folder of ground-truth images (matched by file name)")
    evaluate.add_argument(
        "--refs", help="reference CSV (gt_image,ref_image): IDS(REF) uses each image's first reference"
    )
    evaluate.add_argument("--refs-dir", help="folder of the reference images (default: the --gt folder)")
    evaluate.add_argument(
        "--metrics", type=_metric_list, help=f"comma-separated subset of {','.join(METRICS)} (default: all)"
    )
    evaluate.add_argument("--out", default="results", help="folder for per_image.csv, summary.csv, summary.md")
    _add_metric_options(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    bench = commands.add_parser("benchmark", help=COMMANDS["benchmark"])
    bench.add_argument("--set", required=True, choices=list(SETS), help="which test set")
    bench.add_argument(
        "--data", help="dataset folder (reference_mapping/, test_images/ or lq/, as refface writes them)"
    )
    bench.add_argument("--images", required=True, help="HQ image folder the CSV names (GT and references)")
    bench.add_argument("--lq", help="LQ image folder (default: the set's place inside --data)")
    bench.add_argument("--refs-dir", help="folder of the reference images (default: --images)")
    bench.add_argument("--csv", help="reference CSV gt_image,ref_image (default: the set's place inside --data)")
    described = methods.benchmark_methods()
    bench.add_argument(
        "--method", required=True, choices=list(described), help="; ".join(f"{k}: {v}" for k, v in described.items())
    )
    # each reference method's paper's evaluation (a blind restorer: one pass, no references)
    papers = {method.name: method.benchmark for method in methods.METHODS if method.uses_references}
    bench.add_argument(
        "--max-refs", type=int,
        help="references for the main table (default: the method's paper's: "
        + ", ".join(f"{name} {b.references}" for name, b in papers.items()) + ")",
    )  # fmt: skip
    bench.add_argument(
        "--sweep", type=_counts,
        help="reference counts to sweep, or none (default: the method's paper's: "
        + "; ".join(f"{name} {','.join(map(str, b.sweep))}" for name, b in papers.items()) + ")",
    )  # fmt: skip
    bench.add_argument(
        "--metrics", type=_metric_list, help=f"comma-separated subset of {','.join(METRICS)} (default: all)"
    )
    bench.add_argument("--out", default="benchmark", help="results folder (default ./benchmark); reruns resume")
    bench.add_argument("--limit", type=int, help="only the first N images (a quick look; the table says so)")
    bench.add_argument("--examples", type=int, default=6, help="rows of the contact sheet (default 6)")
    bench.add_argument(
        "--steps", type=int,
        help="DDIM steps of a diffusion method (default: its paper's: "
        + ", ".join(f"{name} {b.steps}" for name, b in papers.items()) + ")",
    )  # fmt: skip
    add_guidance_options(bench)
    bench.add_argument("--seed", type=int, default=2024, help="noise seed, the same for every image (default 2024)")
    bench.add_argument(
        "--schedule",
        dest="spacing",
        choices=["uniform", "uniform_trailing"],
        default=BENCHMARK_SPACING,
        help=f"refldm: default {BENCHMARK_SPACING}, as the official evaluation",
    )
    bench.add_argument(
        "--model", help="a folder written by `refface convert` / `refface train` (required for composite)"
    )
    bench.add_argument("--checkpoint", help="official refldm.ckpt (default: download the released weights)")
    bench.add_argument("--vqgan", help="official vqgan.ckpt")
    bench.add_argument("--config", help="official-format config YAML")
    bench.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    _add_metric_options(bench)
    bench.set_defaults(handler=cmd_benchmark)


def _add_metric_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-download", action="store_true", help="never download weights; such metrics are skipped")
    parser.add_argument("--arcface-weights", help="ArcFace .onnx / .pth file instead of the default download")
    parser.add_argument("--fid-reference", help="folder of real faces for FID (default: FFHQ statistics via pyiqa)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per metric batch")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, mps")
    parser.add_argument("--quiet", "-q", action="store_true")
