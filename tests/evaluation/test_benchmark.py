"""`refface benchmark`: a test set restored with a method, resumably and sharded, then scored and tabulated."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from refface import methods
from refface.cli import main
from refface.data.benchmark_sets import make_benchmark_set
from refface.errors import RefFaceError
from refface.evaluation.benchmark import reference_counts, restore_cases, run_benchmark
from refface.evaluation.contact_sheet import HEADER, TILE, spread_examples
from refface.evaluation.paper_sets import locate_set
from refface.evaluation.restorers import PipelineRestorer, benchmark_sampling
from refface.imaging import load_image, resize_square
from refface.models.config import tiny_architecture
from refface.pipelines.refldm import RefLDMPipeline
from tests.distributed import failure, torchrun

STEPS = 2
# Five targets; t3 has a single reference, so every reference count gives it the same restoration.
REFERENCES = {
    "t0.png": ["r0.png", "r1.png", "r2.png", "r3.png"],
    "t1.png": ["r1.png", "r2.png", "r3.png"],
    "t2.png": ["r2.png", "r0.png", "r3.png", "r1.png"],
    "t3.png": ["r3.png"],
    "t4.png": ["r0.png", "r2.png", "r1.png"],
}


def _smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random smooth picture (a coarse random field upsampled), so degradations and PSNR are meaningful."""
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """An FFHQ-Ref style folder (CSV + severe LQ at 48 px), 64 px HQ images, and a tiny 32 px model folder."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(7)
    images = root / "images"
    images.mkdir()
    for name in [*REFERENCES, "r0.png", "r1.png", "r2.png", "r3.png"]:
        Image.fromarray(_smooth_image(rng, 64)).save(images / name)
    data = root / "FFHQ-Ref"
    (data / "reference_mapping").mkdir(parents=True)
    rows = ["gt_image,ref_image", *(f'{gt},"{refs}"' for gt, refs in REFERENCES.items())]
    (data / "reference_mapping" / "test_references.csv").write_text("\n".join(rows) + "\n")
    make_benchmark_set(
        data / "reference_mapping" / "test_references.csv",
        images,
        data / "test_images" / "severe_degrad",
        "severe",
        size=48,
        progress=False,
    )
    torch.manual_seed(0)
    model = root / "model"
    RefLDMPipeline.from_architecture(tiny_architecture(32)).save_pretrained(model)
    return {"data": data, "images": images, "model": model, "root": root}


def _cli(dataset: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        ["benchmark", "--set", "ffhq-ref-severe", "--data", str(dataset["data"]), "--images", str(dataset["images"]),
         "--model", str(dataset["model"]), "--steps", str(STEPS), "--out", str(out), "--device", "cpu", "-q", *extra]
    )  # fmt: skip


@pytest.mark.slow
def test_the_benchmark_restores_scores_and_tabulates_every_reference_count(dataset, tmp_path):
    out = tmp_path / "results"
    code = _cli(dataset, out, "--method", "refldm", "--max-refs", "3", "--sweep", "1,3", "--metrics", "psnr,ssim")
    assert code == 0
    method = out / "ffhq-ref-severe" / "refldm"
    for count in (1, 3):
        assert sorted(p.name for p in (method / f"refs-{count}" / "images").iterdir()) == [
            f"t{i}.png" for i in range(5)
        ]
    # Each restoration is exactly the pipeline's, with the case's first k references and the shared seed.
    pipe = RefLDMPipeline.from_pretrained(dataset["model"]).eval_mode()
    lq_dir = dataset["data"] / "test_images" / "severe_degrad"
    for name, count in (("t0", 3), ("t2", 1), ("t4", 3)):
        refs = [load_image(dataset["images"] / r) for r in REFERENCES[f"{name}.png"][:count]]
        expected = pipe([load_image(lq_dir / f"{name}.png")], refs, STEPS, 1.5, seed=2024, spacing="uniform",
                        progress=False).images[0]  # fmt: skip
        produced = load_image(method / f"refs-{count}" / "images" / f"{name}.png")
        assert np.array_equal(np.asarray(produced), np.asarray(expected))
    one, three = (np.asarray(load_image(method / f"refs-{k}" / "images" / "t0.png")) for k in (1, 3))
    assert not np.array_equal(one, three)  # the references reach the model
    single = [np.asarray(load_image(method / f"refs-{k}" / "images" / "t3.png")) for k in (1, 3)]
    assert np.array_equal(*single)  # fewer references than asked: all of them, as the official script

    # Scores: PSNR against the 64 px GT shrunk to the 32 px restoration.
    rows = {r["image"]: r for r in csv.DictReader((method / "refs-3" / "eval" / "per_image.csv").open())}
    gt = resize_square(np.asarray(load_image(dataset["images"] / "t1.png")), 32)
    restored = np.asarray(load_image(method / "refs-3" / "images" / "t1.png"))
    assert float(rows["t1.png"]["psnr"]) == pytest.approx(peak_signal_noise_ratio(gt, restored), abs=1e-3)

    table = (out / "ffhq-ref-severe" / "table.md").read_text()
    assert "## FFHQ-Ref-Severe" in table and "| method | refs | images | psnr ↑ | ssim ↑ |" in table
    assert "| refldm | 3 | 5 |" in table
    sweep = (out / "ffhq-ref-severe" / "sweep.md").read_text()
    assert "| refldm | 1 | 5 |" in sweep and "| refldm | 3 | 5 |" in sweep
    settings = json.loads((method / "settings.json").read_text())
    assert settings["steps"] == STEPS and settings["spacing"] == "uniform" and settings["references"] is True
    assert settings["model"] == str(dataset["model"].resolve())  # the same folder however it is named

    # A second method joins the same tables and contact sheet.
    assert _cli(dataset, out, "--method", "refldm-no-refs", "--metrics", "psnr,ssim") == 0
    table = (out / "ffhq-ref-severe" / "table.md").read_text()
    assert "| refldm | 3 | 5 |" in table and "| refldm-no-refs | 0 | 5 |" in table
    assert "refldm-no-refs" not in (out / "ffhq-ref-severe" / "sweep.md").read_text()
    sheet = Image.open(out / "ffhq-ref-severe" / "contact_sheet.png")
    assert sheet.size == (TILE * 7, HEADER + TILE * 5)  # LQ, 3 refs, 2 methods, GT; 5 examples


class Counting:
    """A restorer that records what it was asked and returns the LQ resized (cheap, and traceable)."""

    uses_references = True

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.names: list[str] = []  # the LQ images it was given, by content

    def restore(self, lq: Image.Image, references: list[Image.Image]) -> Image.Image:
        self.calls.append(len(references))
        self.names.append(hashlib.sha1(lq.tobytes()).hexdigest())
        return lq.resize((32, 32))

    def describe(self) -> dict:
        return {"model": "counting"}


def test_an_interrupted_benchmark_resumes_without_redoing_images(dataset, tmp_path):
    data = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"])
    restorer = Counting()
    options = {"metrics": ["psnr"], "progress": False, "sweep": [], "max_refs": 2}
    run_benchmark(data, restorer, "counting", tmp_path, **options)
    assert restorer.calls == [2, 2, 2, 1, 2]
    folder = tmp_path / "ffhq-ref-severe" / "counting" / "refs-2" / "images"
    (folder / "t2.png").unlink()  # as if killed before writing t2
    report = run_benchmark(data, restorer, "counting", tmp_path, **options)
    assert restorer.calls == [2, 2, 2, 1, 2, 2] and report.results[2].summary["psnr"] > 0
    with pytest.raises(RefFaceError, match="model='counting'"):
        other = Counting()
        other.describe = lambda: {"model": "another"}
        run_benchmark(data, other, "counting", tmp_path, **options)


def test_limit_scores_part_of_the_set_and_says_so(dataset, tmp_path):
    data = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"])
    report = run_benchmark(data, Counting(), "counting", tmp_path, metrics=["psnr"], limit=2, sweep=[], max_refs=1,
                           progress=False)  # fmt: skip
    assert set(report.results[1].per_image) == {"t0", "t1"}
    assert "Scored on part of the set (--limit): counting" in (tmp_path / "ffhq-ref-severe" / "table.md").read_text()


class _Rank:
    """What restore_cases needs of Accelerate's PartialState, for process `index` of `count`."""

    def __init__(self, index: int, count: int) -> None:
        self.process_index, self.num_processes, self.waited = index, count, 0

    def wait_for_everyone(self) -> None:
        self.waited += 1


