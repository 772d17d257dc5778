"""The settings of a restoration, built once from what a front end was given, and checked and defaulted there.

The command line, the web page and the ComfyUI nodes each fill `RestoreSettings.build` with what their user
chose (flags, form fields, node inputs) and hand the result to the workflow (`PhotoRestorer`,
`VideoRestorer`, `run_archive`); nothing after it checks an option or picks a default again. A run's manifest
records `RestoreSettings.recorded()`, so a resumed run must have been made with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refface import methods
from refface.devices import DEVICE_NAMES, DTYPE_NAMES
from refface.errors import RefFaceError
from refface.face.detectors import DETECTOR_NAMES
from refface.photo.options import PhotoOutput
from refface.pipelines.base import SamplingOptions
from refface.video.options import VideoOptions

# A face that matches nobody: restored by the method without references, left as it is, or restored by a blind
# restorer (`RestoreSettings.blind`).
UNKNOWN_FACES = ("no-refs", "skip", "blind")
UNKNOWN_WITHOUT_SECOND_MODEL = UNKNOWN_FACES[:2]  # what a front end with one loaded model (ComfyUI) offers
FACE_CHOICES = ("auto", "all", "largest")
IDENTITY_MODELS = ("dlib", "arcface")
DETECTORS = DETECTOR_NAMES
DEFAULT_BATCH_SIZE = 4
DEFAULT_REFERENCES = 5  # references per person taken from an album or a person's folder
# The choices `RestoreSettings.build` hands to the method as its `SamplingOptions` (`Method.sampling`).
SAMPLING_CHOICES = (
    "steps", "guidance", "lq_guidance", "color_fix", "context", "spacing", "solver", "strength", "seed", "fidelity"
)


@dataclass(frozen=True)
class ReferenceSource:
    """Where the people of a run come from, as the user named them.

    `kind`: "files" (reference photos of one person), "album" (a folder of photos whose faces are grouped into
    people), "people" (one sub-folder of photos per named person) or "none" (restore without references).
    `person`: with an album, a photo of the person to take from it. `count`: references per person taken from
    an album or a person's folder.
    """

    kind: str
    paths: tuple[Path, ...] = ()
    person: Path | None = None
    count: int = DEFAULT_REFERENCES

    FLAGS = {"files": "--ref", "album": "--refs-dir", "people": "--people", "none": "--no-refs"}

    def __post_init__(self) -> None:
        if self.kind not in self.FLAGS:
            raise RefFaceError(f"Unknown reference source {self.kind!r}; choose one of {', '.join(self.FLAGS)}.")
        if self.person is not None and self.kind != "album":
            raise RefFaceError("--person only applies to reference selection from an album (--refs-dir).")
        if self.count < 1:
            raise RefFaceError(f"--num-refs must be at least 1, got {self.count}.")

    @classmethod
    def choose(
        cls,
        ref: list[str] | None = None,
        refs_dir: str | None = None,
        people: str | None = None,
        no_refs: bool = False,
        person: str | None = None,
        count: int = DEFAULT_REFERENCES,
        needed: bool = True,
    ) -> ReferenceSource:
        """The one source the user gave (`--ref`, `--refs-dir`, `--people` or `--no-refs`); several is one
        sentence, and so is none where the method `needed` references (a blind restorer does not: none is
        `--no-refs`)."""
        given = [
            (kind, value)
            for kind, value in (("files", ref), ("album", refs_dir), ("people", people), ("none", no_refs))
            if value
        ]
        if not given and not needed:
            given = [("none", True)]
        if not given:
            raise RefFaceError(
                "No reference photos were given: pass --ref FILE [FILE ...] (one person), --refs-dir ALBUM_FOLDER, "
                "--people FOLDER_OF_PERSON_FOLDERS, or --no-refs to restore without."
            )
        if len(given) > 1:
            raise RefFaceError(f"{' and '.join(cls.FLAGS[kind] for kind, _ in given)} contradict each other; use one.")
        kind, value = given[0]
        paths = tuple(Path(p) for p in value) if kind == "files" else () if kind == "none" else (Path(value),)
        return cls(kind, paths, Path(person) if person else None, count)

    @property
    def given(self) -> bool:
        """Whether the run has references at all."""
        return self.kind != "none"

    def recorded(self) -> dict:
        absolute = [str(path.resolve()) for path in self.paths] if self.paths else [None]
        return {
            "references": self.FLAGS[self.kind].removeprefix("--"),
            "reference_paths": absolute,
            "person": str(self.person.resolve()) if self.person is not None else None,
            "num_refs": self.count,
        }


def face_choice(face: str | int) -> str | int:
    """Which faces: "auto", "all", "largest" or a face number (0 is the largest); anything else is one sentence."""
    if isinstance(face, bool) or not isinstance(face, str | int):
        raise RefFaceError(f"Choose faces with all, largest, auto or a face number, got {face!r}.")
    if isinstance(face, int):
        if face < 0:
            raise RefFaceError(f"Face numbers start at 0, got {face}.")
        return face
    if face not in FACE_CHOICES:
        raise RefFaceError(f"Choose faces with all, largest, auto or a face number, got {face!r}.")
    return face


@dataclass(frozen=True)
class RestoreSettings:
    """Everything that decides how a restoration runs, checked when made.

    `sampling`: the method's options (None: a restorer that only matches faces, or the pipeline's own defaults).
    `faces`: "auto" (the largest face when the user named one person, else all faces), "all", "largest" or a face
    number (largest first). `unknown`: what happens to a face that matches nobody (`UNKNOWN_FACES`). `strict`:
    refuse a face that looks like someone else than the person named, instead of warning. `batch_size`: faces of
    one person per pipeline call, across photos. `references`: where the people come from (None: the caller
    makes them, as the web page and ComfyUI do from uploaded photos). `sources`: the checked weight files of a run
    that loads its model (None: the caller has it loaded). `blind`, `blind_sampling`, `blind_sources`: with
    `unknown` "blind", the blind restorer of the faces that match nobody, its options and weights (None: its
    release). `photo`: how the restored photo is given back (scale, background, tone, paste mask, file format).
    The rest is the command line's: the face tools, the device, the output and how clips are written.
    """

    sampling: SamplingOptions | None = None
    method: str = methods.DEFAULT
    sources: methods.ModelSources | None = None
    references: ReferenceSource | None = None
    faces: str | int = "auto"
    unknown: str = "no-refs"
    blind: str | None = None
    blind_sampling: SamplingOptions | None = None
    blind_sources: methods.ModelSources | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    strict: bool = False
    identity: str = "dlib"
    arcface_weights: Path | None = None
    detector: str = "auto"
    aligned: bool = False
    device: str = "auto"
    dtype: str = "fp32"
    video: VideoOptions = field(default_factory=VideoOptions)
    photo: PhotoOutput = field(default_factory=PhotoOutput)
    output: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "faces", face_choice(self.faces))
        if self.unknown not in UNKNOWN_FACES:
            raise RefFaceError(f"Unknown faces are 'no-refs', 'skip' or 'blind', got {self.unknown!r}.")
        if (self.unknown == "blind") != (self.blind is not None):
            raise RefFaceError(
                "Name the blind restorer (blind=...) exactly when unknown faces are restored blind (unknown='blind'); "
                "RestoreSettings.build chooses the default one."
            )
        if self.blind is not None:
            methods.get_blind(self.blind)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise RefFaceError(f"--batch-size must be at least 1, got {self.batch_size}.")
        for value, choices, what in (
            (self.identity, IDENTITY_MODELS, "identity model"),
            (self.detector, DETECTORS, "face detector"),
            (self.device, DEVICE_NAMES, "device"),
            (self.dtype, DTYPE_NAMES, "dtype"),
        ):
            if value not in choices:
                raise RefFaceError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")
        if self.arcface_weights is not None and self.identity != "arcface":
            raise RefFaceError("--arcface-weights only applies with --identity arcface.")
        if self.aligned and self.references is not None and self.references.kind == "people":
            raise RefFaceError("--people needs whole photos to match faces in; it does not apply with --aligned.")
        if self.output is not None and not self.aligned:
            _check_photo_output(self.output)

    @classmethod
    def build(
        cls,
        *,
        method: str = methods.DEFAULT,
        fast: bool = False,
        model: str | Path | None = None,
        checkpoint: str | Path | None = None,
        vqgan: str | Path | None = None,
        config: str | Path | None = None,
        loads_model: bool = False,
        blind_method: str | None = None,
        blind_weights: str | Path | None = None,
        **choices,
    ) -> RestoreSettings:
        """The settings from a front end's choices: the method by name; its sampling options by their
        `SamplingOptions` names (steps, guidance, lq_guidance, color_fix, context, spacing, solver, strength, seed,
        fidelity; None: the method's default; `fast`: ReF-LDM's fast mode, DPM-Solver++ in 20 steps); its weight
        files (checked when given, or when the run `loads_model` from them: none given is the release); with
        `unknown="blind"`, the blind restorer of unknown faces (`blind_method`, default `methods.DEFAULT_BLIND`)
        and its weights file (None: its release), which also takes the fidelity weight when the method has none;
        and the remaining fields of `RestoreSettings` as they are."""
        entry = methods.get(method)
        sampling = {name: choices.pop(name) for name in SAMPLING_CHOICES if name in choices}
        if fast:
            if sampling.get("solver") == "ddim":
                raise RefFaceError("--fast samples with DPM-Solver++; it contradicts --solver ddim.")
            sampling["solver"] = "dpm++"
        blind = _blind_choices(choices.get("unknown"), blind_method, blind_weights)
        if blind is not None and entry.defaults.fidelity is None and sampling.get("fidelity") is not None:
            blind["blind_sampling"] = blind["blind_sampling"].with_changes(fidelity=sampling.pop("fidelity"))
        options = entry.sampling(**sampling)
        files = (model, checkpoint, vqgan, config)
        sources = entry.sources(*files) if loads_model or any(f is not None for f in files) else None
        for name in ("arcface_weights", "output"):
            if choices.get(name) is not None:
                choices[name] = Path(choices[name])
        return cls(sampling=options, method=entry.name, sources=sources, **(blind or {}), **choices)

    def notes(self) -> list[str]:
        """What the user should know of these settings before the run (said once, at its start)."""
        entry = self.method_entry
        if entry.uses_references or self.references is None or not self.references.given:
            return []
        return [
            f"{entry.label} restores each face from itself alone: the reference photos are not used in the "
            "restoration, only to decide which faces are restored."
        ]

    @property
    def method_entry(self) -> methods.Method:
        return methods.get(self.method)

    def load_pipeline(self):
        """The method's pipeline from the checked weight files (None: the release), not yet moved to a device."""
        return self.method_entry.load(self.sources)

    def load_blind_pipeline(self):
        """The blind restorer of unknown faces (None unless `unknown` is "blind"), not yet moved to a device."""
        if self.blind is None:
            return None
        return methods.get(self.blind).load(self.blind_sources)

    def recorded(self, with_video: bool = False) -> dict:
        """What decides the results of a run, as its manifest records it (a resumed run must match)."""
        recorded = {
            "method": self.method,
            "model": self.sources.recorded() if self.sources is not None else None,
            "sampling": self.sampling.recorded() if self.sampling is not None else None,
            "dtype": self.dtype,
            "face": self.faces,
            "unknown": self.unknown,
            **(self._blind_recorded() if self.blind is not None else {}),
            **(self.references.recorded() if self.references is not None else {}),
            "identity": self.identity,
            "detector": self.detector,
            "strict": self.strict,
            "photo": self.photo.recorded(),
        }
        if with_video:
            recorded["video"] = self.video.recorded()
        return recorded

    def _blind_recorded(self) -> dict:
        """The blind restorer of unknown faces, recorded only where there is one (older manifests still match)."""
        return {
            "blind": self.blind,
            "blind_model": self.blind_sources.recorded() if self.blind_sources is not None else None,
            "blind_sampling": self.blind_sampling.recorded() if self.blind_sampling is not None else None,
        }


def _blind_choices(unknown: str | None, name: str | None, weights: str | Path | None) -> dict | None:
    """The blind restorer of unknown faces as `RestoreSettings` fields (None when they are not restored blind); a
    blind restorer or its weights named without `--unknown blind` is one sentence."""
    if unknown != "blind":
        if name is not None or weights is not None:
            raise RefFaceError("--blind-method and --blind-weights only apply with --unknown blind.")
        return None
    entry = methods.get_blind(name or methods.DEFAULT_BLIND)
    return {
        "blind": entry.name,
        "blind_sampling": entry.sampling(),
        "blind_sources": entry.sources(checkpoint=weights) if weights is not None else None,
    }


def _check_photo_output(output: Path) -> None:
    """Whole photos go into an output folder (restored_imgs/, cropped_faces/, ..., the report)."""
    from refface.imaging import SAVE_FORMATS

    if output.suffix.lower() in SAVE_FORMATS or (output.exists() and not output.is_dir()):
        raise RefFaceError(
            f"For whole photos --output is a folder (it receives restored_imgs/, cropped_faces/, restored_faces/, "
            f"cmp/ and the report), but {output} looks like a file; pass --aligned if the inputs are face crops."
        )
