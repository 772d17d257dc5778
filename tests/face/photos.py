"""Real face photos that ship with packages, placed into larger scenes for the face tests.

The photos and transforms are the library's (`refface.data.demo_photos`, which `refface demo` uses too):
`astronaut()` (Eileen Collins) and `grace_hopper()` are two different people; every other "photo" here is
derived from them with a known transform, so the tests know where the face must end up.
"""

from refface.data.demo_photos import (
    BACKGROUND,
    astronaut,
    degrade,
    grace_hopper,
    group_photo,
    mirror,
    place,
    placement,
    side_light,
)

__all__ = [
    "BACKGROUND",
    "astronaut",
    "degrade",
    "grace_hopper",
    "group_photo",
    "mirror",
    "place",
    "placement",
    "side_light",
]