def test_processes_share_the_cases_without_overlap(dataset, tmp_path):
    cases = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"]).cases
    made = {}
    for index in range(2):
        state = _Rank(index, 2)
        restore_cases(cases, Counting(), tmp_path / f"rank{index}", 5, state, progress=False)
        made[index] = sorted(p.stem for p in (tmp_path / f"rank{index}").iterdir())
        assert state.waited == 1
    assert made == {0: ["t0", "t2", "t4"], 1: ["t1", "t3"]}


@pytest.mark.slow
def test_two_processes_split_the_restorations_and_one_evaluates(dataset, tmp_path):
    """A real two-process job (torchrun, gloo on CPU): every image is restored once, the main process scores."""
    script = Path(__file__).with_name("shard_benchmark.py")
    done = torchrun(str(script), str(dataset["data"]), str(dataset["images"]), str(tmp_path))
    assert done.returncode == 0, failure(done)
    lq_dir = dataset["data"] / "test_images" / "severe_degrad"
    name_of = {hashlib.sha1(load_image(p).tobytes()).hexdigest(): p.stem for p in lq_dir.glob("*.png")}
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    calls = [[name_of[digest] for digest in rank["calls"]] for rank in ranks]
    assert calls == [["t0", "t2", "t4"] * 2, ["t1", "t3"] * 2]
    assert ranks[0]["evaluated"] == [1, 2] and ranks[1]["evaluated"] == []
    for count in (1, 2):
        assert len(list((tmp_path / "ffhq-ref-severe" / "counting" / f"refs-{count}" / "images").glob("*.png"))) == 5
    assert "| counting | 2 | 5 |" in (tmp_path / "ffhq-ref-severe" / "table.md").read_text()


