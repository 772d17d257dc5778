"""How many faces each detector finds in the photos refface's users bring: small, blurred, damaged, turned, huge.

    python benchmarks/bench_detection.py [--detectors hog,hog2x,cnn,cascade,retinaface] [--quick]
    python benchmarks/bench_detection.py --large            # a 90 px face in a 20000x600 and a 9000x9000 photo

The synthetic set: the two public-domain faces installed packages ship (scikit-image's astronaut, matplotlib's
Grace Hopper) and their mirror images, each FFHQ-aligned at 512 px, pasted into a 640x480 scene cut from
scikit-image's non-face photos at face widths of 16 to 256 px, turned 0, 20 or 45 degrees in the image plane,
and left clean; or "degraded" as an old print (the scene blurred with a Gaussian of face width / 60 and saved as
a JPEG of quality 35); or with the face degraded by the FFHQ-Ref "moderate" or "severe" model first (the test
sets' LQ model, on the 512 px face as there: blur of 0-8 or 8-16 px, shrunk 1-8 or 8-32 times, noise, JPEG).

A face counts as found when a detection's centre lies within half a face width of the true centre and its width
is within a factor 2 of the true width; every other detection is a false positive. Each detector runs through
`refface.face.locate.detect_faces`, the search refface itself runs (shrunk copies, tiles and rotated copies
included). The table gives recall per face width and condition, false positives per image and seconds per
megapixel.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.face.photos import astronaut, grace_hopper, mirror  # noqa: E402

from refface.data.degradations import PRESETS  # noqa: E402
from refface.face.alignment import align_face  # noqa: E402
from refface.face.detection import DlibDetector  # noqa: E402
from refface.face.locate import CANONICAL_BOX, detect_faces  # noqa: E402

WIDTHS = (16, 24, 32, 48, 64, 96, 128, 256)
ANGLES = (0, 20, 45)
CONDITIONS = ("clean", "degraded", "moderate", "severe")
CANVAS = (640, 480)
BOX_FRACTION = CANONICAL_BOX[2] - CANONICAL_BOX[0]  # the face box's width in an FFHQ crop, as a fraction


@dataclass(frozen=True)
class Case:
    image: np.ndarray
    centre: tuple[float, float]
    width: float
    condition: str
    angle: int


def _backgrounds() -> list[np.ndarray]:
    from skimage import data

    photos = [data.coffee(), data.rocket(), data.chelsea(), data.immunohistochemistry()]
    return [cv2.resize(photo, CANVAS, interpolation=cv2.INTER_AREA) for photo in photos]


def _aligned_faces() -> list[np.ndarray]:
    detector = DlibDetector()
    faces = []
    for photo in (astronaut(), grace_hopper()):
        for version in (photo, mirror(photo)):
            found = detect_faces(version, detector)[0]
            faces.append(align_face(version, found, 512).image)
    return faces


def build_cases(quick: bool = False, seed: int = 0) -> list[Case]:
    """Every face at every width, angle and condition, each in its own scene."""
    rng = np.random.default_rng(seed)
    faces, backgrounds = _aligned_faces(), _backgrounds()
    if quick:
        faces = faces[:2]
    cases = []
    for number, face in enumerate(faces):
        for condition in CONDITIONS:
            version = face if condition in ("clean", "degraded") else PRESETS[condition](face, rng).image
            for width in WIDTHS:
                for angle in ANGLES:
                    side = width / BOX_FRACTION  # the aligned crop's side that makes the face `width` wide
                    box_centre = (sum(CANONICAL_BOX[0::2]) / 2, sum(CANONICAL_BOX[1::2]) / 2)
                    centre = (CANVAS[0] / 2 + rng.uniform(-60, 60), CANVAS[1] / 2 + rng.uniform(-40, 40))
                    scale = side / 512
                    matrix = cv2.getRotationMatrix2D((255.5, 255.5), angle, scale)
                    matrix[:, 2] += np.array(centre) - (255.5, 255.5)
                    scene = backgrounds[(number + width) % len(backgrounds)].copy()
                    flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
                    warped = cv2.warpAffine(version, matrix, CANVAS, flags=flags)
                    mask = cv2.warpAffine(np.ones((512, 512), np.float32), matrix, CANVAS)[..., None]
                    scene = (scene * (1 - mask) + warped * mask).astype(np.uint8)
                    if condition == "degraded":
                        scene = _old_print(scene, width)
                    face_centre = matrix @ np.array([box_centre[0] * 512, box_centre[1] * 512, 1.0])
                    cases.append(Case(scene, (float(face_centre[0]), float(face_centre[1])), width, condition, angle))
    return cases


def _old_print(scene: np.ndarray, width: int) -> np.ndarray:
    """Blur of face width / 60 and a JPEG of quality 35, over the whole scene."""
    blurred = cv2.GaussianBlur(scene, (0, 0), max(width / 60, 0.3))
    ok, encoded = cv2.imencode(".jpg", blurred[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 35])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _found(case: Case, faces) -> tuple[bool, int]:
    hits = 0
    for face in faces:
        x0, y0, x1, y1 = face.box
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        close = np.hypot(centre[0] - case.centre[0], centre[1] - case.centre[1]) <= 0.5 * case.width
        if close and 0.5 * case.width <= (x1 - x0) <= 2 * case.width:
            hits += 1
    return hits > 0, len(faces) - min(hits, 1)


def make_detector(name: str):
    if name == "hog":
        return DlibDetector("hog")
    if name == "hog2x":
        return DlibDetector("hog", upsample=2)
    if name == "cnn":
        return DlibDetector("cnn")
    if name == "cascade":
        from refface.face.cascade import DlibCascade

        return DlibCascade()
    if name == "retinaface":  # the released weights, downloaded on first use
        from refface.face.detectors import choose_detector

        return choose_detector("retinaface", "cuda" if torch.cuda.is_available() else "cpu")[0]
    if name == "retinaface-random":  # the same network with random weights: its time and memory, not its recall
        from refface.face.retinaface import RetinaFaceDetector
        from refface.models.retinaface import RetinaFace

        return RetinaFaceDetector(RetinaFace(), "cuda" if torch.cuda.is_available() else "cpu")
    raise SystemExit(f"unknown detector {name!r}")


def recall_table(cases: list[Case], names: list[str]) -> None:
    for name in names:
        detector = make_detector(name)
        found: dict[tuple[str, int], list[bool]] = {}
        false_positives, seconds, pixels = 0, 0.0, 0
        for case in cases:
            start = time.perf_counter()
            faces = detect_faces(case.image, detector)
            seconds += time.perf_counter() - start
            pixels += case.image.shape[0] * case.image.shape[1]
            hit, wrong = _found(case, faces)
            found.setdefault((case.condition, case.width), []).append(hit)
            false_positives += wrong
        print(f"\n{name}: {seconds / (pixels / 1e6):.2f} s per megapixel, "
              f"{false_positives / len(cases):.2f} false positives per image ({len(cases)} images)")  # fmt: skip
        print("| condition | " + " | ".join(f"{w} px" for w in WIDTHS) + " | 48 px and wider |")
        print("|---" * (len(WIDTHS) + 2) + "|")
        for condition in CONDITIONS:
            rates = [np.mean(found[(condition, w)]) for w in WIDTHS]
            wide = np.mean([hit for w in WIDTHS if w >= 48 for hit in found[(condition, w)]])
            print(f"| {condition} | " + " | ".join(f"{r:.0%}" for r in rates) + f" | {wide:.0%} |")


def large_photos(names: list[str]) -> None:
    """A 90 px face in a 20000x600 panorama and a 9000x9000 scan: found, seconds, peak memory (a child each)."""
    import subprocess

    print("\n| detector | photo | found | seconds | peak memory |\n|---|---|---|---|---|")
    for name in names:
        for size in ((20000, 600), (9000, 9000)):
            command = [sys.executable, __file__, "--large-child", f"{name}:{size[0]}x{size[1]}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            print(done.stdout.strip() or f"| {name} | {size[0]}x{size[1]} | failed: {done.stderr[-300:]} | | |")


def _large_child(spec: str) -> None:
    name, size = spec.split(":")
    width, height = (int(v) for v in size.split("x"))
    face = _aligned_faces()[0]
    side = 90 / BOX_FRACTION
    crop = cv2.resize(face, (round(side), round(side)), interpolation=cv2.INTER_AREA)
    photo = np.full((height, width, 3), 110, np.uint8)
    top, left = height // 2 - crop.shape[0] // 2, int(width * 0.7)
    photo[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    detector = make_detector(name)
    start = time.perf_counter()
    faces = detect_faces(photo, detector)
    seconds = time.perf_counter() - start
    centre = (left + crop.shape[1] / 2, top + crop.shape[0] * (CANONICAL_BOX[1] + CANONICAL_BOX[3]) / 2)
    case = Case(photo, centre, 90, "clean", 0)
    hit, _ = _found(case, faces)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"| {name} | {width}x{height} | {'yes' if hit else 'no'} | {seconds:.1f} | {peak:.2f} GB |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="hog,hog2x,cascade")
    parser.add_argument("--quick", action="store_true", help="two faces instead of four")
    parser.add_argument("--large", action="store_true", help="the two large photos instead of the set")
    parser.add_argument("--large-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_child:
        _large_child(args.large_child)
        return 0
    names = args.detectors.split(",")
    if args.large:
        large_photos(names)
        return 0
    cases = build_cases(args.quick)
    recall_table(cases, names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
