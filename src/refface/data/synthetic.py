"""A procedural identity task: tiny "people" whose fine detail only the references can restore.

Tiny training presets and CPU ablations need data that downloads nothing, renders in well under a
millisecond and still has the property reference-based restoration relies on: the target's
identity detail is destroyed by the degradation but present, in other poses, in the references.

An identity (`SyntheticIdentity`) is hair, a head ellipse, eyes, a mouth and marks of fixed layout
and colours, plus a fine texture: three colour gratings over the head at 6-11 cycles per image
width, up to about a third of the sampling rate at 32 px (so no aliasing). Each photo (`render`)
draws new nuisance factors: scale, rotation, shift, background colour, brightness and contrast.
The texture is attached to the head, so it moves with the pose and stays recoverable from
references, while the paper's `severe` preset (blur sigma >= 8 px, downscale >= 8x) removes it
from the LQ; at 32 px a 32x downscale leaves a single pixel, and everything but the overall colour
must come from the references. Photos of one person are much closer to each other than to other
people's (mean RMS distance about 0.6 of it), mostly through the coarse layout and colours.

All randomness is keyed, never sequential: identity `i` of a split comes from
(seed, split, i), its photo `j` from (seed, split, i, j), and an item's LQ, reference order and
flip from (seed, epoch, index) as in `ReferenceFaceDataset`, so items are the same in any order
and with any number of data-loader workers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from refface.data.augment import jitter_colours
from refface.data.degradations import Degradation, degradation_by_name
from refface.data.training_set import pick_references, to_signed_tensor
from refface.errors import RefFaceError

__all__ = [
    "SPLITS",
    "Blob",
    "Grating",
    "PhotoVariation",
    "SyntheticIdentity",
    "SyntheticReferenceDataset",
    "make_identity",
    "photo_rng",
    "render",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names; each draws its identities from its own random stream, so splits share no person."""

# Stream tags keep identity and photo seeds apart: numpy's SeedSequence ignores trailing zeros,
# so [seed, split, i] and [seed, split, i, 0] would otherwise give the same generator.
_IDENTITY_STREAM, _PHOTO_STREAM = 1, 2

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Blob:
    """A filled ellipse in face coordinates (the head spans about [-0.7, 0.7]); colour in [0, 1]."""

    center: tuple[float, float]
    radii: tuple[float, float]
    angle: float
    colour: Colour


@dataclass(frozen=True)
class Grating:
    """One texture component: colour * cos(2 pi (frequency . p) + phase) over the head, p in face units."""

    frequency: tuple[float, float]
    phase: float
    colour: Colour


@dataclass(frozen=True)
class SyntheticIdentity:
    """The parameters every photo of one person shares: coarse layout and colours, and a fine texture.

    Layers are painted in the order hair, head, features; the texture lies over the head.
    """

    hair: Blob
    head: Blob
    features: tuple[Blob, ...]
    texture: tuple[Grating, ...]

    @property
    def layers(self) -> tuple[Blob, ...]:
        return (self.hair, self.head, *self.features)


def _colour(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> Colour:
    red, green, blue = (float(v) for v in rng.uniform(low, high, 3))
    return red, green, blue


def make_identity(rng: np.random.Generator) -> SyntheticIdentity:
    """Draw one person: hair, head shape and skin colour, eyes (a symmetric pair), mouth, two marks, texture."""
    hair = Blob(
        (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.3, -0.15))),
        (float(rng.uniform(0.65, 0.85)), float(rng.uniform(0.55, 0.75))),
        float(rng.uniform(-0.3, 0.3)),
        _colour(rng),
    )
    head = Blob(
        (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
        (float(rng.uniform(0.5, 0.65)), float(rng.uniform(0.6, 0.75))),
        float(rng.uniform(-0.2, 0.2)),
        _colour(rng, 0.25, 0.95),
    )
    eye_x, eye_y = float(rng.uniform(0.15, 0.3)), float(rng.uniform(-0.3, -0.1))
    eye_radii = (float(rng.uniform(0.06, 0.12)), float(rng.uniform(0.04, 0.1)))
    eye_colour = _colour(rng, 0.0, 0.6)
    features = [
        Blob((-eye_x, eye_y), eye_radii, 0.0, eye_colour),
        Blob((eye_x, eye_y), eye_radii, 0.0, eye_colour),
        Blob(
            (0.0, float(rng.uniform(0.2, 0.4))),
            (float(rng.uniform(0.12, 0.28)), float(rng.uniform(0.04, 0.09))),
            0.0,
            _colour(rng, 0.1, 0.9),
        ),
    ]
    for _ in range(2):
        features.append(
            Blob(
                (float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.45, 0.45))),
                (float(rng.uniform(0.04, 0.1)), float(rng.uniform(0.04, 0.1))),
                float(rng.uniform(-math.pi, math.pi)),
                _colour(rng),
            )
        )
    texture = []
    for _ in range(3):
        magnitude, direction = float(rng.uniform(3.0, 5.5)), float(rng.uniform(0.0, math.pi))
        texture.append(
            Grating(
                (magnitude * math.cos(direction), magnitude * math.sin(direction)),
                float(rng.uniform(0.0, 2 * math.pi)),
                _colour(rng, -0.2, 0.2),
            )
        )
    return SyntheticIdentity(hair, head, tuple(features), tuple(texture))