def test_reference_counts_and_example_spread():
    assert reference_counts(Counting(), 5, [1, 3, 5, 8]) == [5, 1, 3, 8]
    no_refs = Counting()
    no_refs.uses_references = False
    assert reference_counts(no_refs, 5, [1, 3]) == [0]
    with pytest.raises(RefFaceError, match="at least 1"):
        reference_counts(Counting(), 0, [])
    assert spread_examples(857, 6) == [0, 171, 342, 514, 685, 856]
    assert spread_examples(3, 6) == [0, 1, 2] and spread_examples(0, 6) == []


def test_the_restorer_reports_its_settings(tmp_path):
    pipe = RefLDMPipeline.from_architecture(tiny_architecture(16))
    refldm = methods.get("refldm")
    restorer = PipelineRestorer(refldm, pipe, benchmark_sampling(refldm, steps=3), uses_references=False, source="m")
    assert restorer.describe() == {
        "model": "m", "references": False, "dtype": "float32", "steps": 3, "guidance": 1.5, "spacing": "uniform",
        "seed": 2024,
    }  # fmt: skip
    with pytest.raises(RefFaceError, match="steps must be a whole number of at least 1"):
        benchmark_sampling(refldm, steps=0)


def test_missing_or_mismatched_set_files_are_one_sentence(dataset, tmp_path, capsys):
    with pytest.raises(RefFaceError, match="refface dataset benchmark .* --preset moderate"):
        locate_set("ffhq-ref-moderate", dataset["data"], dataset["images"])
    with pytest.raises(RefFaceError, match="--data FOLDER, or both --lq and --csv"):
        locate_set("celeba-test-ref", None, dataset["images"])
    with pytest.raises(RefFaceError, match="reference CSV .* does not exist"):
        locate_set("ffhq-ref-severe", tmp_path, dataset["images"])
    lq = tmp_path / "lq"
    lq.mkdir()
    Image.new("RGB", (8, 8)).save(lq / "t0.png")
    csv_path = dataset["data"] / "reference_mapping" / "test_references.csv"
    with pytest.raises(RefFaceError, match="4 image\\(s\\) of .* have no LQ image"):
        locate_set("ffhq-ref-severe", None, dataset["images"], lq, csv_path)
    with pytest.raises(RefFaceError, match="not in"):
        locate_set("ffhq-ref-severe", dataset["data"], tmp_path)
    refs_only = tmp_path / "refs"
    refs_only.mkdir()
    with pytest.raises(RefFaceError, match=f"4 listed image\\(s\\) are not in {refs_only}"):
        locate_set("ffhq-ref-severe", dataset["data"], dataset["images"], refs_dir=refs_only)
    for number in range(4):
        (refs_only / f"r{number}.png").write_bytes((dataset["images"] / f"r{number}.png").read_bytes())
    apart = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"], refs_dir=refs_only)
    assert apart.cases[0].refs[0] == refs_only / "r0.png" and apart.cases[0].gt == dataset["images"] / "t0.png"
    code = main(["benchmark", "--set", "ffhq-ref-moderate", "--data", str(dataset["data"]), "--images",
                 str(dataset["images"]), "--method", "refldm", "--model", str(dataset["model"]), "-q"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1 and "moderate_degrad" in error


@pytest.mark.slow
def test_the_composite_method_runs_through_the_same_benchmark(dataset, tmp_path, capsys):
    from refface.pipelines.composite import CompositeContextPipeline

    torch.manual_seed(1)
    model = tmp_path / "composite"
    CompositeContextPipeline.tiny(32).save_pretrained(model)
    out = tmp_path / "results"
    args = ["benchmark", "--set", "ffhq-ref-severe", "--data", str(dataset["data"]), "--images",
            str(dataset["images"]), "--steps", str(STEPS), "--out", str(out), "--device", "cpu", "-q",
            "--metrics", "psnr", "--sweep", "none", "--max-refs", "3"]  # fmt: skip
    assert main([*args, "--method", "composite", "--model", str(model), "--lq-guidance", "1.5"]) == 0
    folder = out / "ffhq-ref-severe" / "composite"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["guidance"] == 1.2 and settings["lq_guidance"] == 1.5 and settings["color_fix"] is True
    assert "spacing" not in settings
    # the benchmark's image is the pipeline's, with the case's first three references
    pipe = CompositeContextPipeline.from_pretrained(model).eval_mode()
    lq_dir = dataset["data"] / "test_images" / "severe_degrad"
    refs = [load_image(dataset["images"] / r) for r in REFERENCES["t0.png"][:3]]
    expected = pipe([load_image(lq_dir / "t0.png")], refs, num_inference_steps=STEPS, lq_guidance=1.5,
                    reference_guidance=1.2, seed=2024, progress=False).images[0]  # fmt: skip
    produced = load_image(folder / "refs-3" / "images" / "t0.png")
    assert np.array_equal(np.asarray(produced), np.asarray(expected))
    assert "| composite | 3 | 5 |" in (out / "ffhq-ref-severe" / "table.md").read_text()

    capsys.readouterr()
    for extra, message in [
        (["--method", "composite"], "has no released weights; pass --model"),
        (["--method", "refldm", "--lq-guidance", "1.5"], "guidance toward the LQ image is not an option of ReF-LDM"),
        (["--method", "refldm", "--model", str(model)], "holds a Composite-Context model, not a ReF-LDM one"),
    ]:
        assert main([*args, *extra]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "steps", "counts"), [("refldm", 100, [5, 1, 3, 8]), ("composite", 50, [1, 2, 3, 4, 5])]
)
def test_each_method_is_benchmarked_as_its_paper_evaluates_it(dataset, tmp_path, method, steps, counts):
    """Steps, main-table references and sweep come from the method registry unless given."""
    from refface import methods
    from refface.evaluation.restorers import benchmark_sampling

    entry = methods.get(method)
    assert benchmark_sampling(entry).steps == steps and benchmark_sampling(entry, steps=7).steps == 7
    data = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"])
    restorer = Counting()
    report = run_benchmark(data, restorer, method, tmp_path, metrics=["psnr"], limit=1, progress=False)
    assert list(report.results) == counts
    given = run_benchmark(data, Counting(), method, tmp_path / "given", metrics=["psnr"], limit=1, progress=False,
                          max_refs=2, sweep=[])  # fmt: skip
    assert list(given.results) == [2]


def test_tables_give_each_metric_as_mean_and_standard_deviation(dataset, tmp_path):
    data = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"])
    report = run_benchmark(data, Counting(), "counting", tmp_path, metrics=["psnr", "ssim"], max_refs=2, sweep=[1],
                           progress=False)  # fmt: skip
    psnr = [scores["psnr"] for scores in report.results[2].per_image.values()]
    assert len(psnr) == 5 and np.std(psnr) > 0
    rows = list(csv.DictReader((tmp_path / "ffhq-ref-severe" / "table.csv").open()))
    assert list(rows[0]) == ["method", "refs", "images", "psnr", "psnr_std", "ssim", "ssim_std"]
    assert float(rows[0]["psnr"]) == pytest.approx(np.mean(psnr), abs=1e-4)
    assert float(rows[0]["psnr_std"]) == pytest.approx(np.std(psnr, ddof=1), abs=1e-4)
    cell = f"{np.mean(psnr):.4f} ± {np.std(psnr, ddof=1):.4f}"
    assert f"| counting | 2 | 5 | {cell} |" in (tmp_path / "ffhq-ref-severe" / "table.md").read_text()
    assert "| counting | 1 | 5 |" in (tmp_path / "ffhq-ref-severe" / "sweep.md").read_text()


def test_a_blind_baseline_is_a_row_beside_the_reference_methods(dataset, tmp_path, capsys):
    """A baseline restores each case once (no references) and joins the table with mean ± std; ReF-LDM's row stays
    at its paper's five references."""
    from refface.pipelines.blind import load_blind
    from tests.pipelines.blind_checkpoints import save_restoreformer

    out = tmp_path / "results"
    data = locate_set("ffhq-ref-severe", dataset["data"], dataset["images"])
    run_benchmark(data, Counting(), "refldm", out, metrics=["psnr", "ssim"], sweep=[1], progress=False)
    weights = save_restoreformer(tmp_path / "RestoreFormer++.ckpt", seed=1, tiny=True)
    base = ["benchmark", "--set", "ffhq-ref-severe", "--data", str(dataset["data"]), "--images", str(dataset["images"]),
            "--out", str(out), "--device", "cpu", "-q", "--metrics", "psnr,ssim"]  # fmt: skip
    assert main([*base, "--method", "restoreformer++", "--checkpoint", str(weights)]) == 0
    folder = out / "ffhq-ref-severe" / "restoreformer++"
    assert [p.name for p in folder.iterdir() if p.is_dir()] == ["refs-0"]
    lq = load_image(dataset["data"] / "test_images" / "severe_degrad" / "t2.png")
    expected = load_blind("restoreformer++", weights)([lq]).images[0]
    assert np.array_equal(np.asarray(load_image(folder / "refs-0" / "images" / "t2.png")), np.asarray(expected))
    assert json.loads((folder / "settings.json").read_text()) == {
        "method": "restoreformer++", "model": str(weights.resolve()), "references": False, "dtype": "float32",
        "seed": 2024,
    }  # fmt: skip
    psnr = [float(r["psnr"]) for r in csv.DictReader((folder / "refs-0" / "eval" / "per_image.csv").open())]
    table = (out / "ffhq-ref-severe" / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| restoreformer++ | 0 | 5 | "))
    mean, spread = (float(value) for value in row.split(" | ")[3].split(" ± "))
    assert (mean, spread) == pytest.approx((np.mean(psnr), np.std(psnr, ddof=1)), abs=2e-4)  # per-image: 4 places
    assert "| refldm | 5 | 5 |" in table  # its paper's main count, not the baseline's 0
    rows = {r["method"]: r for r in csv.DictReader((out / "ffhq-ref-severe" / "table.csv").open())}
    assert float(rows["restoreformer++"]["psnr_std"]) == pytest.approx(np.std(psnr, ddof=1), abs=1e-4)
    for extra, message in (
        (["--steps", "10"], "The number of steps is not an option of RestoreFormer++."),
        (["--model", str(dataset["model"])], "A blind restorer loads one weights file"),
    ):
        assert main([*base, "--method", "restoreformer++", "--checkpoint", str(weights), *extra]) != 0
        assert message in capsys.readouterr().err
