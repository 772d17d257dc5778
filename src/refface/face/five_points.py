"""Faces known by five points (eye centres, nose tip, mouth corners), as learned detectors give them.

The FFHQ alignment the released model was trained with is defined on dlib's 68 landmarks, so a face found by
its five points is first given 68 points from a mean face shape placed on them; the 68-point model then refines
them on the upright crop as it does for every face. Where that fit does not agree with the five points (a face
the detector is sure of but the 68-point model cannot read: blurred, half turned, damaged), the face keeps the
points placed from its five, whose eyes and mouth corners are exactly the detector's: the alignment is then the
FFHQ square of those five points.
"""

from __future__ import annotations

import numpy as np

# The mean of dlib's 68 landmarks on FFHQ-aligned crops, as fractions of the crop's side, measured on refface's
# demo faces (scikit-image's astronaut, matplotlib's Grace Hopper) and their mirror images.
MEAN_SHAPE = np.array(
    [
        # jaw (0-16)
        (0.2287, 0.4910),
        (0.2348, 0.5591),
        (0.2448, 0.6253),
        (0.2568, 0.6925),
        (0.2785, 0.7569),
        (0.3149, 0.8126),
        (0.3669, 0.8579),
        (0.4269, 0.8935),
        (0.4967, 0.9039),
        (0.5659, 0.8939),
        (0.6254, 0.8615),
        (0.6754, 0.8172),
        (0.7129, 0.7621),
        (0.7359, 0.6982),
        (0.7482, 0.6303),
        (0.7577, 0.5643),
        (0.7632, 0.4963),
        # brows (17-26)
        (0.2719, 0.4350),
        (0.3006, 0.3964),
        (0.3493, 0.3833),
        (0.3979, 0.3897),
        (0.4434, 0.4115),
        (0.5590, 0.4117),
        (0.6030, 0.3898),
        (0.6516, 0.3854),
        (0.6981, 0.3995),
        (0.7279, 0.4367),
        # nose (27-35)
        (0.5011, 0.4675),
        (0.5006, 0.5170),
        (0.5020, 0.5656),
        (0.5006, 0.6171),
        (0.4391, 0.6399),
        (0.4682, 0.6480),
        (0.5001, 0.6590),
        (0.5333, 0.6486),
        (0.5625, 0.6392),
        # eyes (36-47)
        (0.3289, 0.4765),
        (0.3563, 0.4583),
        (0.3913, 0.4576),
        (0.4241, 0.4842),
        (0.3890, 0.4887),
        (0.3550, 0.4894),
        (0.5757, 0.4838),
        (0.6071, 0.4578),
        (0.6421, 0.4572),
        (0.6681, 0.4769),
        (0.6437, 0.4874),
        (0.6078, 0.4880),
        # mouth (48-67)
        (0.3780, 0.7093),
        (0.4237, 0.7049),
        (0.4695, 0.7024),
        (0.4996, 0.7076),
        (0.5317, 0.7020),
        (0.5754, 0.7044),
        (0.6190, 0.7125),
        (0.5779, 0.7520),
        (0.5321, 0.7721),
        (0.4990, 0.7756),
        (0.4640, 0.7724),
        (0.4194, 0.7535),
        (0.3925, 0.7143),
        (0.4673, 0.7218),
        (0.4994, 0.7260),
        (0.5334, 0.7225),
        (0.6025, 0.7143),
        (0.5314, 0.7409),
        (0.4983, 0.7445),
        (0.4672, 0.7423),
    ],
    dtype=np.float64,
)
LEFT_EYE, RIGHT_EYE, NOSE, LEFT_MOUTH, RIGHT_MOUTH = range(5)  # in the image: left is the subject's right
# Five points and 68 landmarks agree when every one of the five lies within this fraction of the eye distance
# of its counterpart among the 68 (eye centres, nose tip, mouth corners).
AGREEMENT = 0.25


def five_of(landmarks: np.ndarray) -> np.ndarray:
    """The five points of a face given its 68 landmarks: [5, 2]."""
    return np.stack(
        [landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0), landmarks[30], landmarks[48], landmarks[54]]
    )


def landmarks_from_five(points: np.ndarray) -> np.ndarray:
    """68 landmarks on a face known by its five points: the mean shape placed by the similarity transform that
    best maps its five onto them, then moved so its eye centres and mouth corners are exactly the five."""
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    template = five_of(MEAN_SHAPE)
    source = template - template.mean(axis=0)
    target = points - points.mean(axis=0)
    # least-squares similarity (rotation, uniform scale) as one complex number: target ~ a * source
    a = np.vdot(source @ [1, 1j], target @ [1, 1j]) / max(np.vdot(source @ [1, 1j], source @ [1, 1j]).real, 1e-12)
    placed_complex = (MEAN_SHAPE - template.mean(axis=0)) @ [1, 1j] * a
    placed = np.stack([placed_complex.real, placed_complex.imag], axis=1) + points.mean(axis=0)
    placed[36:42] += points[LEFT_EYE] - placed[36:42].mean(axis=0)
    placed[42:48] += points[RIGHT_EYE] - placed[42:48].mean(axis=0)
    placed[48], placed[54] = points[LEFT_MOUTH], points[RIGHT_MOUTH]
    return placed


def agree(landmarks: np.ndarray, points: np.ndarray, tolerance: float = AGREEMENT) -> bool:
    """Whether 68 landmarks sit on the face five points describe."""
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    eye_distance = max(float(np.hypot(*(points[RIGHT_EYE] - points[LEFT_EYE]))), 1.0)
    offsets = np.hypot(*(five_of(landmarks) - points).T)
    return bool(np.all(offsets <= tolerance * eye_distance))
