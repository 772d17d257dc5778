"""Measure video restoration: crop jitter against a known motion, flicker, throughput and memory.

Run from the repository root: `python benchmarks/bench_video.py --out bench-video [--model runs/tiny-refldm/model]`.
The clips are made from the astronaut photo (scikit-image), so the true motion of every frame is known:

- `jitter`: the astronaut moving along a smooth path (drift, slow turn, zoom) with sensor noise and JPEG damage
  on every frame; RMS frame-to-frame error of the aligned crop's corners against the true motion, for crops from
  per-frame detections and from smoothed tracks (each `--windows` length);
- `flicker`: a still clip (one photo repeated, independent sensor noise per frame) restored with `--model` (a
  tiny model trained with `refface train`; default a tiny random one), mean absolute frame-to-frame change of
  the restored face in aligned space, in 8-bit levels: shared noise vs per-frame noise, each without and with
  temporal smoothing, and the input's own flicker;
- `throughput`: frames per second with a tiny random model (2-step DDIM), and seconds per face with the full-size
  architecture (random weights, fast mode: DPM-Solver++ 20 steps), on this machine;
- `memory`: peak RSS of `refface restore` on a `--short` and a `--long` second clip (tiny model), each in its
  own process: it must not grow with the clip's length.

Every stage writes its figures to OUT/results.json when it ends; a rerun skips finished stages (`--fresh`
measures again), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchmarks.timing import peak_rss_gb  # noqa: E402
from skimage.data import astronaut  # noqa: E402

from refface.face.alignment import ffhq_quad  # noqa: E402
from refface.face.detection import DlibDetector  # noqa: E402
from refface.face.locate import detect_faces  # noqa: E402
from refface.restoration import PhotoRestorer  # noqa: E402
from refface.restoration.settings import RestoreSettings  # noqa: E402
from refface.restoration.video_restorer import VideoRestorer, aligned_from_quad  # noqa: E402
from refface.video.encoding import Encoding  # noqa: E402
from refface.video.measures import corner_jitter, face_region, flicker  # noqa: E402
from refface.video.media import decode_frames, probe_video  # noqa: E402
from refface.video.options import VideoOptions  # noqa: E402
from refface.video.synthetic_clip import render_frames, smooth_path, tone, write_clip  # noqa: E402
from refface.video.tracks import TrackBuilder  # noqa: E402

FPS = 24
STAGES = ("jitter", "flicker", "throughput", "memory")


def cpu_name() -> str:
    """The CPU, its core count and its vector extensions (the figures depend on them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    extensions = [label for flag, label in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
    extensions = extensions or (["AVX2"] if "avx2" in flags else [])
    return f"{name} ({os.cpu_count()} cores, {', '.join(extensions) or 'no AVX2'})"


def make_clip(path: Path, seconds: float, size=(256, 256), still: bool = False, noise: float = 6.0,
              lossless: bool = False) -> Path:  # fmt: skip
    if path.exists():
        return path
    frames = max(1, round(seconds * FPS))
    motion = smooth_path(frames, size, 512, still=still)
    pixels = render_frames(astronaut(), motion, size, noise=noise, jpeg_quality=70 if noise else 100)
    return write_clip(pixels, path, fps=FPS, sound=tone(frames / FPS), codec="ffv1" if lossless else "libx264")


def stage_jitter(work: Path, frames: int, windows: list[int]) -> dict:
    size = (320, 240)
    motion = smooth_path(frames, size, 512)
    pixels = render_frames(astronaut(), motion, size)
    detector = DlibDetector()
    truth = ffhq_quad(detect_faces(astronaut(), detector)[0].landmarks).corners
    builder = TrackBuilder()
    for index, frame in enumerate(pixels):
        builder.add(index, detect_faces(frame, detector))
    results = {"frames": frames, "size": f"{size[0]}x{size[1]}", "noise": "sigma 6 + JPEG q60"}
    per_frame = None
    for window in windows:
        (track, *others) = builder.finish(window)
        true_corners = np.stack([motion.apply(i, truth) for i in track.frames()])
        raw = corner_jitter(np.stack([track.quad(i, smoothed=False).corners for i in track.frames()]), true_corners)
        smooth = corner_jitter(np.stack([track.quad(i).corners for i in track.frames()]), true_corners)
        per_frame = round(raw, 3)
        results[f"smoothed, window {window}"] = {"px": round(smooth, 3), "ratio": round(smooth / raw, 3)}
    results["per-frame detection px"] = per_frame
    return results


def _pipeline(model: str | None):
    from refface import RefLDMPipeline, tiny_architecture
    from refface.pipelines.loading import load_refldm

    if model:
        return load_refldm(model=model)
    torch.manual_seed(3)
    return RefLDMPipeline.from_architecture(tiny_architecture()).eval_mode()


def _restored_crops(result, size: int = 256) -> list[np.ndarray]:
    (track,) = [t.track for t in result.tracks]
    return [
        aligned_from_quad(frame.pixels, track.quad(frame.index), size).image
        for frame in decode_frames(probe_video(result.output))
    ]


def stage_flicker(work: Path, model: str | None, frames: int, steps: int, sigma: float) -> dict:
    clip = make_clip(work / "still.mkv", frames / FPS, still=True, noise=8.0, lossless=True)
    pipe = _pipeline(model)
    detector = DlibDetector()
    region = face_region(256)
    info = probe_video(clip)
    tracks = VideoRestorer(PhotoRestorer(pipe, None, detector)).find_tracks(info)
    inputs = [aligned_from_quad(f.pixels, tracks[0].quad(f.index), 256).image for f in decode_frames(info)]
    results = {
        "model": model or "tiny random",
        "frames": frames,
        "steps": steps,
        "input": round(flicker(inputs, region), 2),
    }
    for frame_seeds in (False, True):
        for smoothing in (0.0, sigma):
            restorer = PhotoRestorer(pipe, None, detector, RestoreSettings.build(steps=steps, seed=5, batch_size=4))
            options = VideoOptions(
                encoding=Encoding(lossless=True), temporal_smoothing=smoothing, frame_seeds=frame_seeds
            )
            result = VideoRestorer(restorer, options).restore(clip, work / f"flicker-{frame_seeds}-{smoothing}")
            name = f"{'per-frame' if frame_seeds else 'shared'} noise, temporal smoothing {smoothing:g}"
            results[name] = round(flicker(_restored_crops(result), region), 2)
    return results


def stage_throughput(work: Path, full_faces: int) -> dict:
    from refface import RefLDMPipeline, released_architecture

    clip = make_clip(work / "walk.mp4", 2.0)
    detector = DlibDetector()
    tiny = PhotoRestorer(_pipeline(None), None, detector, RestoreSettings.build(steps=2, batch_size=4))
    start = time.perf_counter()
    result = VideoRestorer(tiny, VideoOptions(segment_frames=24)).restore(clip, work / "throughput-tiny")
    seconds = time.perf_counter() - start
    results = {"tiny random, 2 DDIM steps, 256x256": {"frames": result.frames, "seconds": round(seconds, 2),
                                                      "frames_per_s": round(result.frames / seconds, 2)}}  # fmt: skip
    if full_faces:
        torch.manual_seed(0)
        pipe = RefLDMPipeline.from_architecture(released_architecture()).eval_mode()
        short = make_clip(work / f"full{full_faces}.mp4", full_faces / FPS)
        restorer = PhotoRestorer(pipe, None, detector, RestoreSettings.build(fast=True, batch_size=4))
        start = time.perf_counter()
        result = VideoRestorer(restorer).restore(short, work / "throughput-full")
        seconds = time.perf_counter() - start
        results["full-size random, DPM-Solver++ 20 steps, fp32"] = {
            "frames": result.frames, "seconds": round(seconds, 1), "seconds_per_face": round(seconds / result.frames, 2)
        }  # fmt: skip
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), **results}


