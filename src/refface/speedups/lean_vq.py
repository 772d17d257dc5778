"""Memory-lean VQGAN encoding and decoding for inference, computing the same function as the modules.

The VQGAN's full-resolution layers set the peak memory of a restoration: five references encoded as
one 512 x 2560 image (as the official code does) make each 128-channel activation 671 MB, and a
plain forward keeps several of them alive at once. This walk over the same diffusers modules keeps
at most two full-size activations (one above `store_limit` bytes):

- GroupNorm statistics are taken over the whole tensor first, then normalisation, SiLU and each
  3x3 convolution run over strips of rows with a one-row halo, so no normalised or padded
  full-size copy is ever made;
- a residual block writes its output into its input's storage;
- when a residual block's inner activation would exceed `store_limit` bytes it is not stored:
  one pass over strips collects its statistics, a second recomputes it strip by strip (one extra
  convolution at that resolution, spent only where memory is the limit).

The result equals the plain forward up to float rounding (statistics are summed in float64).
`install` switches a VQModel's encoder and decoder to `LeanEncoder` / `LeanDecoder`, which take the walk
for large CPU inference inputs while the speed-ups are on (`refface.speedups.switch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import VQModel
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from refface.speedups import switch
from refface.speedups.upsample import doubled

Rows = Callable[[int, int], torch.Tensor]  # rows [a, b) of a layer's input, ready for the convolution
# Full-resolution activations larger than this take the memory-lean walk. One 512 x 512 image (128 MB
# at 128 channels) takes it too: its decode then peaked 0.33 GB lower for about 2 s more.
LEAN_ABOVE_BYTES = 64 * 2**20
DEVIATION_CHUNK = 16384  # values per group and pass when summing squared deviations (they stay in cache)


@dataclass(frozen=True)
class LeanPlan:
    """How the walk trades memory for time."""

    strip_bytes: int = 32 * 2**20  # one strip of a layer's input or output (at least 4 rows)
    store_limit: int = 320 * 2**20  # inner activations larger than this are recomputed instead of stored

    def strip_rows(self, shape: tuple[int, ...]) -> int:
        """Rows per strip of a [B, C, H, W] fp32 tensor (half precision makes strips half as large)."""
        batch, channels, _, width = shape
        return max(4, self.strip_bytes // max(1, batch * channels * width * 4))


def _strips(height: int, rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


class GroupStats:
    """Per-sample, per-group mean and variance, gathered over strips and merged in float64."""

    def __init__(self, batch: int, groups: int, device: torch.device) -> None:
        self.groups = groups
        self.mean = torch.zeros(batch, groups, dtype=torch.float64, device=device)
        self.squares = torch.zeros_like(self.mean)  # sum of squared deviations from the mean
        self.count = 0

    def add(self, strip: torch.Tensor) -> None:
        """Two passes: the strip's mean, then its squared deviations summed in cache-sized chunks.

        `torch.var_mean` (Welford) computes the same at a fraction of memory speed: 130 ms for one
        128-channel 512 x 512 map, against about 20 ms here, with the same float32 rounding."""
        batch, channels, rows, width = strip.shape
        grouped = strip.view(batch, self.groups, channels // self.groups, rows * width)
        work = torch.promote_types(strip.dtype, torch.float32)  # half precision is summed in float32
        mean = grouped.mean(dim=(2, 3), keepdim=True, dtype=work)
        squares = torch.zeros_like(self.mean)
        step = max(1, DEVIATION_CHUNK // grouped.shape[2])
        for start in range(0, grouped.shape[3], step):
            deviation = grouped[..., start : start + step].to(work) - mean
            squares += deviation.square_().sum(dim=(2, 3)).double()
        count = grouped.shape[2] * grouped.shape[3]
        total = self.count + count
        delta = mean.view(batch, self.groups).double() - self.mean
        self.squares += squares + delta.square() * (self.count * count / total)
        self.mean += delta * (count / total)
        self.count = total

    def scale_shift(self, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample, per-channel a, b with norm(x) = a * x + b (GroupNorm's affine folded in)."""
        inv_std = torch.rsqrt(self.squares / self.count + norm.eps)
        per_group = norm.num_channels // self.groups
        inv_std = inv_std.repeat_interleave(per_group, dim=1)
        mean = self.mean.repeat_interleave(per_group, dim=1)
        scale = inv_std * norm.weight.double() if norm.affine else inv_std
        shift = norm.bias.double() - mean * scale if norm.affine else -mean * scale
        dtype = norm.weight.dtype if norm.affine else torch.float32
        return scale.to(dtype)[:, :, None, None], shift.to(dtype)[:, :, None, None]


def tensor_stats(tensor: torch.Tensor, groups: int) -> GroupStats:
    stats = GroupStats(tensor.shape[0], groups, tensor.device)
    stats.add(tensor)
    return stats


