"""CacheKV: the processor's maths, the explicit cache objects, reuse and thread safety."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from diffusers.models.attention_processor import Attention

from refface.models.cache_kv import CacheKVAttnProcessor, KVRecorder, ReferenceBatch, ReferenceKV
from tests.conftest import make_tiny_pipeline, random_images


def _attention(channels: int, head_dim: int) -> Attention:
    torch.manual_seed(channels + head_dim)
    attn = Attention(
        channels, heads=channels // head_dim, dim_head=head_dim, norm_num_groups=8, residual_connection=True, bias=True
    )
    attn.set_processor(CacheKVAttnProcessor("layer"))
    return attn.eval()


def _reference_attention(
    attn: Attention, x: torch.Tensor, extra_k: torch.Tensor, extra_v: torch.Tensor
) -> torch.Tensor:
    """Direct softmax attention over [own tokens, extra tokens], written out without SDPA."""
    b, c, h, w = x.shape
    heads = attn.heads
    normed = attn.group_norm(x.view(b, c, h * w)).transpose(1, 2)
    q, k, v = (f(normed).view(b, h * w, heads, c // heads).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    k = torch.cat([k, extra_k.expand(b, -1, -1, -1)], dim=2)
    v = torch.cat([v, extra_v.expand(b, -1, -1, -1)], dim=2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, h * w, c)
    return attn.to_out[0](out).transpose(1, 2).reshape(b, c, h, w) + x


@pytest.mark.parametrize(("channels", "head_dim", "size", "batch", "copies"), [(32, 16, 4, 2, 3), (64, 32, 6, 3, 5)])
def test_copies_bias_equals_repeated_keys(channels, head_dim, size, batch, copies):
    attn = _attention(channels, head_dim)
    x = torch.randn(batch, channels, size, size)
    tokens = 7
    k = torch.randn(1, channels // head_dim, tokens, head_dim)
    v = torch.randn(1, channels // head_dim, tokens, head_dim)
    cache = ReferenceKV({"layer": k}, {"layer": v}, num_references=1).repeated(copies)
    got = attn.processor(attn, x, context=ReferenceBatch(((batch, cache),)))
    want = _reference_attention(attn, x, k.repeat(1, 1, copies, 1), v.repeat(1, 1, copies, 1))
    assert torch.allclose(got, want, atol=1e-5)
    # and the bias really changes the result compared with a single copy
    single = attn.processor(attn, x, context=ReferenceBatch(((batch, ReferenceKV({"layer": k}, {"layer": v}, 1)),)))
    assert (single - got).abs().max() > 1e-4


def test_segments_attend_to_their_own_references():
    attn = _attention(32, 16)
    x = torch.randn(4, 32, 5, 5)
    caches = [ReferenceKV({"layer": torch.randn(1, 2, n, 16)}, {"layer": torch.randn(1, 2, n, 16)}, 1) for n in (3, 9)]
    together = attn.processor(attn, x, context=ReferenceBatch(((1, caches[0]), (3, caches[1]))))
    first = attn.processor(attn, x[:1], context=ReferenceBatch(((1, caches[0]),)))
    rest = attn.processor(attn, x[1:], context=ReferenceBatch(((3, caches[1]),)))
    assert torch.allclose(together, torch.cat([first, rest]), atol=1e-6)
    with pytest.raises(ValueError):
        attn.processor(attn, x, context=ReferenceBatch(((1, caches[0]),)))


def test_recorder_keeps_every_reference_token():
    attn = _attention(32, 16)
    refs = torch.randn(3, 32, 4, 4)
    recorder = KVRecorder()
    plain = attn.processor(attn, refs, context=None)
    recorded = attn.processor(attn, refs, context=recorder)
    assert torch.equal(plain, recorded)  # recording does not change the reference pass
    cache = recorder.finish(num_references=3)
    assert cache.keys["layer"].shape == (1, 2, 3 * 16, 16)
    # attending to the cache of 3 refs == attending to each ref's own keys laid end to end
    normed = attn.group_norm(refs.view(3, 32, 16)).transpose(1, 2)
    k = attn.to_k(normed).view(3, 16, 2, 16).transpose(1, 2)
    assert torch.allclose(cache.keys["layer"], torch.cat(list(k), dim=1)[None], atol=1e-6)


def test_reference_cache_is_reusable_and_equals_passing_images(tiny_pipeline):
    lq = random_images(2, 16, seed=1)
    refs = random_images(3, 16, seed=2)
    cache = tiny_pipeline.encode_references(refs)
    kwargs = dict(num_inference_steps=4, seed=3, progress=False)
    from_cache_a = tiny_pipeline(lq, cache, **kwargs).latents
    from_cache_b = tiny_pipeline(lq, cache, **kwargs).latents
    from_images = tiny_pipeline(lq, refs, **kwargs).latents
    assert torch.equal(from_cache_a, from_cache_b)
    assert torch.allclose(from_cache_a, from_images, atol=1e-6)


def test_batch_items_equal_single_runs():
    pipe = make_tiny_pipeline(seed=4)
    lq = random_images(3, 16, seed=5)
    refs = pipe.encode_references(random_images(2, 16, seed=6))
    batch = pipe(lq, refs, num_inference_steps=3, seed=[10, 11, 12], progress=False).latents
    for i in range(3):
        single = pipe(lq[i : i + 1], refs, num_inference_steps=3, seed=10 + i, progress=False).latents
        # random weights give latents of magnitude ~100: compare relative to that
        assert (batch[i : i + 1] - single).abs().max() <= 1e-5 * single.abs().max()


def test_null_references_match_zero_latents_through_the_unet():
    pipe = make_tiny_pipeline(seed=7)
    lq = random_images(1, 16, seed=8)
    refs = pipe.encode_references(random_images(3, 16, seed=9))
    # null condition computed the slow way: three zero latents through the reference pass
    zeros = torch.zeros(3, pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    slow_null = pipe._reference_pass(zeros)
    fast_null = pipe.null_references(3)
    assert fast_null.copies == 3 and slow_null.copies == 1
    x = torch.cat([torch.randn(2, 4, 8, 8), torch.cat([pipe.vqvae.encoder(lq).new_zeros(1, 4, 8, 8)] * 2)], dim=1)
    from refface.models.unet import denoise

    t = torch.tensor(500)
    got = denoise(pipe.unet, x, t, ReferenceBatch(((1, fast_null), (1, refs))))
    want = denoise(pipe.unet, x, t, ReferenceBatch(((1, slow_null), (1, refs))))
    assert torch.allclose(got, want, atol=1e-5)


def test_no_references_and_unit_guidance_skip_the_null_branch(tiny_pipeline):
    lq = random_images(2, 16, seed=12)
    refs = tiny_pipeline.encode_references(random_images(2, 16, seed=13))
    kwargs = dict(num_inference_steps=3, seed=1, progress=False)
    none = tiny_pipeline(lq, None, **kwargs).latents
    empty = tiny_pipeline(lq, [], **kwargs).latents
    assert torch.equal(none, empty)
    unguided = tiny_pipeline(lq, refs, guidance_scale=1.0, **kwargs).latents
    guided = tiny_pipeline(lq, refs, guidance_scale=3.0, **kwargs).latents
    assert (unguided - none).abs().max() > 1e-4  # references act even without guidance
    assert (guided - unguided).abs().max() > 1e-4


def test_concurrent_restorations_do_not_interfere():
    pipe = make_tiny_pipeline(seed=14)
    jobs = [(random_images(1, 16, seed=20 + i), random_images(1 + i, 16, seed=30 + i)) for i in range(3)]
    expected = [
        pipe(lq, refs, num_inference_steps=3, seed=i, progress=False).latents for i, (lq, refs) in enumerate(jobs)
    ]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        lq, refs = jobs[i]
        for _ in range(3):
            results[i] = pipe(lq, refs, num_inference_steps=3, seed=i, progress=False).latents

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(3):
        assert torch.allclose(results[i], expected[i], atol=1e-6)


@pytest.mark.parametrize(("batch", "copies", "with_refs"), [(1, 2, True), (2, 2, True), (2, 3, True), (3, 2, False)])
def test_copies_equal_the_repeated_batch(batch, copies, with_refs):
    """Guidance branches share the layers before the first attention; the result is the repeated batch's."""
    from refface.models.unet import denoise, denoise_copies

    pipe = make_tiny_pipeline(seed=20 + batch)
    size, channels = pipe.latent_size, pipe.latent_channels
    x = torch.randn(batch, 2 * channels, size, size, generator=torch.Generator().manual_seed(copies))
    t = torch.tensor([100, 700, 999][:batch])
    if with_refs:
        refs = pipe.encode_references(random_images(2, 16, seed=batch))
        caches = [pipe.null_references(2), refs, pipe.null_references(1)][:copies]
        context = ReferenceBatch(tuple((batch, cache) for cache in caches))
    else:
        context = None
    want = denoise(pipe.unet, torch.cat([x] * copies), t.repeat(copies), context)
    got = denoise_copies(pipe.unet, x, t, context, copies)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (got[:batch] - got[batch : 2 * batch]).abs().max() > 1e-4 or not with_refs


def test_no_channels_last_map_reaches_a_convolution(tiny_pipeline):
    """Attention hands back a transposed view; left so, its channels-last strides would follow the residual
    additions into every later convolution, which on a CPU then copies its weight on every call."""
    pipe = tiny_pipeline
    seen = []
    hooks = [
        module.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
        for model in (pipe.unet, pipe.vqvae.decoder)
        for module in model.modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    try:
        pipe(random_images(2, pipe.image_size, seed=5), random_images(2, pipe.image_size, seed=6), 2, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) > 20 and all(seen)
