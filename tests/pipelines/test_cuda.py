"""The same restorations on a CUDA GPU: exact against the official fixture in fp32, bf16 close to fp32.

CI has no GPU, so these are skipped there; the CPU tests cover every code path these take except the
device itself (the VQGAN's plain-module choice on a GPU is tested on the CPU with meta tensors).
"""

from __future__ import annotations

import pytest
import torch

from refface import RefLDMPipeline
from refface.models.vq import encode_unquantized
from refface.pipelines.step_replay import StepReplay
from tests.conftest import make_tiny_pipeline, random_images, restore_official_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = 1e-4


@pytest.fixture
def exact_fp32():
    """TF32 off for the test, as exact mode means float32 arithmetic (PyTorch lets cuDNN use TF32 by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _official_pipeline(slim) -> RefLDMPipeline:
    return RefLDMPipeline.from_official(slim / "refldm.ckpt", slim / "vqgan.ckpt", slim / "config.yaml")


def test_official_case_on_cuda_in_fp32(slim, slim_case, exact_fp32):
    inputs, expected = slim_case["inputs"], slim_case["expected"]
    pipe = _official_pipeline(slim).to(device="cuda")
    assert pipe.device.type == "cuda"
    lq_latent = encode_unquantized(pipe.vqvae, inputs["lq"].cuda())
    assert (lq_latent.cpu() - expected["lq_latent"]).abs().max() < TOL
    wide = torch.cat(list(inputs["refs"]), dim=-1)[None].cuda()
    assert (encode_unquantized(pipe.vqvae, wide).cpu() - expected["ref_latent"]).abs().max() < TOL
    seen = []
    out = restore_official_case(pipe, slim_case, step_callback=lambda i, t, eps: seen.append(eps.cpu()))
    assert (seen[0] - expected["first_eps"]).abs().max() < TOL
    assert (out.latents.cpu() - expected["latent"]).abs().max() < TOL
    assert (out.pixels.cpu() - expected["image"]).abs().max() < TOL


def test_official_case_on_cuda_in_bf16_predicts_the_official_noise(slim, slim_case):
    """bf16 rounding is amplified over the slim model's 50 steps (its latent reaches |x| ~ 150), so the check
    is the first step's noise prediction, which goes through every layer and the bf16 reference cache."""
    pipe = _official_pipeline(slim).to(device="cuda", dtype=torch.bfloat16)
    seen = []
    out = restore_official_case(pipe, slim_case, step_callback=lambda i, t, eps: seen.append(eps.cpu()))
    expected = slim_case["expected"]["first_eps"]
    assert seen[0].dtype == torch.float32 and out.pixels.dtype == torch.float32
    relative = (seen[0] - expected).norm() / expected.norm()
    assert relative < 0.03, f"bf16 on CUDA predicts the first noise {relative:.4f} off (relative L2)"
    pipe.cuda_graphs = False
    eager = []
    restore_official_case(pipe, slim_case, step_callback=lambda i, t, eps: eager.append(eps.cpu()))
    assert all(torch.equal(a, b) for a, b in zip(seen, eager, strict=True))  # replayed steps: same numbers


def test_step_replay_matches_eager_calls_on_cuda():
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(64, 64, generator=generator).cuda()
    bias = torch.randn(64, generator=generator).cuda()  # closed over, as the pipelines' reference caches are

    def step(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x @ weight + bias) * t[:, None]

    replay = StepReplay(step)
    outputs = []
    with torch.no_grad():  # as in the sampling loops
        for rows in (4, 4, 4, 7, 7):  # a new shape is captured again
            x = torch.randn(rows, 64, generator=generator).cuda()
            t = torch.rand(rows, generator=generator).cuda()
            outputs.append(replay(x, t))
            assert torch.equal(outputs[-1], step(x, t))
        assert replay.replays((x, t))
    assert outputs[1].data_ptr() != outputs[2].data_ptr()  # each replay's result is its own tensor
    assert not replay.replays((x, t))  # gradients recorded: eager calls


def _graphed_equals_eager(pipe, lq: torch.Tensor, references: torch.Tensor) -> None:
    kwargs = dict(num_inference_steps=4, seed=[1, 2], progress=False)
    graphed = pipe(lq, references, **kwargs)
    pipe.cuda_graphs = False
    eager = pipe(lq, references, **kwargs)
    assert torch.equal(graphed.latents, eager.latents), (graphed.latents - eager.latents).abs().max()


@pytest.mark.parametrize("refs", [1, 3])
def test_graphed_sampling_equals_eager_sampling(refs):
    pipe = make_tiny_pipeline(seed=44).to(device="cuda")
    _graphed_equals_eager(pipe, random_images(2, 16, seed=45), random_images(refs, 16, seed=46))


def test_graphed_composite_sampling_equals_eager_sampling():
    from refface.pipelines.composite import CompositeContextPipeline

    torch.manual_seed(47)
    pipe = CompositeContextPipeline.tiny(32).to(device="cuda")
    _graphed_equals_eager(pipe, random_images(2, 32, seed=48), random_images(2, 32, seed=49))


def test_concurrent_restorations_on_a_gpu_run_eagerly_when_graphs_are_off():
    """A CUDA graph's capture cannot overlap other GPU work (this failed with graphs on), hence the switch."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = make_tiny_pipeline(seed=50).to(device="cuda")
    pipe.cuda_graphs = False
    people = [random_images(refs, 16, seed=51 + refs) for refs in (1, 2, 3, 2)]
    lq = random_images(2, 16, seed=60)
    kwargs = dict(num_inference_steps=6, seed=[3, 4], progress=False)
    alone = [pipe(lq, refs, **kwargs).latents for refs in people]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda refs: pipe(lq, refs, **kwargs).latents, people))
    for one, other in zip(alone, together, strict=True):
        assert torch.equal(one, other)