def normalized_rows(source: Rows, norm: nn.GroupNorm, stats: GroupStats) -> Rows:
    """Rows of SiLU(GroupNorm(source)) with the whole tensor's statistics."""
    scale, shift = stats.scale_shift(norm)

    def rows(start: int, stop: int) -> torch.Tensor:
        return F.silu(torch.addcmul(shift, source(start, stop), scale), inplace=True)

    return rows


def _slice(tensor: torch.Tensor) -> Rows:
    return lambda start, stop: tensor[:, :, start:stop]


def conv3x3_rows(conv: nn.Conv2d, source: Rows, height: int, start: int, stop: int) -> torch.Tensor:
    """Output rows [start, stop) of a stride-1, padding-1 convolution over a tensor given by rows."""
    top, bottom = max(start - 1, 0), min(stop + 1, height)
    # zero padding on all sides; rows computed from the padding row above/below a halo are dropped
    out = conv(source(top, bottom))  # the module's forward: refface.speedups.winograd may take it
    return out[:, :, start - top : start - top + stop - start]


def conv3x3(conv: nn.Conv2d, source: Rows, shape: tuple[int, ...], plan: LeanPlan) -> torch.Tensor:
    """A whole stride-1 3x3 convolution computed strip by strip into one output tensor."""
    batch, channels, height, width = shape
    rows = plan.strip_rows((batch, max(channels, conv.out_channels), height, width))
    out = torch.empty(batch, conv.out_channels, height, width, dtype=conv.weight.dtype, device=conv.weight.device)
    for start, stop in _strips(height, rows):
        out[:, :, start:stop] = conv3x3_rows(conv, source, height, start, stop)
    return out


def lean_resnet(block: nn.Module, x: torch.Tensor, plan: LeanPlan) -> torch.Tensor:
    """diffusers' ResnetBlock2D without time embedding; may reuse `x`'s storage for the output."""
    batch, _, height, width = x.shape
    inner_shape = (batch, block.conv1.out_channels, height, width)
    rows = plan.strip_rows((batch, max(x.shape[1], inner_shape[1]), height, width))
    first = normalized_rows(_slice(x), block.norm1, tensor_stats(x, block.norm1.num_groups))
    inner_bytes = x.element_size() * batch * block.conv1.out_channels * height * width
    if inner_bytes <= plan.store_limit:
        inner = conv3x3(block.conv1, first, tuple(x.shape), plan)
        second = normalized_rows(_slice(inner), block.norm2, tensor_stats(inner, block.norm2.num_groups))
        recomputing = False
    else:

        def recomputed(start: int, stop: int) -> torch.Tensor:
            return conv3x3_rows(block.conv1, first, height, start, stop)

        stats = GroupStats(batch, block.norm2.num_groups, x.device)
        for start, stop in _strips(height, rows):
            stats.add(recomputed(start, stop))
        second = normalized_rows(recomputed, block.norm2, stats)
        recomputing = True

    in_place = block.conv_shortcut is None and x.shape[1] == inner_shape[1]
    out = x if in_place else torch.empty(inner_shape, dtype=x.dtype, device=x.device)
    pending: tuple[int, int, torch.Tensor] | None = None
    for start, stop in _strips(height, rows):
        residual = x[:, :, start:stop]
        if block.conv_shortcut is not None:
            residual = block.conv_shortcut(residual)
        result = conv3x3_rows(block.conv2, second, height, start, stop).add_(residual)  # a fresh tensor's rows
        if block.output_scale_factor != 1:  # 1 in the VQGAN: a division by it would be one more pass for nothing
            result /= block.output_scale_factor
        if recomputing and in_place:
            # the next strip's recomputation still reads the last input rows of this one: write one strip late
            if pending is not None:
                out[:, :, pending[0] : pending[1]] = pending[2]
            pending = (start, stop, result)
        else:
            out[:, :, start:stop] = result
    if pending is not None:
        out[:, :, pending[0] : pending[1]] = pending[2]
    return out


