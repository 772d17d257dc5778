"""`refface restore`, `align`, `convert` and `download`: the model and face commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refface import methods
from refface.cli.common import (
    DEVICE_NAMES,
    DTYPE_NAMES,
    add_guidance_options,
    checked_dtype,
    face_selection,
    method_help,
    resolve_device,
    say,
    unique_stems,
)
from refface.errors import RefFaceError

# The commands this module adds, with their one-line help (the top-level help lists them without building them).
COMMANDS = {
    "restore": "restore the face(s) in photos (or aligned crops) with reference photos of the same person",
    "align": "write FFHQ-aligned face crops of photos",
    "convert": "convert official checkpoints to a diffusers folder (safetensors)",
    "download": "download the released ReF-LDM weights, the face detector and Real-ESRGAN into the cache",
}


def _aligned_output_paths(args: argparse.Namespace) -> list[Path]:
    from refface.imaging import check_output_path

    inputs = [*args.lq, *(args.ref or [])]
    output = Path(args.output)
    if len(args.lq) == 1:
        return [check_output_path(output, inputs, args.overwrite)]
    if output.exists() and not output.is_dir():
        raise RefFaceError(f"With several LQ photos --output must be a folder, but {output} is a file.")
    return [check_output_path(output / f"{stem}.png", inputs, args.overwrite) for stem in unique_stems(args.lq)]


def restore_settings(args: argparse.Namespace):
    """The run's settings from the command line: every option checked and defaulted there, before slow work."""
    from refface.photo.options import PhotoOutput
    from refface.restoration.settings import ReferenceSource, RestoreSettings
    from refface.video.encoding import Encoding
    from refface.video.options import VideoOptions

    video = VideoOptions(
        encoding=Encoding(crf=args.crf, lossless=args.lossless),
        detect_every=args.detect_every,
        temporal_smoothing=args.temporal_smoothing,
    )
    photo = PhotoOutput.build(
        scale=args.upscale, max_megapixels=args.max_megapixels, background=args.background,
        background_model=args.background_model, tile=args.tile, colour=args.colour, mask=args.paste_mask,
        format=args.format,
    )  # fmt: skip
    references = ReferenceSource.choose(
        args.ref, args.refs_dir, args.people, args.no_refs, args.person, args.num_refs,
        needed=methods.get(args.method).uses_references,
    )  # fmt: skip
    return RestoreSettings.build(
        method=args.method, steps=args.steps, guidance=args.guidance, lq_guidance=args.lq_guidance,
        color_fix=False if args.no_color_fix else None, context=args.context, spacing=args.spacing,
        solver=args.solver, fast=args.fast, fidelity=args.fidelity, blind_method=args.blind_method,
        blind_weights=args.blind_weights,
        strength=args.strength, seed=args.seed, model=args.model, checkpoint=args.checkpoint, vqgan=args.vqgan,
        config=args.config, loads_model=True, references=references, faces=args.face, unknown=args.unknown,
        batch_size=args.batch_size, strict=args.strict, identity=args.identity, arcface_weights=args.arcface_weights,
        detector=args.detector, aligned=args.aligned, device=args.device, dtype=args.dtype, output=args.output,
        overwrite=args.overwrite, video=video, photo=photo,
    )  # fmt: skip


def _people(args: argparse.Namespace, settings, detector, embedder):
    """Who the faces can be, from the settings' reference source (nobody with --no-refs), told to the user."""
    from refface.restoration.people import (
        no_people,
        people_from_album,
        people_from_folders,
        people_from_references,
    )

    source = settings.references
    if source.kind == "none":
        return no_people()
    if source.kind == "files":
        people = people_from_references(
            list(source.paths), detector, embedder, aligned=settings.aligned, strict=settings.strict
        )
    elif source.kind == "album":
        people = people_from_album(
            source.paths[0], detector, embedder, source.count, example=source.person, progress=not args.quiet
        )
    else:
        people = people_from_folders(source.paths[0], detector, embedder, source.count)
    for note in people.notes:
        say(args, f"references: {note}")
    for warning in people.warnings:
        print(f"refface: warning: {warning}", file=sys.stderr)
    return people


