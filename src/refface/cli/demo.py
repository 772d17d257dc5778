"""`refface demo`: a newcomer's first run, the main job on photos that ship with installed packages.

It writes a damaged group photo of two people and a folder of photos of each, then runs exactly what a user
runs (`refface restore old_group_photo.jpg --people people/ --output restored/`) and puts the photo before and
after side by side. With the released weights (downloaded on first use) the faces come back as those two people;
offline it says so and runs the same route on the official-code test model, whose random weights give noise.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from refface.cli.common import DEVICE_NAMES, say
from refface.errors import RefFaceError, short_reason

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "demo": "restore a damaged group photo of two people that refface makes from public-domain photos",
}
MARKER = ".refface-demo"  # a folder the demo wrote, which a later demo may write over
FIXTURE_STEPS = 5  # the test model's steps: its faces are noise at any count


def _fixture_model() -> Path | None:
    """The official-code test model (REFFACE_FIXTURES, else the repository's tests/fixtures), when it is here."""
    default = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
    folder = Path(os.environ.get("REFFACE_FIXTURES", default)) / "official-slim"
    return folder if (folder / "refldm.ckpt").is_file() else None


def _test_model(output: Path) -> list[str]:
    """The restore options of the test model: the official-code fixture, else a tiny random model saved here."""
    fixture = _fixture_model()
    if fixture is not None:
        files = ("--checkpoint", fixture / "refldm.ckpt", "--vqgan", fixture / "vqgan.ckpt", "--config",
                 fixture / "config.yaml")  # fmt: skip
        return [str(part) for part in files]
    from refface.models.config import tiny_architecture
    from refface.pipelines.refldm import RefLDMPipeline

    folder = output / "test-model"
    if not (folder / "model_index.json").is_file():
        RefLDMPipeline.from_architecture(tiny_architecture()).save_pretrained(folder, safe_serialization=True)
    return ["--model", str(folder)]


def _released_weights(quiet: bool) -> str | None:
    """None when the released weights are in the cache (downloaded now, with progress, if need be); else why not."""
    from refface.weights import REFLDM_WEIGHTS, VQGAN_WEIGHTS, DownloadFailed, ensure_all

    try:
        ensure_all([REFLDM_WEIGHTS, VQGAN_WEIGHTS], progress=not quiet)
    except DownloadFailed as failed:
        return f"they could not be downloaded: {failed.reason}"
    except RefFaceError as error:
        return short_reason(error)
    return None


def _check_output(output: Path) -> None:
    """The demo writes into a new or empty folder, or over an earlier demo; never over anything else."""
    if output.exists() and not output.is_dir():
        raise RefFaceError(f"The demo's --output {output} is a file; give a folder.")
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).is_file():
        raise RefFaceError(f"The folder {output} holds files the demo did not write; choose another --output.")


def cmd_demo(args: argparse.Namespace) -> int:
    from refface.cli import build_parser
    from refface.cli.restore import cmd_restore
    from refface.data.demo_photos import write_demo_inputs

    output = Path(args.output)
    _check_output(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by refface demo\n", encoding="utf-8")
    inputs = write_demo_inputs(output / "inputs")
    say(args, f"wrote the damaged group photo {inputs.photo} and each person's photos in {inputs.people}/")

    unavailable = "--offline was given" if args.offline else _released_weights(args.quiet)
    if unavailable is None:
        model = ["--fast"] if args.device == "cpu" or not _has_gpu() else []
        kind = "the released ReF-LDM weights" + (" in fast mode (DPM-Solver++, 20 steps)" if model else "")
    else:
        print(
            f"refface: note: the released weights are not at hand ({unavailable}); the demo runs the same workflow "
            "on the official-code test model, whose weights are random, so the restored faces will be noise.",
            file=sys.stderr,
        )
        model = [*_test_model(output), "--steps", str(FIXTURE_STEPS)]
        kind = "the test model (random weights)"
    restored = output / "restored"
    command = ["restore", str(inputs.photo), "--people", str(inputs.people), "--output", str(restored),
               "--overwrite", "--device", args.device, *model, *(["--quiet"] if args.quiet else [])]  # fmt: skip
    say(args, f"restoring each face as its own person with {kind}:\n  refface {shlex.join(command)}")
    code = cmd_restore(build_parser("restore").parse_args(command))
    if code:
        return code
    from refface.imaging import load_image, save_image
    from refface.restoration.report import before_after

    result = restored / "restored_imgs" / inputs.photo.name
    save_image(before_after(load_image(inputs.photo), load_image(result)), output / "before_after.png")
    say(args, f"wrote {output / 'before_after.png'} (the photo before and after), {result} and {restored}/report.csv")
    return 0


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def add_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help=COMMANDS["demo"])
    demo.add_argument("--output", "-o", default="refface-demo", help="folder for the demo (default ./refface-demo)")
    demo.add_argument(
        "--offline", action="store_true", help="use the test model even where the released weights could be downloaded"
    )
    demo.add_argument("--device", choices=DEVICE_NAMES, default="auto")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    demo.set_defaults(handler=cmd_demo)
