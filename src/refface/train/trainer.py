"""The training loop shared by every stage, on Accelerate: one process on a laptop, DDP on many GPUs.

Exact resumption is designed in rather than hoped for: every random draw of a step comes from a
generator seeded by (seed, step, process, micro-batch); the data order is a pure function of
(seed, epoch) and the position is a batch count; the dataset's items are keyed the same way; and
a checkpoint holds the weights, optimiser and scheduler states, the EMA and the position. On a
CPU a run killed and resumed ends with bit-identical parameters to one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from refface.errors import RefFaceError, short_reason
from refface.train.batches import batch_stream
from refface.train.build import build_run
from refface.train.config import TrainConfig, validation_sampling
from refface.train.run_folder import (
    RunFolder,
    append_metrics,
    check_same_config,
    publish_checkpoint,
    read_trainer_state,
    truncate_metrics,
    write_config_snapshot,
)
from refface.train.validation import cached_arcface, save_grid, validation_metrics

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """Where a finished (or already finished) run left its files."""

    output: Path
    step: int
    model: Path | None
    last_metrics: dict[str, float]


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    """The generator of all random draws of one micro-batch: a pure function of where it is in the run."""
    state = np.random.SeedSequence([seed, step, rank, micro]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _warmup(steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / steps) if steps > 0 else 1.0


def _batch_to(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _fixed_validation_batch(config: TrainConfig, dataset) -> dict | None:
    """The first `validation_cases` items (epoch 0): the same cases at every validation pass."""
    if dataset is None or config.run.validation_cases == 0:
        return None
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    items = [dataset[i] for i in range(min(config.run.validation_cases, len(dataset)))]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("gt", "lq", "refs")}
    batch["name"] = [item["name"] for item in items]
    return batch


class Trainer:
    """One run of one stage; `train()` is the entry point most callers want."""

    def __init__(self, config: TrainConfig, output: str | Path, resume: bool = False, progress: bool = True):
        self.config = config
        self.folder = RunFolder(Path(output))
        self.progress = progress
        run = config.run
        if config.run.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise RefFaceError("run.mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine.")
        if run.tracker != "none":
            _check_tracker(run.tracker)
        # Accelerate keeps one process-wide state; a second run in the same process (a notebook, a
        # sweep) may ask for another precision, so the per-run part is reset (the process group stays).
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            # without an accelerator, cpu=True is what lets Accelerate see a multi-process (gloo) launch
            cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            mixed_precision=run.mixed_precision,
            log_with=None if run.tracker == "none" else run.tracker,
            project_dir=str(self.folder.root),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        self._check_folder(resume)
        set_seed(run.seed)  # the random initialisation of new weights is part of the run's recipe
        parts = build_run(config)  # bad data or weights fail here, before the run folder is written
        self._write_folder()
        self.stage = parts.stage
        self.train_set = parts.train_set
        self.val_batch = _fixed_validation_batch(config, parts.val_set)
        accelerator = self.accelerator
        self.stage.to(accelerator.device, torch.float32)

        trainable = self.stage.trainable()
        rates = self.stage.learning_rates()
        self.names = list(trainable)
        optimizers = [
            torch.optim.AdamW(
                [p for p in trainable[name].parameters() if p.requires_grad],
                lr=rates[name],
                betas=(config.optim.beta1, config.optim.beta2),
                weight_decay=config.optim.weight_decay,
            )
            for name in self.names
        ]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, _warmup(config.optim.warmup_steps)) for o in optimizers]
        prepared = accelerator.prepare(*[trainable[n] for n in self.names], *optimizers)
        count = len(self.names)
        self.modules = dict(zip(self.names, prepared[:count], strict=True))
        self.optimizers = dict(zip(self.names, prepared[count:], strict=True))
        # Not prepared: Accelerate would step them once per process, and warm-up counts optimiser steps.
        self.schedulers = dict(zip(self.names, schedulers, strict=True))
        for scheduler in schedulers:
            accelerator.register_for_checkpointing(scheduler)

        self.ema = None
        target = self.stage.ema_target()
        if target is not None and run.ema_decay > 0:
            ema_module = accelerator.unwrap_model(self.modules[target])
            self.ema = EMAModel(ema_module.parameters(), decay=run.ema_decay)
            self.ema.to(accelerator.device)
            accelerator.register_for_checkpointing(self.ema)
        self.ema_target = target

        self.step = 0
        self.position = 0
        if resume and self.folder.saved_steps():
            self._load_checkpoint(self.folder.saved_steps()[-1])
        if accelerator.is_main_process:
            truncate_metrics(self.folder.metrics, self.step)
        accelerator.wait_for_everyone()
        if run.tracker != "none":
            accelerator.init_trackers(self.folder.root.name, config=_flat_config(config))
        self.validation_arcface = None

    # ------------------------------------------------------------------------------ run folder
    def _check_folder(self, resume: bool) -> None:
        folder = self.folder
        if folder.has_run() and not resume:
            raise RefFaceError(
                f"The output folder {folder.root} already holds a training run; pass --resume to continue it "
                "or choose another folder."
            )
        if folder.root.exists() and not folder.root.is_dir():
            raise RefFaceError(f"The output {folder.root} is a file, not a folder.")
        if folder.config.is_file():
            check_same_config(folder.config, self.config.to_dict())

    def _write_folder(self) -> None:
        folder = self.folder
        if self.accelerator.is_main_process:
            folder.checkpoints.mkdir(parents=True, exist_ok=True)
            write_config_snapshot(folder.config, self.config.to_dict())
        self.accelerator.wait_for_everyone()

    def _load_checkpoint(self, step: int) -> None:
        path = self.folder.checkpoint(step)
        state = read_trainer_state(path)
        try:
            self.accelerator.load_state(str(path))
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            reason = short_reason(error)
            raise RefFaceError(f"The checkpoint {path} could not be loaded ({reason}).") from None
        self.step, self.position = int(state["step"]), int(state["position"])

    def save_checkpoint(self) -> Path:
        """Write the run state atomically; on failure the previous checkpoint is untouched."""
        accelerator, folder = self.accelerator, self.folder
        partial = folder.partial_checkpoint(self.step)
        failure = torch.zeros(1, device=accelerator.device)
        reason = ""
        try:
            accelerator.save_state(str(partial))
        except OSError as error:
            failure += 1
            reason = error.strerror or str(error)
        failure = accelerator.reduce(failure, reduction="sum")
        path = folder.checkpoint(self.step)
        if accelerator.is_main_process:
            if float(failure) == 0:
                try:
                    publish_checkpoint(
                        folder,
                        self.step,
                        {"step": self.step, "position": self.position},
                        self.config.run.keep_checkpoints,
                    )
                except OSError as error:
                    failure += 1
                    reason = error.strerror or str(error)
            if float(failure):
                shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        if float(failure):
            previous = folder.saved_steps()
            kept = f"the checkpoint of step {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
            where = reason or "on another process"
            raise RefFaceError(
                f"Could not write the checkpoint of step {self.step} in {folder.checkpoints} ({where}); {kept}."
            )
        return path

    # ------------------------------------------------------------------------------ steps
    def _check_finite(self, term, batch: dict) -> None:
        finite = torch.tensor([float(torch.isfinite(term.loss.detach()).all())], device=self.accelerator.device)
        if float(self.accelerator.gather(finite).min()) == 1.0:
            return
        names = ", ".join(str(n) for n in batch.get("name", [])) or "unnamed items"
        value = float(term.loss.detach())
        mine = f"this process's batch: {names}" if not math.isfinite(value) else "another process's batch"
        raise RefFaceError(
            f"The {term.optimizer} loss became {value} at step {self.step + 1} ({mine}); "
            "the run stopped without saving this step; lower optim.learning_rate or check these images, "
            "then resume from the last checkpoint."
        )

    def train_step(self, stream) -> dict[str, float]:
        """One optimiser step over `gradient_accumulation` micro-batches; returns the step's logs."""
        run, accelerator = self.config.run, self.accelerator
        accumulation = run.gradient_accumulation
        logs: dict[str, float] = {}
        for micro in range(accumulation):
            batch = _batch_to(next(stream), accelerator.device)
            self.position += 1
            generator = step_generator(run.seed, self.step, accelerator.process_index, micro)
            sync = micro == accumulation - 1
            with contextlib.ExitStack() as stack:
                if not sync:
                    for module in self.modules.values():
                        stack.enter_context(accelerator.no_sync(module))
                with accelerator.autocast():
                    for index, term in enumerate(self.stage.losses(self.modules, batch, generator, self.step)):
                        self._check_finite(term, batch)
                        accelerator.backward(term.loss / accumulation)
                        loss = float(term.loss.detach())
                        # "loss" is the first term's (the model being trained); later terms log under their name
                        key = "loss" if index == 0 else f"{term.optimizer}_loss"
                        logs[key] = logs.get(key, 0.0) + loss / accumulation
                        for key, value in term.logs.items():
                            logs[key] = logs.get(key, 0.0) + value / accumulation
        for name in self.names:
            if self.config.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.modules[name].parameters(), self.config.optim.max_grad_norm)
            self.optimizers[name].step()
            self.schedulers[name].step()
            self.optimizers[name].zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(accelerator.unwrap_model(self.modules[self.ema_target]).parameters())
        self.step += 1
        logs["lr"] = self.schedulers[self.names[0]].get_last_lr()[0]
        return logs

    # ------------------------------------------------------------------------------ samples
    @contextlib.contextmanager
    def ema_weights(self):
        """The unwrapped modules, with the EMA weights swapped in for the EMA target."""
        modules = {name: self.accelerator.unwrap_model(module) for name, module in self.modules.items()}
        if self.ema is None:
            yield modules
            return
        target = modules[self.ema_target]
        self.ema.store(target.parameters())
        self.ema.copy_to(target.parameters())
        try:
            yield modules
        finally:
            self.ema.restore(target.parameters())

    def validate(self) -> dict[str, float]:
        """Main process: a sample grid of the fixed validation cases and their metrics."""
        if self.val_batch is None or not self.accelerator.is_main_process:
            return {}
        batch = _batch_to(self.val_batch, self.accelerator.device)
        if self.validation_arcface is None:
            identity = getattr(self.stage, "identity_loss", None)
            self.validation_arcface = identity.arcface if identity is not None else cached_arcface()
            if self.validation_arcface is not None:
                self.validation_arcface.to(self.accelerator.device)
        with self.ema_weights() as modules:
            training = {name: module.training for name, module in modules.items()}
            for module in modules.values():
                module.eval()
            try:
                rows = self.stage.sample(modules, batch, validation_sampling(self.config).steps, self.config.run.seed)
            finally:
                for name, module in modules.items():
                    module.train(training[name])
        save_grid(rows, self.folder.samples / f"step_{self.step:08d}.png")
        lpips = getattr(self.stage, "lpips", None)
        return validation_metrics(rows, self.validation_arcface, lpips)

    def export(self) -> Path | None:
        """The final (EMA) model as a loadable folder, written next to the old one and swapped in."""
        if not self.accelerator.is_main_process:
            return None
        partial = self.folder.root / ".model.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with self.ema_weights() as modules:
            self.stage.export(modules, partial)
        if self.folder.model.exists():
            shutil.rmtree(self.folder.model)
        partial.replace(self.folder.model)
        return self.folder.model

    # ------------------------------------------------------------------------------ loop
    def log(self, record: dict[str, float]) -> None:
        if self.accelerator.is_main_process:
            append_metrics(self.folder.metrics, {"step": self.step, **record})
        if self.config.run.tracker != "none":
            self.accelerator.log(record, step=self.step)

    def run(self, on_step: StepCallback | None = None) -> TrainResult:
        run, accelerator = self.config.run, self.accelerator
        workers = self.config.data.workers
        stream = batch_stream(
            self.train_set,
            run.batch_size,
            accelerator.process_index,
            accelerator.num_processes,
            run.seed,
            start=self.position,
            workers=workers,
        )
        window: dict[str, float] = {}
        window_steps = 0
        last: dict[str, float] = {}
        bar = tqdm(
            total=run.max_steps,
            initial=self.step,
            desc=f"train {self.config.stage}",
            unit="step",
            disable=not (self.progress and accelerator.is_main_process),
        )
        started = time.perf_counter()
        with bar:
            while self.step < run.max_steps:
                logs = self.train_step(stream)
                for key, value in logs.items():
                    window[key] = window.get(key, 0.0) + value
                window_steps += 1
                bar.update()
                if self.step % run.log_every == 0 or self.step == run.max_steps:
                    means = {key: value / window_steps for key, value in window.items() if key != "lr"}
                    values = torch.tensor(list(means.values()), dtype=torch.float64, device=accelerator.device)
                    last = dict(zip(means, accelerator.reduce(values, "mean").tolist(), strict=True))
                    last["lr"] = logs["lr"]
                    last["seconds_per_step"] = (time.perf_counter() - started) / window_steps
                    self.log(last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    window, window_steps, started = {}, 0, time.perf_counter()
                if self.step % run.sample_every == 0 or self.step == run.max_steps:
                    metrics = self.validate()
                    if metrics:
                        self.log(metrics)
                if self.step % run.checkpoint_every == 0 or self.step == run.max_steps:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self.step, logs)
        model = self.export()
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return TrainResult(self.folder.root, self.step, model, last)


def _flat_config(config: TrainConfig) -> dict:
    flat = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        else:
            flat[section] = values
    return flat


def _check_tracker(tracker: str) -> None:
    from importlib.util import find_spec

    module = {"tensorboard": "tensorboard", "comet_ml": "comet_ml"}.get(tracker, tracker)
    if find_spec(module) is None and not (tracker == "tensorboard" and find_spec("tensorboardX")):
        raise RefFaceError(f"run.tracker {tracker} needs the {module} package; pip install {module}.")


def train(
    config: TrainConfig,
    output: str | Path,
    max_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train one stage into `output`; with `resume`, continue from its last checkpoint exactly.

    `max_steps` overrides run.max_steps (the only setting a resumed run may change).
    """
    if max_steps is not None:
        if max_steps < 1:
            raise RefFaceError(f"--max-steps must be at least 1, got {max_steps}.")
        config = replace(config, run=replace(config.run, max_steps=max_steps))
    trainer = Trainer(config, output, resume=resume, progress=progress)
    if trainer.step >= config.run.max_steps:
        return TrainResult(trainer.folder.root, trainer.step, trainer.folder.model, {})
    return trainer.run(on_step)