def _restore_aligned(args: argparse.Namespace, restorer) -> int:
    """--aligned: each input is a face crop; the restored crop is the output."""
    from PIL import Image

    from refface.imaging import load_image, save_image

    outputs = _aligned_output_paths(args)
    for start in range(0, len(args.lq), args.batch_size):
        paths = args.lq[start : start + args.batch_size]
        faces = restorer.restore_crops([load_image(p) for p in paths], "the crop")
        for path, face, target in zip(paths, faces, outputs[start : start + args.batch_size], strict=True):
            if face.message:
                print(f"refface: warning: {Path(path).name}: {face.message}", file=sys.stderr)
            if face.restored is None:
                say(args, f"skipped {path}: it matches none of the people ({face.status})")
                continue
            save_image(Image.fromarray(face.restored), target)
            say(args, f"wrote {target}")
    return 0


def _summarise(args: argparse.Namespace, summary, store, output: Path) -> int:
    """The end of a run for the user; a run in which every photo failed is an error (its first sentence)."""
    if summary.resumed:
        say(args, f"resumed: {summary.resumed} photo(s) were already done.")
    rate = summary.faces_restored / summary.seconds if summary.seconds > 0 else 0.0
    say(args, f"{summary.photos} file(s), {summary.faces_restored} face(s) restored in {summary.seconds:.1f} s "
              f"({rate:.2f} faces/s); {store.describe()}")  # fmt: skip
    failed = summary.rows and not any(isinstance(row["face"], int) for row in summary.rows)
    failed = failed and not summary.clips_written
    for problem in summary.problems:
        if not (failed and problem == summary.rows[0]["message"]):  # that one is the error below
            print(f"refface: warning: {problem}", file=sys.stderr)
    if (output / "report.csv").is_file() and summary.rows:
        say(args, f"wrote {output / 'report.csv'} ({len(summary.rows)} row(s))")
    if failed:
        raise RefFaceError(summary.rows[0]["message"])  # no photo had a face to restore
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from refface.restoration.archive import prepare_archive
    from refface.restoration.archive_inputs import list_photos
    from refface.video.media import is_video

    settings = restore_settings(args)
    state = PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))
    if settings.aligned:
        clips = [path for path in args.lq if is_video(path)]
        if clips:
            raise RefFaceError(f"--aligned takes aligned face crops, but {clips[0]} is a video; leave --aligned out.")
        _aligned_output_paths(args)
        return _run_restore(args, settings, state, None)
    photos, notes = list_photos(args.lq, settings.output)
    for note in notes:
        say(args, f"note: {note}")
    recorded = settings.recorded(with_video=any(photo.is_video for photo in photos))
    main = state.is_main_process
    with prepare_archive(settings.output, photos, recorded, settings.overwrite, main, settings.photo) as prepared:
        return _run_restore(args, settings, state, prepared)  # the folder's lock is released however this ends


