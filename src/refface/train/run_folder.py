"""The files of a training run: config snapshot, metrics log, checkpoints, samples and the exported model.

    DIR/config.yaml            the resolved config the run was started with (a resume must match it)
    DIR/metrics.jsonl          one JSON object per logged step: {"step": ..., "loss": ..., ...}
    DIR/checkpoints/step_N/    Accelerate state (models, optimisers, schedulers, EMA, RNG) + trainer.json
    DIR/samples/step_N.png     LQ | references | output | GT grids
    DIR/model/                 the final (EMA) model, loadable by `refface restore --model`

A checkpoint is written into a hidden `.step_N.partial` folder and renamed into place only when
complete, so a run killed (or out of disk) while saving still has its previous checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from refface.errors import RefFaceError
from refface.files import write_text_atomically

_CHECKPOINT = re.compile(r"^step_(\d{8})$")
TRAINER_STATE = "trainer.json"


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run's output folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def model(self) -> Path:
        return self.root / "model"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    def partial_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f".step_{step:08d}.partial"

    def saved_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (partial folders are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for entry in self.checkpoints.iterdir():
            match = _CHECKPOINT.match(entry.name)
            if match and (entry / TRAINER_STATE).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def has_run(self) -> bool:
        return self.config.is_file() or bool(self.saved_steps())


def write_config_snapshot(path: Path, values: dict[str, Any]) -> None:
    write_text_atomically(path, yaml.safe_dump(values, sort_keys=False))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_same_config(path: Path, values: dict[str, Any], free: tuple[str, ...] = ("run.max_steps",)) -> None:
    """Refuse to resume a run with a different config (only the keys in `free` may change)."""
    saved = _flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    current = _flatten(values)
    for key in sorted(set(saved) | set(current)):
        if key not in free and saved.get(key) != current.get(key):
            raise RefFaceError(
                f"The run in {path.parent} was started with {key} = {saved.get(key)!r}, not {current.get(key)!r}; "
                "resume with the same config or start a new output folder."
            )


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop log lines after `last_step`: a resumed run logs those steps again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    write_text_atomically(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def publish_checkpoint(folder: RunFolder, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Finish a partial checkpoint: write the trainer state, rename it into place, prune old ones."""
    partial = folder.partial_checkpoint(step)
    state_file = partial / TRAINER_STATE
    with state_file.open("w", encoding="utf-8") as handle:
        json.dump(trainer_state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    final = folder.checkpoint(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    for old in folder.saved_steps()[:-keep]:
        shutil.rmtree(folder.checkpoint(old), ignore_errors=True)
    return final


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RefFaceError(f"The checkpoint {checkpoint} is damaged ({type(error).__name__}).") from None
