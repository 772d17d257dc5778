"""`refface export onnx`: ReF-LDM as ONNX graphs for ONNX Runtime / TensorRT hosts (docs/onnx.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from refface.cli.common import say
from refface.errors import RefFaceError


def _check_model_folder(model: str) -> None:
    """A Composite-Context folder is refused by name before anything loads; a missing folder says so."""
    from refface.pipelines.loading import PIPELINES, model_folder, saved_pipeline_class

    source = model_folder(model)
    if not source.is_dir():
        raise RefFaceError(f"The model folder {source} does not exist.")
    name = saved_pipeline_class(source)
    if name != "RefLDMPipeline":
        raise RefFaceError(
            f"The model folder {source} holds a {PIPELINES[name]} model; ONNX export covers ReF-LDM only."
        )


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from refface.export.settings import check_opset, check_output_folder

    output = Path(args.output)
    check_opset(args.opset)  # every cheap check before the weights load
    check_output_folder(output, args.overwrite)
    if args.verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RefFaceError("--verify needs onnxruntime; install it with pip install 'refface[onnx]'.") from None
    if args.model is not None:
        _check_model_folder(args.model)

    from refface.export.onnx_export import export_onnx
    from refface.pipelines.loading import load_refldm

    pipe = load_refldm(args.model, args.checkpoint, args.vqgan, args.config)
    export_onnx(pipe, output, opset=args.opset, overwrite=args.overwrite, progress=lambda text: say(args, text))
    say(args, f"wrote {output}")
    if args.verify:
        from refface.export.verify import verify_export

        differences = verify_export(pipe, output)
        for name, difference in differences.items():
            print(f"{name}: max abs difference onnxruntime vs PyTorch {difference:.3g}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    from refface.export.settings import DEFAULT_OPSET

    export = commands.add_parser("export", help="export a model for other runtimes")
    formats = export.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser(
        "onnx",
        help="ReF-LDM as ONNX: VQ encoder, VQ decoder, reference pass, U-Net with reference keys/values as inputs",
    )
    onnx.add_argument("output", help="folder to write (the four .onnx files, refface_onnx.json, onnx_sampler.py)")
    onnx.add_argument("--model", help="a ReF-LDM folder written by `refface convert` / `refface train`")
    onnx.add_argument("--checkpoint", help="official refldm.ckpt (default: the released weights)")
    onnx.add_argument("--vqgan", help="official vqgan.ckpt")
    onnx.add_argument("--config", help="official-format config YAML")
    onnx.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    onnx.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    onnx.add_argument(
        "--verify", action="store_true", help="run every graph in onnxruntime on random inputs against PyTorch"
    )
    onnx.add_argument("--quiet", action="store_true")
    onnx.set_defaults(handler=cmd_export_onnx)
