"""The photo given back: how much of a restored face reaches it, whether its paste shows, what the background costs.

Run from the repository root (the test extra installed): `python benchmarks/bench_photo_back.py`.

1. Restoration kept: the astronaut (scikit-image's sample photo) placed so her face (jaw line) is 64, 96 and 128
   pixels wide; a detailed 512 px crop stands in for the model's output (her aligned face from the full photo
   plus fine texture). The crop is pasted at each output scale and taken again from the finished photo; the
   PSNR of the two inside the face (where the paste takes the crop whole) says how much of it survived.
2. Seams: restored crops brighter or darker and in another colour cast than the photo, pasted with the plain
   feathered square (the paste refface had before) and with the face mask whose edge takes the photo's tone;
   the seam figure is the gradient the paste adds across the mask's edge relative to the photo's own there
   (0: no seam), the ratio the finished photo's gradient there relative to the input's (1: nothing new).
3. JPEG: how far pixels away from the faces move when a JPEG is written again with its own tables.
4. Background: time and peak memory (each in a fresh process, ru_maxrss) of a Real-ESRGAN model of the released
   layout (random weights: the time does not depend on them) on 1, 4 and 16 megapixel photos, tiled and untiled
   where it fits, and the resize to scale 2 and 4 after it.

    python benchmarks/bench_photo_back.py --parts kept seams jpeg
    python benchmarks/bench_photo_back.py --parts background --models general-x4v3 --megapixels 1 4 16
    python benchmarks/bench_photo_back.py --parts background --models x2plus x4plus --megapixels 1 --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.photo.scenes import aligned_in, scene_and_face  # noqa: E402

from refface.evaluation.photo_back import kept_psnr, seam_figures  # noqa: E402
from refface.face.paste import face_mask, paste_face  # noqa: E402
from refface.photo.background import Background  # noqa: E402
from refface.photo.options import PhotoOutput  # noqa: E402
from refface.photo.original import OriginalPhoto, original_from_bytes  # noqa: E402
from refface.photo.writer import encode_photo  # noqa: E402
from refface.restoration.compose import choose_scale, compose  # noqa: E402

FACE_WIDTHS = (64, 96, 128)
SHIFTS = ((40, 20, -15), (-30, -10, 25))


def restoration_kept() -> list[str]:
    lines = ["| face width | face square | S = 1 | S = 2 | S = 4 | auto (its S) |", "|---|---|---|---|---|---|"]
    for width in FACE_WIDTHS:
        scene, aligned = scene_and_face(width)
        cells = []
        for scale in (1, 2, 4, "auto"):
            options = PhotoOutput(scale=scale, background="lanczos")
            made = compose(OriginalPhoto(scene.photo), [(scene.restored, aligned)], options, Background(options))
            figure = f"{kept_psnr(made.pixels, scene.restored, aligned):.1f} dB"
            cells.append(f"{figure} ({made.scale:g})" if scale == "auto" else figure)
        lines.append(f"| {width} px | {aligned.quad.size:.0f} px | " + " | ".join(cells) + " |")
    return lines


def seams() -> list[str]:
    kinds = {
        "square, no tone matching (before)": ("square", False),
        "square, photo's tone at the edge": ("square", True),
        "face mask, no tone matching": ("face", False),
        "face mask, photo's tone at the edge (default)": ("face", True),
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
    for seed, width in enumerate(FACE_WIDTHS):
        scene, aligned = scene_and_face(width, seed)
        for shift in SHIFTS:
            shifted = np.clip(scene.restored.astype(np.int16) + np.array(shift), 0, 255).astype(np.uint8)
            for name, (mask, tone) in kinds.items():
                pasted = paste_face(scene.photo, shifted, aligned, mask=mask, match_tone=tone)
                weights = face_mask(aligned, scene.photo.shape[:2], mask=mask)
                figures[name].append(seam_figures(scene.photo, pasted, weights))
    lines = ["| paste | seam figure (mean, max) | gradient ratio (mean) |", "|---|---|---|"]
    for name, values in figures.items():
        seam, ratio = np.array(values).T
        lines.append(f"| {name} | {seam.mean():.3f}, {seam.max():.3f} | {ratio.mean():.2f} |")
    return lines


def jpeg_moves() -> list[str]:
    """How far a JPEG's pixels away from the faces move when it is written again with its own tables."""
    lines = ["| JPEG quality | subsampling | mean change | 99th percentile | largest |", "|---|---|---|---|---|"]
    scene, _ = scene_and_face(96)
    for quality in (60, 80, 95):
        for subsampling in (2, 0):
            buffer = io.BytesIO()
            Image.fromarray(scene.photo).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
            original = original_from_bytes(buffer.getvalue(), "photo.jpg")
            aligned = aligned_in(scene, original.rgb8)
            options = PhotoOutput()
            made = compose(original, [(scene.restored, aligned)], options, Background(options))
            written = np.asarray(Image.open(io.BytesIO(encode_photo(made.pixels, original.metadata, "JPEG")[0])))
            far = face_mask(aligned, scene.photo.shape[:2], mask="square") == 0
            moved = np.abs(written.astype(int) - original.pixels)[far]
            name = {2: "4:2:0", 0: "4:4:4"}[subsampling]
            high = np.percentile(moved, 99)
            lines.append(f"| {quality} | {name} | {moved.mean():.2f} | {high:.0f} | {moved.max()} |")
    return lines


