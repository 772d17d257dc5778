"""StepReplay: eager on a CPU (CUDA graphs are GPU-only; tests/pipelines/test_cuda.py replays them on a GPU)."""

from __future__ import annotations

import torch

from refface.pipelines.step_replay import StepReplay


def _recorded_step(weight: torch.Tensor, calls: list):
    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return torch.tanh(x @ weight) * t

    return step


def test_on_a_cpu_every_call_runs_eagerly_and_returns_the_step_result():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 5, generator=generator)
    calls = []
    replay = StepReplay(_recorded_step(weight, calls))
    for rows in (2, 2, 3, 2):  # shape changes too
        x, t = torch.randn(rows, 5, generator=generator), torch.rand(1, generator=generator)
        assert not replay.replays((x, t))
        assert torch.equal(replay(x, t), torch.tanh(x @ weight) * t)
    assert calls == [(2, 5), (2, 5), (3, 5), (2, 5)]


def test_disabled_or_off_gpu_never_replays():
    replay = StepReplay(lambda x: x * 2, enabled=False)
    meta = torch.empty(2, 3, device="meta")
    replay(torch.ones(2, 3))
    assert not replay.replays((meta,))
    assert not StepReplay(lambda x: x).replays((meta,))  # no call yet, and not a CUDA tensor