def _run_restore(args: argparse.Namespace, settings, state, prepared) -> int:
    """The rest of `refface restore` once its settings and output folder are checked: models, people, the run."""
    from refface.face.detectors import choose_detector
    from refface.face.identity import make_embedder
    from refface.photo.background import Background
    from refface.restoration.archive import run_archive
    from refface.restoration.photo_restorer import PhotoRestorer
    from refface.restoration.reference_store import ReferenceStore
    from refface.restoration.video_restorer import VideoRestorer
    from refface.weights import cache_dir

    has_clips = prepared is not None and any(photo.is_video for photo in prepared.photos)
    device = state.device if state.num_processes > 1 else resolve_device(settings.device)
    dtype = checked_dtype(device, settings.dtype)
    for note in settings.notes():
        say(args, f"note: {note}")
    pipe = settings.load_pipeline().to(device=device, dtype=dtype)  # the weights first: a failed download is quick
    blind = settings.load_blind_pipeline()
    blind = blind.to(device=device, dtype=dtype) if blind is not None else None
    background = Background(settings.photo, device, progress=not args.quiet)
    background.prepare()  # a background model the options insist on, too
    needs_detector = not settings.aligned or settings.references.kind == "album"
    detector = None
    if needs_detector:
        detector, notes = choose_detector(settings.detector, device, progress=not args.quiet)
        for note in notes:
            say(args, f"note: {note}")
    shared = detector.shape_predictor if detector is not None else None
    embedder = (
        make_embedder(settings.identity, device, settings.arcface_weights, shared)
        if settings.references.given
        else None
    )
    people = _people(args, settings, detector, embedder)
    store = ReferenceStore(pipe, cache_dir() / "people")
    one_photo = prepared is None or (len(prepared.photos) == 1 and not has_clips)
    restorer = PhotoRestorer(
        pipe, people, detector, settings, store=store, background=background, blind=blind,
        progress=not args.quiet and one_photo,
    )  # fmt: skip
    if settings.aligned:
        return _restore_aligned(args, restorer)
    videos = VideoRestorer(restorer, progress=not args.quiet) if has_clips else None

    def tell(photo, result) -> None:
        for note in result.notes:
            say(args, f"note: {note}")
        for face in result.faces:
            if face.message:
                print(f"refface: warning: {face.message}", file=sys.stderr)
        if result.photo is not None and result.faces and not args.quiet and len(prepared.photos) <= 20:
            restored = len(result.restored_faces)
            say(args, f"wrote {prepared.result_path(photo)} ({restored} face(s) restored)")

    def tell_video(clip, result) -> None:
        for note in result.notes:
            say(args, f"note: {note}")
        for track in result.tracks:
            if track.face.message:
                print(f"refface: warning: {track.face.message}", file=sys.stderr)
        rate = result.frames / result.seconds if result.seconds > 0 else 0.0
        say(args, f"wrote {result.output} ({result.frames} frames, {len(result.tracks)} face track(s), "
                  f"{rate:.2f} frames/s)")  # fmt: skip

    summary = run_archive(
        prepared, restorer, state=state if state.num_processes > 1 else None,
        progress=not args.quiet and len(prepared.photos) > 1, on_photo=tell, videos=videos, on_video=tell_video,
    )  # fmt: skip
    if not state.is_main_process:
        return 0
    return _summarise(args, summary, store, prepared.output)