def _photo(megapixels: float) -> np.ndarray:
    """A photo of about `megapixels` at 4:3 with real content (the astronaut tiled), uint8 RGB."""
    from refface.data.demo_photos import astronaut

    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    tile = astronaut()
    reps = (height // tile.shape[0] + 1, width // tile.shape[1] + 1, 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


def _background_child(spec: str) -> None:
    """One background measurement in this (fresh) process; prints a JSON line."""
    model_name, megapixels, tile, device = spec.split(":")
    import torch
    from tests.photo.upscalers import compact_checkpoint, rrdb_checkpoint

    from refface.photo.background import load_upscaler, resize, upscale_pixels

    folder = Path(tempfile.mkdtemp())
    if model_name == "general-x4v3":
        path = compact_checkpoint(folder / "realesr-general-x4v3.pth")
    else:
        path = rrdb_checkpoint(folder / f"{model_name}.pth", scale=2 if model_name == "x2plus" else 4, blocks=23)
    model = load_upscaler(path).to(torch.device(device))
    pixels = _photo(float(megapixels))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    array = upscale_pixels(model, pixels, int(tile))  # the photo's own path: tiles straight into the array
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    resized = {}
    for scale in (2, 4):
        shape = (pixels.shape[0] * scale, pixels.shape[1] * scale)
        started_resize = time.perf_counter()
        resize(array, shape)
        resized[scale] = time.perf_counter() - started_resize
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    print(json.dumps({"seconds": seconds, "resize": resized, "peak_gb": peak / 2**20, "before_gb": before / 2**20,
                      "gpu_peak_gb": gpu_peak, "pixels": list(pixels.shape[:2])}))  # fmt: skip


def background(models: list[str], sizes: list[float], tile: int, untiled_up_to: float, device: str) -> list[str]:
    lines = [
        "| model | photo | tiles | model time | then resize to S=2 / S=4 | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        for megapixels in sizes:
            for tiles in ([tile, 0] if megapixels <= untiled_up_to else [tile]):
                spec = f"{model}:{megapixels}:{tiles}:{device}"
                command = [sys.executable, __file__, "--background-child", spec]
                done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
                if done.returncode != 0:
                    lines.append(f"| {model} | {megapixels:g} MP | {tiles or 'none'} | failed: "
                                 f"{done.stderr.strip().splitlines()[-1][:80]} | | |")  # fmt: skip
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                height, width = result["pixels"]
                peak = f"{result['gpu_peak_gb']:.2f} GB GPU" if result["gpu_peak_gb"] else f"{result['peak_gb']:.2f} GB"
                lines.append(
                    f"| {model} | {megapixels:g} MP ({width}x{height}) | {tiles or 'none'} | {result['seconds']:.1f} s "
                    f"| {result['resize']['2']:.2f} s / {result['resize']['4']:.2f} s | {peak} |"
                )
                print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["kept", "seams", "jpeg", "background"],
                        default=["kept", "seams", "jpeg", "background"])  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=["general-x4v3", "x2plus", "x4plus"], default=["general-x4v3"])
    parser.add_argument("--megapixels", nargs="+", type=float, default=[1, 4, 16])
    parser.add_argument("--tile", type=int, default=512, help="tile side in input pixels (default 512)")
    parser.add_argument("--untiled-up-to", type=float, default=4, help="megapixels up to which untiled runs too")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--background-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.background_child:
        _background_child(args.background_child)
        return
    import torch

    print(f"CPU threads={torch.get_num_threads()}, device={args.device}")
    if "kept" in args.parts:
        print("\nRestoration kept: PSNR of the restored crop against the finished photo, inside the face\n")
        print("\n".join(restoration_kept()))
        chosen = [choose_scale(PhotoOutput(scale="auto"), (480, 640), [side], 512)[0] for side in (120, 300)]
        print(f"\nauto chooses {chosen} for a 120 px and a 300 px face square")
    if "seams" in args.parts:
        print("\nSeams: restored crops shifted in brightness and colour, 3 faces x 2 shifts\n")
        print("\n".join(seams()))
    if "jpeg" in args.parts:
        print("\nA JPEG written again with its own tables: pixels away from the face (8-bit levels)\n")
        print("\n".join(jpeg_moves()))
    if "background" in args.parts:
        print("\nBackground model (random weights, released layout)\n")
        background(args.models, args.megapixels, args.tile, args.untiled_up_to, args.device)


if __name__ == "__main__":
    main()
