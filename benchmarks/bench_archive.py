"""Measure the people-aware archive workflow against one `refface restore` run per face.

Run from the repository root: `python benchmarks/bench_archive.py --out bench-archive`. It builds an archive
of group photos (Grace Hopper and the astronaut side by side, each photo shifted a little, so every photo has
two faces of two people) and an album of both, then measures, each in its own process:

- `archive`: one `refface restore ARCHIVE --refs-dir ALBUM` run over `--photos` photos with a tiny random
  model: wall time, faces per second, how many reference encodings were made, peak RSS;
- `separate`: `--separate` one-face runs (`refface restore PHOTO --ref <that person's photos> --face N`),
  the way a group photo had to be restored one person at a time; their mean, times the number of faces;
- `archive-large`: the archive run over `--large-photos` photos, for peak RSS against `archive`;
- `full`: the full-size architecture (random weights, fast mode, `--full-photos` photos) in this process,
  faces per second at each `--batch-sizes`.

Every stage writes its figures to OUT/results.json as soon as it ends; a rerun skips finished stages (pass
`--fresh` to measure again), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from benchmarks.timing import peak_rss_gb  # noqa: E402
from PIL import Image  # noqa: E402
from tests.face.photos import astronaut, degrade, grace_hopper, place  # noqa: E402
from tests.face.test_album import write_album  # noqa: E402

TINY_STEPS = "10"


def group_photo(shift: int) -> np.ndarray:
    left, _ = place(astronaut(), shift % 5 - 2, 0.95, (260 + shift % 11, 280), canvas=(1040, 560))
    right, _ = place(grace_hopper(), 2 - shift % 5, 0.75, (780 - shift % 13, 280), canvas=(1040, 560))
    scene = left.copy()
    scene[:, 520:] = right[:, 520:]
    return degrade(scene, 3)


def make_archive(folder: Path, count: int) -> Path:
    """`count` group photos (the same ten scenes repeated, so building 500 stays quick)."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = [group_photo(shift) for shift in range(10)]
    for number in range(count):
        target = folder / f"photo{number:04d}.jpg"
        if not target.exists():
            Image.fromarray(scenes[number % 10]).save(target, quality=85)
    return folder


def restore_command(model: Path, output: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "refface.cli", "restore", *arguments, "--output", str(output), "--model",
            str(model), "--steps", TINY_STEPS, "--device", "cpu", "--overwrite", "-q"]  # fmt: skip


def stage_archive(work: Path, model: Path, count: int, env: dict) -> dict:
    archive = make_archive(work / f"archive{count}", count)
    seconds, peak, printed = peak_rss_gb(
        restore_command(model, work / f"out{count}", str(archive), "--refs-dir", str(work / "album")), env
    )
    # The summary line is quiet under -q; the report says what was restored.
    rows = (work / f"out{count}" / "report.csv").read_text().splitlines()[1:]
    restored = sum(1 for row in rows if ",restored," in row)
    # every encoding made is written to the (fresh) people cache once
    encodings = len(list((Path(env["REFFACE_CACHE"]) / "people").glob("*.safetensors")))
    return {"photos": count, "faces_restored": restored, "seconds": round(seconds, 2),
            "faces_per_s": round(restored / seconds, 3), "peak_rss_gb": round(peak, 3),
            "reference_encodings": encodings}  # fmt: skip


def stage_separate(work: Path, model: Path, runs: int, faces: int, env: dict) -> dict:
    archive = make_archive(work / "archive_separate", max(1, (runs + 1) // 2))
    references = {0: sorted((work / "album").glob("hopper_*.jpg")), 1: sorted((work / "album").glob("astro_*.jpg"))}
    times = []
    photos = sorted(archive.iterdir())
    env = {**env, "REFFACE_PEOPLE_CACHE_GB": "0"}  # as one-person runs were: nothing kept between runs
    for run in range(runs):
        face = run % 2
        photo = photos[run // 2]
        refs = [str(p) for p in references[face] if "blurred" not in p.name and "tiny" not in p.name]
        command = restore_command(model, work / "separate" / f"run{run}", str(photo), "--ref", *refs,
                                  "--face", str(face))  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"a one-face run failed:\n{done.stderr[-2000:]}")
        times.append(time.perf_counter() - start)
    mean = sum(times) / len(times)
    return {"runs_measured": runs, "mean_seconds_per_run": round(mean, 2), "faces": faces,
            "estimated_seconds_for_all_faces": round(mean * faces, 1)}  # fmt: skip


def stage_full(work: Path, count: int, batch_sizes: list[int]) -> dict:
    import torch

    from refface import RefLDMPipeline, released_architecture
    from refface.face.detection import DlibDetector
    from refface.face.identity import DlibEmbedder
    from refface.imaging import load_image
    from refface.restoration import PhotoRestorer, ReferenceStore
    from refface.restoration.people import people_from_album
    from refface.restoration.settings import RestoreSettings

    torch.manual_seed(0)
    pipe = RefLDMPipeline.from_architecture(released_architecture()).eval_mode()
    detector, embedder = DlibDetector(), DlibEmbedder()
    people = people_from_album(work / "album", detector, embedder, 5, cache_root=work / "scan", progress=False)
    archive = make_archive(work / "archive_full", count)
    photos = [(p.name, lambda p=p: load_image(p)) for p in sorted(archive.iterdir())]
    results = {}
    for batch in batch_sizes:
        store = ReferenceStore(pipe)
        settings = RestoreSettings.build(fast=True, batch_size=batch)
        restorer = PhotoRestorer(pipe, people, detector, settings, store=store)
        start = time.perf_counter()
        faces = sum(len(result.restored_faces) for result in restorer.restore_many(photos))
        seconds = time.perf_counter() - start
        rate = round(faces / seconds, 4)
        results[f"batch {batch}"] = {"faces": faces, "seconds": round(seconds, 1), "faces_per_s": rate,
                                     "encodings": store.encodings}  # fmt: skip
    return {"photos": count, "steps": "DPM-Solver++ 20", "dtype": "fp32", "threads": torch.get_num_threads(),
            **results}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-archive", help="folder for the archives, outputs and results.json")
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--large-photos", type=int, default=500)
    parser.add_argument(
        "--separate", type=int, default=100, help="one-face runs to time (scaled to all faces if fewer)"
    )
    parser.add_argument("--full-photos", type=int, default=2, help="photos for the full-size stage (0: skip it)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--fresh", action="store_true", help="measure every stage again")
    args = parser.parse_args()

    from refface import RefLDMPipeline, tiny_architecture

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    if not (work / "album").exists():
        write_album(work / "album")
    model = work / "tiny"
    if not model.exists():
        import torch

        torch.manual_seed(3)
        RefLDMPipeline.from_architecture(tiny_architecture()).save_pretrained(model)

    def stage(name: str, measure) -> None:
        if name in results:
            print(f"{name}: done before, kept ({results_path})")
            return
        print(f"{name}: measuring ...", flush=True)
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "REFFACE_CACHE": cache}
            results[name] = measure(env)
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    stage("archive", lambda env: stage_archive(work, model, args.photos, env))
    stage("separate", lambda env: stage_separate(work, model, args.separate, 2 * args.photos, env))
    stage("archive-large", lambda env: stage_archive(work, model, args.large_photos, env))
    if args.full_photos:
        stage("full", lambda env: stage_full(work, args.full_photos, args.batch_sizes))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
