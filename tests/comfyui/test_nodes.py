"""The ComfyUI nodes called directly with ComfyUI-shaped tensors (IMAGE [B, H, W, C] in [0, 1], MASK [B, H, W]),
as ComfyUI calls them; ComfyUI's own modules are stood in for where the nodes use them."""

from __future__ import annotations

import inspect
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from refface import methods
from refface.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from refface.comfyui.nodes import EncodePerson, LoadRefLDM, RestoreAlignedFace, RestoreFaces
from refface.errors import RefFaceError
from refface.pipelines.composite import CompositeContextPipeline
from tests.conftest import make_tiny_pipeline
from tests.face.photos import astronaut, grace_hopper, group_photo, place, side_light

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "comfyui" / "refface_restore_faces.json"
SAMPLING = {"steps": 2, "guidance": 1.5, "seed": 11, "solver": "ddim", "strength": 1.0}


def _image(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """The module's own user cache (encoded people), set before the module's model is loaded."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REFFACE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_pipeline(seed=3).save_pretrained(folder)
    return LoadRefLDM().load(str(folder), "cpu", "fp32")[0]


@pytest.fixture(scope="module")
def people(model):
    grace = _image(place(grace_hopper(), 0, 0.9)[0], place(side_light(grace_hopper()), -6, 1.0)[0])
    eileen = _image(place(astronaut(), 10, 1.1)[0], place(side_light(astronaut()), 3, 1.3)[0])
    encode = EncodePerson()
    before = model.store.encodings
    made = encode.encode(model, grace, "Grace")[0], encode.encode(model, eileen, "Eileen")[0]
    assert model.store.encodings - before == 2  # each person encoded once, by the Encode Person node
    return made


def test_every_node_declares_what_comfyui_reads():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    for name, node in NODE_CLASS_MAPPINGS.items():
        spec = node.INPUT_TYPES()
        inputs = {**spec["required"], **spec.get("optional", {})}
        for key, declared in inputs.items():
            assert isinstance(declared, tuple) and isinstance(declared[0], (str, list)), (name, key)
        assert node.CATEGORY == "refface" and len(node.RETURN_TYPES) == len(node.RETURN_NAMES)
        parameters = inspect.signature(getattr(node, node.FUNCTION)).parameters
        assert set(inputs) == set(parameters) - {"self"}, name
        assert all(parameters[key].default is not inspect.Parameter.empty for key in spec.get("optional", {}))


def test_the_example_workflow_uses_the_nodes_as_declared():
    workflow = json.loads(EXAMPLE.read_text())
    ours = {key: node for key, node in workflow.items() if node["class_type"] in NODE_CLASS_MAPPINGS}
    assert {node["class_type"] for node in ours.values()} >= {"RefFaceLoadModel", "RefFaceEncodePerson",
                                                              "RefFaceRestoreFaces"}  # fmt: skip
    for node in ours.values():
        spec = NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()
        assert set(spec["required"]) <= set(node["inputs"]) <= set(spec["required"]) | set(spec.get("optional", {}))
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in workflow and isinstance(value[1], int)


@pytest.mark.slow
def test_restore_faces_restores_each_face_as_its_own_person_and_returns_the_mask(model, people):
    grace, eileen = people
    encodings = model.store.encodings
    scene = group_photo()
    image = _image(scene, scene[:, ::-1].copy())
    restored, mask = RestoreFaces().restore(model, image, **SAMPLING, faces="all", face_number=0, unknown="no-refs",
                                            person=grace, person_2=eileen)  # fmt: skip
    assert model.store.encodings == encodings  # the restore node reuses them
    assert restored.shape == image.shape and restored.dtype == torch.float32
    assert mask.shape == image.shape[:3] and float(mask.min()) == 0.0 and float(mask.max()) == 1.0
    assert float(restored.min()) >= 0 and float(restored.max()) <= 1
    untouched = (mask == 0)[..., None].expand_as(image)
    assert torch.equal(restored[untouched], (image * 255).round()[untouched] / 255)
    for item in range(2):  # both faces of both images changed, in opposite halves
        changed = (restored[item] - image[item]).abs().sum(-1) > 0
        assert changed[:, :500].float().mean() > 0.01 and changed[:, 540:].float().mean() > 0.01
        assert mask[item, :, :500].max() > 0.9 and mask[item, :, 540:].max() > 0.9


def test_a_face_of_nobody_connected_can_be_left_untouched(model, people):
    _, eileen = people
    image = _image(group_photo())
    restored, mask = RestoreFaces().restore(model, image, **SAMPLING, faces="all", face_number=0, unknown="skip",
                                            person=eileen)  # fmt: skip
    assert float(mask[0, :, 540:].max()) == 0.0 and torch.equal(restored[0, :, 540:], image[0, :, 540:])
    assert float(mask[0, :, :500].max()) > 0.9
    only = RestoreFaces().restore(model, image, **SAMPLING, faces="by number", face_number=1, unknown="no-refs")[1]
    assert float(only[0, :, 540:].max()) == 0.0 and float(only[0, :, :500].max()) > 0.9  # face 1: the astronaut


def test_an_enlarged_batch_shares_its_size_with_an_image_without_a_face_and_the_mask_follows(model, people):
    _, eileen = people
    scene = group_photo()
    empty = np.full_like(scene, 128)
    image = _image(scene, empty)
    restored, mask = RestoreFaces().restore(model, image, **SAMPLING, faces="all", face_number=0, unknown="skip",
                                            person=eileen, upscale=2.0, background="lanczos")  # fmt: skip
    height, width = scene.shape[:2]
    assert restored.shape == (2, 2 * height, 2 * width, 3) and mask.shape == (2, 2 * height, 2 * width)
    assert float(mask[0].max()) > 0.9 and float(mask[1].max()) == 0.0
    assert float((restored[1] - 128 / 255).abs().max()) < 1e-6  # the face-less image resized (flat stays flat)
    assert float(mask[0, :, 1080:].max()) == 0.0  # Grace Hopper's half: nobody connected, untouched


def test_an_image_without_a_face_passes_through_with_an_empty_mask(model):
    image = torch.full((1, 120, 160, 3), 128 / 255)
    restored, mask = RestoreFaces().restore(model, image, **SAMPLING, faces="all", face_number=0, unknown="no-refs")
    assert torch.equal(restored, image) and mask.shape == (1, 120, 160) and float(mask.max()) == 0.0


@pytest.mark.slow
def test_comfyui_progress_and_cancel_are_used_inside_comfyui(model, people, monkeypatch):
    bars, checks = [], []

    class ProgressBar:  # comfy.utils.ProgressBar's interface
        def __init__(self, total, node_id=None):
            self.total, self.shown = total, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.total = total if total is not None else self.total
            self.shown.append(value)

    class Interrupted(Exception):
        pass

    def throw_exception_if_processing_interrupted():
        checks.append(1)
        if len(checks) > 3:
            raise Interrupted

    comfy = types.ModuleType("comfy")
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", types.SimpleNamespace(ProgressBar=ProgressBar))
    monkeypatch.setitem(sys.modules, "comfy.model_management", types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted))  # fmt: skip
    grace, eileen = people
    image = _image(group_photo())
    with pytest.raises(Interrupted):  # the user's Cancel stops the node between sampling steps
        RestoreFaces().restore(model, image, **{**SAMPLING, "steps": 5}, faces="all", face_number=0,
                               unknown="no-refs", person=grace, person_2=eileen)  # fmt: skip
    assert bars[-1].total == 2 * 5 and len(checks) == 4  # two pipeline calls of 5 steps planned
    assert bars[-1].shown == [0, 1, 2]  # stopped in the first call, at its third step
    checks.clear()  # no cancel this time
    monkeypatch.setitem(sys.modules, "comfy.model_management", types.SimpleNamespace(
        throw_exception_if_processing_interrupted=lambda: checks.append(1)))  # fmt: skip
    RestoreFaces().restore(model, image, **SAMPLING, faces="all", face_number=0, unknown="no-refs", person=grace,
                           person_2=eileen)  # fmt: skip
    assert bars[-1].total == 2 * 2 and len(checks) == 2 + 2 * 2  # a check per call and per step
    assert bars[-1].shown == [0, 1, 2, 2, 3, 4, 4]  # a unit per sampling step, full at the end
    RestoreAlignedFace().restore(model, torch.rand(2, 32, 32, 3), **SAMPLING, person=grace)
    assert bars[-1].total == 1 * 2 and bars[-1].shown == [0, 1, 2, 2]  # one call (told at its start)
    lighter = RestoreFaces().restore(model, image, **{**SAMPLING, "steps": 4, "strength": 0.5}, faces="largest",
                                     face_number=0, unknown="no-refs", person=grace)  # fmt: skip
    assert lighter[0].shape == image.shape and bars[-1].shown[-1] == bars[-1].total == 4  # fewer steps, still full


@pytest.mark.slow
def test_the_nodes_run_under_inference_mode_as_comfyui_runs_them(tmp_path):
    """ComfyUI executes every node inside torch.inference_mode(): the model loaded there must restore there."""
    make_tiny_pipeline(seed=3).save_pretrained(tmp_path / "model")
    image = _image(group_photo())
    with torch.inference_mode():
        model = LoadRefLDM().load(str(tmp_path / "model"), "cpu", "fp32")[0]
        grace = EncodePerson().encode(model, _image(place(grace_hopper(), 0, 0.9)[0]), "Grace")[0]
        restored, mask = RestoreFaces().restore(model, image, **SAMPLING, faces="largest", face_number=0,
                                                unknown="no-refs", person=grace)  # fmt: skip
    assert restored.shape == image.shape and float(mask.max()) == 1.0


def test_aligned_crops_come_back_at_their_size_and_depend_on_the_person(model, people):
    grace, eileen = people
    crops = torch.rand(2, 48, 48, 3, generator=torch.Generator().manual_seed(0))
    (first,) = RestoreAlignedFace().restore(model, crops, **SAMPLING, person=grace)
    (again,) = RestoreAlignedFace().restore(model, crops, **SAMPLING, person=grace)
    (other,) = RestoreAlignedFace().restore(model, crops, **SAMPLING, person=eileen)
    (none,) = RestoreAlignedFace().restore(model, crops, **SAMPLING)
    assert first.shape == crops.shape and torch.equal(first, again)
    assert not torch.equal(first, other) and not torch.equal(first, none)


@pytest.mark.slow
def test_a_composite_model_folder_loads_and_restores(tmp_path):
    torch.manual_seed(1)
    CompositeContextPipeline.tiny(32).save_pretrained(tmp_path / "composite")
    model = LoadRefLDM().load(str(tmp_path / "composite"), "cpu", "fp32")[0]
    assert model.method.name == "composite"
    crops = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    (restored,) = RestoreAlignedFace().restore(model, crops, **{**SAMPLING, "guidance": 1.2})
    assert restored.shape == crops.shape
    with pytest.raises(RefFaceError, match="The solver is not an option of Composite-Context"):
        RestoreAlignedFace().restore(model, crops, **{**SAMPLING, "solver": "dpm++"})


@pytest.mark.slow
def test_the_released_weights_come_from_comfyuis_models_folder_when_it_has_them(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(methods.Method, "load", lambda self, found=None: asked.append(found) or make_tiny_pipeline())
    monkeypatch.setitem(sys.modules, "folder_paths", types.SimpleNamespace(models_dir=str(tmp_path)))
    LoadRefLDM().load("", "cpu", "fp32")
    assert asked[-1] is None  # no files there: refface's own cache (or its download)
    (tmp_path / "refldm").mkdir()
    for name in ("refldm.ckpt", "vqgan.ckpt"):
        (tmp_path / "refldm" / name).write_bytes(b"weights")
    LoadRefLDM().load("", "cpu", "fp32")
    assert asked[-1] == methods.ModelSources(checkpoint=tmp_path / "refldm" / "refldm.ckpt",
                                             vqgan=tmp_path / "refldm" / "vqgan.ckpt")  # fmt: skip


def test_bad_inputs_are_one_sentence(model, tmp_path):
    with pytest.raises(
        RefFaceError, match=r"must be a ComfyUI image batch \[batch, height, width, 3\], got \(3, 8, 8\)"
    ):
        RestoreAlignedFace().restore(model, torch.rand(3, 8, 8), **SAMPLING)
    with pytest.raises(RefFaceError, match="No face was found in reference 1"):
        EncodePerson().encode(model, torch.full((1, 64, 64, 3), 0.5), "Nobody")
    with pytest.raises(RefFaceError, match="strength must be greater than 0"):
        RestoreAlignedFace().restore(model, torch.rand(1, 32, 32, 3), **{**SAMPLING, "strength": 0.0})
    with pytest.raises(RefFaceError, match="missing has no readable model_index.json"):
        LoadRefLDM().load(str(tmp_path / "missing"), "cpu", "fp32")


def test_the_comfyui_requirements_are_reffaces_dependencies_but_torch():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = (root / "src" / "refface" / "comfyui" / "requirements.txt").read_text().splitlines()
    assert [line for line in listed if line and not line.startswith("#")] == [
        d for d in dependencies if not d.startswith("torch")
    ]
