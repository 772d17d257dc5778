"""`refface degrade` and `refface dataset build|benchmark|info`: the data commands."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from refface.cli.common import DEVICE_NAMES, resolve_device, say
from refface.errors import RefFaceError

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "degrade": "synthesise LQ images from a folder of HQ faces (reproducible)",
    "dataset": "build FFHQ-Ref-style datasets and benchmark sets",
}


# Cosine-distance rules per identity model. ArcFace: FFHQ-Ref's (pairs under 0.4 are one person, test
# references at least 0.1 from the target). dlib's published rule is Euclidean 0.6 on descriptors of norm
# about 1.46, i.e. cosine distance 0.6**2 / (2 * 1.46**2) = 0.085; its test margin is scaled alike.
IDENTITY_RULES = {"arcface": (0.4, 0.1), "dlib": (0.085, 0.02)}


def cmd_degrade(args: argparse.Namespace) -> int:
    from refface.data.degradations import degradation_by_name
    from refface.data.degrade_folder import degrade_images, list_images

    degradation = degradation_by_name(args.preset)
    names = list_images(Path(args.input))
    csv = degrade_images(
        names, Path(args.input), Path(args.output), degradation, args.seed, args.size, args.overwrite, not args.quiet
    )
    say(args, f"wrote {len(names)} LQ image(s) to {args.output} and their parameters to {csv}")
    return 0


def _identity_labels(path: str, names: list[str]) -> list[str]:
    """Labels from a `name identity` file (CelebA's identity_CelebA.txt layout), one per image."""
    from refface.errors import require_file

    source = require_file(path, "identities file")
    labels: dict[str, str] = {}
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 2:
            raise RefFaceError(f"Line {number} of {source} should be `image_name identity`, got {line.strip()!r}.")
        labels[fields[0]] = fields[1]
    missing = [name for name in names if name not in labels]
    if missing:
        raise RefFaceError(
            f"The identities file {source} has no identity for {len(missing)} image(s), e.g. {missing[0]}."
        )
    return [labels[name] for name in names]


def _embeddings(args: argparse.Namespace, out_dir: Path):
    """Names and embeddings: loaded from --embeddings/--names, or computed (resumably) from the images."""
    from refface.data.degrade_folder import list_images
    from refface.data.embed import check_images_exist, embed_images, load_embeddings

    if args.embeddings or args.names:
        if not (args.embeddings and args.names):
            raise RefFaceError("--embeddings and --names go together: row i of the array belongs to line i of names.")
        names, embeddings = load_embeddings(args.embeddings, args.names)
        check_images_exist(names, args.images)
        return names, embeddings, None
    from accelerate import Accelerator

    from refface.face.identity import make_embedder

    names = list_images(Path(args.images))
    device = resolve_device(args.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    embedder = make_embedder(args.identity, accelerator.device, args.arcface_weights)
    work_dir = out_dir.parent / f".{out_dir.name}.embedding"
    embeddings = embed_images(
        names,
        args.images,
        embedder,
        work_dir,
        batch_size=args.batch_size,
        accelerator=accelerator,
        progress=not args.quiet,
    )
    return names, embeddings, (accelerator, work_dir)


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from refface.data.ffhq_ref import BuildSettings, build_reference_dataset, write_reference_dataset

    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
        raise RefFaceError(f"The output folder {out_dir} exists and is not empty; pass --overwrite to replace it.")
    threshold, margin = IDENTITY_RULES[args.identity]
    settings = BuildSettings(
        threshold=args.threshold if args.threshold is not None else threshold,
        val_ids=args.val_ids,
        test_ids=args.test_ids,
        min_test_distance=args.min_test_distance if args.min_test_distance is not None else margin,
        seed=args.seed,
    )
    names, embeddings, job = _embeddings(args, out_dir)
    if job is not None and not job[0].is_main_process:
        return 0  # the other processes only helped embed
    labels = _identity_labels(args.identities, names) if args.identities else None
    dataset = build_reference_dataset(
        names, embeddings, settings, identities=labels, source=args.embeddings or args.images
    )
    write_reference_dataset(dataset, out_dir, overwrite=args.overwrite, embeddings=embeddings)
    if job is not None:
        shutil.rmtree(job[1], ignore_errors=True)
    say(args, (out_dir / "statistics.md").read_text())
    say(args, f"wrote {out_dir}")
    return 0


def cmd_dataset_benchmark(args: argparse.Namespace) -> int:
    from refface.data.benchmark_sets import make_benchmark_set

    size = None if args.size == 0 else args.size
    out = make_benchmark_set(
        args.references, args.images, args.output, args.preset, args.seed, size, args.overwrite, not args.quiet
    )
    say(args, f"wrote the {args.preset} benchmark set to {out}")
    return 0


def cmd_dataset_info(args: argparse.Namespace) -> int:
    from refface.data.reference_csv import read_reference_dataset

    dataset = read_reference_dataset(args.folder)
    print(dataset.summary())
    return 0


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {number}")
    return number


def _identity_count(value: str) -> int | None:
    """A number of identities, or `all` (None: every remaining identity with references)."""
    return None if value == "all" else _non_negative(value)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the data commands on the `refface` parser."""
    from refface.data.preset_names import PRESET_NAMES

    degrade = commands.add_parser("degrade", help=COMMANDS["degrade"])
    degrade.add_argument("input", help="folder of HQ images")
    degrade.add_argument("output", help="folder for the LQ images and degradation_params.csv")
    degrade.add_argument(
        "--preset", choices=sorted(PRESET_NAMES), default="severe", help="degradation model (default severe)"
    )
    degrade.add_argument("--seed", type=int, default=0, help="image i uses the generator of (seed, i)")
    degrade.add_argument("--size", type=int, help="resize the HQ images to SIZE x SIZE first (default: keep)")
    degrade.add_argument("--overwrite", action="store_true")
    degrade.add_argument("--quiet", "-q", action="store_true")
    degrade.set_defaults(handler=cmd_degrade)

    dataset = commands.add_parser("dataset", help=COMMANDS["dataset"])
    actions = dataset.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="group aligned faces into identities and write reference CSVs")
    build.add_argument("images", help="folder of aligned face images (e.g. FFHQ images1024x1024)")
    build.add_argument("output", help="dataset folder to write (reference_mapping/, id_based_ffhq_split/, ...)")
    build.add_argument("--embeddings", help="precomputed embeddings (.npy, one row per image) instead of embedding")
    build.add_argument("--names", help="with --embeddings: image names, line i for row i")
    build.add_argument("--identities", help="`name identity` lines (e.g. CelebA) instead of the threshold graph")
    build.add_argument("--identity", choices=sorted(IDENTITY_RULES), default="arcface", help="embedding model")
    build.add_argument("--arcface-weights", help="ArcFace .onnx/.pth file (default: download the R50)")
    build.add_argument("--threshold", type=float, help="cosine distance linking two images (arcface default 0.4)")
    build.add_argument("--val-ids", type=_non_negative, default=300, help="identities in val (default 300)")
    build.add_argument(
        "--test-ids", type=_identity_count, default=150, help="identities in test (default 150; all: every other one)"
    )
    build.add_argument(
        "--min-test-distance", type=float, help="test references at least this far from the target (default 0.1)"
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the identity split (default 0)")
    build.add_argument("--device", choices=DEVICE_NAMES, default="auto")
    build.add_argument("--batch-size", type=int, default=32, help="images per embedding batch")
    build.add_argument("--overwrite", action="store_true")
    build.add_argument("--quiet", "-q", action="store_true")
    build.set_defaults(handler=cmd_dataset_build)

    bench = actions.add_parser("benchmark", help="make a fixed LQ test set from a reference CSV")
    bench.add_argument("references", help="reference CSV (e.g. reference_mapping/test_references.csv)")
    bench.add_argument("images", help="folder of the HQ images it names")
    bench.add_argument("output", help="folder for the LQ images, degradation_params.csv and references.csv")
    bench.add_argument("--preset", choices=sorted(PRESET_NAMES), default="severe")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--size", type=_non_negative, default=512, help="HQ resized to SIZE first (0: keep; default 512)"
    )
    bench.add_argument("--overwrite", action="store_true")
    bench.add_argument("--quiet", "-q", action="store_true")
    bench.set_defaults(handler=cmd_dataset_benchmark)

    info = actions.add_parser("info", help="summarise a dataset folder (ours or the released FFHQ-Ref)")
    info.add_argument("folder")
    info.set_defaults(handler=cmd_dataset_info)
