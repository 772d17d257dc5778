"""refface's ComfyUI nodes: load a model, encode a person once, restore the faces of images with them.

Each node is a thin layer over the library: `methods` loads the model, `restoration.people` makes the
person, `PhotoRestorer` finds, matches, restores and pastes back the faces (as `refface restore` and the
web page do). The nodes follow ComfyUI's custom-node interface (INPUT_TYPES, RETURN_TYPES, FUNCTION,
CATEGORY); IMAGE is [batch, height, width, channels] in [0, 1], MASK [batch, height, width].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from refface import methods
from refface.comfyui.host import Progress, comfyui_models_folder
from refface.comfyui.tensors import to_arrays, to_image, to_mask
from refface.devices import DEVICE_NAMES, DTYPE_NAMES, resolve_device, torch_dtype
from refface.face.detection import FaceDetector
from refface.face.detectors import DETECTOR_NAMES, choose_detector
from refface.face.identity import DlibEmbedder
from refface.face.locate import NoFaceFound
from refface.face.paste import face_mask
from refface.restoration.people import People, people_from_images
from refface.restoration.photo_restorer import PhotoRestorer
from refface.restoration.reference_store import ReferenceStore
from refface.restoration.settings import UNKNOWN_WITHOUT_SECOND_MODEL, RestoreSettings
from refface.weights import cache_dir

CATEGORY = "refface"
MODEL = "REFFACE_MODEL"
PERSON = "REFFACE_PERSON"
# the released weights inside ComfyUI's models folder: models/refldm/refldm.ckpt and vqgan.ckpt
RELEASED_FOLDER = "refldm"


@dataclass
class RefFaceModel:
    """What the Load node passes on: the pipeline, its method, the face tools and the encoded people."""

    method: methods.Method
    pipe: Any
    detector: FaceDetector
    embedder: DlibEmbedder
    store: ReferenceStore


def _load_pipeline(folder: str):
    """A model folder (either method), else the released ReF-LDM: from ComfyUI's models folder if it has the
    two files, else from refface's cache (downloaded on first use)."""
    if folder.strip():
        method, source = methods.of_folder(folder.strip())
        return method, method.load(method.sources(model=source))
    method = methods.get(methods.DEFAULT)
    models = comfyui_models_folder()
    released = models / RELEASED_FOLDER if models is not None else None
    if released is not None and (released / "refldm.ckpt").is_file() and (released / "vqgan.ckpt").is_file():
        return method, method.load(method.sources(checkpoint=released / "refldm.ckpt", vqgan=released / "vqgan.ckpt"))
    return method, method.load()


class LoadRefLDM:
    """Load ReF-LDM (the released weights) or a refface model folder (ReF-LDM or Composite-Context)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = "Loads a refface model once; the person and restore nodes take it."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_folder": (
                    "STRING",
                    {"default": "", "tooltip": "a refface model folder; empty: released ReF-LDM"},
                ),
                "device": (list(DEVICE_NAMES),),
                "dtype": (list(DTYPE_NAMES),),
            },
            "optional": {
                "detector": (
                    list(DETECTOR_NAMES),
                    {"tooltip": "auto: RetinaFace where its weights are at hand, else dlib's cascade"},
                ),
            },
        }

    def load(self, model_folder: str, device: str, dtype: str, detector: str = "auto") -> tuple[RefFaceModel]:
        # ComfyUI runs every node under torch.inference_mode(), where new tensors are inference tensors
        # without a version counter, which the pipeline's weight-derived caches check: load normal ones.
        where = resolve_device(device, "The device")
        with torch.inference_mode(False):
            method, pipe = _load_pipeline(model_folder)
            pipe = pipe.to(device=where, dtype=torch_dtype(dtype))
            faces, notes = choose_detector(detector, where)
        for note in notes:
            print(f"refface: note: {note}")
        embedder = DlibEmbedder(shape_predictor=faces.shape_predictor)
        return (RefFaceModel(method, pipe, faces, embedder, ReferenceStore(pipe, cache_dir() / "people")),)


class EncodePerson:
    """Reference photos of one person -> a PERSON: their aligned faces and encoded references, made once."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (PERSON,)
    RETURN_NAMES = ("person",)
    FUNCTION = "encode"
    DESCRIPTION = "Aligns the largest face of each reference photo and encodes them once for any number of restores."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL,),
                "images": ("IMAGE", {"tooltip": "photos of the same person"}),
                "name": ("STRING", {"default": "person"}),
            },
            "optional": {"aligned": ("BOOLEAN", {"default": False, "tooltip": "the photos are aligned face crops"})},
        }

    def encode(self, model: RefFaceModel, images: torch.Tensor, name: str, aligned: bool = False) -> tuple[People]:
        photos = [(f"reference {number + 1}", Image.fromarray(pixels))
                  for number, pixels in enumerate(to_arrays(images, "reference IMAGE"))]  # fmt: skip
        people = people_from_images({name.strip() or "person": photos}, model.detector, model.embedder, aligned=aligned)
        for warning in people.warnings:
            print(f"refface: warning: {warning}")
        model.store.encoded(people.people[0])  # now, once: every restore node reuses it
        return (people,)


