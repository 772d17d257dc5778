"""Real faces that installed packages ship, made into the photos `refface demo` restores (and the tests use).

`skimage.data.astronaut()` (Eileen Collins, NASA) and matplotlib's `grace_hopper.jpg` (US Navy) are public-domain
photos of two different people. The demo places both in one damaged group photo, as an old print or a small scan
would show them, and gives each person a folder of different-looking photos of their own face to take references
from. Every picture here is derived from the two originals by a known transform.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from refface.errors import RefFaceError

BACKGROUND = (70, 80, 90)
GROUP_CANVAS = (1040, 560)  # width, height of the group photo


@cache
def _astronaut() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise RefFaceError("The astronaut photo comes with scikit-image; pip install scikit-image.") from None
    return data.astronaut()


@cache
def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB"))


def astronaut() -> np.ndarray:
    """Eileen Collins, 512 x 512 (scikit-image's sample photo)."""
    return _astronaut().copy()


def grace_hopper() -> np.ndarray:
    """Grace Hopper, 512 x 600 (matplotlib's sample photo)."""
    return _grace_hopper().copy()


def placement(image: np.ndarray, angle: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """2x3 matrix rotating by `angle` degrees and scaling about the image centre, which lands on `centre`."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, scale)
    matrix[:, 2] += np.array(centre, dtype=np.float64) - (width / 2 - 0.5, height / 2 - 0.5)
    return matrix


def place(
    image: np.ndarray,
    angle: float = 0.0,
    scale: float = 1.0,
    centre: tuple[float, float] = (320, 280),
    canvas: tuple[int, int] = (640, 560),
) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated/scaled into a plain canvas (width, height), and the matrix that did it."""
    matrix = placement(image, angle, scale, centre)
    scene = cv2.warpAffine(
        image, matrix, canvas, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND
    )
    return scene, matrix


def side_light(image: np.ndarray, strength: float = 0.45) -> np.ndarray:
    """A different-looking photo of the same face: light falling from one side."""
    ramp = np.linspace(1.0 - strength, 1.0 + strength * 0.3, image.shape[1])[None, :, None]
    return np.clip(image * ramp, 0, 255).astype(np.uint8)


def mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def degrade(image: np.ndarray, factor: int = 4, sigma: float = 1.0, quality: int = 60) -> np.ndarray:
    """Blur, downsample, JPEG and upsample back: a moderately degraded old photo."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    height, width = image.shape[:2]
    small = cv2.resize(blurred, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return cv2.resize(decoded, (width, height), interpolation=cv2.INTER_CUBIC)


def group_photo(quality_factor: int = 3) -> np.ndarray:
    """Grace Hopper and the astronaut side by side, degraded: face 0 (the larger) is Hopper, face 1 the astronaut."""
    left, _ = place(astronaut(), 0, 0.9, (260, 280), canvas=GROUP_CANVAS)
    right, _ = place(grace_hopper(), 0, 0.75, (780, 280), canvas=GROUP_CANVAS)
    scene = left.copy()
    scene[:, 520:] = right[:, 520:]
    return degrade(scene, quality_factor)


# Each person's own photos: the face as it is, mirrored and under side light, each turned and scaled a little.
REFERENCE_VIEWS = {
    "plain": lambda face, scale: place(face, 6, scale)[0],
    "mirror": lambda face, scale: place(mirror(face), -8, scale * 0.95)[0],
    "light": lambda face, scale: place(side_light(face), 3, scale * 1.1)[0],
}
PEOPLE = {"Eileen Collins": (astronaut, 1.0), "Grace Hopper": (grace_hopper, 0.85)}


@dataclass(frozen=True)
class DemoInputs:
    """What `write_demo_inputs` wrote: the damaged group photo and the folder of each person's photos."""

    photo: Path
    people: Path


def write_demo_inputs(folder: str | Path) -> DemoInputs:
    """`folder`/old_group_photo.jpg (both faces, damaged) and `folder`/people/<name>/*.jpg (each person's photos)."""
    folder = Path(folder)
    people = folder / "people"
    for name, (photo, scale) in PEOPLE.items():
        (people / name).mkdir(parents=True, exist_ok=True)
        for view, make in REFERENCE_VIEWS.items():
            Image.fromarray(make(photo(), scale)).save(people / name / f"{view}.jpg", quality=92)
    group = folder / "old_group_photo.jpg"
    Image.fromarray(group_photo()).save(group, quality=85)
    return DemoInputs(group, people)


@cache
def _astronaut_landmarks() -> np.ndarray:
    from refface.face.detection import DlibDetector
    from refface.face.locate import find_faces

    return find_faces(astronaut(), DlibDetector(), "largest").faces[0].face.landmarks.copy()


ASTRONAUT_JAW = 93.0  # her jaw line in astronaut() is about this many pixels wide


@dataclass(frozen=True)
class FaceScene:
    """A photo with one small face whose landmarks are known exactly, and a detailed 512 px crop standing in
    for what a model restored: the checks of how much of a restoration reaches the photo given back."""

    photo: np.ndarray
    landmarks: np.ndarray
    restored: np.ndarray


def face_scene(face_width: float, seed: int = 0, margin: float = 2.5) -> FaceScene:
    """The astronaut placed so her jaw line is `face_width` pixels wide, in a scene `margin` face squares
    across; her restored face is her aligned face from the full photo with fine random texture added (detail a
    face of `face_width` pixels cannot hold)."""
    from refface.face.alignment import ffhq_quad, transform_points, warp_quad

    scale = face_width / ASTRONAUT_JAW
    landmarks = _astronaut_landmarks()
    side = int(round(ffhq_quad(landmarks).size * scale * margin))
    face_centre = ffhq_quad(landmarks).corners.mean(axis=0) - (256 - 0.5)  # from the photo's centre
    centre = tuple(side / 2 - scale * face_centre)
    photo, matrix = place(astronaut(), 0.0, scale, centre, canvas=(side, side))
    crop = warp_quad(astronaut(), ffhq_quad(landmarks), 512).astype(np.float32)
    texture = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 25, crop.shape).astype(np.float32), (0, 0), 0.8)
    restored = np.clip(np.rint(crop + texture), 0, 255).astype(np.uint8)
    return FaceScene(photo, transform_points(matrix, landmarks), restored)