def _coverage(blobs: tuple[Blob, ...], pose: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of each ellipse at each pixel, (K, H, W), under `pose` (scale, angle, dx, dy).

    A point's coordinates along an ellipse's axes are affine in the pixel's column and row, so each
    is one row term plus one column term; the edge is a linear ramp one pixel wide, which keeps
    small eyes and marks from aliasing at 32 px. Layers come first so numpy's inner loops run along
    image rows (a 6-wide inner axis is several times slower).
    """
    scale, angle, shift_x, shift_y = (float(v) for v in pose)
    centres = np.array([b.center for b in blobs], dtype=np.float32)
    radii = np.array([b.radii for b in blobs], dtype=np.float32)
    own = np.array([b.angle for b in blobs], dtype=np.float32)
    # Axis coordinates are measured in units of the smaller radius in pixels (`sharpness`), so the
    # distance to the edge comes out in pixels without further full-size operations.
    sharpness = radii.min(axis=1) * (size * scale / 2.0)
    along_scale, across_scale = (sharpness / radii[:, 0])[:, None], (sharpness / radii[:, 1])[:, None]
    cos, sin = np.cos(own)[:, None], np.sin(own)[:, None]
    turned_cos, turned_sin = np.cos(own + angle)[:, None] / scale, np.sin(own + angle)[:, None] / scale
    grid = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    u, v = grid - shift_x, grid - shift_y
    along_columns = (u * turned_cos - (cos * centres[:, :1] + sin * centres[:, 1:])) * along_scale
    across_columns = (sin * centres[:, :1] - cos * centres[:, 1:] - u * turned_sin) * across_scale
    along = along_columns[:, None] + (v * turned_sin * along_scale)[..., None]
    across = across_columns[:, None] + (v * turned_cos * across_scale)[..., None]
    along *= along
    along += across * across
    coverage = np.subtract((0.5 + sharpness)[:, None, None], np.sqrt(along, out=along), out=along)
    return np.clip(coverage, 0.0, 1.0, out=coverage)


def _waves(texture: tuple[Grating, ...], pose: np.ndarray, size: int) -> np.ndarray:
    """cos(2 pi f.p + phase) of every grating at every pixel, (G, H, W), from 1-D cosines.

    The phase is a row term plus a column term, and cos(a + b) = cos a cos b - sin a sin b.
    """
    scale, angle, shift_x, shift_y = (float(v) for v in pose)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    frequency = np.array([g.frequency for g in texture], dtype=np.float32) * (2 * math.pi)
    phase = np.array([g.phase for g in texture], dtype=np.float32)[:, None]
    grid = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    columns = (frequency[:, :1] * cos - frequency[:, 1:] * sin) * (grid - shift_x) + phase
    rows = (frequency[:, :1] * sin + frequency[:, 1:] * cos) * (grid - shift_y)
    return np.cos(rows)[..., None] * np.cos(columns)[:, None] - np.sin(rows)[..., None] * np.sin(columns)[:, None]


_NUISANCE_LOW = np.array((0.92, -0.12, -0.06, -0.06, 0.4, 0.4, 0.4, -0.05, 0.9))
_NUISANCE_HIGH = np.array((1.08, 0.12, 0.06, 0.06, 0.6, 0.6, 0.6, 0.05, 1.1))
"""Per photo: scale, rotation (radians), shift (of the [-1, 1] image), background RGB, brightness, contrast."""

_POSE = slice(0, 4)
_BLINK, _MOUTH_OPENING = 0.6, 1.5
"""At expression 1: eyes close by up to 60 % of their height, the mouth opens to up to 2.5x its height."""


@dataclass(frozen=True)
class PhotoVariation:
    """How much photos of one person differ, beyond lighting.

    `pose` scales the ranges of scale, rotation and shift (1: up to +-8 %, +-0.12 rad, +-3 % of the
    width; 3: +-24 %, +-0.36 rad, +-9 %), so references stop being pixel-aligned with the target.
    `expression` (0 to 1) lets each photo blink and open the mouth by its own amount. The defaults
    are the small variation the tiny training presets use.
    """

    pose: float = 1.0
    expression: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.pose <= 6.0:
            raise RefFaceError(f"The synthetic pose spread must be between 0 and 6, got {self.pose}.")
        if not 0.0 <= self.expression <= 1.0:
            raise RefFaceError(f"The synthetic expression amount must be between 0 and 1, got {self.expression}.")


def _with_expression(identity: SyntheticIdentity, blink: float, opening: float) -> SyntheticIdentity:
    """The identity with narrowed eyes (features 0, 1) and a taller mouth (feature 2) for one photo."""
    eyes = tuple(
        dataclasses.replace(eye, radii=(eye.radii[0], eye.radii[1] * (1.0 - blink))) for eye in identity.features[:2]
    )
    mouth = identity.features[2]
    mouth = dataclasses.replace(mouth, radii=(mouth.radii[0], mouth.radii[1] * (1.0 + opening)))
    return dataclasses.replace(identity, features=(*eyes, mouth, *identity.features[3:]))


def render(
    identity: SyntheticIdentity, size: int, rng: np.random.Generator, variation: PhotoVariation | None = None
) -> np.ndarray:
    """One photo of `identity` as uint8 size x size x 3 RGB, with pose, lighting and expression drawn from `rng`.

    Every pixel is a weighted sum of layer colours: the background, hair, head and each feature
    (painted in order, later ones on top) and the texture gratings over the head. Computing the
    weights of all layers at once keeps a photo to a few dozen numpy operations; brightness and
    contrast are folded into the colours, which is exact because the opaque weights sum to one.
    """
    if size < 4:
        raise RefFaceError(f"A synthetic photo must be at least 4 pixels wide, not {size}.")
    variation = variation or PhotoVariation()
    middle, half_range = (_NUISANCE_LOW + _NUISANCE_HIGH) / 2, (_NUISANCE_HIGH - _NUISANCE_LOW) / 2
    half_range[_POSE] *= variation.pose
    nuisance = rng.uniform(middle - half_range, middle + half_range)
    # Drawn after the nuisance, so photos without expression are the same as before expressions existed.
    blink, opening = rng.uniform(0.0, 1.0, 2) * variation.expression
    if variation.expression:
        identity = _with_expression(identity, _BLINK * float(blink), _MOUTH_OPENING * float(opening))
    pose, background, (brightness, contrast) = nuisance[:4], nuisance[4:7], nuisance[7:]
    coverage = _coverage(identity.layers, pose, size)
    # Each layer covers its share of what the layers painted after it leave visible.
    visible, opaque = np.ones((size, size), dtype=np.float32), []
    for layer in coverage[::-1]:
        opaque.append(layer * visible)
        visible -= opaque[-1]
    texture = _waves(identity.texture, pose, size) * coverage[1]
    weights = np.concatenate([visible[None], np.stack(opaque[::-1]), texture]).reshape(-1, size * size)

    gain, offset = 255.0 * contrast, 255.0 * (0.5 - 0.5 * contrast + brightness) + 0.5
    solid = [background, *(b.colour for b in identity.layers)]
    colours = np.array(solid + [g.colour for g in identity.texture], dtype=np.float32).T * gain
    colours[:, : len(solid)] += offset
    image = colours @ weights
    return np.clip(image, 0.0, 255.0, out=image).astype(np.uint8).T.reshape(size, size, 3)


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise RefFaceError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    return SPLITS.index(split)


def photo_rng(seed: int, split: str, identity: int, photo: int) -> np.random.Generator:
    """The nuisance generator of photo `photo` of identity `identity`: fixed whatever the epoch."""
    return np.random.default_rng([seed, _split_code(split), _PHOTO_STREAM, identity, photo])


class SyntheticReferenceDataset(Dataset):
    """`ReferenceFaceDataset`-style items over procedural identities: every photo is a target once.

    Item `index` is photo `index % photos_per_identity` of identity `index // photos_per_identity`;
    its references are the identity's other photos, shuffled and repeated to `num_refs` like the
    official loader. The render nuisance already varies references, so no reference augmentation
    is applied; `flip` mirrors GT, LQ and references together, as the real dataset does.
    """

    def __init__(
        self,
        identities: int = 64,
        photos_per_identity: int = 6,
        size: int = 32,
        num_refs: int = 5,
        degradation: str | Degradation = "severe",
        seed: int = 0,
        split: str = "train",
        flip: bool = True,
        variation: PhotoVariation | None = None,
        color_jitter: float = 0.0,
    ) -> None:
        if identities < 1:
            raise RefFaceError(f"The synthetic dataset needs at least 1 identity, got {identities}.")
        if photos_per_identity < 2:
            raise RefFaceError(
                f"Each identity needs at least 2 photos (a target and a reference), got {photos_per_identity}."
            )
        if num_refs < 1:
            raise RefFaceError(f"The number of references per item must be at least 1, got {num_refs}.")
        if size < 4:
            raise RefFaceError(f"A synthetic photo must be at least 4 pixels wide, not {size}.")
        code = _split_code(split)
        self.identities = tuple(
            make_identity(np.random.default_rng([seed, code, _IDENTITY_STREAM, i])) for i in range(identities)
        )
        self.photos_per_identity, self.size, self.num_refs, self.flip = photos_per_identity, size, num_refs, flip
        self.degradation = degradation_by_name(degradation) if isinstance(degradation, str) else degradation
        self.seed, self.split, self.epoch = seed, split, 0
        self.variation = variation or PhotoVariation()
        self.color_jitter = color_jitter

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.identities) * self.photos_per_identity

    def photo(self, identity: int, photo: int) -> np.ndarray:
        """Photo `photo` of identity `identity` of this split, uint8 HxWx3; identical in every epoch."""
        return self.render_as(identity, identity, photo)

    def render_as(self, person: int, identity: int, photo: int) -> np.ndarray:
        """Identity `person` in exactly the pose, lighting and expression of photo `photo` of `identity`.

        With `person == identity` this is that photo; other people in the same conditions are what
        a ground-truth identity score compares a restoration with.
        """
        people = len(self.identities)
        if not (0 <= identity < people and 0 <= person < people and 0 <= photo < self.photos_per_identity):
            raise RefFaceError(
                f"No photo {photo} of identity {identity} (drawn as identity {person}): the {self.split} split has "
                f"{people} identities with {self.photos_per_identity} photos each."
            )
        rng = photo_rng(self.seed, self.split, identity, photo)
        return render(self.identities[person], self.size, rng, self.variation)

    def photos(self, identity: int) -> list[np.ndarray]:
        """Every photo of one identity, for benchmarks that compare restorations with the person's references."""
        return [self.photo(identity, photo) for photo in range(self.photos_per_identity)]

    def name(self, identity: int, photo: int) -> str:
        return f"{self.split}_{identity:05d}_{photo:02d}.png"

    def locate(self, index: int) -> tuple[int, int]:
        """(identity, photo) of item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"Item {index} is out of range for {len(self)} synthetic items.")
        return divmod(index, self.photos_per_identity)

    def __getitem__(self, index: int) -> dict:
        identity, target = self.locate(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        gt = self.photo(identity, target)
        if self.color_jitter > 0:
            gt = jitter_colours(gt, self.color_jitter, int(rng.integers(2**62)))
        lq = self.degradation(gt, rng).image
        others = [str(p) for p in range(self.photos_per_identity) if p != target]
        chosen = pick_references(others, self.num_refs, rng, shuffle=True)
        refs = torch.stack([to_signed_tensor(self.photo(identity, int(p))) for p in chosen])
        item = {"gt": to_signed_tensor(gt), "lq": to_signed_tensor(lq), "refs": refs}
        if self.flip and rng.random() < 0.5:
            item = {key: value.flip(-1) for key, value in item.items()}
        return {**item, "name": self.name(identity, target), "index": index}