def _people(persons: list[People | None], embedder) -> People | None:
    """The people of the connected PERSON inputs as one set (names made distinct)."""
    chosen = [person for group in persons if group is not None for person in group.people]
    if not chosen:
        return None
    named = []
    for number, person in enumerate(chosen, start=1):
        taken = {other.name for other in named}
        named.append(replace(person, name=f"{person.name}-{number}") if person.name in taken else person)
    return People(named, embedder, named_one=len(named) == 1)


def _settings(model: RefFaceModel, steps: int, guidance: float, seed: int, solver: str, strength: float, **faces):
    """The node's settings: its inputs as the run's settings (the solver only where the method has one: the
    combo always holds a value, and "ddim" is every method's own sampling)."""
    has_solver = model.method.defaults.solver is not None
    return RestoreSettings.build(
        method=model.method.name, steps=steps, guidance=guidance, seed=seed,
        solver=solver if has_solver or solver != "ddim" else None, strength=strength, **faces,
    )  # fmt: skip


def _sampling_inputs() -> dict:
    return {
        "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
        "guidance": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 10.0, "step": 0.1,
                               "tooltip": "toward the references (ReF-LDM 1.5, Composite-Context 1.2)"}),
        "seed": ("INT", {"default": 2024, "min": 0, "max": 2**63 - 1}),
        "solver": (["ddim", "dpm++"], {"tooltip": "dpm++: the fast mode of ReF-LDM (about 20 steps)"}),
        "strength": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                               "tooltip": "below 1: a lighter touch from the input noised part way"}),
    }  # fmt: skip


def _optional_people() -> dict:
    return {"person": (PERSON,), "person_2": (PERSON,), "person_3": (PERSON,)}


def _photo_inputs() -> dict:
    """How the restored image is given back: its scale, background and tone (optional: older workflows load)."""
    from refface.photo.options import BACKGROUNDS, COLOURS, MAX_SCALE

    return {
        "upscale": ("FLOAT", {"default": 1.0, "min": 1.0, "max": MAX_SCALE, "step": 0.5,
                              "tooltip": "the output's size; faces are pasted at it, never through the input's"}),
        "background": ([b for b in BACKGROUNDS if b != "none"],
                       {"tooltip": "the rest of an enlarged image: Real-ESRGAN (auto, downloaded on first use) or "
                                   "a Lanczos resize"}),
        "colour": (list(COLOURS), {"tooltip": "auto: black-and-white and toned images keep their tone"}),
    }  # fmt: skip


