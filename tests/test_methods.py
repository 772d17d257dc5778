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
from refface.evaluation.restorers import PipelineRestorer, benchmark_sampling, build_restorer
from refface.pipelines.base import SamplingOptions

SOURCE = Path(__file__).resolve().parents[1] / "src" / "refface"


def _command(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _option(command: str, dest: str) -> argparse.Action:
    return next(a for a in _command(command)._actions if a.dest == dest)


def test_the_cli_offers_the_registry_s_methods():
    assert methods.names() == ("refldm", "composite", "codeformer", "gfpgan", "restoreformer++")
    assert methods.blind_names() == ("codeformer", "gfpgan", "restoreformer++")
    assert list(_option("restore", "method").choices) == list(methods.names())
    assert _option("restore", "method").default == methods.DEFAULT == "refldm"
    assert list(_option("restore", "blind_method").choices) == list(methods.blind_names())
    assert list(_option("benchmark", "method").choices) == list(methods.benchmark_methods())
    assert list(methods.benchmark_methods()) == [
        "refldm", "refldm-no-refs", "composite", "composite-no-refs", "codeformer", "gfpgan", "restoreformer++"
    ]  # fmt: skip


def test_an_unknown_method_is_one_sentence_listing_the_names():
    everything = "refldm, composite, codeformer, gfpgan, restoreformer\\+\\+"
    with pytest.raises(RefFaceError, match=rf"^Unknown method 'gfpgan2'; choose one of {everything}\.$"):
        methods.get("gfpgan2")
    with pytest.raises(RefFaceError, match="choose one of refldm, refldm-no-refs, composite, composite-no-refs, cod"):
        methods.benchmark_method("refldm-fast")
    with pytest.raises(RefFaceError, match="choose one of refldm, refldm-no-refs"):
        methods.benchmark_method("gfpgan-no-refs")  # a blind restorer has no variant without references
    with pytest.raises(RefFaceError, match=r"^'refldm' is not a blind restorer; choose one of codeformer, gfpgan"):
        methods.get_blind("refldm")
    assert methods.benchmark_method("gfpgan") == (methods.get("gfpgan"), False)
    with pytest.raises(RefFaceError, match="No restoration method runs a OtherPipeline"):
        methods.for_pipeline("OtherPipeline")
    assert methods.benchmark_method("composite-no-refs") == (methods.get("composite"), False)
    assert methods.benchmark_method("refldm") == (methods.get("refldm"), True)


def test_each_method_s_defaults_and_option_checks():
    refldm, composite = methods.get("refldm"), methods.get("composite")
    assert refldm.sampling() == SamplingOptions(
        "ReF-LDM", steps=50, guidance=1.5, spacing="uniform_trailing", solver="ddim", strength=1.0, seed=2024
    )
    assert refldm.sampling(steps=20, guidance=2.0, spacing="uniform", solver="dpm++", strength=0.4) == SamplingOptions(
        "ReF-LDM", steps=20, guidance=2.0, spacing="uniform", solver="dpm++", strength=0.4
    )
    assert refldm.sampling(solver="dpm++").steps == 20  # the fast mode's steps unless told
    assert composite.sampling(steps=30) == SamplingOptions(
        "Composite-Context", steps=30, guidance=1.2, lq_guidance=1.2, color_fix=True, context="both"
    )
    changed = composite.sampling(steps=5, guidance=1.4, lq_guidance=1.1, color_fix=False, strength=0.5,
                                 context="identity")  # fmt: skip
    assert changed == SamplingOptions(
        "Composite-Context", steps=5, guidance=1.4, lq_guidance=1.1, color_fix=False, strength=0.5, context="identity"
    )
    assert (refldm.fast_steps, composite.fast_steps) == (20, None)
    for method in (refldm, composite):
        with pytest.raises(RefFaceError, match="must be a whole number of at least 1, got 0"):
            method.sampling(steps=0)
    for wrong in ({"spacing": "uniform"}, {"solver": "dpm++"}):
        refused = r"^The (timestep spacing|solver) is not an option of Composite-Context\.$"
        with pytest.raises(RefFaceError, match=refused):
            composite.sampling(steps=10, **wrong)
    for wrong in ({"lq_guidance": 1.5}, {"color_fix": False}):
        with pytest.raises(RefFaceError, match="is not an option of ReF-LDM"):
            refldm.sampling(steps=10, **wrong)
    with pytest.raises(RefFaceError, match="Unknown solver 'euler'"):
        refldm.sampling(steps=10, solver="euler")
    for method in (refldm, composite):
        for strength in (0.0, -0.5, 1.01, float("nan")):
            with pytest.raises(RefFaceError, match="strength must be"):
                method.sampling(steps=10, strength=strength)


def test_the_benchmark_restorer_sets_and_records_each_method_s_options():
    refldm = PipelineRestorer(
        methods.get("refldm"), None, benchmark_sampling(methods.get("refldm"), 4, 1.3, "uniform_trailing", 9)
    )
    assert refldm.options == SamplingOptions("ReF-LDM", 4, 1.3, spacing="uniform_trailing", solver="ddim", seed=9)
    assert refldm.recorded() == {"steps": 4, "guidance": 1.3, "spacing": "uniform_trailing", "seed": 9}
    with pytest.raises(RefFaceError, match="are not options of ReF-LDM"):  # refused as the CLI refuses them
        benchmark_sampling(methods.get("refldm"), 4, 1.3, lq_guidance=2.0, color_fix=False)
    composite = PipelineRestorer(
        methods.get("composite"),
        None,
        benchmark_sampling(methods.get("composite"), 4, 1.3, "uniform_trailing", 9, color_fix=False),
    )
    assert composite.options == SamplingOptions(
        "Composite-Context", 4, 1.3, lq_guidance=1.2, color_fix=False, context="both", seed=9
    )  # the timestep spacing is not the composite model's
    assert composite.recorded() == {"steps": 4, "guidance": 1.3, "lq_guidance": 1.2, "color_fix": False, "seed": 9}
    masked = PipelineRestorer(
        methods.get("composite"), None, benchmark_sampling(methods.get("composite"), 4, context="identity")
    )
    assert masked.recorded()["context"] == "identity"  # a Table 5 run never mixes with a full-context one


def test_each_entry_names_its_pipeline_and_saved_folder_kind(tmp_path):
    from refface.pipelines.blind import KINDS
    from refface.pipelines.loading import saved_pipeline_class

    for method in methods.METHODS:
        assert method.pipeline_class().__name__ == method.pipeline_class_name
        if not method.uses_references:  # a blind restorer: its kind's options, no saved folder
            assert KINDS[method.name].options is method.defaults
            with pytest.raises(RefFaceError, match="loads one weights file: pass it with --checkpoint"):
                method.sources(model=tmp_path)
            continue
        assert method.pipeline_class().default_options is method.defaults  # one place for the defaults
        assert methods.for_pipeline(method.pipeline_class_name) is method
        folder = tmp_path / method.name
        folder.mkdir()
        (folder / "model_index.json").write_text(f'{{"_class_name": "{method.pipeline_class_name}"}}')
        assert methods.of_folder(folder) == (method, folder)
        assert saved_pipeline_class(folder) == method.pipeline_class_name
    with pytest.raises(RefFaceError, match="holds a Composite-Context model, not a ReF-LDM one"):
        methods.get("refldm").sources(model=tmp_path / "composite")
    with pytest.raises(RefFaceError, match="has no released weights; pass --model"):
        methods.get("composite").load()
    with pytest.raises(RefFaceError, match="ReF-LDM's official files"):
        methods.get("composite").sources("folder", "refldm.ckpt")
    with pytest.raises(RefFaceError, match="--model already holds every weight"):
        methods.get("refldm").sources(tmp_path / "refldm", "refldm.ckpt")
    with pytest.raises(RefFaceError, match="pass it with --checkpoint"):
        methods.get("refldm").sources(vqgan="vqgan.ckpt")


def test_the_guidance_and_spacing_flags_and_their_old_names():
    parser = build_parser()
    base = ["restore", "lq.png", "--no-refs", "-o", "out"]
    assert parser.parse_args([*base, "--guidance", "2"]).guidance == 2.0
    assert parser.parse_args([*base, "--cfg", "2.5"]).guidance == 2.5  # the old spelling
    assert parser.parse_args([*base, "--schedule", "uniform"]).spacing == "uniform"
    bench = ["benchmark", "--set", "custom", "--images", "hq", "--method", "composite"]
    assert parser.parse_args([*bench, "--cfg", "1.3"]).guidance == 1.3
    assert parser.parse_args(bench).spacing == "uniform"


@pytest.mark.slow
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
    default_options = SamplingOptions("Fake", steps=7, guidance=2.0)

    def to(self, device=None, dtype=None):
        return self


def _fake_method() -> methods.Method:
    return methods.Method(
        name="fake",
        pipeline="tests.test_methods:_FakePipe",
        loader=lambda sources: _FakePipe(),
        defaults=_FakePipe.default_options,
        summary="made up",
        with_references="copies the references",
        without_references="copies the LQ",
        benchmark=methods.BenchmarkDefaults(steps=3, references=2, sweep=(1, 2)),
    )


def test_a_third_method_is_one_entry(monkeypatch, tmp_path):
    fake = _fake_method()
    monkeypatch.setattr(methods, "METHODS", (*methods.METHODS, fake))

    assert methods.names()[-1] == "fake" and methods.names()[:2] == ("refldm", "composite")
    assert methods.get("fake") is fake and methods.for_pipeline("_FakePipe") is fake
    assert fake.sampling() == SamplingOptions("Fake", steps=7, guidance=2.0) and fake.label == "Fake"
    with pytest.raises(RefFaceError, match="The solver is not an option of Fake"):
        fake.sampling(solver="dpm++")
    with pytest.raises(RefFaceError, match="choose one of refldm, composite, .*, fake"):
        methods.get("nope")

    method = _option("restore", "method")
    assert list(method.choices) == list(methods.names()) and "fake (made up)" in method.help
    assert "2.0 for fake" in _option("restore", "guidance").help
    bench = _option("benchmark", "method")
    assert list(bench.choices)[-2:] == ["fake", "fake-no-refs"]
    assert "fake-no-refs: Fake given no references (copies the LQ)" in bench.help
    assert "Fake" in _option("serve", "model").help

    made = build_restorer("fake-no-refs", benchmark_sampling(fake, steps=3))
    assert (made.uses_references, made.source) == (False, "released Fake weights")
    assert made.options == SamplingOptions("Fake", steps=3, guidance=2.0)  # the method's guidance
    assert made.recorded() == {"steps": 3, "guidance": 2.0, "seed": 2024}  # no benchmark_options: none recorded
    with pytest.raises(RefFaceError, match="The guidance toward the LQ image is not an option of Fake"):
        benchmark_sampling(fake, steps=3, lq_guidance=1.7)

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
        methods.get("refldm").defaults = methods.get("composite").defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        methods.get("refldm").defaults.guidance = 3.0
