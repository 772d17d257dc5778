"""RestoreFormer++ (Wang et al., TPAMI 2023), a blind face restorer: one of the papers' baselines.

A VQ autoencoder whose decoder attends, with multi-head cross-attention, to the degraded face's encoder features
(queries from the encoder, keys and values from the decoder's own features) at two scales: the 16x16 latent (the
middle block and the last level) and the 32x32 level above it. The original RestoreFormer attends at 16x16 only
and has 8 heads; RestoreFormer++ has 4. spandrel loads the original but not the ++ release (it has no attention
at 32x32), hence this module.

The parameter names are the release's (`RestoreFormer++.ckpt` holds them under `state_dict`, prefixed `vqvae.`),
so `restoreformer_from_state_dict` loads it with `load_state_dict(strict=True)`; the layout (widths, levels, where
the attention is) is read from the tensors' shapes, so small test models of the same layout load the same way.
Input and output are RGB in [-1, 1] at 512x512 (any multiple of 2^(levels-1) works).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refface.errors import RefFaceError

HEADS = 4  # RestoreFormer++'s attention heads (the release's config; the tensors' shapes do not say)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResidualBlock(nn.Module):
    """GroupNorm-swish-conv twice, plus the input (through a 1x1 conv where the width changes)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(channels_in), nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(channels_out), nn.Conv2d(channels_out, channels_out, 3, padding=1)
        if channels_in != channels_out:
            self.nin_shortcut = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class CrossAttention(nn.Module):
    """Multi-head attention over a feature map: self-attention alone, or with `guide` (the encoder's features)
    giving the queries while the keys and values stay the input's."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise RefFaceError(f"RestoreFormer++'s attention needs channels divisible by {heads}, got {channels}.")
        self.heads = heads
        self.norm1, self.norm2 = _norm(channels), _norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape  # channel c = head * (channels / heads) + index
        return x.reshape(batch, self.heads, channels // self.heads, height * width).transpose(2, 3)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        features = self.norm1(x)
        queries = features if guide is None else self.norm2(guide)
        attended = F.scaled_dot_product_attention(
            self._split(self.q(queries)), self._split(self.k(features)), self._split(self.v(features))
        )
        batch, channels, height, width = queries.shape
        attended = attended.transpose(2, 3).reshape(batch, channels, height, width)
        return x + self.proj_out(attended)


class Resample(nn.Module):
    """Halve (a stride-2 conv after padding right and bottom by one) or double (nearest, then a conv) the size."""

    def __init__(self, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by attention where the level has
    it, and the resampling to the next level (none at the end)."""

    def __init__(self, widths: list[tuple[int, int]], heads: int, attention: bool, resample: str | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResidualBlock(a, b) for a, b in widths)
        self.attn = nn.ModuleList(CrossAttention(b, heads) for _, b in widths) if attention else nn.ModuleList()
        if resample == "down":
            self.downsample = Resample(widths[-1][1], down=True)
        elif resample == "up":
            self.upsample = Resample(widths[-1][1], down=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        for index, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[index](x, guide)
        return x


class Middle(nn.Module):
    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.block_1 = ResidualBlock(channels, channels)
        self.attn_1 = CrossAttention(channels, heads)
        self.block_2 = ResidualBlock(channels, channels)


class Encoder(nn.Module):
    """The degraded face to latent features, keeping the features the decoder attends to: each level's output
    (`level{i}`), the middle's input (`middle_in`) and output (`middle_out`)."""

    def __init__(self, ch: int, mult: tuple[int, ...], blocks: int, z: int, heads: int, attention: set[int]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = ch
        for level, factor in enumerate(mult):
            widths = [(width if i == 0 else ch * factor, ch * factor) for i in range(blocks)]
            last = level == len(mult) - 1
            self.down.append(Level(widths, heads, level in attention, None if last else "down"))
            width = ch * factor
        self.mid = Middle(width, heads)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        kept: dict[str, torch.Tensor] = {}
        h = self.conv_in(x)
        for index, level in enumerate(self.down):
            h = level(h)
            if hasattr(level, "downsample"):
                kept[f"level{index}"] = h
                h = level.downsample(h)
        h = self.mid.block_1(h)
        kept["middle_in"] = h
        h = self.mid.block_2(self.mid.attn_1(h))
        kept["middle_out"] = h
        return self.conv_out(F.silu(self.norm_out(h))), kept


class Decoder(nn.Module):
    """Latent to face, each attending level guided by the encoder's features at its size (the last level by the
    middle's input, as the release does)."""

    def __init__(self, ch: int, mult: tuple[int, ...], blocks: int, z: int, heads: int, attention: set[int]) -> None:
        super().__init__()
        width = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, width, 3, padding=1)
        self.mid = Middle(width, heads)
        levels: list[Level] = []
        for level in reversed(range(len(mult))):
            out = ch * mult[level]
            widths = [(width if i == 0 else out, out) for i in range(blocks + 1)]
            levels.insert(0, Level(widths, heads, level in attention, "up" if level else None))
            width = out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z: torch.Tensor, kept: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.mid.block_1(self.conv_in(z))
        h = self.mid.block_2(self.mid.attn_1(h, kept["middle_out"]))
        last = len(self.up) - 1
        for index in reversed(range(len(self.up))):
            level = self.up[index]
            guide = kept["middle_in"] if index == last else kept.get(f"level{index}")
            h = level(h, guide)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Codebook(nn.Module):
    def __init__(self, entries: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(entries, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Each latent vector replaced by its nearest codebook entry (squared distance)."""
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)
        codes = self.embedding.weight
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)
        chosen = codes[distances.argmin(1)]
        return chosen.reshape(batch, height, width, dim).permute(0, 3, 1, 2)


class RestoreFormerPP(nn.Module):
    """RestoreFormer++: [B, 3, H, W] in [-1, 1] -> the restored face in [-1, 1] (not clamped)."""

    def __init__(
        self,
        ch: int = 64,
        mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8),
        blocks: int = 2,
        z_channels: int = 256,
        codebook: tuple[int, int] = (1024, 256),
        heads: int = HEADS,
        encoder_attention: frozenset[int] = frozenset({5}),
        decoder_attention: frozenset[int] = frozenset({4, 5}),
    ) -> None:
        super().__init__()
        self.encoder = Encoder(ch, mult, blocks, z_channels, heads, set(encoder_attention))
        self.decoder = Decoder(ch, mult, blocks, z_channels, heads, set(decoder_attention))
        self.quantize = Codebook(*codebook)
        self.quant_conv = nn.Conv2d(z_channels, codebook[1], 1)
        self.post_quant_conv = nn.Conv2d(codebook[1], z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, kept = self.encoder(x)
        quantised = self.quantize(self.quant_conv(z))
        return self.decoder(self.post_quant_conv(quantised), kept)


def _levels(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(key[len(prefix) :].split(".")[0]) for key in state if key.startswith(prefix)})


def restoreformer_from_state_dict(state: dict[str, torch.Tensor], source: str) -> RestoreFormerPP:
    """The network of `state` (the release's names, any `vqvae.` prefix and training-only entries dropped), its
    layout read from the shapes; a state dict of another layout is one sentence naming `source`."""
    prefixed = {key[len("vqvae.") :]: value for key, value in state.items() if key.startswith("vqvae.")}
    state = prefixed or state
    try:
        ch = state["encoder.conv_in.weight"].shape[0]
        levels = _levels(state, "encoder.down.")
        mult = tuple(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels)
        blocks = len(_levels(state, "encoder.down.0.block."))
        entries, dim = state["quantize.embedding.weight"].shape
        z_channels = state["quant_conv.weight"].shape[1]
    except KeyError as missing:
        raise RefFaceError(f"The file {source} is not a RestoreFormer++ checkpoint (it has no {missing}).") from None
    model = RestoreFormerPP(
        ch, mult, blocks, z_channels, (entries, dim),
        encoder_attention=frozenset(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state),
        decoder_attention=frozenset(i for i in levels if f"decoder.up.{i}.attn.0.q.weight" in state),
    )  # fmt: skip
    if len(model.decoder.up) < 2 or not model.decoder.up[-1].attn or not model.decoder.up[-2].attn:
        raise RefFaceError(
            f"The file {source} holds a RestoreFormer without attention at two scales (the original RestoreFormer, "
            "not RestoreFormer++); spandrel loads that one."
        )
    wanted = model.state_dict()
    state = {key: value for key, value in state.items() if key in wanted}  # the release also holds losses' weights
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise RefFaceError(f"The file {source} does not fit RestoreFormer++'s layout ({first}).") from None
    return model.eval()
