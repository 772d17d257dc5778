"""`refface train`: one training stage from a preset or YAML config, resumable, under `accelerate launch` too."""

from __future__ import annotations

import argparse

import yaml

from refface.cli.common import say

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "train": "train a VQGAN, LDM or ReF-LDM stage (multi-GPU: accelerate launch -m refface.cli train ...)",
    "train-presets": "list the built-in training presets",
}


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE (e.g. run.batch_size=4), got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"--set {key}: {value!r} is not a YAML value") from None


def cmd_train(args: argparse.Namespace) -> int:
    from refface.train.config import load_config
    from refface.train.trainer import train

    config = load_config(args.config, dict(args.set or []))
    result = train(config, args.output, max_steps=args.max_steps, resume=args.resume, progress=not args.quiet)
    if not result.last_metrics:
        say(args, f"{args.output}: already trained to step {result.step}; nothing to do.")
        return 0
    loss = result.last_metrics.get("loss")
    say(args, f"Trained to step {result.step} (loss {loss:.4f}); metrics in {result.output / 'metrics.jsonl'}.")
    if result.model is not None:
        say(args, f"Final model: {result.model}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from importlib import resources

    from refface.train.config import preset_names

    for name in preset_names():
        text = resources.files("refface.train.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
        first = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "")
        print(f"{name:14s} {first}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the training commands on the `refface` parser."""
    train = commands.add_parser("train", help=COMMANDS["train"])
    train.add_argument("config", help="a preset name (see `refface train-presets`) or a YAML config file")
    train.add_argument("--output", required=True, help="run folder (checkpoints, metrics.jsonl, samples, model)")
    train.add_argument("--max-steps", type=int, help="train to this step (overrides run.max_steps)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    train.add_argument(
        "--set", action="append", type=_override, metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    train.add_argument("--quiet", "-q", action="store_true")
    train.set_defaults(handler=cmd_train)

    presets = commands.add_parser("train-presets", help=COMMANDS["train-presets"])
    presets.set_defaults(handler=cmd_presets, quiet=False)
