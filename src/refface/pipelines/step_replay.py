"""Replaying a sampling loop's denoiser call as a CUDA graph.

On a GPU a guided U-Net step is a thousand-odd small kernels whose work takes a few milliseconds on an
H100, while PyTorch spends some 30 ms launching them one by one from Python: a 50-step restoration then
waits on the CPU, not the GPU. A CUDA graph records the launches of one call and replays them with one launch,
so each further step costs its kernels' time. The kernels are the same, so the numbers are too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class StepReplay:
    """Calls `step(*tensors)` eagerly once, then captures it as a CUDA graph and replays that for every
    further call with the same shapes. On a CPU, or when `enabled` is False, every call runs eagerly.

    Made per sampling loop: the graph reads the tensors `step` closes over (the reference cache, the LQ
    latents) at the addresses they had when it was captured, so it must not outlive them. A capture cannot
    overlap other GPU work of the process (with four restorations in four threads it failed, also with
    a stream per capture and thread-local capture mode), so graphs are for one restoration at a time.
    """

    def __init__(self, step: Callable[..., torch.Tensor], enabled: bool = True) -> None:
        self._step = step
        self._enabled = enabled
        self._calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: list[torch.Tensor] = []
        self._output: torch.Tensor | None = None

    def replays(self, tensors: tuple[torch.Tensor, ...]) -> bool:
        """Whether a call with these inputs goes through a CUDA graph: not the first call, and not while
        gradients are recorded (a graph replays the forward kernels only)."""
        on_gpu = all(t.device.type == "cuda" for t in tensors)
        return self._enabled and on_gpu and self._calls > 0 and not torch.is_grad_enabled()

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        replay = self.replays(tensors)
        self._calls += 1
        if not replay:
            return self._step(*tensors)
        if self._graph is None or not self._matches(tensors):
            self._capture(tensors)
        for buffer, value in zip(self._inputs, tensors, strict=True):
            buffer.copy_(value)
        self._graph.replay()
        return self._output.clone()  # the next replay overwrites the graph's output buffer

    def _matches(self, tensors: tuple[torch.Tensor, ...]) -> bool:
        return len(tensors) == len(self._inputs) and all(
            (t.shape, t.dtype, t.device) == (b.shape, b.dtype, b.device)
            for t, b in zip(tensors, self._inputs, strict=True)
        )

    def _capture(self, tensors: tuple[torch.Tensor, ...]) -> None:
        # the eager first call has loaded the kernels and made the library handles the capture needs
        self._inputs = [t.clone() for t in tensors]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._output = self._step(*self._inputs)
        self._graph = graph
