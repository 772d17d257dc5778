"""`refface evaluate`: the papers' metrics for a folder of restorations, as per-image and summary tables."""

from __future__ import annotations

import argparse

from refface.cli.common import resolve_device, say


def _metric_list(text: str) -> list[str]:
    from refface.evaluation.evaluate import METRICS

    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        bad = unknown[0] if unknown else text
        raise argparse.ArgumentTypeError(f"unknown metric {bad!r}; choose from {', '.join(METRICS)}")
    return names


def cmd_evaluate(args: argparse.Namespace) -> int:
    from refface.evaluation.evaluate import METRICS, evaluate_folders

    result = evaluate_folders(
        args.pred,
        args.gt,
        args.out,
        metrics=args.metrics or METRICS,
        refs_csv=args.refs,
        refs_dir=args.refs_dir,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        download=not args.no_download,
        arcface_weights=args.arcface_weights,
        fid_reference=args.fid_reference,
        progress=not args.quiet,
    )
    if not args.quiet:
        print((result.out / "summary.md").read_text(encoding="utf-8"), end="")
    say(args, f"Tables: {result.out / 'per_image.csv'}, {result.out / 'summary.csv'}, {result.out / 'summary.md'}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `refface evaluate` on the `refface` parser."""
    from refface.evaluation.evaluate import METRICS

    evaluate = commands.add_parser("evaluate", help="score restorations against ground truth (IDS, LPIPS, PSNR, ...)")
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
    evaluate.add_argument("--no-download", action="store_true", help="never download weights; such metrics are skipped")
    evaluate.add_argument("--arcface-weights", help="ArcFace .onnx / .pth file instead of the default download")
    evaluate.add_argument("--fid-reference", help="folder of real faces for FID (default: FFHQ statistics via pyiqa)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="auto", help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, mps")
    evaluate.add_argument("--quiet", "-q", action="store_true")
    evaluate.set_defaults(handler=cmd_evaluate)
