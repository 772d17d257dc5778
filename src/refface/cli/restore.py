"""`refface restore`, `align`, `convert` and `download`: the model and face commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refface import methods
from refface.cli.common import (
    DTYPES,
    add_guidance_options,
    checked_dtype,
    face_selection,
    method_help,
    resolve_device,
    say,
    unique_stems,
)
from refface.errors import RefFaceError


def _aligned_output_paths(args: argparse.Namespace) -> list[Path]:
    from refface.imaging import check_output_path

    inputs = [*args.lq, *(args.ref or [])]
    output = Path(args.output)
    if len(args.lq) == 1:
        return [check_output_path(output, inputs, args.overwrite)]
    if output.exists() and not output.is_dir():
        raise RefFaceError(f"With several LQ photos --output must be a folder, but {output} is a file.")
    return [check_output_path(output / f"{stem}.png", inputs, args.overwrite) for stem in unique_stems(args.lq)]


def _photo_output_folder(args: argparse.Namespace) -> Path:
    from refface.imaging import SAVE_FORMATS

    output = Path(args.output)
    if output.suffix.lower() in SAVE_FORMATS or (output.exists() and not output.is_dir()):
        raise RefFaceError(
            f"For whole photos --output is a folder (it receives restored_imgs/, cropped_faces/, restored_faces/ "
            f"and cmp/), but {output} looks like a file; pass --aligned if the inputs are face crops."
        )
    unique_stems(args.lq)
    return output


def _check_restore_options(args: argparse.Namespace) -> None:
    sources = [
        name
        for name, given in (("--ref", args.ref), ("--refs-dir", args.refs_dir), ("--no-refs", args.no_refs))
        if given
    ]
    if not sources:
        raise RefFaceError(
            "No reference photos were given: pass --ref FILE [FILE ...], --refs-dir ALBUM_FOLDER, or --no-refs "
            "to restore without."
        )
    if len(sources) > 1:
        raise RefFaceError(f"{' and '.join(sources)} contradict each other; use one of them.")
    if args.person and not args.refs_dir:
        raise RefFaceError("--person only applies to reference selection from an album (--refs-dir).")
    if args.fast and args.solver == "ddim":
        raise RefFaceError("--fast samples with DPM-Solver++; it contradicts --solver ddim.")
    if args.steps is not None and args.steps < 1:
        raise RefFaceError(f"--steps must be at least 1, got {args.steps}.")
    if args.arcface_weights and args.identity != "arcface":
        raise RefFaceError("--arcface-weights only applies with --identity arcface.")
    if args.num_refs < 1:
        raise RefFaceError(f"--num-refs must be at least 1, got {args.num_refs}.")


def _sampling_options(args: argparse.Namespace) -> dict:
    """The pipeline call options of --method, each option checked against the method (before any slow work)."""
    method = methods.get(args.method)
    method.check_sources(args.model, args.checkpoint, args.vqgan, args.config)
    solver = "dpm++" if args.fast else args.solver
    fast = solver == "dpm++" and method.fast_steps is not None
    steps = args.steps if args.steps is not None else (method.fast_steps if fast else method.steps)
    return method.sampling_options(steps, args.guidance, args.lq_guidance, not args.no_color_fix, args.spacing, solver)


def _load_pipeline(args: argparse.Namespace):
    return methods.get(args.method).load(args.model, args.checkpoint, args.vqgan, args.config)


def _reference_crops(args: argparse.Namespace, detector, embedder, lq_crop) -> tuple[list, list[str]]:
    """Aligned reference crops (uint8 arrays) and a label for each, from --ref files or the album.

    Album faces are matched against the LQ face (`lq_crop`) unless a --person example is given.
    """
    from refface.face.album import choose_references, scan_album
    from refface.imaging import load_image
    from refface.photo import align_references, as_rgb_array

    if args.no_refs:
        return [], []
    if args.ref:
        images = [load_image(p) for p in args.ref]
        if args.aligned:
            return [as_rgb_array(image) for image in images], [Path(p).name for p in args.ref]
        crops, notes = align_references(images, [str(p) for p in args.ref], detector)
        for note in notes:
            say(args, f"note: {note}")
        return crops, [Path(p).name for p in args.ref]
    scan = scan_album(args.refs_dir, detector, embedder, progress=not args.quiet)
    for name, reason in scan.skipped.items():
        say(args, f"references: skipped {name}: {reason}")
    if args.person:
        example, _ = align_references([load_image(args.person)], [args.person], detector)
        target, kind = embedder.embed(example)[0], "--person example"
    else:
        target, kind = embedder.embed([lq_crop])[0], "LQ face"
    choice = choose_references(scan.faces, embedder, args.num_refs, target, kind)
    for reason in choice.reasons:
        say(args, f"references: {reason}")
    return [face.align().image for face in choice.chosen], [face.label for face in choice.chosen]


def cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from refface.face.album import sharpness
    from refface.face.detection import DlibDetector
    from refface.face.guard import check_identity, lq_is_usable
    from refface.face.identity import make_embedder
    from refface.face.locate import find_faces
    from refface.imaging import check_output_path, load_image, save_image
    from refface.photo import as_rgb_array, comparison_image, restore_faces

    _check_restore_options(args)
    sampling = _sampling_options(args)
    has_refs = not args.no_refs
    select = args.face if args.face != "auto" else ("largest" if has_refs else "all")
    if args.aligned:
        outputs = _aligned_output_paths(args)
    else:
        folder = _photo_output_folder(args)
        outputs = [
            check_output_path(folder / "restored_imgs" / f"{Path(p).stem}.png", args.lq, args.overwrite)
            for p in args.lq
        ]

    device = resolve_device(args.device)
    dtype = checked_dtype(device, args.dtype)
    detector = None if args.aligned and (args.ref or args.no_refs) else DlibDetector(args.detector)
    shared = detector.shape_predictor if detector is not None else None
    embedder = make_embedder(args.identity, device, args.arcface_weights, shared) if has_refs else None

    # Find every face first, so mistakes in the inputs surface before the slow model work.
    photos = [as_rgb_array(load_image(p)) for p in args.lq]
    if args.aligned:
        face_lists = [[photo] for photo in photos]
    else:
        face_lists = []
        for path, photo in zip(args.lq, photos, strict=True):
            search = find_faces(photo, detector, select, source=path)
            for note in search.notes:
                say(args, f"note: {note}")
            face_lists.append(search.faces)
        # Every per-face output is checked now, before any model work, not photo by photo later.
        for path, faces in zip(args.lq, face_lists, strict=True):
            for kind in ("cropped_faces", "restored_faces", "cmp"):
                for number in range(len(faces)):
                    check_output_path(folder / kind / f"{Path(path).stem}_{number:02d}.png", args.lq, args.overwrite)
    first_crop = face_lists[0][0] if args.aligned else face_lists[0][0].image
    first_size = None if args.aligned else face_lists[0][0].quad.size

    ref_crops, ref_labels = _reference_crops(args, detector, embedder, first_crop)
    if ref_crops:
        usable = lq_is_usable(sharpness(first_crop), [sharpness(c) for c in ref_crops], first_size)
        report = check_identity(embedder, ref_crops, ref_labels, first_crop if usable else None, strict=args.strict)
        say(args, report.summary())
        for warning in report.warnings:
            print(f"refface: warning: {warning}", file=sys.stderr)

    pipe = _load_pipeline(args).to(device=device, dtype=dtype)
    references = pipe.encode_references([Image.fromarray(c) for c in ref_crops])

    def restore(crops):
        return pipe(crops, references, seed=args.seed, progress=not args.quiet, **sampling).images

    if args.aligned:
        for start in range(0, len(photos), args.batch_size):
            chunk = [Image.fromarray(p) for p in photos[start : start + args.batch_size]]
            for image, target in zip(restore(chunk), outputs[start : start + args.batch_size], strict=True):
                save_image(image, target)
                say(args, f"wrote {target}")
        return 0

    for path, photo, faces, target in zip(args.lq, photos, face_lists, outputs, strict=True):
        stem = Path(path).stem
        names = [f"{stem}_{number:02d}.png" for number in range(len(faces))]
        result, restored = restore_faces(photo, faces, restore, args.batch_size)
        for name, face in zip(names, restored, strict=True):
            save_image(Image.fromarray(face.aligned.image), folder / "cropped_faces" / name)
            save_image(Image.fromarray(face.restored), folder / "restored_faces" / name)
            save_image(comparison_image(face.aligned.image, face.restored, ref_crops), folder / "cmp" / name)
        save_image(Image.fromarray(np.asarray(result)), target)
        say(args, f"wrote {target} ({len(faces)} face(s) restored)")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from refface.face.detection import DlibDetector
    from refface.face.locate import find_faces
    from refface.imaging import check_output_path, load_image, save_image

    if args.size < 16:
        raise RefFaceError(f"--size must be at least 16 pixels, got {args.size}.")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise RefFaceError(f"--output must be a folder, but {output} is a file.")
    detector = DlibDetector(args.detector)
    select = "largest" if args.face == "auto" else args.face
    failures = 0
    for path in args.inputs:
        try:
            search = find_faces(np.asarray(load_image(path)), detector, select, args.size, path)
        except RefFaceError as error:
            print(f"refface: skipped: {error}", file=sys.stderr)
            failures += 1
            continue
        for note in search.notes:
            say(args, f"note: {note}")
        stem = Path(path).stem
        several = select == "all"
        for number, face in enumerate(search.faces):
            target = check_output_path(
                output / (f"{stem}_{number:02d}.png" if several else f"{stem}.png"), args.inputs, args.overwrite
            )
            save_image(Image.fromarray(face.image), target)
            say(args, f"wrote {target}")
    if failures:
        print(f"refface: {failures} of {len(args.inputs)} input(s) had no usable face.", file=sys.stderr)
    return 1 if failures == len(args.inputs) else 0


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
    weights = [REFLDM_WEIGHTS, VQGAN_WEIGHTS]
    if args.encoders:
        from refface.face.arcface import ARCFACE_R50_WEIGHTS
        from refface.models.farl import FARL_WEIGHTS

        weights += [ARCFACE_R50_WEIGHTS, FARL_WEIGHTS]
    for weight in weights:
        path = ensure_weights(weight, directory, progress=not args.quiet)
        print(f"{path}  ({weight.licence})")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the model and face commands on the `refface` parser."""
    restore = commands.add_parser(
        "restore", help="restore the face(s) in photos (or aligned crops) with reference photos of the same person"
    )
    restore.add_argument("lq", nargs="+", help="photo(s) to restore; several = the same person")
    restore.add_argument("--ref", nargs="+", help="reference photo(s) of the same person (the largest face is used)")
    restore.add_argument("--refs-dir", help="album folder: pick the references from its photos automatically")
    restore.add_argument("--person", help="with --refs-dir: a photo of the person to pick from the album")
    restore.add_argument("--num-refs", type=int, default=5, help="with --refs-dir: references to pick (default 5)")
    restore.add_argument("--no-refs", action="store_true", help="restore without references")
    restore.add_argument("--output", "-o", required=True, help="output folder (or image file for one --aligned crop)")
    restore.add_argument(
        "--face",
        type=face_selection,
        default="auto",
        help="which faces: all, largest, or a number (largest first); auto = largest with references, else all",
    )
    restore.add_argument("--aligned", action="store_true", help="inputs are already FFHQ-aligned face crops")
    restore.add_argument("--detector", choices=["hog", "cnn"], default="hog", help="dlib face detector (cnn: slower)")
    restore.add_argument("--identity", choices=["dlib", "arcface"], default="dlib", help="identity model for checks")
    restore.add_argument("--arcface-weights", help="ArcFace .onnx/.pth file for --identity arcface (default: download)")
    restore.add_argument("--strict", action="store_true", help="refuse when the identity check fails")
    restore.add_argument("--method", choices=methods.names(), default=methods.DEFAULT, help=method_help())
    restore.add_argument(
        "--steps", type=int, help="sampling steps (default 50 DDIM steps, as the released demo; 20 with --fast)"
    )
    restore.add_argument(
        "--solver", choices=["ddim", "dpm++"], help="refldm sampler: ddim (default, the official output) or dpm++"
    )
    restore.add_argument(
        "--fast",
        action="store_true",
        help="refldm fast mode: DPM-Solver++ in 20 steps, about half the time per photo; not the official output",
    )
    add_guidance_options(restore)
    restore.add_argument("--seed", type=int, default=2024, help="noise seed (default 2024)")
    restore.add_argument(
        "--schedule",
        dest="spacing",
        choices=["uniform_trailing", "uniform"],
        help="refldm timestep spacing (default uniform_trailing)",
    )
    restore.add_argument("--checkpoint", help="official refldm.ckpt (default: download the released weights)")
    restore.add_argument("--vqgan", help="official vqgan.ckpt")
    restore.add_argument("--config", help="official-format config YAML (default: the released architecture)")
    restore.add_argument(
        "--model",
        help="a folder written by `refface convert` / `refface train` / save_pretrained (composite: required)",
    )
    restore.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    restore.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="fp32",
        help="fp32 reproduces the official output; bf16 is faster on GPUs and on CPUs with AMX (changes the output)",
    )
    restore.add_argument("--batch-size", type=int, default=4, help="face crops per denoising batch")
    restore.add_argument("--overwrite", action="store_true", help="replace existing output files")
    restore.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    restore.set_defaults(handler=cmd_restore)

    align = commands.add_parser("align", help="write FFHQ-aligned face crops of photos")
    align.add_argument("inputs", nargs="+", help="photos")
    align.add_argument("--output", "-o", required=True, help="folder for the crops")
    align.add_argument("--face", type=face_selection, default="largest", help="all, largest (default) or a number")
    align.add_argument("--size", type=int, default=512, help="crop size in pixels (default 512, as FFHQ-Ref)")
    align.add_argument("--detector", choices=["hog", "cnn"], default="hog")
    align.add_argument("--overwrite", action="store_true")
    align.add_argument("--quiet", "-q", action="store_true")
    align.set_defaults(handler=cmd_align)

    convert = commands.add_parser("convert", help="convert official checkpoints to a diffusers folder (safetensors)")
    convert.add_argument("output", help="folder to write")
    convert.add_argument("--checkpoint", required=True, help="official refldm.ckpt")
    convert.add_argument("--vqgan", help="official vqgan.ckpt")
    convert.add_argument("--config", help="official-format config YAML")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(handler=cmd_convert)

    download = commands.add_parser("download", help="download the released ReF-LDM weights into the cache")
    download.add_argument("--dir", help="folder to put them in (default: the refface cache)")
    download.add_argument(
        "--encoders", action="store_true", help="also ArcFace R50 and FaRL, the Composite-Context training encoders"
    )
    download.add_argument("--quiet", "-q", action="store_true")
    download.set_defaults(handler=cmd_download)