def stage_memory(work: Path, seconds_list: list[float], env: dict) -> dict:
    model = work / "tiny"
    if not model.exists():
        _pipeline(None).save_pretrained(model)
    results = {}
    for seconds in seconds_list:
        clip = make_clip(work / f"clip{seconds:g}s.mp4", seconds)
        command = [sys.executable, "-m", "refface.cli", "restore", str(clip), "--no-refs", "--model", str(model),
                   "--steps", "2", "--output", str(work / f"memory{seconds:g}"), "--overwrite", "-q"]  # fmt: skip
        wall, peak, _ = peak_rss_gb(command, env)
        frames = probe_video(clip).frames
        rate, peak = round(frames / wall, 2), round(peak, 3)
        results[f"{seconds:g} s clip"] = {"frames": frames, "seconds": round(wall, 1), "frames_per_s": rate,
                                          "peak_rss_gb": peak}  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-video", help="folder for the clips, outputs and results.json")
    parser.add_argument("--model", help="a trained ReF-LDM model folder for the flicker stage (default: tiny random)")
    parser.add_argument("--jitter-frames", type=int, default=96)
    parser.add_argument("--windows", type=int, nargs="+", default=[5, 9, 13])
    parser.add_argument("--flicker-frames", type=int, default=24)
    parser.add_argument("--steps", type=int, default=50, help="sampling steps in the flicker stage")
    parser.add_argument("--sigma", type=float, default=1.5, help="temporal smoothing measured in the flicker stage")
    parser.add_argument("--full-faces", type=int, default=4, help="frames restored at full size (0: skip)")
    parser.add_argument("--short", type=float, default=10.0, help="seconds of the short memory clip")
    parser.add_argument("--long", type=float, default=60.0, help="seconds of the long memory clip")
    parser.add_argument("--fresh", action="store_true", help="measure every stage again")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run")
    args = parser.parse_args()

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    results["machine"] = cpu_name()

    def stage(name: str, measure) -> None:
        if name not in args.stages:
            return
        if name in results:
            print(f"{name}: done before, kept ({results_path})")
            return
        print(f"{name}: measuring ...", flush=True)
        with tempfile.TemporaryDirectory() as cache:
            results[name] = measure({**os.environ, "REFFACE_CACHE": cache})
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    stage("jitter", lambda env: stage_jitter(work, args.jitter_frames, args.windows))
    stage("flicker", lambda env: stage_flicker(work, args.model, args.flicker_frames, args.steps, args.sigma))
    stage("throughput", lambda env: stage_throughput(work, args.full_faces))
    stage("memory", lambda env: stage_memory(work, [args.short, args.long], env))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