def cmd_align(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from refface.face.detectors import choose_detector
    from refface.face.locate import find_faces
    from refface.imaging import check_output_path, load_image, save_image

    if args.size < 16:
        raise RefFaceError(f"--size must be at least 16 pixels, got {args.size}.")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise RefFaceError(f"--output must be a folder, but {output} is a file.")
    detector, notes = choose_detector(args.detector)
    for note in notes:
        say(args, f"note: {note}")
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
    from refface.face.retinaface import RETINAFACE_WEIGHTS
    from refface.photo.background import DEFAULT_MODEL, REALESRGAN_MODELS
    from refface.weights import REFLDM_WEIGHTS, VQGAN_WEIGHTS, cache_dir, ensure_weights

    directory = Path(args.dir) if args.dir else cache_dir()
    weights = [REFLDM_WEIGHTS, VQGAN_WEIGHTS, RETINAFACE_WEIGHTS, REALESRGAN_MODELS[DEFAULT_MODEL]]
    if args.background:
        weights += [weight for name, weight in REALESRGAN_MODELS.items() if name != DEFAULT_MODEL]
    if args.baselines:
        from refface.pipelines.blind import KINDS

        weights += [kind.weights for kind in KINDS.values()]
    if args.encoders:
        from refface.face.arcface import ARCFACE_R50_WEIGHTS
        from refface.models.farl import FARL_WEIGHTS

        weights += [ARCFACE_R50_WEIGHTS, FARL_WEIGHTS]
    for weight in weights:
        path = ensure_weights(weight, directory, progress=not args.quiet)
        print(f"{path}  ({weight.licence})")
    return 0


def add_photo_output_options(parser: argparse.ArgumentParser) -> None:
    """How the restored photo is given back: scale, background, tone, paste mask, file format."""
    from refface.photo.options import BACKGROUNDS, COLOURS, DEFAULT_MAX_MEGAPIXELS, FORMATS, MASKS

    group = parser.add_argument_group("the photo given back")
    group.add_argument(
        "--upscale",
        help="output scale, 1 to 8, or auto: the smallest whole scale at which the largest face keeps its full "
        "restored size (at most 4); default 1",
    )  # fmt: skip
    group.add_argument(
        "--max-megapixels", type=float,
        help=f"the largest output any scale may give (default {DEFAULT_MAX_MEGAPIXELS:g})",
    )  # fmt: skip
    group.add_argument(
        "--background", choices=BACKGROUNDS,
        help="how the rest of an enlarged photo is drawn: auto (Real-ESRGAN when enlarging and its weights are at "
        "hand or downloadable, else Lanczos), realesrgan (also at scale 1), lanczos, none (scale 1 only)",
    )  # fmt: skip
    group.add_argument(
        "--background-model",
        help="a super-resolution checkpoint (any spandrel loads), or x2plus, x4plus, general-x4v3 (default)",
    )
    group.add_argument(
        "--tile", type=int, help="background model tile side in input pixels (default: by memory at hand; 0: none)"
    )
    group.add_argument(
        "--colour", choices=COLOURS,
        help="auto: black-and-white and toned photos keep their tone; keep: always; restore: the model's colours",
    )  # fmt: skip
    group.add_argument(
        "--paste-mask", choices=MASKS,
        help="face: the face's outline from its landmarks (default); square: the whole aligned square",
    )  # fmt: skip
    group.add_argument(
        "--format", choices=FORMATS, help="output file format (default keep: the input's own)"
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the model and face commands on the `refface` parser."""
    from refface.restoration.settings import DETECTORS, IDENTITY_MODELS, UNKNOWN_FACES

    restore = commands.add_parser("restore", help=COMMANDS["restore"])
    restore.add_argument(
        "lq", nargs="+", help="photos, video clips and folders of them to restore (folders: recursively)"
    )
    restore.add_argument("--ref", nargs="+", help="reference photo(s) of ONE person (the largest face is used)")
    restore.add_argument(
        "--refs-dir", help="album folder: its faces are grouped into people, each face restored as its own person"
    )
    restore.add_argument("--people", help="folder with one sub-folder of photos per named person (DIR/Anna/*.jpg)")
    restore.add_argument("--person", help="with --refs-dir: use only the album's person shown in this photo")
    restore.add_argument(
        "--num-refs", type=int, default=5, help="with --refs-dir/--people: references per person (default 5)"
    )
    restore.add_argument("--no-refs", action="store_true", help="restore without references")
    restore.add_argument(
        "--unknown",
        choices=UNKNOWN_FACES,
        default="no-refs",
        help="a face matching none of the people: restore it without references (no-refs, default), leave it "
        "untouched (skip) or restore it with a blind restorer (blind, see --blind-method)",
    )
    restore.add_argument(
        "--blind-method", choices=methods.blind_names(),
        help=f"with --unknown blind: the blind restorer (default {methods.DEFAULT_BLIND}; codeformer's licence is "
        "non-commercial)",
    )  # fmt: skip
    restore.add_argument("--blind-weights", help="with --unknown blind: its weights file (default: download)")
    restore.add_argument("--output", "-o", required=True, help="output folder (or image file for one --aligned crop)")
    restore.add_argument(
        "--face",
        type=face_selection,
        default="auto",
        help="which faces: all, largest, or a number (largest first); auto = largest with --ref, else all",
    )
    restore.add_argument("--aligned", action="store_true", help="inputs are already FFHQ-aligned face crops")
    restore.add_argument(
        "--detector", choices=DETECTORS, default="auto",
        help="face detector: auto (default: RetinaFace where its weights are at hand or downloadable, else cascade), "
        "retinaface, cascade (dlib's detectors in turn), hog or cnn alone",
    )  # fmt: skip
    restore.add_argument("--identity", choices=IDENTITY_MODELS, default="dlib", help="identity model for checks")
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
        "--strength",
        type=float,
        help="below 1: start from the photo noised to strength x T (a lighter touch that keeps more of the input; "
        "fewer steps run); 1 (default): the full restoration",
    )
    restore.add_argument(
        "--schedule",
        dest="spacing",
        choices=["uniform_trailing", "uniform"],
        help="refldm timestep spacing (default uniform_trailing)",
    )
    restore.add_argument(
        "--checkpoint",
        help="official refldm.ckpt, or a blind restorer's weights file (default: download the released weights)",
    )
    restore.add_argument("--vqgan", help="official vqgan.ckpt")
    restore.add_argument("--config", help="official-format config YAML (default: the released architecture)")
    restore.add_argument(
        "--model",
        help="a folder written by `refface convert` / `refface train` / save_pretrained (composite: required)",
    )
    restore.add_argument("--device", choices=DEVICE_NAMES, default="auto")
    restore.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="fp32",
        help="fp32 reproduces the official output; bf16 is faster on GPUs and on CPUs with AMX (changes the output)",
    )
    restore.add_argument(
        "--batch-size", type=int, default=4, help="faces of one person per denoising batch, across photos (default 4)"
    )
    restore.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (and start an interrupted run again)"
    )
    restore.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_photo_output_options(restore)
    video = restore.add_argument_group("video clips (.mp4, .mov, .mkv, .avi, .webm, .m4v)")
    video.add_argument("--crf", type=int, default=18, help="H.264 quality, 0-51 (default 18: visually lossless)")
    video.add_argument("--lossless", action="store_true", help="write the restored frames exactly (FFV1 in .mkv)")
    video.add_argument(
        "--temporal-smoothing",
        type=float,
        default=0.0,
        help="blend each restored face with its neighbours in time, Gaussian sigma in frames (default 0: off)",
    )
    video.add_argument(
        "--detect-every", type=int, default=1, help="look for faces on every k-th frame only (tracks fill the rest)"
    )
    restore.set_defaults(handler=cmd_restore)

    align = commands.add_parser("align", help=COMMANDS["align"])
    align.add_argument("inputs", nargs="+", help="photos")
    align.add_argument("--output", "-o", required=True, help="folder for the crops")
    align.add_argument("--face", type=face_selection, default="largest", help="all, largest (default) or a number")
    align.add_argument("--size", type=int, default=512, help="crop size in pixels (default 512, as FFHQ-Ref)")
    align.add_argument("--detector", choices=DETECTORS, default="auto")
    align.add_argument("--overwrite", action="store_true")
    align.add_argument("--quiet", "-q", action="store_true")
    align.set_defaults(handler=cmd_align)

    convert = commands.add_parser("convert", help=COMMANDS["convert"])
    convert.add_argument("output", help="folder to write")
    convert.add_argument("--checkpoint", required=True, help="official refldm.ckpt")
    convert.add_argument("--vqgan", help="official vqgan.ckpt")
    convert.add_argument("--config", help="official-format config YAML")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(handler=cmd_convert)

    download = commands.add_parser("download", help=COMMANDS["download"])
    download.add_argument("--dir", help="folder to put them in (default: the refface cache)")
    download.add_argument(
        "--encoders", action="store_true", help="also ArcFace R50 and FaRL, the Composite-Context training encoders"
    )
    download.add_argument(
        "--background", action="store_true", help="also Real-ESRGAN x2plus and x4plus (general-x4v3 always comes)"
    )
    download.add_argument(
        "--baselines", action="store_true",
        help="also the blind restorers CodeFormer (non-commercial), GFPGAN v1.4 and RestoreFormer++ (about 1 GB)",
    )  # fmt: skip
    download.add_argument("--quiet", "-q", action="store_true")
    download.set_defaults(handler=cmd_download)
