"""The method registry: what the CLI, the web page and the benchmark offer, each method's defaults and checks."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from refface import methods
from refface.cli import build_parser
from refface.errors import RefFaceError
from refface.evaluation.methods import PipelineRestorer, SamplingSettings, build_restorer

SOURCE = Path(__file__).resolve().parents[1] / "src" / "refface"


def _command(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _option(command: str, dest: str) -> argparse.Action:
    return next(a for a in _command(command)._actions if a.dest == dest)


def test_the_cli_offers_the_registry_s_methods():
    assert methods.names() == ("refldm", "composite")
    assert list(_option("restore", "method").choices) == list(methods.names())
    assert _option("restore", "method").default == methods.DEFAULT == "refldm"
    assert list(_option("benchmark", "method").choices) == list(methods.benchmark_methods())
    assert list(methods.benchmark_methods()) == ["refldm", "refldm-no-refs", "composite", "composite-no-refs"]


def test_an_unknown_method_is_one_sentence_listing_the_names():
    with pytest.raises(RefFaceError, match=r"^Unknown method 'gfpgan'; choose one of refldm, composite\.$"):
        methods.get("gfpgan")
    with pytest.raises(RefFaceError, match="choose one of refldm, refldm-no-refs, composite, composite-no-refs"):
        methods.benchmark_method("refldm-fast")
    with pytest.raises(RefFaceError, match="No restoration method runs a OtherPipeline"):
        methods.for_pipeline("OtherPipeline")
    assert methods.benchmark_method("composite-no-refs") == (methods.get("composite"), False)
    assert methods.benchmark_method("refldm") == (methods.get("refldm"), True)


def test_each_method_s_defaults_and_option_checks():
    refldm, composite = methods.get("refldm"), methods.get("composite")
    assert refldm.sampling_options() == {
        "num_inference_steps": 50, "guidance_scale": 1.5, "spacing": "uniform_trailing", "solver": "ddim"
    }  # fmt: skip
    assert refldm.sampling_options(20, 2.0, spacing="uniform", solver="dpm++", strength=0.4) == {
        "num_inference_steps": 20, "guidance_scale": 2.0, "spacing": "uniform", "solver": "dpm++", "strength": 0.4
    }  # fmt: skip
    assert composite.sampling_options(30) == {
        "num_inference_steps": 30, "lq_guidance": 1.2, "reference_guidance": 1.2, "color_fix": True
    }  # fmt: skip
    assert composite.sampling_options(5, 1.4, 1.1, color_fix=False, strength=0.5) == {
        "num_inference_steps": 5, "lq_guidance": 1.1, "reference_guidance": 1.4, "color_fix": False, "strength": 0.5
    }  # fmt: skip
    assert (refldm.fast_steps, composite.fast_steps) == (20, None)
    for method in (refldm, composite):
        with pytest.raises(RefFaceError, match="must be at least 1, got 0"):
            method.sampling_options(0)
    for wrong in ({"spacing": "uniform"}, {"solver": "dpm++"}):
        with pytest.raises(RefFaceError, match=r"\(--schedule, --solver, --fast\) apply to ReF-LDM"):
            composite.sampling_options(10, **wrong)
    for wrong in ({"lq_guidance": 1.5}, {"color_fix": False}):
        with pytest.raises(RefFaceError, match="apply to the composite method only"):
            refldm.sampling_options(10, **wrong)
    with pytest.raises(RefFaceError, match="Unknown solver 'euler'"):
        refldm.sampling_options(10, solver="euler")
    for method in (refldm, composite):
        for strength in (0.0, -0.5, 1.01, float("nan")):
            with pytest.raises(RefFaceError, match="strength must be greater than 0 and at most 1"):
                method.sampling_options(10, strength=strength)


def test_the_benchmark_restorer_sets_and_records_each_method_s_options():
    settings = SamplingSettings(steps=4, guidance=1.3, spacing="uniform_trailing", seed=9)
    refldm = PipelineRestorer(methods.get("refldm"), None, settings, lq_guidance=2.0, color_fix=False)
    assert refldm.sampling() == {
        "num_inference_steps": 4, "guidance_scale": 1.3, "spacing": "uniform_trailing", "solver": "ddim"
    }  # fmt: skip
    assert refldm.recorded() == {"steps": 4, "guidance": 1.3, "spacing": "uniform_trailing", "seed": 9}
    composite = PipelineRestorer(methods.get("composite"), None, settings, color_fix=False)
    assert composite.sampling() == {
        "num_inference_steps": 4, "lq_guidance": 1.2, "reference_guidance": 1.3, "color_fix": False
    }  # fmt: skip
    assert composite.recorded() == {"steps": 4, "guidance": 1.3, "lq_guidance": 1.2, "color_fix": False, "seed": 9}


def test_each_entry_names_its_pipeline_and_saved_folder_kind():
    from refface.pipelines.loading import PIPELINES

    assert {m.pipeline_class_name: m.label for m in methods.METHODS} == PIPELINES
    for method in methods.METHODS:
        assert method.pipeline_class().__name__ == method.pipeline_class_name
        assert methods.for_pipeline(method.pipeline_class_name) is method
    with pytest.raises(RefFaceError, match="has no released weights; pass --model"):
        methods.get("composite").load()
    with pytest.raises(RefFaceError, match="ReF-LDM's official files"):
        methods.get("composite").check_sources("folder", "refldm.ckpt", None, None)


def test_the_guidance_and_spacing_flags_and_their_old_names():
    parser = build_parser()
    base = ["restore", "lq.png", "--no-refs", "-o", "out"]
    assert parser.parse_args([*base, "--guidance", "2"]).guidance == 2.0
    assert parser.parse_args([*base, "--cfg", "2.5"]).guidance == 2.5  # the old spelling
    assert parser.parse_args([*base, "--schedule", "uniform"]).spacing == "uniform"
    bench = ["benchmark", "--set", "custom", "--images", "hq", "--method", "composite"]
    assert parser.parse_args([*bench, "--cfg", "1.3"]).guidance == 1.3
    assert parser.parse_args(bench).spacing == "uniform"


def test_importing_the_registry_stays_light_and_the_lower_layers_never_import_it():
    code = (
        "import sys, refface.methods; "
        "print(sorted(m for m in sys.modules if m.startswith(('refface.cli', 'refface.web', "
        "'refface.evaluation', 'refface.train', 'refface.pipelines.composite'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    for layer in ("models", "pipelines"):
        for path in (SOURCE / layer).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "refface.methods" not in text and "from refface import methods" not in text, path
    registry = (SOURCE / "methods.py").read_text(encoding="utf-8")
    assert "refface.cli" not in registry and "refface.web" not in registry


class _FakePipe:
    def to(self, device=None, dtype=None):
        return self


def _fake_method() -> methods.Method:
    def options(*, steps, guidance, lq_guidance, color_fix, spacing, solver, strength):
        if spacing is not None or solver is not None or lq_guidance is not None or strength != 1.0:
            raise RefFaceError("The fake method takes steps and guidance only.")
        return {"num_inference_steps": steps, "strength": guidance}

    return methods.Method(
        name="fake",
        label="Fake",
        pipeline="tests.test_methods:_FakePipe",
        loader=lambda model, checkpoint, vqgan, config: _FakePipe(),
        options=options,
        summary="made up",
        with_references="copies the references",
        without_references="copies the LQ",
        guidance=2.0,
        steps=7,
    )


def test_a_third_method_is_one_entry(monkeypatch, tmp_path):
    fake = _fake_method()
    monkeypatch.setattr(methods, "METHODS", (*methods.METHODS, fake))

    assert methods.names() == ("refldm", "composite", "fake")
    assert methods.get("fake") is fake and methods.for_pipeline("_FakePipe") is fake
    assert fake.sampling_options() == {"num_inference_steps": 7, "strength": 2.0}
    with pytest.raises(RefFaceError, match="choose one of refldm, composite, fake"):
        methods.get("nope")

    method = _option("restore", "method")
    assert list(method.choices) == ["refldm", "composite", "fake"] and "fake (made up)" in method.help
    assert "2.0 for fake" in _option("restore", "guidance").help
    bench = _option("benchmark", "method")
    assert list(bench.choices)[-2:] == ["fake", "fake-no-refs"]
    assert "fake-no-refs: Fake given no references (copies the LQ)" in bench.help
    assert "Fake" in _option("serve", "model").help

    made = build_restorer("fake-no-refs", SamplingSettings(steps=3), lq_guidance=1.7)
    assert (made.uses_references, made.source) == (False, "released Fake weights")
    assert made.sampling() == {"num_inference_steps": 3, "strength": 1.5}  # the benchmark's guidance
    assert made.recorded() == {"steps": 3, "guidance": 1.5, "seed": 2024}  # no benchmark_options: none recorded

    from refface.web.limits import ServeLimits
    from refface.web.service import RestorationService

    service = RestorationService({"fake": _FakePipe()}, None, None, ServeLimits(), tmp_path)
    try:
        info = service.info()["methods"]
        assert info == [{"name": "fake", "label": "Fake", "guidance": 2.0, "lq_guidance": None, "fast_steps": None}]
    finally:
        service.close()


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        methods.get("refldm").guidance = 3.0
