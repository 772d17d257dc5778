"""The CPU ablation study runs end to end in its quick mode and resumes instead of retraining."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mechanism_quick_mode_writes_the_table_and_grid_and_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "mechanism.py"), "--quick", "--quiet", "--out", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    for row in (
        "No references",
        "Channel-concat",
        "Cross-attention",
        "Spatial-concat",
        "CacheKV",
        "LQ input",
        "ceiling",
    ):
        assert row in table
    with Image.open(tmp_path / "grid.png") as grid:  # LQ, 5 refs, 5 variants, GT; 6 held-out people of 96 px
        assert grid.size == (12 * 96, 14 + 6 * 96)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(
        f"{v}.json" for v in ("no-references", "channel-concat", "cross-attention", "spatial-concat", "cachekv")
    )
    again = subprocess.run([*command, "--noise-spread"], capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and " steps in " not in again.stdout  # every stage was finished: nothing retrained
    assert (tmp_path / "table.md").read_text() == table
    rows = [
        line
        for line in (tmp_path / "noise_spread.md").read_text().splitlines()
        if line.startswith("| ") and "%" in line
    ]
    assert len(rows) == 5  # a row per variant
    first_set = {line.split(" | ")[0]: line.split(" | ")[1].split(" ")[0] for line in rows}
    for line in table.splitlines():  # noise set 1 is the table's own
        label = line.split(" | ")[0]
        if label in first_set:
            assert line.split(" | ")[1] == first_set[label]


def test_the_official_style_path_computes_what_refface_computes():
    """The side-by-side benchmark is fair only if both paths do the same arithmetic: the same image up to rounding."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from official_path import einsum_attention, restore_like_official, use_official_attention
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from refface import RefLDMPipeline, tiny_architecture

    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=generator) for _ in range(3))
    torch.testing.assert_close(einsum_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
    for refs in (1, 3):
        torch.manual_seed(0)
        ours = RefLDMPipeline.from_architecture(tiny_architecture(32)).eval_mode()
        torch.manual_seed(0)
        official = use_official_attention(RefLDMPipeline.from_architecture(tiny_architecture(32)).eval_mode())
        lq = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
        references = torch.rand(refs, 3, 32, 32, generator=generator) * 2 - 1
        noise = ours.initial_noise(1, 2024)
        expected = ours(lq, references, num_inference_steps=4, noise=noise, progress=False).pixels
        got = restore_like_official(official, lq, references, noise, 4, 1.5)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert (got - ours(lq, None, num_inference_steps=4, noise=noise, progress=False).pixels).abs().max() > 1e-3


@pytest.mark.slow
def test_compare_official_prints_the_table_album_fast_mode_and_the_summary_line():
    import re

    command = [sys.executable, str(ROOT / "benchmarks" / "bench_inference.py"), "--compare-official", "--fast",
               "--arch", "tiny", "--refs", "2", "--steps", "3"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    summary = re.fullmatch(r"speedup_vs_official=(\d+\.\d\d) peak_mem_ratio=(\d+\.\d\d) max_abs_diff=(\S+)", lines[-1])
    assert summary and float(summary[3]) < 1e-5  # both paths compute the same image
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert set(rows) >= {"official path (fp32)", "refface exact", "refface fast (DPM-Solver++ 20, fp32)"}
    assert rows["official path (fp32)"].split(" | ")[3] == "-"  # no album mode for the official path
    album = float(rows["refface exact"].split(" | ")[3])
    assert album > 0 and "PSNR" in rows["refface fast (DPM-Solver++ 20, fp32)"]
    floor = re.search(r"refface exact takes (\d+\.\d\d)x the floor, .* \(floor_s=(\S+)\)", lines[-2])
    assert floor and float(floor[1]) > 0 and float(floor[2]) > 0


@pytest.mark.slow
def test_the_flop_floor_counts_the_issues_figures_for_the_released_architecture():
    """Issue 10 counts 258 GFLOP per guided step with 5 references, 675 per encoded image, 1214 per decode."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from flop_floor import counted_gflop, official_work
        from official_path import use_official_attention
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from refface import RefLDMPipeline, released_architecture, tiny_architecture
    from refface.models.cache_kv import ReferenceBatch
    from refface.models.unet import denoise, reference_pass

    five, one = official_work(released_architecture(), 5), official_work(released_architecture(), 1)
    assert abs(five.guided_step - 258) < 1 and abs(five.encode_lq - 675) < 1 and abs(five.decode - 1214) < 1
    assert one.encode_lq == five.encode_lq and one.decode == five.decode
    assert five.encode_references > 5 * five.encode_lq  # the wide image's mid-block attention over all 5 references
    assert one.guided_step < five.guided_step and abs(five.reference_passes - 5 * one.reference_passes) < 1e-6
    assert abs(five.total(50) / 75 - 250) < 15  # "the same work cannot take much less than about 250 s"
    # counting on shape-only tensors gives what running the same step on real tensors counts
    arch = tiny_architecture(32)
    pipe = use_official_attention(RefLDMPipeline.from_architecture(arch).eval_mode())
    with torch.no_grad():
        channels, size = pipe.latent_channels, pipe.latent_size
        latents = torch.randn(2, channels, size, size)
        context = ReferenceBatch(((1, reference_pass(pipe.unet, latents)), (1, reference_pass(pipe.unet, latents))))
        step_input = torch.randn(2, 2 * channels, size, size)
        real = counted_gflop(lambda: denoise(pipe.unet, step_input, torch.tensor(500), context))
    assert real > 0 and abs(official_work(arch, 2).guided_step - real) < 1e-9


@pytest.mark.slow
def test_the_archive_benchmark_counts_encodings_and_resumes_finished_stages(tmp_path):
    """bench_archive.py at toy sizes: the archive run encodes each of its two people once; a rerun measures nothing."""
    import json

    command = [sys.executable, str(ROOT / "benchmarks" / "bench_archive.py"), "--out", str(tmp_path), "--photos", "2",
               "--large-photos", "3", "--separate", "2", "--full-photos", "0"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["archive"]["reference_encodings"] == 2 and results["archive"]["faces_restored"] == 4
    assert results["archive-large"]["faces_restored"] == 6 and results["archive-large"]["peak_rss_gb"] > 0
    assert results["separate"]["runs_measured"] == 2 and results["separate"]["faces"] == 4
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "measuring" not in again.stdout
    assert json.loads((tmp_path / "results.json").read_text()) == results


@pytest.mark.slow
def test_the_startup_benchmark_times_each_command():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_startup.py"), "--runs", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| `refface")]
    assert len(rows) == 4 and all(float(row.split("|")[2]) > 0 for row in rows)
