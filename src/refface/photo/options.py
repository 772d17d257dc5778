"""How a restored photo is given back: its scale, background, tone, paste mask and file format, checked when made.

One frozen value that every front end fills (the command line, the web page, ComfyUI) and the workflow reads;
nothing after it checks or defaults these choices again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from refface.errors import RefFaceError

MAX_SCALE = 8.0
AUTO_SCALE_CAP = 4.0  # `auto` never enlarges more than this
DEFAULT_MAX_MEGAPIXELS = 64.0
# auto: a super-resolution model when the photo is enlarged (Real-ESRGAN, where its weights are at hand or can be
# downloaded; else Lanczos, with a note), the photo's own pixels at scale 1; realesrgan: the model, also at scale 1
# (it sharpens the background at the photo's size); lanczos: a resize only; none: the photo's pixels as they are
# (scale 1 only).
BACKGROUNDS = ("auto", "realesrgan", "lanczos", "none")
COLOURS = ("auto", "keep", "restore")  # auto: grey and toned photos stay so; keep: always; restore: never
MASKS = ("face", "square")  # the face's outline from its landmarks, or the whole aligned square (feathered)
FORMATS = ("keep", "png", "jpeg", "tiff", "webp")
RELEASED_MODELS = ("general-x4v3", "x2plus", "x4plus")  # Real-ESRGAN's releases, by the names --background-model takes
SUFFIX_OF_FORMAT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "webp": ".webp"}


def parse_scale(value: str | float | int) -> str | float:
    """`--upscale`: "auto" or a number from 1 to 8; anything else is one sentence."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except ValueError:
            raise RefFaceError(f"--upscale takes a number from 1 to {MAX_SCALE:g} or auto, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RefFaceError(f"--upscale takes a number from 1 to {MAX_SCALE:g} or auto, got {value!r}.")
    if not 1.0 <= float(value) <= MAX_SCALE:
        raise RefFaceError(f"--upscale takes a number from 1 to {MAX_SCALE:g} or auto, got {value:g}.")
    return float(value)


@dataclass(frozen=True)
class PhotoOutput:
    """How the restored photo is put together and written.

    `scale`: the output's size relative to the input (1 to 8), or "auto": the smallest whole scale at which the
    largest restored face keeps its full aligned size, at most 4. `max_megapixels`: the largest output any scale
    may give (a larger one is reduced, with a note). `background`: how everything but the faces reaches the output
    size (`BACKGROUNDS`); `background_model`: a super-resolution checkpoint file, or the name of a released
    Real-ESRGAN model (`x2plus`, `x4plus`, `general-x4v3`); `tile`: tile side in input pixels for the background
    model (None: chosen by the memory at hand; 0: never tiled). `colour`: whether grey and toned photos keep
    their tone (`COLOURS`). `mask`: the paste mask (`MASKS`). `format`: the output file's format ("keep": the
    input's).
    """

    scale: str | float = 1.0
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    background: str = "auto"
    background_model: str | None = None
    tile: int | None = None
    colour: str = "auto"
    mask: str = "face"
    format: str = "keep"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", parse_scale(self.scale))
        for value, choices, flag in (
            (self.background, BACKGROUNDS, "--background"),
            (self.colour, COLOURS, "--colour"),
            (self.mask, MASKS, "--paste-mask"),
            (self.format, FORMATS, "--format"),
        ):
            if value not in choices:
                raise RefFaceError(f"{flag} is one of {', '.join(choices)}, got {value!r}.")
        megapixels = self.max_megapixels
        if isinstance(megapixels, bool) or not isinstance(megapixels, int | float) or not megapixels > 0:
            raise RefFaceError(f"--max-megapixels must be a positive number, got {megapixels!r}.")
        if self.tile is not None and (isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 0):
            raise RefFaceError(f"--tile must be 0 (no tiles) or a tile side in pixels, got {self.tile!r}.")
        if self.tile is not None and 0 < self.tile < 32:
            raise RefFaceError(f"--tile must be 0 (no tiles) or at least 32 pixels, got {self.tile}.")
        if self.background == "none" and self.scale != 1.0:
            raise RefFaceError(
                "--background none keeps the photo's own pixels, so it needs --upscale 1; choose lanczos or "
                "realesrgan to enlarge."
            )
        model = self.background_model
        if model is not None and self.background in ("lanczos", "none"):
            raise RefFaceError(f"--background-model needs a model background, but --background is {self.background}.")
        if model is not None and model not in RELEASED_MODELS and not Path(model).is_file():
            raise RefFaceError(
                f"The background model {model} is not a file, nor one of Real-ESRGAN's released models "
                f"({', '.join(RELEASED_MODELS)})."
            )

    @classmethod
    def build(cls, **choices) -> PhotoOutput:
        """The options from a front end's choices, by field name; None (not chosen) takes the default."""
        return cls(**{name: value for name, value in choices.items() if value is not None})

    def suffix_for(self, source: Path) -> str:
        """The output file's suffix for an input file: the input's own (lower case) unless --format says."""
        if self.format == "keep":
            suffix = source.suffix.lower()
            return ".jpg" if suffix == ".jpeg" else ".tif" if suffix == ".tiff" else suffix
        return SUFFIX_OF_FORMAT[self.format]

    def suffix_for_format(self, image_format: str | None) -> str:
        """The output file's suffix for an input of Pillow's `image_format` (an upload has no trustworthy name):
        that format's own where refface writes it, else PNG, unless --format says."""
        if self.format != "keep":
            return SUFFIX_OF_FORMAT[self.format]
        return {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}.get(image_format, ".png")

    def recorded(self) -> dict:
        """What decides the output photo, as a run's manifest records it."""
        recorded = asdict(self)
        model = self.background_model
        if model is not None and Path(model).exists():
            recorded["background_model"] = str(Path(model).resolve())
        return recorded
