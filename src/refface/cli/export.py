"""`refface export onnx`: ReF-LDM as ONNX graphs for ONNX Runtime / TensorRT hosts (docs/onnx.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from refface.cli.common import say
from refface.errors import RefFaceError

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "export": "export a model for other runtimes",
}


def _refldm_sources(args: argparse.Namespace):
    """ReF-LDM's weight files as given; a missing folder, or one of another method, is refused by name before
    anything loads."""
    from refface import methods
    from refface.pipelines.loading import model_folder

    if args.model is not None:
        source = model_folder(args.model)
        if not source.is_dir():
            raise RefFaceError(f"The model folder {source} does not exist.")
        method, _ = methods.of_folder(source)
        if method.name != "refldm":
            raise RefFaceError(
                f"The model folder {source} holds a {method.label} model; ONNX export covers ReF-LDM only."
            )
    return methods.get("refldm").sources(args.model, args.checkpoint, args.vqgan, args.config)


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
    sources = _refldm_sources(args)

    from refface import methods
    from refface.export.onnx_export import export_onnx

    pipe = methods.get("refldm").load(sources)
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

    export = commands.add_parser("export", help=COMMANDS["export"])
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
