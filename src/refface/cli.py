"""`refface` command line: a thin layer over the Python API.

Every user mistake ends as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from refface.errors import RefFaceError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """auto = CUDA, else Apple MPS, else CPU; an explicit unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RefFaceError("--device cuda was requested but PyTorch sees no CUDA GPU on this machine.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RefFaceError("--device mps was requested but Apple MPS is not available on this machine.")
    return torch.device(name)


def _output_paths(args: argparse.Namespace) -> list[Path]:
    from refface.imaging import check_output_path

    inputs = [*args.lq, *(args.ref or [])]
    output = Path(args.output)
    if len(args.lq) == 1:
        return [check_output_path(output, inputs, args.overwrite)]
    if output.exists() and not output.is_dir():
        raise RefFaceError(f"With several LQ photos --output must be a folder, but {output} is a file.")
    stems = [Path(p).stem for p in args.lq]
    if len(set(stems)) != len(stems):
        raise RefFaceError("Several LQ photos share a file name, so their results would collide in the output folder.")
    return [check_output_path(output / f"{stem}.png", inputs, args.overwrite) for stem in stems]


def cmd_restore(args: argparse.Namespace) -> int:
    from refface.imaging import load_image, save_image
    from refface.pipelines.loading import load_refldm

    if not args.aligned:
        raise RefFaceError(
            "Face detection and alignment for whole photos is not available yet; pass --aligned with "
            "FFHQ-aligned face crops (LQ and references)."
        )
    if not args.ref and not args.no_refs:
        raise RefFaceError(
            "No reference photos were given: pass --ref FILE [FILE ...], or --no-refs to restore without."
        )
    if args.ref and args.no_refs:
        raise RefFaceError("--ref and --no-refs contradict each other; use one of them.")
    if args.steps < 1:
        raise RefFaceError(f"--steps must be at least 1, got {args.steps}.")
    outputs = _output_paths(args)
    lq_images = [load_image(p) for p in args.lq]
    ref_images = [load_image(p) for p in args.ref or []]

    device = resolve_device(args.device)
    pipe = load_refldm(model=args.model, checkpoint=args.checkpoint, vqgan=args.vqgan, config=args.config)
    pipe = pipe.to(device=device, dtype=DTYPES[args.dtype])
    references = pipe.encode_references(ref_images)
    for start in range(0, len(lq_images), args.batch_size):
        chunk = lq_images[start : start + args.batch_size]
        result = pipe(
            chunk,
            references,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            seed=args.seed,
            spacing=args.schedule,
            progress=not args.quiet,
        )
        for image, target in zip(result.images, outputs[start : start + args.batch_size], strict=True):
            save_image(image, target)
            if not args.quiet:
                print(f"wrote {target}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from refface.pipelines.refldm import RefLDMPipeline

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise RefFaceError(
            f"The output folder {output} exists and is not empty; pass --overwrite to replace its model."
        )
    pipe = RefLDMPipeline.from_official(args.checkpoint, args.vqgan, args.config)
    pipe.save_pretrained(output, safe_serialization=True)
    print(f"wrote {output}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from refface.weights import REFLDM_WEIGHTS, VQGAN_WEIGHTS, cache_dir, ensure_weights

    directory = Path(args.dir) if args.dir else cache_dir()
    for weight in (REFLDM_WEIGHTS, VQGAN_WEIGHTS):
        path = ensure_weights(weight, directory, progress=not args.quiet)
        print(f"{path}  ({weight.licence})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refface", description="Reference-based face restoration.")
    commands = parser.add_subparsers(dest="command", required=True)

    restore = commands.add_parser("restore", help="restore LQ face crop(s) with reference photos of the same person")
    restore.add_argument("lq", nargs="+", help="low-quality photo(s); several = one person, results go to a folder")
    restore.add_argument("--ref", nargs="+", help="high-quality reference photo(s) of the same person")
    restore.add_argument("--no-refs", action="store_true", help="restore without references")
    restore.add_argument("--output", "-o", required=True, help="output image file (or folder for several LQ photos)")
    restore.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, as the released demo)")
    restore.add_argument("--cfg", type=float, default=1.5, help="guidance scale toward the references (default 1.5)")
    restore.add_argument("--seed", type=int, default=2024, help="noise seed (default 2024)")
    restore.add_argument("--schedule", choices=["uniform_trailing", "uniform"], default="uniform_trailing")
    restore.add_argument("--checkpoint", help="official refldm.ckpt (default: download the released weights)")
    restore.add_argument("--vqgan", help="official vqgan.ckpt")
    restore.add_argument("--config", help="official-format config YAML (default: the released architecture)")
    restore.add_argument("--model", help="a folder written by `refface convert` / save_pretrained")
    restore.add_argument("--aligned", action="store_true", help="inputs are already aligned face crops")
    restore.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    restore.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="fp32 reproduces the official output")
    restore.add_argument("--batch-size", type=int, default=4, help="LQ photos per denoising batch")
    restore.add_argument("--overwrite", action="store_true", help="replace existing output files")
    restore.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    restore.set_defaults(handler=cmd_restore)

    convert = commands.add_parser("convert", help="convert official checkpoints to a diffusers folder (safetensors)")
    convert.add_argument("output", help="folder to write")
    convert.add_argument("--checkpoint", required=True, help="official refldm.ckpt")
    convert.add_argument("--vqgan", help="official vqgan.ckpt")
    convert.add_argument("--config", help="official-format config YAML")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(handler=cmd_convert)

    download = commands.add_parser("download", help="download the released ReF-LDM weights into the cache")
    download.add_argument("--dir", help="folder to put them in (default: the refface cache)")
    download.add_argument("--quiet", "-q", action="store_true")
    download.set_defaults(handler=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("refface: error: --batch-size must be at least 1.", file=sys.stderr)
        return 2
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        return args.handler(args)
    except RefFaceError as error:
        print(f"refface: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("refface: interrupted; no output was left half-written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