class RestoreFaces:
    """Every chosen face of each image restored as the person it matches, pasted back, with the faces' mask."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "restore"
    DESCRIPTION = "Finds the faces, matches each to a connected person, restores it with their references."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL,),
                "image": ("IMAGE",),
                **_sampling_inputs(),
                "faces": (["all", "largest", "by number"],),
                "face_number": ("INT", {"default": 0, "min": 0, "max": 99, "tooltip": "with faces = by number"}),
                "unknown": (list(UNKNOWN_WITHOUT_SECOND_MODEL), {
                    "tooltip": "a face matching no person: restore it without references, or leave it untouched"}),
            },
            "optional": {**_optional_people(), **_photo_inputs()},
        }  # fmt: skip

    def restore(
        self,
        model: RefFaceModel,
        image: torch.Tensor,
        steps: int,
        guidance: float,
        seed: int,
        solver: str,
        strength: float,
        faces: str,
        face_number: int,
        unknown: str,
        person: People | None = None,
        person_2: People | None = None,
        person_3: People | None = None,
        upscale: float = 1.0,
        background: str = "auto",
        colour: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from refface.photo.options import PhotoOutput
        from refface.photo.original import OriginalPhoto
        from refface.restoration.compose import compose

        select = face_number if faces == "by number" else faces
        photo = PhotoOutput(scale=upscale, background=background, colour=colour)
        settings = _settings(model, steps, guidance, seed, solver, strength, faces=select, unknown=unknown, photo=photo)
        restorer = PhotoRestorer(
            model.pipe, _people([person, person_2, person_3], model.embedder), model.detector, settings,
            store=model.store,
        )  # fmt: skip
        photos = to_arrays(image)
        planned = []
        for number, pixels in enumerate(photos):
            try:
                planned.append(restorer.find(pixels, f"image {number + 1}")[0])
            except NoFaceFound as nothing:
                print(f"refface: note: {nothing} It is passed through unchanged.")
                planned.append([])
        progress = Progress(sum(len(restorer.batches(found)) for found in planned), steps)
        restorer.step_callback = progress.step
        restorer.batch_callback = lambda number, total, batch: progress.begin()
        outputs, masks = [], []
        try:
            for number, (pixels, found) in enumerate(zip(photos, planned, strict=True)):
                if found:
                    result = restorer.restore(pixels, f"image {number + 1}", faces=found)
                    restored, given_back = result.restored_faces, result.photo
                else:  # no face: the image enlarged as the others are (a batch shares one size)
                    restored = []
                    given_back = compose(OriginalPhoto(pixels), [], photo, restorer.background).pixels
                outputs.append(given_back)
                mask = np.zeros(given_back.shape[:2], np.float32)
                for face in restored:
                    weights = face_mask(face.aligned, given_back.shape[:2], face.restored.shape[0], mask=photo.mask)
                    mask = np.maximum(mask, weights)
                masks.append(mask)
            progress.finish()
        finally:
            progress.close()
        return to_image(outputs), to_mask(masks)


class RestoreAlignedFace:
    """Aligned face crops (FFHQ alignment, e.g. 512 x 512) restored, returned at their own size."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "restore"
    DESCRIPTION = "Restores crops that are already aligned, each as the connected person it matches."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"model": (MODEL,), "crops": ("IMAGE",), **_sampling_inputs()},
            "optional": _optional_people(),
        }

    def restore(
        self,
        model: RefFaceModel,
        crops: torch.Tensor,
        steps: int,
        guidance: float,
        seed: int,
        solver: str,
        strength: float,
        person: People | None = None,
        person_2: People | None = None,
        person_3: People | None = None,
    ) -> tuple[torch.Tensor]:
        restorer = PhotoRestorer(
            model.pipe, _people([person, person_2, person_3], model.embedder), None,
            _settings(model, steps, guidance, seed, solver, strength), store=model.store,
        )  # fmt: skip
        arrays = to_arrays(crops, "crops IMAGE")
        progress = Progress(None, steps)  # the number of calls (the restorer's batches) comes with the first
        restorer.step_callback = progress.step
        restorer.batch_callback = lambda number, total, batch: progress.begin(total)
        try:
            faces = restorer.restore_crops(arrays, "the crop")
            progress.finish()
        finally:
            progress.close()
        size = arrays[0].shape[1::-1]
        restored = [
            np.asarray(Image.fromarray(face.restored).resize(size, Image.Resampling.LANCZOS))
            if face.restored is not None
            else crop
            for face, crop in zip(faces, arrays, strict=True)
        ]
        return (to_image(restored),)


NODE_CLASS_MAPPINGS = {
    "RefFaceLoadModel": LoadRefLDM,
    "RefFaceEncodePerson": EncodePerson,
    "RefFaceRestoreFaces": RestoreFaces,
    "RefFaceRestoreAlignedFace": RestoreAlignedFace,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RefFaceLoadModel": "Load ReF-LDM (refface)",
    "RefFaceEncodePerson": "Encode Person (refface)",
    "RefFaceRestoreFaces": "Restore Faces (refface)",
    "RefFaceRestoreAlignedFace": "Restore Aligned Face (refface)",
}
