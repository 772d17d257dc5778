"""The ReF-LDM reference augmentation, on kornia, reproducible from a seed.

References are other photos of the person, never pixel-aligned with the target; jittering their
colour and geometry keeps the model from copying them. Values are the paper's: colour jitter
0.2/0.2/0.2/0.02, affine (rotation 2 degrees, translation 5 %, scale 5 %), perspective 0.2 with
probability 0.5 (the official training code uses probability 1.0; pass it to match), hflip 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import numpy as np
import torch


@dataclass(frozen=True)
class ReferenceAugmentation:
    """Random colour and geometry changes applied to each reference independently."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    degrees: float = 2.0
    translate: float = 0.05
    scale: float = 0.05
    perspective: float = 0.2
    perspective_probability: float = 0.5
    flip_probability: float = 0.5

    def pipeline(self) -> K.AugmentationSequential:
        return K.AugmentationSequential(
            K.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue, p=1.0),
            K.RandomAffine(
                self.degrees,
                translate=(self.translate, self.translate),
                scale=(1.0 - self.scale, 1.0 + self.scale),
                p=1.0,
            ),
            K.RandomPerspective(self.perspective, p=self.perspective_probability),
            K.RandomHorizontalFlip(p=self.flip_probability),
        )

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Augment [N, 3, H, W] images in [0, 1]; the same seed gives the same result.

        kornia draws from torch's global generator, so it runs inside a forked RNG state seeded
        here: the caller's random stream is left untouched and data-loader workers agree.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.pipeline()(images).clamp(0.0, 1.0)


PAPER_AUGMENTATION = ReferenceAugmentation()


def jitter_colours(image: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """A target photo (uint8 HxWx3) with random brightness/contrast/saturation (+-strength) and hue (+-strength/10).

    Applied before degradation, so the LQ input and the target change together (the Composite-Context recipe).
    """
    if strength <= 0:
        return image
    jitter = K.ColorJitter(strength, strength, strength, strength / 10.0, p=1.0)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        jittered = jitter(pixels).clamp(0.0, 1.0)
    return (jittered[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