def lean_downsample(down: nn.Module, x: torch.Tensor, plan: LeanPlan) -> torch.Tensor:
    """diffusers' Downsample2D with padding 0: pad right/bottom by one, 3x3 convolution with stride 2."""
    batch, _, height, width = x.shape
    out_height = height // 2
    conv = down.conv
    out = torch.empty(batch, conv.out_channels, out_height, width // 2, dtype=x.dtype, device=x.device)
    rows = max(2, plan.strip_rows((batch, max(x.shape[1], conv.out_channels), height, width)) // 2)
    for start, stop in _strips(out_height, rows):
        window = x[:, :, 2 * start : min(2 * stop + 1, height)]
        window = F.pad(window, (0, 1, 0, 2 * stop + 1 - min(2 * stop + 1, height)))
        out[:, :, start:stop] = F.conv2d(window, conv.weight, conv.bias, stride=2)
    return out


def lean_upsample(up: nn.Module, x: torch.Tensor, plan: LeanPlan) -> torch.Tensor:
    """diffusers' Upsample2D: nearest-neighbour x2, then a 3x3 convolution, without the full upsampled copy."""
    batch, _, height, width = x.shape
    out_height = 2 * height

    def upsampled(start: int, stop: int) -> torch.Tensor:
        low = x[:, :, start // 2 : (stop + 1) // 2]
        offset = start - 2 * (start // 2)
        return doubled(low)[:, :, offset : offset + stop - start]

    return conv3x3(up.conv, upsampled, (batch, x.shape[1], out_height, 2 * width), plan)


def lean_output(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor, plan: LeanPlan) -> torch.Tensor:
    """conv_out(SiLU(conv_norm_out(x))) strip by strip."""
    source = normalized_rows(_slice(x), norm, tensor_stats(x, norm.num_groups))
    return conv3x3(conv, source, tuple(x.shape), plan)


def _run_resnets(block: nn.Module, hidden: torch.Tensor, plan: LeanPlan) -> torch.Tensor:
    for resnet in block.resnets:
        hidden = lean_resnet(resnet, hidden, plan)
    return hidden


@torch.no_grad()
def lean_encode(encoder: Encoder, images: torch.Tensor, plan: LeanPlan = LeanPlan()) -> torch.Tensor:
    """`encoder(images)` (a VQGAN's encoder, before quant_conv) at a fraction of the memory."""
    hidden = conv3x3(encoder.conv_in, _slice(images), tuple(images.shape), plan)
    for block in encoder.down_blocks:
        hidden = _run_resnets(block, hidden, plan)
        for down in block.downsamplers or []:
            hidden = lean_downsample(down, hidden, plan)
    hidden = encoder.mid_block(hidden)
    return lean_output(encoder.conv_norm_out, encoder.conv_out, hidden, plan)


@torch.no_grad()
def lean_decode(decoder: Decoder, latents: torch.Tensor, plan: LeanPlan = LeanPlan()) -> torch.Tensor:
    """`decoder(latents)` (a VQGAN's decoder, after post_quant_conv) as the plain modules compute it."""
    hidden = decoder.mid_block(decoder.conv_in(latents), None)
    for block in decoder.up_blocks:
        hidden = _run_resnets(block, hidden, plan)
        for up in block.upsamplers or []:
            hidden = lean_upsample(up, hidden, plan)
    return lean_output(decoder.conv_norm_out, decoder.conv_out, hidden, plan)


def takes_lean_walk(
    channels: int, batch: int, height: int, width: int, like: torch.Tensor, above_bytes: int = LEAN_ABOVE_BYTES
) -> bool:
    """Large inference inputs on a CPU (a 512 x 512 image, wide reference images, big batches) take the lean
    walk: full-resolution activations of `channels` x `height` x `width` larger than `above_bytes`. Small
    ones, training (gradients) and GPUs take the plain modules, which are faster: on a GPU the strips' many
    small launches cost more than the memory they save."""
    if torch.is_grad_enabled() or like.device.type != "cpu" or not switch.active():
        return False
    return batch * channels * height * width * torch.finfo(like.dtype).bits // 8 > above_bytes


class LeanEncoder(Encoder):
    """A VQGAN encoder (same parameters and state dict) that takes `lean_encode` for large CPU inputs."""

    lean_plan = LeanPlan()
    lean_above_bytes = LEAN_ABOVE_BYTES

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = sample.shape
        if takes_lean_walk(self.conv_in.out_channels, batch, height, width, sample, self.lean_above_bytes):
            return lean_encode(self, sample, self.lean_plan)
        return super().forward(sample)


class LeanDecoder(Decoder):
    """A VQGAN decoder (same parameters and state dict) that takes `lean_decode` for large CPU outputs."""

    lean_plan = LeanPlan()
    lean_above_bytes = LEAN_ABOVE_BYTES

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, height, width = sample.shape
        factor = 2 ** (len(self.up_blocks) - 1)
        channels = self.conv_norm_out.num_channels
        if latent_embeds is None and takes_lean_walk(
            channels, batch, height * factor, width * factor, sample, self.lean_above_bytes
        ):
            return lean_decode(self, sample, self.lean_plan)
        return super().forward(sample, latent_embeds)


def install(vq: nn.Module, plan: LeanPlan | None = None, above_bytes: int | None = None) -> int:
    """Give a VQGAN (`VQModel` with SiLU and group norms) the lean encoder and decoder; returns how many modules
    were switched (0 for other autoencoders). `plan` and `above_bytes` override the defaults (tests)."""
    if not isinstance(vq, VQModel) or vq.config.act_fn != "silu" or vq.config.norm_type != "group":
        return 0
    for module, lean in ((vq.encoder, LeanEncoder), (vq.decoder, LeanDecoder)):
        module.__class__ = lean
        if plan is not None:
            module.lean_plan = plan
        if above_bytes is not None:
            module.lean_above_bytes = above_bytes
    return 2
