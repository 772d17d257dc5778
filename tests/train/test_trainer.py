"""The trainer end to end on the tiny synthetic presets: learning, exact resumption, DDP, faults."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refface.cli import main
from refface.errors import RefFaceError
from refface.train.config import load_config
from refface.train.diffusion_stage import DiffusionStage
from refface.train.run_folder import read_metrics
from refface.train.trainer import Trainer, train
from tests.distributed import failure, torchrun

FAST = {
    "data.identities": 12,
    "data.photos_per_identity": 4,
    "run.batch_size": 4,
    "run.log_every": 2,
    "run.checkpoint_every": 2,
    "run.sample_every": 1000,
    "run.validation_cases": 2,
    "run.sample_steps": 3,
}


def fast_config(**overrides):
    return load_config("tiny-refldm", {**FAST, **overrides})


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted 8-step run every interrupted run is compared with."""
    output = tmp_path_factory.mktemp("runs") / "uninterrupted"
    train(fast_config(), output, max_steps=8, progress=False)
    return output


@pytest.mark.slow
def test_tiny_refldm_loss_falls(tmp_path):
    result = train(fast_config(**{"run.log_every": 5}), tmp_path / "run", max_steps=30, progress=False)
    logged = losses(tmp_path / "run")
    assert [step for step, _ in logged] == [5, 10, 15, 20, 25, 30]
    assert logged[-1][1] < 0.7 * logged[0][1], logged
    assert result.step == 30 and all(torch.isfinite(torch.tensor(loss)) for _, loss in logged)
    grids = sorted((tmp_path / "run" / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_00000030.png"]  # the final validation pass
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_psnr" in r]
    assert val and val[-1]["step"] == 30 and val[-1]["val_psnr"] > 0


@pytest.mark.slow
def test_interrupted_run_resumes_bit_exactly(reference_run, tmp_path):
    output = tmp_path / "interrupted"

    def interrupt(step, logs):
        if step == 5:  # after the checkpoint of step 4, before the one of step 6
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(fast_config(), output, max_steps=8, progress=False, on_step=interrupt)
    assert [p.name for p in sorted((output / "checkpoints").iterdir())] == ["step_00000002", "step_00000004"]
    assert max(step for step, _ in losses(output)) == 4  # step 5 never reached the log
    train(fast_config(), output, max_steps=8, resume=True, progress=False)
    assert_same_weights(weights(output, 8), weights(reference_run, 8))
    assert losses(output) == losses(reference_run)
    exported = output / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    assert_same_weights(
        load_file(exported), load_file(reference_run / "model/unet/diffusion_pytorch_model.safetensors")
    )


@pytest.mark.slow
def test_killed_process_resumes_bit_exactly(reference_run, tmp_path):
    """SIGKILL in the middle of training (maybe mid-checkpoint) loses at most the steps since the last checkpoint."""
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "refface.cli", "train", "tiny-refldm", "--output", str(output), "-q"]
    command += [f"--set={key}={value}" for key, value in FAST.items()]
    process = subprocess.Popen([*command, "--max-steps", "8"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (output / "checkpoints" / "step_00000002").is_dir() and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(process.stderr.read().decode()[-2000:])
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output / "model").exists()
    done = subprocess.run([*command, "--max-steps", "8", "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(weights(output, 8), weights(reference_run, 8))
    assert losses(output) == losses(reference_run)


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    output = tmp_path / "ddp"
    overrides = {**FAST, "run.batch_size": 2, "run.sample_every": 4}
    arguments = ["-m", "refface.cli", "train", "tiny-refldm", "--output", str(output), "--max-steps", "4", "-q"]
    arguments += [f"--set={key}={value}" for key, value in overrides.items()]
    done = torchrun(*arguments)
    assert done.returncode == 0, failure(done)
    checkpoint = output / "checkpoints" / "step_00000004"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    records = read_metrics(output / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # one log line per step, from the main process
    assert records[0]["lr"] == pytest.approx(3 / 10 * 1e-3)  # warm-up counts optimiser steps, not processes
    assert (output / "samples" / "step_00000004.png").is_file()
    assert json.loads((checkpoint / "trainer.json").read_text()) == {"step": 4, "position": 4}
    # the two processes trained one model: DDP averaged their gradients into the same weights
    single = tmp_path / "single"
    train(load_config("tiny-refldm", overrides), single, max_steps=4, progress=False)
    assert not torch.equal(weights(single, 4)["unet.conv_in.weight"], weights(output, 4)["unet.conv_in.weight"])


def test_nan_loss_stops_with_the_step_and_the_batch_names(tmp_path, monkeypatch):
    original = DiffusionStage.losses

    def poisoned(self, modules, batch, generator, step):
        for term in original(self, modules, batch, generator, step):
            if step == 2:
                term.loss = term.loss * float("nan")
            yield term

    monkeypatch.setattr(DiffusionStage, "losses", poisoned)
    with pytest.raises(
        RefFaceError, match=r"loss became nan at step 3 \(this process's batch: train_\d+_\d+\.png, "
    ) as error:
        train(fast_config(), tmp_path / "run", max_steps=6, progress=False)
    assert "resume from the last checkpoint" in str(error.value)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    output = tmp_path / "run"
    trainer = Trainer(fast_config(**{"run.max_steps": 6}), output, progress=False)
    original = trainer.accelerator.save_state

    def fill_disk(path):
        if path.endswith(".step_00000004.partial"):
            original(path)  # most of the files are written, then the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(path)

    monkeypatch.setattr(trainer.accelerator, "save_state", fill_disk)
    with pytest.raises(RefFaceError, match="No space left on device.*checkpoint of step 2 is intact"):
        trainer.run()
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step_00000002"]
    resumed = Trainer(fast_config(**{"run.max_steps": 6}), output, resume=True, progress=False)
    assert resumed.step == 2 and resumed.position == 2


def test_gradient_accumulation_and_bf16_run(tmp_path):
    config = fast_config(**{"run.gradient_accumulation": 2, "run.mixed_precision": "bf16"})
    train(config, tmp_path / "run", max_steps=2, progress=False)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "trainer.json").read_text())
    assert state == {"step": 2, "position": 4}  # two micro-batches per optimiser step


def test_run_folder_rules(tmp_path, capsys):
    output = tmp_path / "run"
    train(fast_config(), output, max_steps=2, progress=False)
    with pytest.raises(RefFaceError, match="already holds a training run; pass --resume"):
        train(fast_config(), output, max_steps=4, progress=False)
    with pytest.raises(RefFaceError, match=r"run.batch_size = 4, not 2"):
        train(fast_config(**{"run.batch_size": 2}), output, max_steps=4, resume=True, progress=False)
    assert main(["train", "tiny-refldm", "--output", str(output), "--resume", "--max-steps", "2", "-q"] +
                [f"--set={k}={v}" for k, v in FAST.items()]) == 0  # fmt: skip
    assert main(["train", "no-such-preset", "--output", str(tmp_path / "x")]) == 1
    assert "neither a YAML file nor a preset" in capsys.readouterr().err
    assert main(["train", "tiny-refldm", "--output", str(tmp_path / "y"), "--set", "run.bach_size=3"]) == 1
    assert "Unknown config key 'run.bach_size'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_missing_data_files_are_reported_before_any_work(tmp_path):
    (tmp_path / "faces").mkdir()
    csv = tmp_path / "refs.csv"
    csv.write_text("gt_image,ref_image\n00000.png,\"['00001.png']\"\n")
    config = load_config(
        "tiny-refldm",
        {"data.kind": "csv", "data.references_csv": str(csv), "data.images_dir": str(tmp_path / "faces")},
    )
    with pytest.raises(RefFaceError, match="00000.png"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_identity_loss_runs_inside_training(tmp_path):
    from refface.face.arcface import iresnet

    torch.manual_seed(0)
    weights_file = tmp_path / "arcface_small.pth"
    torch.save(iresnet((1, 1, 1, 1)).state_dict(), weights_file)
    config = fast_config(**{"loss.identity": "scaled", "loss.arcface_weights": str(weights_file)})
    train(config, tmp_path / "run", max_steps=2, progress=False)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert records[-1]["identity"] > 0
    assert records[-1]["loss"] == pytest.approx(records[-1]["diffusion"] + records[-1]["identity"])
